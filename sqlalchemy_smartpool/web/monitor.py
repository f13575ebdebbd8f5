"""What the HTTP endpoints serve, for one or several named pools, framework-free.

:class:`PoolMonitor` answers ``/health`` (every pool's
:meth:`health_check`, cached), ``/status.json`` (health, stats, a short
history of size / in use / idle / waiting, suspected leaks with their
stacks, recent audit events, top holders) and ``/metrics`` (Prometheus
text). It keeps no thread: the history is sampled when the status is asked
for, and a pool is probed only when someone asks for its health -- a pool
nobody watches does nothing. Nothing it returns carries a secret: URLs are
shown without password or query, every text passes :func:`~..errors.redact`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..errors import describe_error, redact
from ..health import DOWN, PROBE_SKIPPED, ProbeResult, worst
from ..metrics import health as passive_health
from ..metrics import pool_name, resolve_pool
from .events import AUDIT_LOGGER, RecentEvents

#: the probe an asyncio pool gets when asked from a thread (WSGI): its connections live on its loop
_ASYNC_FROM_THREAD = ProbeResult(
    PROBE_SKIPPED, "none", 0.0, "an asyncio pool is probed on its event loop: serve it with the ASGI app"
)
_MAX_LEAKS = 20
_MAX_ITEMS = 50


class PoolMonitor:
    """The state behind the endpoints: named pools, their health checks, history and events.

    ``pools``: a mapping of name to pool, engine (sync or asyncio, read at
    each request so ``engine.dispose()`` is followed), Redis pool or redis
    client; or one such target (named after its pool, else ``default``).
    ``probe_timeout`` bounds each pool's probe, ``cache_for`` is how long a
    health report is reused. ``refresh`` is the status page's polling period,
    ``history`` the number of samples kept per pool (taken at most every
    ``sample_every`` seconds, when the status is asked for). ``events``
    recent records per pool are kept from ``audit_logger``; ``audit_level``,
    if given, is set on that logger when it has no level of its own (without
    it, INFO records are dropped by logging before any handler sees them).
    """

    def __init__(
        self,
        pools: Mapping[str, Any] | Any,
        *,
        probe_timeout: float = 1.0,
        cache_for: float = 1.0,
        refresh: float = 2.0,
        history: int = 300,
        sample_every: float = 1.0,
        events: int = 20,
        audit_logger: str = AUDIT_LOGGER,
        audit_level: int | None = None,
        namespace: str = "smartpool",
        title: str = "smartpool",
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.targets = _named(pools)
        for field, value in (("probe_timeout", probe_timeout), ("refresh", refresh)):
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{field} must be a number of seconds > 0, got {value!r}")
        for field, value in (("cache_for", cache_for), ("sample_every", sample_every)):
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{field} must be a number of seconds >= 0, got {value!r}")
        if not isinstance(history, int) or history < 1:
            raise ValueError(f"history must be an integer >= 1, got {history!r}")
        self.probe_timeout = float(probe_timeout)
        self.cache_for = float(cache_for)
        self.refresh = float(refresh)
        self.sample_every = float(sample_every)
        self.namespace = namespace
        self.title = title
        self._clock = clock
        self._wall = wall
        self._samples: dict[str, deque[list[float]]] = {name: deque(maxlen=history) for name in self.targets}
        self._sampled_at: dict[str, float] = dict.fromkeys(self.targets, float("-inf"))
        self._lock = threading.Lock()
        self._registry: Any = None
        self.events = RecentEvents(events)
        self._audit = logging.getLogger(audit_logger)
        self._audit.addHandler(self.events)
        if audit_level is not None and self._audit.level == logging.NOTSET:
            self._audit.setLevel(audit_level)

    def close(self) -> None:
        """Detach from the audit logger (the pools are the caller's: they stay open)."""
        self._audit.removeHandler(self.events)

    # -- /health ---------------------------------------------------------------------

    def health(self, name: str | None = None) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of ``/health`` (or ``/health/<name>``), from a thread.

        200 unless a pool is down (503); 404 for an unknown name.
        """
        names = self._names(name)
        if names is None:
            return 404, {"error": f"no pool named {name!r}", "pools": list(self.targets)}
        return self._health_body({n: self._health_sync(n) for n in names})

    async def ahealth(self, name: str | None = None) -> tuple[int, dict[str, Any]]:
        """:meth:`health` on an event loop: asyncio pools are probed on it, the others in threads."""
        names = self._names(name)
        if names is None:
            return 404, {"error": f"no pool named {name!r}", "pools": list(self.targets)}
        reports = await asyncio.gather(*(self._health_async(n) for n in names))
        return self._health_body(dict(zip(names, reports, strict=True)))

    def _health_body(self, reports: dict[str, dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        status = worst([r["status"] for r in reports.values()])
        body = {"status": status, "checked_at": self._wall(), "pools": reports}
        return (503 if status == DOWN else 200), body

    def _names(self, name: str | None) -> list[str] | None:
        if name is None:
            return list(self.targets)
        return [name] if name in self.targets else None

    def _health_sync(self, name: str) -> dict[str, Any]:
        pool = resolve_pool(self.targets[name])
        try:
            checker = _checker(pool)
            if checker is None:
                report = _foreign(pool)
            elif checker._spawn is not None:
                report = checker.report(_ASYNC_FROM_THREAD)
            else:
                report = pool.health_check(self.probe_timeout, cache_for=self.cache_for)
        except Exception as err:
            report = _failed(pool, err)
        return {"name": name, **report}

    async def _health_async(self, name: str) -> dict[str, Any]:
        pool = resolve_pool(self.targets[name])
        try:
            checker = _checker(pool)
            if checker is None:
                report = _foreign(pool)
            elif checker._spawn is not None:
                report = await pool.health_check(self.probe_timeout, cache_for=self.cache_for)
            else:  # a threaded pool: a cache hit costs nothing, a probe may block, so off the loop
                hit = checker.cached(self.cache_for)
                report = hit if hit is not None else await asyncio.to_thread(
                    pool.health_check, self.probe_timeout, cache_for=self.cache_for
                )
        except Exception as err:
            report = _failed(pool, err)
        return {"name": name, **report}

    # -- /status.json ----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The status page's data, from a thread."""
        return self._status({n: self._health_sync(n) for n in self.targets})

    async def astatus(self) -> dict[str, Any]:
        """:meth:`status` on an event loop."""
        names = list(self.targets)
        reports = await asyncio.gather(*(self._health_async(n) for n in names))
        return self._status(dict(zip(names, reports, strict=True)))

    def _status(self, reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
        pools = []
        for name, target in self.targets.items():
            pool = resolve_pool(target)
            report = reports[name]
            stats = report.get("stats") or {}
            pools.append(
                {
                    "name": name,
                    "target": describe_target(target, pool),
                    "health": report,
                    "stats": stats,
                    "samples": self._sample(name, stats),
                    "leaks": _leaks(pool),
                    "events": self.events.recent(*_aliases(name, pool)),
                    "top_holders": _top_holders(pool),
                }
            )
        return {
            "generated_at": self._wall(),
            "refresh": self.refresh,
            "status": worst([r["status"] for r in reports.values()]),
            "pools": pools,
        }

    def _sample(self, name: str, stats: Mapping[str, Any]) -> list[list[float]]:
        now = self._clock()
        with self._lock:
            ring = self._samples[name]
            if now - self._sampled_at[name] >= self.sample_every:
                self._sampled_at[name] = now
                ring.append(
                    [
                        round(self._wall(), 3),
                        *(
                            int(stats.get(k) or 0)
                            for k in ("pool_size", "pool_in_use", "pool_idle", "requests_waiting")
                        ),
                    ]
                )
            return [list(s) for s in ring]

    # -- /metrics --------------------------------------------------------------------

    def metrics(self) -> tuple[int, str, bytes]:
        """(HTTP status, content type, body) of ``/metrics``: 501 naming the extra without
        prometheus_client."""
        try:
            from prometheus_client import CollectorRegistry
            from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

            from ..metrics import PrometheusCollector
        except ImportError:
            return (
                501,
                "text/plain; charset=utf-8",
                b"/metrics needs the 'prometheus_client' package; "
                b"install it with: pip install 'sqlalchemy-smartpool[prometheus]'\n",
            )
        with self._lock:
            if self._registry is None:
                registry = CollectorRegistry()
                collector = None
                for name, target in self.targets.items():
                    if collector is None:
                        collector = PrometheusCollector(
                            target, name, namespace=self.namespace, registry=None
                        )
                    else:
                        collector.add(target, name)
                assert collector is not None  # a monitor has at least one pool
                registry.register(collector)
                self._registry = registry
        return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)


# ---------------------------------------------------------------------------- helpers


def _named(pools: Mapping[str, Any] | Any) -> dict[str, Any]:
    if isinstance(pools, Mapping):
        items = list(pools.items())
    else:
        pool = resolve_pool(pools)  # TypeError naming the type for anything else
        # a name from where the pool connects may hold a '/' (redis-host:6379/0): not in a path
        items = [((pool_name(pool) or "default").replace("/", "_"), pools)]
    if not items:
        raise ValueError("no pools given: pass {name: engine or pool, ...}")
    out: dict[str, Any] = {}
    for name, target in items:
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"pool names must be non-empty strings without '/', got {name!r}")
        resolve_pool(target)
        out[name] = target
    return out


def _checker(pool: Any) -> Any:
    make = getattr(pool, "_health_checker", None)
    return make() if callable(make) else None


def _foreign(pool: Any) -> dict[str, Any]:
    """A pool without an active probe (QueuePool, ...): its state alone, in the same shape."""
    report = passive_health(pool)
    report.setdefault("probe", None)
    report.setdefault("saturation", None)
    report.setdefault("age", 0.0)
    report["suspected_leaks"] = 0
    return report


def _failed(pool: Any, err: BaseException) -> dict[str, Any]:
    """The health check itself raised (a misconfiguration, say): down, saying why."""
    report = _foreign(pool)
    report["status"] = DOWN
    report["reasons"] = [f"health check failed: {describe_error(err)}", *report["reasons"]]
    return report


def _aliases(name: str, pool: Any) -> list[str]:
    """The names the pool's audit records may carry: ours, and the pool's own."""
    names = [name]
    own = pool_name(pool)
    if own:
        names.append(own)
    engine = getattr(pool, "_engine", None)
    engine_name = getattr(engine, "name", None)
    if isinstance(engine_name, str):
        names.append(engine_name)
    return names


def describe_target(target: Any, pool: Any) -> str | None:
    """Where the pool connects, without password or query string (which may hold secrets)."""
    url = getattr(getattr(target, "sync_engine", target), "url", None)
    if url is not None and hasattr(url, "render_as_string"):
        try:
            return redact(url.set(query={}).render_as_string(hide_password=True))
        except Exception:
            return None
    kwargs = getattr(pool, "connection_kwargs", None)
    if isinstance(kwargs, Mapping):
        if kwargs.get("path"):
            return redact(f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}")
        host = kwargs.get("host", "localhost")
        return redact(f"redis://{host}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}")
    return None


def _leaks(pool: Any) -> list[dict[str, Any]]:
    fn = getattr(pool, "suspected_leaks", None)
    if not callable(fn):
        return []
    try:
        found = fn()
    except Exception:
        return []
    return [
        {
            "connection_id": leak.connection_id,
            "thread": redact(str(leak.thread)),
            "held_for": round(leak.held_for, 3),
            "stack": redact(leak.stack),
            "last_statement": redact(leak.last_statement) if leak.last_statement else None,
        }
        for leak in found[:_MAX_LEAKS]
    ]


def _top_holders(pool: Any) -> Any:
    """``pool.top_holders()`` if the pool has it, made JSON-safe and redacted; else None."""
    fn = getattr(pool, "top_holders", None)
    if not callable(fn):
        return None
    try:
        value = fn()
        if inspect.isawaitable(value):
            close = getattr(value, "close", None)
            if callable(close):
                close()
            return None
        return _jsonable(value, 3)
    except Exception as err:
        return {"error": describe_error(err)}


def _jsonable(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return redact(value)
    if depth <= 0:
        return redact(str(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {redact(str(k)): _jsonable(v, depth - 1) for k, v in list(value.items())[:_MAX_ITEMS]}
    if isinstance(value, Iterable):
        return [_jsonable(v, depth - 1) for v in list(value)[:_MAX_ITEMS]]
    return redact(str(value))


__all__ = ["PoolMonitor", "describe_target"]

"""Push pool metrics to StatsD: gauges and counters every ``gauge_interval``, from one daemon thread.

Two ways to count, because they cost differently:

* **stats mode** (default for SmartPool): counters are the deltas of
  ``pool.stats().counters`` between pushes. Nothing runs on the checkout
  path, so attaching metrics costs requests nothing.
* **event mode** (default for every other pool, which has no ``stats()``):
  SQLAlchemy pool events (``checkout``, ``checkin``, ``connect``, ...) bump
  in-process tallies, flushed with the gauges. A ``checkout`` listener makes
  SQLAlchemy take its slower checkout path on *every* checkout (see
  docs/metrics.md for the measured cost), so SmartPool only uses it when asked
  (``events=True``).

Metric names come from the measures table (:mod:`sqlalchemy_smartpool.measures`;
mostly the pool's ``stats`` keys, one vocabulary for ``stats()``, StatsD and
Prometheus) under ``<prefix>[.<pool name>]``; a Redis pool's under
``<prefix>.redis[.<pool name>]``. Nothing is derived from the URL. The wait,
use and create time histograms are sent per push as the interval's count and
sum (counters) and its p50 / p95 / p99 (timings, ms), from the bucket counts
the pool keeps.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from .. import logs
from .. import measures as M
from .. import stats as S
from ..stats import Distribution
from . import (
    has_stats,
    is_sqlalchemy_pool,
    missing_extra,
    pool_kind,
    pool_name,
    read_pool,
    resolve_pool,
    sanitize,
)

__all__ = [
    "ACQUIRE_WAIT_MAX",
    "ACQUIRE_WAIT_P50",
    "ACQUIRE_WAIT_P95",
    "ACQUIRE_WAIT_P99",
    "BREAKER_STATE",
    "CHECKINS",
    "CONNECTIONS_DETACHED",
    "CONNECTIONS_DETACHED_CLOSED",
    "CONNECTIONS_SOFT_INVALIDATED",
    "EVENT_COUNTERS",
    "StatsdMetrics",
]

logger = logging.getLogger(logs.METRICS_LOGGER)

# Gauges: the stats keys of sqlalchemy_smartpool.metrics.GAUGES, plus:
#: circuit breaker, 0 closed / 1 half_open / 2 open
BREAKER_STATE = "breaker_state"

# Timings (ms): acquire-wait percentiles over the pool's recent checkouts, sent
# once per push while checkouts happen (SmartPool only).
ACQUIRE_WAIT_P50 = "acquire_wait_p50"
ACQUIRE_WAIT_P95 = "acquire_wait_p95"
ACQUIRE_WAIT_P99 = "acquire_wait_p99"
ACQUIRE_WAIT_MAX = "acquire_wait_max"
_WAIT_TIMINGS = (ACQUIRE_WAIT_P50, ACQUIRE_WAIT_P95, ACQUIRE_WAIT_P99, ACQUIRE_WAIT_MAX)

# Counters: every key of sqlalchemy_smartpool.stats.COUNTERS (stats mode), and
# from pool events (event mode) the ones below plus the four shared with stats.
CHECKINS = "checkins"
CONNECTIONS_SOFT_INVALIDATED = "connections_soft_invalidated"
CONNECTIONS_DETACHED = "connections_detached"
CONNECTIONS_DETACHED_CLOSED = "connections_detached_closed"

#: SQLAlchemy pool event -> counter it bumps in event mode
EVENT_COUNTERS: dict[str, str] = {
    "connect": S.CONNECTIONS_CREATED,
    "checkout": S.CHECKOUTS,
    "checkin": CHECKINS,
    "invalidate": S.CONNECTIONS_INVALIDATED,
    "soft_invalidate": CONNECTIONS_SOFT_INVALIDATED,
    "close": S.CONNECTIONS_CLOSED,
    "detach": CONNECTIONS_DETACHED,
    "close_detached": CONNECTIONS_DETACHED_CLOSED,
}

_UNSAFE_PREFIX = re.compile(r"[^A-Za-z0-9_.]")


class _Tally:
    """An event counter with no lock on the bump.

    ``next()`` on an ``itertools.count`` is one C call, atomic under the GIL,
    so listeners on many threads never lose a count; ``take`` (serialized by
    the caller) reads by drawing one number too, and subtracts its own draws.
    """

    __slots__ = ("_it", "_seen", "bump")

    def __init__(self) -> None:
        self._it = itertools.count()
        self.bump: Callable[[], int] = self._it.__next__
        self._seen = -1

    def take(self) -> int:
        """Events since the previous ``take``."""
        drawn = next(self._it)
        n = drawn - self._seen - 1
        self._seen = drawn
        return n


def _listener(bump: Callable[[], int]) -> Callable[..., None]:
    def on_event(*_args: Any) -> None:
        bump()

    return on_event


class StatsdMetrics:
    """Send one pool's gauges, counters and wait percentiles to StatsD.

    ``pool_or_engine``: a pool, or an engine (its current pool is read at
    every push, so ``engine.dispose()`` is followed). ``client``: any object
    with the ``statsd`` client API (``gauge``/``incr``/``timing``, optionally
    ``pipeline``); by default a ``statsd.StatsClient(host, port)`` owned and
    closed here. ``prefix`` and the pool's name (``name=``, else the pool's
    ``PoolConfig.name``) prefix every metric, sanitized to ``[A-Za-z0-9_]``.
    ``events``: count through SQLAlchemy pool events (see the module doc);
    ``None`` picks stats mode for pools with ``stats()``, event mode otherwise.
    A Redis pool (``SmartRedisPool``, or a ``redis.Redis`` client over one) has
    stats mode only, and its metrics are ``<prefix>.redis[.<name>].*``.

    The push thread keeps this object alive, so ``StatsdMetrics(engine)`` alone
    works; :meth:`close` (or the ``with`` block) stops it, removes the event
    listeners and sends the last counts.
    """

    def __init__(
        self,
        pool_or_engine: Any,
        client: Any = None,
        *,
        host: str = "127.0.0.1",
        port: int = 8125,
        prefix: str | None = "smartpool",
        gauge_interval: float = 1.0,
        events: bool | None = None,
        name: str | None = None,
    ) -> None:
        if isinstance(gauge_interval, bool) or not isinstance(gauge_interval, (int, float)):
            raise TypeError("gauge_interval must be a number of seconds")
        if not math.isfinite(gauge_interval) or gauge_interval <= 0:
            raise ValueError(f"gauge_interval must be > 0 seconds, got {gauge_interval!r}")
        pool = resolve_pool(pool_or_engine)
        self._target = pool_or_engine
        self._follow = not is_sqlalchemy_pool(pool_or_engine)
        self._listened_pool = pool
        self.events: bool = (not has_stats(pool)) if events is None else bool(events)
        kind = pool_kind(pool)
        if self.events and kind != "sqlalchemy":
            raise ValueError(f"events=True needs a SQLAlchemy pool; a {kind} pool has stats mode only")
        self.gauge_interval = float(gauge_interval)
        self.prefix = _build_prefix(prefix, pool_name(pool, name), None if kind == "sqlalchemy" else kind)
        self._owns_client = client is None
        self._client = _default_client(host, port) if client is None else client
        self._lock = threading.Lock()
        self._closed = False
        self._done = False
        # baseline: counts before attaching are history, not traffic of this interval
        self._last_pool: Any = pool
        first = read_pool(pool)
        self._last_counters: dict[str, int] = dict(first.counters or {})
        self._last_timings: dict[str, Distribution] = dict(first.stats.timings) if first.stats else {}
        self._tallies: dict[str, _Tally] = {}
        self._listeners: list[tuple[str, Callable[..., None]]] = []
        if self.events:
            self._listen(pool)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"smartpool-statsd-{self.prefix}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public

    def flush(self) -> None:
        """Push gauges and the counts since the last push now (the thread does it every interval)."""
        with self._lock:
            if self._done:
                return
            self._push()

    def close(self) -> None:
        """Stop the thread, remove the event listeners, send the last counts; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=max(5.0, 2 * self.gauge_interval))
        self._unlisten()
        with self._lock:
            try:
                self._push()
            finally:
                self._done = True
                if self._owns_client:
                    self._client.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> StatsdMetrics:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "events" if self.events else "stats"
        return f"<StatsdMetrics {self.prefix} mode={mode} every {self.gauge_interval:g}s>"

    # --------------------------------------------------------------- internals

    def _listen(self, pool: Any) -> None:
        from sqlalchemy import event  # event mode is for SQLAlchemy pools only

        for ev, key in EVENT_COUNTERS.items():
            tally = self._tallies.setdefault(key, _Tally())
            fn = _listener(tally.bump)
            event.listen(pool, ev, fn)
            self._listeners.append((ev, fn))

    def _unlisten(self) -> None:
        # Removing through the pool we listened on also removes the copies
        # SQLAlchemy gave pools made by recreate() (engine.dispose()).
        if not self._listeners:
            return
        from sqlalchemy import event

        pool = self._listened_pool
        for ev, fn in self._listeners:
            if event.contains(pool, ev, fn):
                event.remove(pool, ev, fn)
        self._listeners.clear()

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.gauge_interval):
            try:
                self.flush()
            except Exception as err:  # a metrics hiccup must never kill the thread
                # the type only: messages can carry driver details. WARNING once per streak
                # of failures (not once a second), DEBUG for the rest of it
                level = logging.DEBUG if failing else logging.WARNING
                failing = True
                what = type(err).__name__
                logs.event(
                    logger,
                    level,
                    self.prefix,
                    logs.METRICS_PUSH_FAILED,
                    "statsd push failed (%s)",
                    what,
                    cause=what,
                )
            else:
                if failing:
                    logs.event(
                        logger,
                        logging.INFO,
                        self.prefix,
                        logs.METRICS_PUSH_FAILED,
                        "statsd push works again",
                        recovered=True,
                    )
                failing = False

    def _push(self) -> None:
        """One push; the caller holds ``self._lock``."""
        pool = resolve_pool(self._target) if self._follow else self._listened_pool
        snap = read_pool(pool)
        if pool is not self._last_pool:
            # a new pool (engine.dispose()) counts from zero
            self._last_pool = pool
            self._last_counters = {}
            self._last_timings = {}
        pipe = self._pipeline()
        p = self.prefix
        st = snap.stats
        if st is None:
            for key, value in snap.gauges.items():
                pipe.gauge(f"{p}.{key}", max(0, value))
        else:
            last = self._last_counters
            moved = _delta(st.counters.get(S.CHECKOUTS, 0), last.get(S.CHECKOUTS, 0)) > 0
            for m in M.MEASURES:
                if m.statsd is None:
                    continue
                name = f"{p}.{m.statsd}"
                if m.kind == M.COUNTER:
                    if m.source in self._tallies:
                        continue  # counted from events instead
                    n = _delta(st.counters.get(m.source, 0), last.get(m.source, 0))
                    if n:
                        pipe.incr(name, n)
                elif m.kind == M.HISTOGRAM:
                    dist = m.read(st)
                    if dist is not None:
                        self._send_interval(pipe, name, dist.minus(self._last_timings.get(m.source)))
                elif m.statsd_type == "ms":
                    if moved:  # a percentile of recent traffic: sent while there is traffic
                        pipe.timing(name, m.read(st) * m.statsd_scale)
                else:
                    pipe.gauge(name, max(0, m.read(st) * m.statsd_scale))
            self._last_counters = dict(st.counters)
            self._last_timings = dict(st.timings)
        for key, tally in self._tallies.items():
            n = tally.take()
            if n:
                pipe.incr(f"{p}.{key}", n)
        send = getattr(pipe, "send", None)
        if callable(send):
            send()

    @staticmethod
    def _send_interval(pipe: Any, name: str, dist: Distribution) -> None:
        """One histogram's interval: its count and sum as counters, its percentiles as timings."""
        count = dist.count
        if not count:
            return
        pipe.incr(f"{name}_count", count)
        pipe.incr(f"{name}_sum_ms", round(dist.sum * M.MS, 3))
        for q, suffix in ((0.5, "_p50"), (0.95, "_p95"), (0.99, "_p99")):
            pipe.timing(f"{name}{suffix}", dist.quantile(q) * M.MS)

    def _pipeline(self) -> Any:
        make = getattr(self._client, "pipeline", None)
        return make() if callable(make) else self._client


def _delta(now: int, before: int) -> int:
    """Counter increase; a smaller value means the counter restarted."""
    return now - before if now >= before else now


def _build_prefix(prefix: str | None, name: str | None, kind: str | None = None) -> str:
    parts = []
    if prefix:
        cleaned = _UNSAFE_PREFIX.sub("_", prefix).strip(".")
        if cleaned:
            parts.append(cleaned)
    if kind:  # not SQLAlchemy: "smartpool.redis.<name>", so one prefix never mixes two kinds
        parts.append(sanitize(kind))
    if name:
        parts.append(sanitize(name))
    if not parts:
        raise ValueError("metrics need a prefix or a pool name")
    return ".".join(parts)


def _default_client(host: str, port: int) -> Any:
    try:
        import statsd
    except ImportError as err:
        raise missing_extra("StatsdMetrics", "statsd", "statsd") from err
    return statsd.StatsClient(host, port)

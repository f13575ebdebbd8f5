"""Pool metrics out of the box: OpenTelemetry, StatsD push, Prometheus pull, and a health report.

Every exporter is driven by one table, :data:`sqlalchemy_smartpool.measures.MEASURES`
(each measurement's meaning and its name in every backend), and reads
``stats()`` snapshots, so they agree with each other and with ``stats()``.

The exporters load lazily, so the core package needs no metrics dependency:
``StatsdMetrics`` needs the ``statsd`` package only to build its default
client, ``PrometheusCollector`` needs ``prometheus_client``,
``OpenTelemetryMetrics`` needs ``opentelemetry-api``. A missing one is
reported with the extra to install, not as a bare ``ModuleNotFoundError``.
Nothing here imports SQLAlchemy: a SQLAlchemy pool is recognised through the
already-loaded ``sqlalchemy.pool`` module, so Redis pools need no SQLAlchemy.

Everything here reads what a pool already publishes -- ``SmartPool.stats()``
or, for any other SQLAlchemy pool, ``checkedin()`` / ``checkedout()`` -- and
never the engine URL, so no exporter can leak credentials. Any other pool
with ``stats()`` (``SmartRedisPool``, ``AsyncSmartRedisPool``, or a
``redis.Redis`` client over one) is read the same way; its ``pool_kind``
(``"redis"``) names it in StatsD (``smartpool.redis.<name>.*``) and in
:func:`health`.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from .. import measures as M
from .. import stats as S
from ..health import FAILURE_COUNTERS, OK, FailureTrend, assess
from ..stats import PoolStats

if TYPE_CHECKING:
    from .otel import OpenTelemetryMetrics
    from .prometheus import PrometheusCollector
    from .statsd import StatsdMetrics

__all__ = [
    "BREAKER_STATE_VALUES",
    "GAUGES",
    "OpenTelemetryMetrics",
    "PrometheusCollector",
    "StatsdMetrics",
    "health",
    "pool_kind",
]

#: Numeric encoding of the breaker state for gauges: higher is worse.
BREAKER_STATE_VALUES: dict[str, int] = M.BREAKER_STATE_VALUES

#: Gauges every exporter publishes, by their ``stats`` key (also their metric name).
GAUGES: tuple[str, ...] = (
    S.POOL_SIZE,
    S.POOL_IDLE,
    S.POOL_IN_USE,
    S.REQUESTS_WAITING,
    S.CONNECTIONS_PENDING,
    S.POOL_MIN,
    S.POOL_MAX,
)

_LAZY = {
    "StatsdMetrics": (".statsd", "statsd"),
    "PrometheusCollector": (".prometheus", "prometheus"),
    "OpenTelemetryMetrics": (".otel", "otel"),
}


def __getattr__(name: str) -> Any:
    """Import an exporter on first use (PEP 562), naming the extra when its package is missing."""
    try:
        module, extra = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    try:
        mod = importlib.import_module(module, __name__)
    except ImportError as err:
        if (err.name or "").startswith("sqlalchemy_smartpool"):
            raise
        raise missing_extra(name, err.name or extra, extra) from err
    value = getattr(mod, name)
    globals()[name] = value
    return value


def missing_extra(feature: str, package: str, extra: str) -> ImportError:
    """The error for an optional dependency that is not installed."""
    return ImportError(
        f"{feature} needs the {package!r} package; "
        f"install it with: pip install 'sqlalchemy-smartpool[{extra}]'"
    )


# ---------------------------------------------------------------------------- pools


def is_sqlalchemy_pool(obj: Any) -> bool:
    """A ``sqlalchemy.pool.Pool``? Asked of the loaded module: if SQLAlchemy was never
    imported, nothing can be one of its pools, and Redis pools need no SQLAlchemy."""
    mod = sys.modules.get("sqlalchemy.pool")
    return mod is not None and isinstance(obj, mod.Pool)


def resolve_pool(target: Any) -> Any:
    """The pool behind a Pool, an Engine or an AsyncEngine (read at each call: dispose() swaps it),
    or any pool with ``stats()`` (a SmartRedisPool), or a redis client over one (``connection_pool``)."""
    if is_sqlalchemy_pool(target):
        return target
    engine = getattr(target, "sync_engine", target)
    pool = getattr(engine, "pool", None)
    if is_sqlalchemy_pool(pool):
        return pool
    if has_stats(target):
        return target
    pool = getattr(target, "connection_pool", None)
    if has_stats(pool):
        return pool
    # the type only: an engine's repr carries its URL
    raise TypeError(
        f"expected a SQLAlchemy Pool or Engine, or a pool with stats(), got {type(target).__name__}"
    )


def has_stats(pool: Any) -> bool:
    """Whether the pool publishes a :class:`PoolStats` snapshot (SmartPool and its kin)."""
    return callable(getattr(pool, "stats", None))


def pool_kind(pool: Any) -> str:
    """``"sqlalchemy"`` for SQLAlchemy pools, else the pool's ``pool_kind`` (``"redis"``)."""
    if is_sqlalchemy_pool(pool):
        return "sqlalchemy"
    kind = getattr(pool, "pool_kind", None)
    return kind if isinstance(kind, str) and kind else "other"


def pool_name(pool: Any, override: str | None = None) -> str | None:
    """The pool's name, as its log lines say it: ``name=`` here, else ``PoolConfig.name``,
    else the SQLAlchemy ``pool_logging_name``, else what the pool calls itself from where it
    connects (SmartPool: the URL's database; the Redis pools: ``redis-<host>:<port>/<db>``).
    Never a user or a password; None when the pool has no name but its id."""
    if override:
        return override
    config = getattr(pool, "config", None)
    name = getattr(config, "name", None) or getattr(pool, "logging_name", None)
    if not name and getattr(pool, "_name_known", True):  # SmartPool: False while only its id
        name = getattr(pool, "name", None)
    return name if isinstance(name, str) and name else None


def pool_label(pool: Any, override: str | None = None) -> str:
    """The name every exporter gives a pool: :func:`pool_name`, else ``"default"`` for a
    SQLAlchemy pool and the kind (``"redis"``) for others -- the same in Prometheus' ``pool``
    label, OpenTelemetry's ``db.client.connection.pool.name`` and StatsD."""
    kind = pool_kind(pool)
    return pool_name(pool, override) or ("default" if kind == "sqlalchemy" else kind)


_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def sanitize(name: str) -> str:
    """A metric-name segment: every character outside ``[A-Za-z0-9_]`` becomes ``_``."""
    return _UNSAFE.sub("_", name)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What an exporter can read from one pool right now.

    ``counters``, ``breaker_state`` and the wait percentiles exist only for pools
    with ``stats()``; for other pools the gauges that SQLAlchemy's pool API gives.
    """

    gauges: dict[str, int]
    counters: dict[str, int] | None = None
    breaker_state: str | None = None
    #: (p50, p95, p99, max) of recent acquire waits, in seconds
    waits: tuple[float, float, float, float] | None = None
    stats: PoolStats | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.stats is not None:
            return self.stats.as_dict()
        return dict(self.gauges)


def read_pool(pool: Any) -> Snapshot:
    """Take one :class:`Snapshot` of ``pool`` (no locks held afterwards, no I/O)."""
    if has_stats(pool):
        st = pool.stats()
        if isinstance(st, PoolStats):
            return Snapshot(
                gauges={
                    S.POOL_SIZE: st.pool_size,
                    S.POOL_IDLE: st.pool_idle,
                    S.POOL_IN_USE: st.pool_in_use,
                    S.REQUESTS_WAITING: st.requests_waiting,
                    S.CONNECTIONS_PENDING: st.connections_pending,
                    S.POOL_MIN: st.pool_min,
                    S.POOL_MAX: st.pool_max,
                },
                counters=dict(st.counters),
                breaker_state=st.breaker_state,
                waits=(st.wait_p50, st.wait_p95, st.wait_p99, st.wait_max),
                stats=st,
            )
    # open connections, as SmartPool counts them: idle + in use
    return Snapshot(gauges=M.plain_gauges(_call_int(pool, "checkedin"), _call_int(pool, "checkedout")))


def _call_int(pool: Any, method: str) -> int | None:
    fn = getattr(pool, method, None)
    if not callable(fn):
        return None
    try:
        value = fn()
    except NotImplementedError:
        return None
    return max(0, int(value)) if isinstance(value, int) else None


# ---------------------------------------------------------------------------- health


_trends: weakref.WeakKeyDictionary[Any, FailureTrend] = weakref.WeakKeyDictionary()
_trends_lock = threading.Lock()


def health(target: Any, *, degraded_for: float = 60.0) -> dict[str, Any]:
    """A JSON-serialisable health report of a pool (or an engine's pool) from its state alone.

    Passive: it never talks to the database, so it cannot see a server that
    hangs. ``pool.health_check()`` (and the HTTP endpoints of
    :mod:`sqlalchemy_smartpool.web`) add an active probe; both judge with
    :func:`sqlalchemy_smartpool.health.assess`. ``status`` is ``"down"`` while
    the circuit breaker is open or half-open (checkouts that need a new
    connection fail fast) or the pool is closed; ``"degraded"`` while requests
    queue for a connection, while the wait p99 is half of ``acquire_timeout`` or
    more, while connections are suspected leaks, or for ``degraded_for``
    seconds after a checkout timed out or was turned away by ``max_waiting``
    (seen as an increase since the previous ``health()`` call on the same
    pool; the first call only takes the baseline); else ``"ok"``. Pools
    without ``stats()`` report ``"ok"`` with their gauges. The report holds the
    pool's name, its class, its kind (``"sqlalchemy"`` or ``"redis"``) and
    stats -- never the URL.
    """
    pool = resolve_pool(target)
    snap = read_pool(pool)
    status, reasons = OK, list[str]()
    if snap.stats is not None:
        failures = sum(snap.counters.get(k, 0) for k in FAILURE_COUNTERS) if snap.counters else 0
        with _trends_lock:
            trend = _trends.get(pool)
            if trend is None:
                trend = _trends[pool] = FailureTrend()
            recent = trend.recent(failures, degraded_for)
        leaks = getattr(pool, "suspected_leaks", None)
        status, reasons = assess(
            snap.stats,
            acquire_timeout=getattr(getattr(pool, "config", None), "acquire_timeout", None),
            leaks=len(leaks()) if callable(leaks) else 0,
            failures_recent=recent,
            degraded_for=degraded_for,
        )
    return {
        "status": status,
        "reasons": reasons,
        "pool": pool_name(pool) or (snap.stats.name if snap.stats is not None else None),
        "pool_class": type(pool).__name__,
        "pool_kind": pool_kind(pool),
        "breaker_state": snap.breaker_state,
        "stats": snap.as_dict(),
        "checked_at": time.time(),
    }

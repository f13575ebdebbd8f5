"""The pool's measurements, once: what each one means and what every exporter calls it.

One row per exported series: its kind and unit, where it is read from in a
:class:`~.stats.PoolStats` snapshot, and its name in OpenTelemetry (per the
database client semantic conventions where they define one), Prometheus and
StatsD. The exporters in :mod:`sqlalchemy_smartpool.metrics` are driven by
this table, the dashboards in ``docs/dashboards`` are checked against it, and
``docs/metrics.md`` lists it. Every exporter reads ``stats()`` snapshots
(taken under the pool's lock), never event-derived counts, so gauges are exact
once the pool is quiet.

Neutral like the engine: plain data, no metrics library imported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from . import stats as S
from .stats import Distribution, PoolStats

GAUGE = "gauge"
COUNTER = "counter"
HISTOGRAM = "histogram"

# OpenTelemetry attribute names (semantic conventions, db registry)
POOL_NAME_ATTR = "db.client.connection.pool.name"
STATE_ATTR = "db.client.connection.state"
ERROR_TYPE_ATTR = "error.type"
TRANSITION_ATTR = "smartpool.breaker.transition"

#: Numeric encoding of the breaker state for gauges: higher is worse.
BREAKER_STATE_VALUES: dict[str, int] = {"closed": 0, "half_open": 1, "open": 2}

#: StatsD sends durations in milliseconds (its timing unit)
MS = 1000.0

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclasses.dataclass(frozen=True, eq=False)
class Measure:
    """One exported series and its name in each backend (``None``: not exported there)."""

    key: str
    kind: str
    #: UCUM unit, as OpenTelemetry spells it (``{connection}``, ``s``, ``1``)
    unit: str
    description: str
    #: where it is read from: a PoolStats attribute, a counter key, a timing key
    source: str
    otel: str | None
    #: "updowncounter", "counter", "histogram" or "gauge" (all observed at collection but histograms)
    otel_instrument: str | None = None
    otel_attributes: Mapping[str, str] = dataclasses.field(default_factory=lambda: _EMPTY)
    #: Prometheus name after the namespace (``smartpool_``); counters gain ``_total``
    prometheus: str | None = None
    prometheus_labels: Mapping[str, str] = dataclasses.field(default_factory=lambda: _EMPTY)
    #: StatsD name after the prefix (``smartpool[.redis][.<pool>].``)
    statsd: str | None = None
    #: StatsD type: "g" gauge, "c" counter (deltas between pushes), "ms" timing
    statsd_type: str | None = None
    #: multiply the value by this for StatsD (seconds -> ms)
    statsd_scale: float = 1.0
    #: the OpenTelemetry name is one of the semantic conventions' (not ours)
    semconv: bool = False

    def read(self, st: PoolStats) -> Any:
        """This measure's value in ``st``: a number, or a Distribution for histograms (None if absent)."""
        return read(self, st)


def _g(
    key: str,
    unit: str,
    description: str,
    source: str,
    otel: str | None,
    *,
    instrument: str = "updowncounter",
    attrs: Mapping[str, str] = _EMPTY,
    prom: str | None,
    labels: Mapping[str, str] = _EMPTY,
    statsd: str | None,
    statsd_type: str = "g",
    scale: float = 1.0,
    semconv: bool = False,
) -> Measure:
    return Measure(
        key, GAUGE, unit, description, source, otel, instrument if otel else None,
        MappingProxyType(dict(attrs)), prom, MappingProxyType(dict(labels)), statsd,
        statsd_type if statsd else None, scale, semconv,
    )  # fmt: skip


def _c(
    key: str,
    unit: str,
    description: str,
    source: str,
    otel: str | None,
    *,
    attrs: Mapping[str, str] = _EMPTY,
    prom: str | None,
    labels: Mapping[str, str] = _EMPTY,
    statsd: str | None,
    semconv: bool = False,
) -> Measure:
    return Measure(
        key, COUNTER, unit, description, source, otel, "counter" if otel else None,
        MappingProxyType(dict(attrs)), prom, MappingProxyType(dict(labels)), statsd,
        "c" if statsd else None, 1.0, semconv,
    )  # fmt: skip


def _error(kind: str, what: str, source: str) -> Measure:
    """One row of the errors-by-kind family: a counter of ``stats()`` under ``kind``."""
    return _c(
        f"errors.{kind}", "{error}", f"Errors by kind: {what}", source, "smartpool.connection.errors",
        attrs={ERROR_TYPE_ATTR: kind}, prom="errors", labels={"kind": kind}, statsd=None,
    )  # fmt: skip


def _h(key: str, description: str, source: str, otel: str, *, prom: str, statsd: str) -> Measure:
    return Measure(
        key, HISTOGRAM, "s", description, source, otel, "histogram", _EMPTY, prom, _EMPTY, statsd,
        "ms", MS, True,
    )  # fmt: skip


_IDLE = {STATE_ATTR: "idle"}
_USED = {STATE_ATTR: "used"}

MEASURES: tuple[Measure, ...] = (
    # -- connections by state and the pool's limits -------------------------------------
    _g("connections.idle", "{connection}", "Idle connections ready for checkout.", S.POOL_IDLE,
       "db.client.connection.count", attrs=_IDLE, prom=S.POOL_IDLE, statsd=S.POOL_IDLE, semconv=True),
    _g("connections.used", "{connection}", "Connections checked out.", S.POOL_IN_USE,
       "db.client.connection.count", attrs=_USED, prom=S.POOL_IN_USE, statsd=S.POOL_IN_USE, semconv=True),
    _g("connections.open", "{connection}",
       "Open connections: idle, checked out, and being pinged by the housekeeper.", S.POOL_SIZE,
       "smartpool.connection.open", prom=S.POOL_SIZE, statsd=S.POOL_SIZE),
    _g("pending_requests", "{request}", "Checkouts queued for a connection.", S.REQUESTS_WAITING,
       "db.client.connection.pending_requests", prom=S.REQUESTS_WAITING, statsd=S.REQUESTS_WAITING,
       semconv=True),
    _g("connects_pending", "{connection}", "Connects in flight.", S.CONNECTIONS_PENDING,
       "smartpool.connection.pending", prom=S.CONNECTIONS_PENDING, statsd=S.CONNECTIONS_PENDING),
    _g("idle.min", "{connection}",
       "Configured min_size: idle connections are never closed below it (the pool keeps min_size open).",
       S.POOL_MIN, "db.client.connection.idle.min", prom=S.POOL_MIN, statsd=S.POOL_MIN, semconv=True),
    _g("idle.max", "{connection}",
       "Most idle connections allowed: max_size (there is no separate idle cap; see pool_max).",
       S.POOL_MAX, "db.client.connection.idle.max", prom=None, statsd=None, semconv=True),
    _g("max", "{connection}", "Configured max_size: the most open connections allowed.", S.POOL_MAX,
       "db.client.connection.max", prom=S.POOL_MAX, statsd=S.POOL_MAX, semconv=True),
    _g("acquire_timeout", "s", "Configured acquire_timeout: how long a checkout may wait.",
       "acquire_timeout", "smartpool.connection.acquire_timeout", instrument="gauge",
       prom="acquire_timeout_seconds", statsd="acquire_timeout_ms", scale=MS),
    _g("breaker.state", "1", "Circuit breaker: 0 closed, 1 half_open, 2 open.", "breaker_state",
       "smartpool.breaker.state", instrument="gauge", prom="breaker_state", statsd="breaker_state"),
    _g("leaks.outstanding", "{connection}",
       "Connections held past leak_detection_threshold now (reported, not yet returned).",
       "leaks_outstanding", "smartpool.connection.leaks", prom="leaks_outstanding",
       statsd="leaks_outstanding"),
    # -- acquire-wait percentiles over the most recent 8192 checkouts (the wait ring) ----
    _g("wait.p50", "s", "Median acquire wait over the most recent checkouts (up to 8192).", "wait_p50",
       None, prom="acquire_wait_seconds", labels={"quantile": "0.5"}, statsd="acquire_wait_p50",
       statsd_type="ms", scale=MS),
    _g("wait.p95", "s", "95th percentile acquire wait over the most recent checkouts.", "wait_p95",
       None, prom="acquire_wait_seconds", labels={"quantile": "0.95"}, statsd="acquire_wait_p95",
       statsd_type="ms", scale=MS),
    _g("wait.p99", "s", "99th percentile acquire wait over the most recent checkouts.", "wait_p99",
       None, prom="acquire_wait_seconds", labels={"quantile": "0.99"}, statsd="acquire_wait_p99",
       statsd_type="ms", scale=MS),
    _g("wait.max", "s", "Longest acquire wait since the pool started.", "wait_max",
       None, prom="acquire_wait_max_seconds", statsd="acquire_wait_max", statsd_type="ms", scale=MS),
    # -- timings (histograms, bucketed as recorded: stats.TIME_BUCKETS) -------------------
    _h("wait_time", "Time a checkout took to obtain a connection (0 for an idle one).", S.WAIT_TIME,
       "db.client.connection.wait_time", prom="wait_time_seconds", statsd="wait_time"),
    _h("use_time", "Time from checkout to checkin (how long a connection was held).", S.USE_TIME,
       "db.client.connection.use_time", prom="use_time_seconds", statsd="use_time"),
    _h("create_time", "Time a new connection took to open (connect and handshake).", S.CREATE_TIME,
       "db.client.connection.create_time", prom="create_time_seconds", statsd="create_time"),
    # -- checkouts ----------------------------------------------------------------------
    _c("checkouts", "{checkout}", "Connections handed out.", S.CHECKOUTS,
       "smartpool.checkouts", prom=S.CHECKOUTS, statsd=S.CHECKOUTS),
    _c("checkouts.waited", "{checkout}", "Checkouts that had to queue.", S.CHECKOUTS_WAITED,
       "smartpool.checkouts.waited", prom=S.CHECKOUTS_WAITED, statsd=S.CHECKOUTS_WAITED),
    _c("timeouts", "{timeout}", "Checkouts that gave up after acquire_timeout.", S.TIMEOUTS,
       "db.client.connection.timeouts", prom=S.TIMEOUTS, statsd=S.TIMEOUTS, semconv=True),
    _c("rejected.queue_full", "{checkout}",
       "Checkouts refused because the wait queue was full (max_waiting).", S.REJECTED_FULL,
       None, prom=S.REJECTED_FULL, statsd=S.REJECTED_FULL),
    _c("rejected.breaker_open", "{checkout}", "Checkouts refused fast because the breaker was open.",
       S.REJECTED_BREAKER, None, prom=S.REJECTED_BREAKER, statsd=S.REJECTED_BREAKER),
    # -- errors by kind (one family; the per-kind counters above and below stay) ---------
    _error("timeout", "checkout timed out.", S.TIMEOUTS),
    _error("queue_full", "wait queue full.", S.REJECTED_FULL),
    _error("breaker_open", "refused by the open breaker.", S.REJECTED_BREAKER),
    _error("connect", "a connect attempt failed.", S.CONNECTIONS_FAILED),
    _error("validation", "a checkout validation found a dead connection.", S.VALIDATIONS_FAILED),
    # -- connection lifecycle -----------------------------------------------------------
    _c("connections.created", "{connection}", "Connections opened.", S.CONNECTIONS_CREATED,
       "smartpool.connection.created", prom=S.CONNECTIONS_CREATED, statsd=S.CONNECTIONS_CREATED),
    _c("connections.closed", "{connection}", "Connections closed by the pool.", S.CONNECTIONS_CLOSED,
       "smartpool.connection.closed", prom=S.CONNECTIONS_CLOSED, statsd=S.CONNECTIONS_CLOSED),
    _c("connections.failed", "{connection}", "Connect attempts that failed.", S.CONNECTIONS_FAILED,
       None, prom=S.CONNECTIONS_FAILED, statsd=S.CONNECTIONS_FAILED),
    _c("connections.invalidated", "{connection}", "Connections dropped as broken.",
       S.CONNECTIONS_INVALIDATED, "smartpool.connection.invalidated",
       prom=S.CONNECTIONS_INVALIDATED, statsd=S.CONNECTIONS_INVALIDATED),
    _c("connections.expired", "{connection}", "Connections retired at max_lifetime.",
       S.CONNECTIONS_EXPIRED, "smartpool.connection.expired",
       prom=S.CONNECTIONS_EXPIRED, statsd=S.CONNECTIONS_EXPIRED),
    _c("connections.idle_closed", "{connection}",
       "Idle connections above min_size closed after idle_timeout.",
       S.CONNECTIONS_IDLE_CLOSED, "smartpool.connection.idle_closed",
       prom=S.CONNECTIONS_IDLE_CLOSED, statsd=S.CONNECTIONS_IDLE_CLOSED),
    _c("connections.retired", "{connection}",
       "Connections closed by drain(), rotate_credentials(), a lowered max_size or a swapped-out pool.",
       S.CONNECTIONS_RETIRED, "smartpool.connection.retired",
       prom=S.CONNECTIONS_RETIRED, statsd=S.CONNECTIONS_RETIRED),
    # -- validations --------------------------------------------------------------------
    _c("validations", "{validation}", "Checkout validations (pings) run.", S.VALIDATIONS,
       "smartpool.validations", prom=S.VALIDATIONS, statsd=S.VALIDATIONS),
    _c("validations.failed", "{validation}", "Checkout validations that found a dead connection.",
       S.VALIDATIONS_FAILED, None, prom=S.VALIDATIONS_FAILED, statsd=S.VALIDATIONS_FAILED),
    _c("validations.skipped", "{validation}",
       "Checkouts not pinged: used within validation_interval and the socket showed nothing.",
       S.VALIDATIONS_SKIPPED, "smartpool.validations.skipped",
       prom=S.VALIDATIONS_SKIPPED, statsd=S.VALIDATIONS_SKIPPED),
    _c("keepalives", "{ping}", "Keepalive pings of idle connections.", S.KEEPALIVES,
       "smartpool.connection.keepalives", prom=S.KEEPALIVES, statsd=S.KEEPALIVES),
    # -- leaks --------------------------------------------------------------------------
    _c("leaks.suspected", "{connection}", "Checkouts held past leak_detection_threshold.",
       S.LEAKS_SUSPECTED, "smartpool.leaks.suspected", prom=S.LEAKS_SUSPECTED, statsd=S.LEAKS_SUSPECTED),
    _c("leaks.returned", "{connection}", "Suspected leaks that were returned later.", S.LEAKS_RETURNED,
       "smartpool.leaks.returned", prom=S.LEAKS_RETURNED, statsd=S.LEAKS_RETURNED),
    _c("leaks.collected", "{connection}", "Leaked connections reclaimed by the garbage collector.",
       S.LEAKS_COLLECTED, "smartpool.leaks.collected", prom=S.LEAKS_COLLECTED, statsd=S.LEAKS_COLLECTED),
    # -- breaker transitions ------------------------------------------------------------
    _c("breaker.opened", "{transition}", "Breaker transitions closed -> open (an outage began).",
       S.BREAKER_OPENED, "smartpool.breaker.transitions", attrs={TRANSITION_ATTR: "opened"},
       prom=S.BREAKER_OPENED, statsd=S.BREAKER_OPENED),
    _c("breaker.half_opened", "{transition}", "Breaker transitions open -> half_open (a probe may go).",
       S.BREAKER_HALF_OPENED, "smartpool.breaker.transitions", attrs={TRANSITION_ATTR: "half_opened"},
       prom=S.BREAKER_HALF_OPENED, statsd=S.BREAKER_HALF_OPENED),
    _c("breaker.reopened", "{transition}", "Breaker transitions half_open -> open (a probe failed).",
       S.BREAKER_REOPENED, "smartpool.breaker.transitions", attrs={TRANSITION_ATTR: "reopened"},
       prom=S.BREAKER_REOPENED, statsd=S.BREAKER_REOPENED),
    _c("breaker.closed", "{transition}", "Breaker transitions to closed (recovered, or reset by dispose()).",
       S.BREAKER_CLOSED, "smartpool.breaker.transitions", attrs={TRANSITION_ATTR: "closed"},
       prom=S.BREAKER_CLOSED, statsd=S.BREAKER_CLOSED),
    # -- the statement guard (guard.py, docs/guard.md) ------------------------------------
    _c("guard.detections", "{statement}", "Statements the statement guard flagged (any mode).",
       S.GUARD_DETECTIONS, "smartpool.guard.detections", prom=S.GUARD_DETECTIONS, statsd=S.GUARD_DETECTIONS),
    _c("guard.rejections", "{statement}", "Statements the statement guard refused to send (enforce mode).",
       S.GUARD_REJECTIONS, "smartpool.guard.rejections", prom=S.GUARD_REJECTIONS, statsd=S.GUARD_REJECTIONS),
)  # fmt: skip

#: descriptions of instruments several rows share (the semantic conventions' own words
#: for theirs); the others use their row's description
OTEL_DESCRIPTIONS: Mapping[str, str] = MappingProxyType(
    {
        "db.client.connection.count": (
            "The number of connections that are currently in state described by the `state` attribute."
        ),
        "db.client.connection.idle.max": "The maximum number of idle open connections allowed.",
        "db.client.connection.idle.min": "The minimum number of idle open connections allowed.",
        "db.client.connection.max": "The maximum number of open connections allowed.",
        "db.client.connection.pending_requests": (
            "The number of current pending requests for an open connection."
        ),
        "db.client.connection.timeouts": (
            "The number of connection timeouts that have occurred trying to obtain a connection "
            "from the pool."
        ),
        "db.client.connection.create_time": "The time it took to create a new connection.",
        "db.client.connection.wait_time": (
            "The time it took to obtain an open connection from the pool."
        ),
        "db.client.connection.use_time": (
            "The time between borrowing a connection and returning it to the pool."
        ),
        "smartpool.connection.errors": "Failed checkouts and connects, by kind (error.type).",
        "smartpool.breaker.transitions": "Circuit breaker state changes, by transition.",
    }
)

#: Prometheus HELP of families several rows share
PROMETHEUS_HELP: Mapping[str, str] = MappingProxyType(
    {
        "acquire_wait_seconds": (
            "Acquire-wait percentiles over the pool's most recent checkouts (up to 8192)."
        ),
        "errors": "Failed checkouts and connects, by kind.",
    }
)

BY_KEY: Mapping[str, Measure] = MappingProxyType({m.key: m for m in MEASURES})

#: the measures a pool without ``stats()`` (QueuePool, ...) can give: checkedin() / checkedout()
PLAIN_POOL_SOURCES: frozenset[str] = frozenset({S.POOL_IDLE, S.POOL_IN_USE, S.POOL_SIZE})


def read(m: Measure, st: PoolStats) -> Any:
    """``m``'s value in the snapshot ``st``."""
    src = m.source
    if m.kind == HISTOGRAM:
        dist: Distribution | None = st.timings.get(src)
        return dist
    if m.kind == COUNTER:
        return int(st.counters.get(src, 0))
    if src == "breaker_state":
        return BREAKER_STATE_VALUES.get(st.breaker_state, 2)
    return getattr(st, src)


def plain_gauges(idle: int | None, in_use: int | None) -> dict[str, int]:
    """The gauges of a pool without ``stats()``, by source key."""
    out: dict[str, int] = {}
    if idle is not None:
        out[S.POOL_IDLE] = idle
    if in_use is not None:
        out[S.POOL_IN_USE] = in_use
    if idle is not None and in_use is not None:
        out[S.POOL_SIZE] = idle + in_use
    return out


def prometheus_names(namespace: str = "smartpool") -> set[str]:
    """Every sample name the Prometheus collector can expose (``_total``, ``_bucket``, ... included)."""
    out: set[str] = set()
    for m in MEASURES:
        if m.prometheus is None:
            continue
        base = f"{namespace}_{m.prometheus}"
        if m.kind == COUNTER:
            out.add(f"{base}_total")
        elif m.kind == HISTOGRAM:
            out.update({f"{base}_bucket", f"{base}_sum", f"{base}_count"})
        else:
            out.add(base)
    return out


#: suffixes StatsD gets for one histogram per push: counters of the interval and its percentiles
STATSD_HISTOGRAM_PARTS: tuple[tuple[str, str], ...] = (
    ("_count", "c"),
    ("_sum_ms", "c"),
    ("_p50", "ms"),
    ("_p95", "ms"),
    ("_p99", "ms"),
)


def statsd_names() -> dict[str, str]:
    """Every StatsD metric (after the prefix) the exporter can send, with its type."""
    out: dict[str, str] = {}
    for m in MEASURES:
        if m.statsd is None or m.statsd_type is None:
            continue
        if m.kind == HISTOGRAM:
            for suffix, kind in STATSD_HISTOGRAM_PARTS:
                out[m.statsd + suffix] = kind
        else:
            out[m.statsd] = m.statsd_type
    return out


def otel_names() -> dict[str, Measure]:
    """One measure per OpenTelemetry instrument name (rows sharing a name differ by attributes)."""
    out: dict[str, Measure] = {}
    for m in MEASURES:
        if m.otel is not None:
            out.setdefault(m.otel, m)
    return out

"""A Prometheus collector that reads ``pool.stats()`` at scrape time.

No thread and nothing on the checkout path: each scrape takes one snapshot
per pool. Pools are told apart by a ``pool`` label, so several pools share
one collector (one set of metric families, as the exposition format wants);
add them with :meth:`PrometheusCollector.add`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, CollectorRegistry

from .. import stats as S
from . import BREAKER_STATE_VALUES, GAUGES, pool_kind, pool_name, read_pool, resolve_pool, sanitize

__all__ = ["COUNTER_HELP", "GAUGE_HELP", "PrometheusCollector"]

GAUGE_HELP: dict[str, str] = {
    S.POOL_SIZE: "Open connections (idle + in use + being validated).",
    S.POOL_IDLE: "Idle connections ready for checkout.",
    S.POOL_IN_USE: "Connections checked out.",
    S.REQUESTS_WAITING: "Checkouts queued for a connection.",
    S.CONNECTIONS_PENDING: "Connects in flight.",
    S.POOL_MIN: "Configured min_size.",
    S.POOL_MAX: "Configured max_size.",
}

COUNTER_HELP: dict[str, str] = {
    S.CHECKOUTS: "Connections handed out.",
    S.CHECKOUTS_WAITED: "Checkouts that had to queue.",
    S.TIMEOUTS: "Checkouts that gave up after acquire_timeout.",
    S.REJECTED_FULL: "Checkouts refused because the wait queue was full (max_waiting).",
    S.REJECTED_BREAKER: "Checkouts refused fast because the circuit breaker was open.",
    S.CONNECTIONS_CREATED: "Connections opened.",
    S.CONNECTIONS_CLOSED: "Connections closed by the pool.",
    S.CONNECTIONS_FAILED: "Connect attempts that failed.",
    S.CONNECTIONS_INVALIDATED: "Connections dropped as broken.",
    S.CONNECTIONS_EXPIRED: "Connections retired at max_lifetime.",
    S.CONNECTIONS_IDLE_CLOSED: "Idle connections above min_size closed after idle_timeout.",
    S.VALIDATIONS: "Checkout validations run.",
    S.VALIDATIONS_FAILED: "Checkout validations that failed.",
    S.VALIDATIONS_SKIPPED: "Checkout validations skipped inside the validation interval.",
    S.KEEPALIVES: "Keepalive pings of idle connections.",
    S.LEAKS_SUSPECTED: "Checkouts held past leak_detection_threshold.",
    S.LEAKS_RETURNED: "Suspected leaks that were returned later.",
    S.LEAKS_COLLECTED: "Leaked connections reclaimed by the garbage collector.",
    S.BREAKER_OPENED: "Times the circuit breaker opened.",
    S.GUARD_DETECTIONS: "Statements the statement guard flagged (any mode).",
    S.GUARD_REJECTIONS: "Statements the statement guard refused to send (enforce mode).",
    S.CONNECTIONS_RETIRED: "Connections closed by drain, credential rotation, lower max_size or a pool swap.",
}

_QUANTILES = ("0.5", "0.95", "0.99")


class PrometheusCollector:
    """Expose one or more pools' stats as Prometheus metrics, read at scrape time.

    ``pool``: a pool or an engine (an engine's current pool is read at each
    scrape, so ``engine.dispose()`` is followed; SmartPool counters restart at
    zero then, which ``rate()`` handles as a counter reset). ``name``: the
    ``pool`` label, by default the pool's ``PoolConfig.name`` /
    ``pool_logging_name``, else ``"default"`` (``"redis"`` for an unnamed Redis
    pool). A ``SmartRedisPool`` (or a ``redis.Redis`` client over one) is
    collected like a SmartPool, in the same metric families: one collector
    can expose a service's database and Redis pools side by side. Registers itself with
    ``registry`` (the global one unless given; ``None`` to skip).

    Metrics (``<namespace>_`` prefix): the gauges of
    :data:`~sqlalchemy_smartpool.metrics.GAUGES`, ``breaker_state`` (0/1/2),
    ``acquire_wait_seconds{quantile=...}`` and ``acquire_wait_max_seconds``,
    and every stats counter as ``<key>_total``. Pools without ``stats()``
    (QueuePool, ...) give ``pool_size``, ``pool_idle`` and ``pool_in_use`` only.
    """

    def __init__(
        self,
        pool: Any,
        name: str | None = None,
        *,
        namespace: str = "smartpool",
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self.namespace = sanitize(namespace)
        self._targets: list[tuple[str, Any]] = []
        self.add(pool, name)
        self._registry = registry
        if registry is not None:
            registry.register(self)

    def add(self, pool: Any, name: str | None = None) -> None:
        """Also expose ``pool`` (a pool or an engine), labelled ``name``."""
        resolved = resolve_pool(pool)
        kind = pool_kind(resolved)
        label = pool_name(resolved, name) or ("default" if kind == "sqlalchemy" else kind)
        if any(label == existing for existing, _ in self._targets):
            raise ValueError(f"a pool labelled {label!r} is already collected; pass name=")
        self._targets.append((label, pool))

    def unregister(self) -> None:
        """Remove this collector from the registry it registered with."""
        if self._registry is not None:
            self._registry.unregister(self)
            self._registry = None

    def describe(self) -> list[Metric]:
        """The metric names, so the registry can refuse a clashing collector."""
        return list(self._families().values())

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        for label, target in self._targets:
            snap = read_pool(resolve_pool(target))
            for key, value in snap.gauges.items():
                families[key].add_metric([label], value)
            if snap.breaker_state is not None:
                families["breaker_state"].add_metric([label], BREAKER_STATE_VALUES.get(snap.breaker_state, 2))
            if snap.waits is not None:
                wait_family = families["acquire_wait_seconds"]
                for q, seconds in zip(_QUANTILES, snap.waits[:3], strict=True):
                    wait_family.add_metric([label, q], seconds)
                families["acquire_wait_max_seconds"].add_metric([label], snap.waits[3])
            if snap.counters is not None:
                for key, value in snap.counters.items():
                    if key in families:
                        families[key].add_metric([label], value)
        for family in families.values():
            if family.samples:
                yield family

    def _families(self) -> dict[str, Any]:
        ns = self.namespace
        out: dict[str, Any] = {}
        for key in GAUGES:
            out[key] = GaugeMetricFamily(f"{ns}_{key}", GAUGE_HELP[key], labels=["pool"])
        out["breaker_state"] = GaugeMetricFamily(
            f"{ns}_breaker_state", "Circuit breaker: 0 closed, 1 half_open, 2 open.", labels=["pool"]
        )
        out["acquire_wait_seconds"] = GaugeMetricFamily(
            f"{ns}_acquire_wait_seconds",
            "Acquire-wait percentiles over the pool's most recent checkouts (up to 8192).",
            labels=["pool", "quantile"],
        )
        out["acquire_wait_max_seconds"] = GaugeMetricFamily(
            f"{ns}_acquire_wait_max_seconds", "Longest acquire wait since the pool started.", labels=["pool"]
        )
        for key in S.COUNTERS:
            out[key] = CounterMetricFamily(f"{ns}_{key}", COUNTER_HELP[key], labels=["pool"])
        return out

"""A Prometheus collector that reads ``pool.stats()`` at scrape time.

No thread and nothing on the checkout path: each scrape takes one snapshot
per pool. Pools are told apart by a ``pool`` label, so several pools share
one collector (one set of metric families, as the exposition format wants);
add them with :meth:`PrometheusCollector.add`. The families and their names
come from :data:`sqlalchemy_smartpool.measures.MEASURES`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import REGISTRY, CollectorRegistry

from .. import measures as M
from . import pool_label, read_pool, resolve_pool, sanitize

__all__ = ["COUNTER_HELP", "GAUGE_HELP", "PrometheusCollector"]

#: HELP text by Prometheus name (after the namespace), from the measures table
GAUGE_HELP: dict[str, str] = {}
COUNTER_HELP: dict[str, str] = {}
_LABELS: dict[str, tuple[str, ...]] = {}
for _m in M.MEASURES:
    if _m.prometheus is None:
        continue
    _help = M.PROMETHEUS_HELP.get(_m.prometheus, _m.description)
    (COUNTER_HELP if _m.kind == M.COUNTER else GAUGE_HELP).setdefault(_m.prometheus, _help)
    _LABELS.setdefault(_m.prometheus, ("pool", *sorted(_m.prometheus_labels)))
del _m, _help


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

    Metrics (``<namespace>_`` prefix): every row of the measures table with a
    Prometheus name -- gauges, counters as ``<name>_total``, and the wait / use /
    create time histograms as ``<name>_seconds_bucket`` / ``_sum`` / ``_count``
    (docs/metrics.md lists them). Pools without ``stats()`` (QueuePool, ...)
    give ``pool_size``, ``pool_idle`` and ``pool_in_use`` only.
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
        label = pool_label(resolve_pool(pool), name)
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
            st = snap.stats
            if st is None:  # a plain SQLAlchemy pool: the gauges its API gives
                for m in M.MEASURES:
                    if m.prometheus is not None and m.source in snap.gauges and m.kind == M.GAUGE:
                        families[m.prometheus].add_metric([label], snap.gauges[m.source])
                continue
            for m in M.MEASURES:
                if m.prometheus is None:
                    continue
                value = m.read(st)
                if value is None:
                    continue
                labels = [label, *(m.prometheus_labels[k] for k in sorted(m.prometheus_labels))]
                if m.kind == M.HISTOGRAM:
                    cumulative = value.cumulative()
                    buckets = [(_le(b), float(c)) for b, c in zip(value.bounds, cumulative, strict=False)]
                    buckets.append(("+Inf", float(cumulative[-1])))
                    families[m.prometheus].add_metric(labels, buckets, value.sum)
                else:
                    families[m.prometheus].add_metric(labels, value)
        for family in families.values():
            if family.samples:
                yield family

    def _families(self) -> dict[str, Any]:
        ns = self.namespace
        out: dict[str, Any] = {}
        for m in M.MEASURES:
            key = m.prometheus
            if key is None or key in out:
                continue
            labels = list(_LABELS[key])
            if m.kind == M.COUNTER:
                out[key] = CounterMetricFamily(f"{ns}_{key}", COUNTER_HELP[key], labels=labels)
            elif m.kind == M.HISTOGRAM:
                out[key] = HistogramMetricFamily(f"{ns}_{key}", GAUGE_HELP[key], labels=labels)
            else:
                out[key] = GaugeMetricFamily(f"{ns}_{key}", GAUGE_HELP[key], labels=labels)
        return out


def _le(bound: float) -> str:
    """A bucket bound as Prometheus clients print it (``0.005``, ``1.0``)."""
    return repr(float(bound))

"""One set of measurements, four readers: StatsD, Prometheus, OpenTelemetry and stats() agree.

16 threads of load on a real PostgreSQL pool (with provoked timeouts), then,
once the pool is quiet, what each backend received -- real UDP datagrams
parsed by a StatsD listener, a scrape of a ``prometheus_client`` registry, the
OpenTelemetry SDK's in-memory reader -- is compared with ``pool.stats()`` and
with the load's own counts. Gauges must be exact (no off-by-one around
checkin), counters and histogram counts too.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import sqlalchemy as sa

from sqlalchemy_smartpool import PoolTimeout, SmartPool
from sqlalchemy_smartpool import measures as M
from sqlalchemy_smartpool import stats as S
from sqlalchemy_smartpool.metrics import OpenTelemetryMetrics, PrometheusCollector, StatsdMetrics

from .conftest import EngineFactory, pg_url, wait_until
from .test_metrics import StatsdServer

pytestmark = pytest.mark.integration

prometheus_client = pytest.importorskip("prometheus_client")
sdk_metrics = pytest.importorskip("opentelemetry.sdk.metrics")
sdk_export = pytest.importorskip("opentelemetry.sdk.metrics.export")

THREADS = 16
ROUNDS = 40
MAX_SIZE = 4
TIMEOUT = 0.3
NAME = "consistency"


class Backends:
    """The three exporters on one engine, each with its own receiver."""

    def __init__(self, engine: sa.Engine, server: StatsdServer) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.prom = PrometheusCollector(engine, registry=self.registry)
        self.reader = sdk_export.InMemoryMetricReader()
        self.provider = sdk_metrics.MeterProvider(metric_readers=[self.reader])
        self.otel = OpenTelemetryMetrics(engine, meter_provider=self.provider)
        # a long interval: the test flushes when it wants the numbers
        self.statsd = StatsdMetrics(engine, port=server.port, gauge_interval=3600)
        self.server = server

    def prometheus(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        out = {}
        for family in self.registry.collect():
            for sample in family.samples:
                labels = dict(sample.labels)
                assert labels.pop("pool") == NAME
                out[(sample.name, frozenset(labels.items()))] = sample.value
        return out

    def opentelemetry(self) -> dict[str, list[Any]]:
        data = self.reader.get_metrics_data()
        out: dict[str, list[Any]] = {}
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    out[metric.name] = list(metric.data.data_points)
        return out

    def close(self) -> None:
        self.statsd.close()
        self.otel.close()
        self.prom.unregister()
        self.provider.shutdown()


@pytest.fixture
def statsd_server() -> Iterator[StatsdServer]:
    server = StatsdServer()
    yield server
    server.close()


def _otel_value(points: list[Any], attrs: Mapping[str, str] | None = None) -> Any:
    """The one data point with these attributes (besides the pool's name)."""
    matching = [p for p in points if all(p.attributes.get(k) == v for k, v in (attrs or {}).items())]
    assert len(matching) == 1, (attrs, points)
    return matching[0]


def test_statsd_prometheus_otel_and_stats_agree_after_16_threads(
    make_engine: EngineFactory, app_name: str, statsd_server: StatsdServer
) -> None:
    engine = make_engine(
        pg_url(app_name),
        poolclass=SmartPool,
        min_size=2,
        max_size=MAX_SIZE,
        acquire_timeout=TIMEOUT,
        name=NAME,
    )
    pool: Any = engine.pool
    backends = Backends(engine, statsd_server)
    try:
        done = 0
        timeouts = 0
        lock = threading.Lock()
        start = threading.Barrier(THREADS)

        def load(i: int) -> None:
            nonlocal done, timeouts
            start.wait()
            for r in range(ROUNDS):
                try:
                    with engine.connect() as conn:
                        # every 8th request holds on: queues form, waits and long holds get recorded
                        conn.exec_driver_sql("SELECT pg_sleep(0.005)" if (i + r) % 8 == 0 else "SELECT 1")
                    with lock:
                        done += 1
                except PoolTimeout:
                    with lock:
                        timeouts += 1

        threads = [threading.Thread(target=load, args=(i,)) for i in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
            assert not t.is_alive(), "a load thread hung"

        # provoke timeouts on purpose: every connection held, 16 more callers give up
        held = [pool.connect() for _ in range(MAX_SIZE)]
        provoked = 0

        def give_up() -> None:
            nonlocal provoked
            try:
                pool.connect().close()
            except PoolTimeout:
                with lock:
                    provoked += 1

        waiters = [threading.Thread(target=give_up) for _ in range(THREADS)]
        for t in waiters:
            t.start()
        for t in waiters:
            t.join(timeout=30)
        assert provoked == THREADS
        # quiet with connections held: the in-use gauge must say exactly how many
        for k in range(MAX_SIZE, 0, -1):
            _check_gauges(pool, backends, expect_in_use=k)
            held.pop().close()  # checkin done when close() returns: the gauge follows at once
        assert wait_until(lambda: pool.stats().connections_pending == 0, timeout=10)
        st = _check_gauges(pool, backends, expect_in_use=0)

        # the load's own counts
        assert st.checkouts == done + MAX_SIZE
        assert st.timeouts == timeouts + provoked
        _check_counters_and_histograms(st, backends)
    finally:
        backends.close()


def _check_gauges(pool: Any, b: Backends, *, expect_in_use: int) -> S.PoolStats:
    """Every backend's gauges equal stats() exactly, and stats() says ``expect_in_use``."""
    st: S.PoolStats = pool.stats()
    assert st.pool_in_use == expect_in_use
    assert st.requests_waiting == 0
    prom = b.prometheus()
    otel = b.opentelemetry()
    b.statsd.flush()
    b.server.sync()
    for m in M.MEASURES:
        if m.kind != M.GAUGE or m.source.startswith("wait_"):  # percentiles are no pool state
            continue
        expected = m.read(st)
        if m.prometheus is not None:
            key = (f"smartpool_{m.prometheus}", frozenset(m.prometheus_labels.items()))
            assert prom[key] == expected, m.key
        if m.otel is not None:
            point = _otel_value(otel[m.otel], m.otel_attributes)
            assert point.value == expected, m.key
        if m.statsd is not None:
            assert b.server.gauge(f"smartpool.{NAME}.{m.statsd}") == expected * m.statsd_scale, m.key
    return st


def _check_counters_and_histograms(st: S.PoolStats, b: Backends) -> None:
    prom = b.prometheus()
    otel = b.opentelemetry()
    b.statsd.flush()
    b.server.sync()
    for m in M.MEASURES:
        if m.kind == M.COUNTER:
            expected = m.read(st)
            if m.prometheus is not None:
                key = (f"smartpool_{m.prometheus}_total", frozenset(m.prometheus_labels.items()))
                assert prom[key] == expected, m.key
            if m.otel is not None:
                assert _otel_value(otel[m.otel], m.otel_attributes).value == expected, m.key
            if m.statsd is not None:  # the sum of every delta pushed since the exporter attached
                assert b.server.counter(f"smartpool.{NAME}.{m.statsd}") == expected, m.key
        elif m.kind == M.HISTOGRAM:
            dist = st.timings[m.source]
            assert dist.count == (st.connections_created if m.source == S.CREATE_TIME else st.checkouts)
            cumulative = dist.cumulative()
            base = f"smartpool_{m.prometheus}"
            assert prom[(f"{base}_count", frozenset())] == dist.count, m.key
            assert math.isclose(prom[(f"{base}_sum", frozenset())], dist.sum, rel_tol=1e-9), m.key
            for bound, c in zip(dist.bounds, cumulative, strict=False):
                assert prom[(f"{base}_bucket", frozenset({("le", repr(float(bound)))}))] == c, m.key
            point = _otel_value(otel[m.otel])
            assert point.count == dist.count, m.key
            assert list(point.explicit_bounds) == list(dist.bounds), m.key
            assert list(point.bucket_counts) == list(dist.counts), m.key
            assert math.isclose(point.sum, dist.sum, rel_tol=1e-6, abs_tol=1e-9), m.key
            name = f"smartpool.{NAME}.{m.statsd}"
            assert b.server.counter(f"{name}_count") == dist.count, m.key
            sent = b.server.counter(f"{name}_sum_ms")
            assert math.isclose(sent, dist.sum * 1000, rel_tol=1e-3, abs_tol=0.01), m.key
    assert st.timings[S.USE_TIME].quantile(0.99) >= 0.005 * 0.5, "the pg_sleep holds are in the use times"
    backlog = _otel_value(b.opentelemetry()["smartpool.otel.replay_backlog"])
    assert backlog.value == 0

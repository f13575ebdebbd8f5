"""health(), PrometheusCollector and StatsdMetrics read a SmartRedisPool (or a redis client
over one) as they read a SmartPool; StatsD names it ``smartpool.redis.<name>.*``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from sqlalchemy_smartpool import SmartPool, SmartRedisPool
from sqlalchemy_smartpool.metrics import GAUGES, StatsdMetrics, health

from ._services import HOST, REDIS_PORT, require_redis

pytestmark = pytest.mark.integration


class RecordingStatsd:
    """The statsd client API, recorded."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, float]] = []

    def gauge(self, name: str, value: float) -> None:
        self.sent.append(("g", name, value))

    def incr(self, name: str, n: int = 1) -> None:
        self.sent.append(("c", name, n))

    def timing(self, name: str, ms: float) -> None:
        self.sent.append(("ms", name, ms))

    def names(self) -> set[str]:
        return {name for _, name, _ in self.sent}


@pytest.fixture
def name() -> str:
    return f"sp-m-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def rpool(name: str) -> Iterator[SmartRedisPool]:
    require_redis()
    pool = SmartRedisPool(
        host=HOST, port=REDIS_PORT, db=15, client_name=name, name=name, min_size=1, max_size=3
    )
    yield pool
    pool.close()


def traffic(pool: SmartRedisPool, n: int) -> None:
    r = redis.Redis(connection_pool=pool)
    for _ in range(n):
        assert r.ping() is True


def test_health_reads_a_redis_pool_and_a_client_over_one(rpool: SmartRedisPool, name: str) -> None:
    traffic(rpool, 3)
    report = health(rpool)
    assert report["status"] == "ok" and report["pool"] == name
    assert report["pool_class"] == "SmartRedisPool" and report["pool_kind"] == "redis"
    assert report["stats"]["checkouts"] == 3
    via_client = health(redis.Redis(connection_pool=rpool))
    assert via_client["pool"] == name and via_client["status"] == "ok"


def test_sqlalchemy_health_keeps_its_shape(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'h.db'}", poolclass=SmartPool, min_size=1, name="db")
    try:
        with engine.connect():
            pass
        report = health(engine)
        assert report["pool"] == "db" and report["pool_kind"] == "sqlalchemy" and report["status"] == "ok"
    finally:
        engine.dispose()


def test_prometheus_collects_a_redis_pool_beside_a_smartpool(
    rpool: SmartRedisPool, name: str, tmp_path: Path
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from sqlalchemy_smartpool.metrics import PrometheusCollector

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'p.db'}", poolclass=SmartPool, min_size=1, name="db")
    registry = CollectorRegistry()
    try:
        collector = PrometheusCollector(engine, registry=registry)
        collector.add(rpool)
        unnamed = SmartRedisPool(host=HOST, port=REDIS_PORT, db=15)
        try:
            collector.add(unnamed)  # labelled as its log lines name it: redis-<host>:<port>/<db>
        finally:
            unnamed.close()
        with engine.connect():
            pass
        traffic(rpool, 4)
        st = rpool.stats()
        got = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in registry.collect()
            for s in metric.samples
        }
        mine = (("pool", name),)
        assert got[("smartpool_checkouts_total", mine)] == st.checkouts == 4
        for key in GAUGES:
            assert got[(f"smartpool_{key}", mine)] == getattr(st, key), key
        assert got[("smartpool_breaker_state", mine)] == 0
        assert got[("smartpool_checkouts_total", (("pool", "db"),))] == 1  # SQLAlchemy names unchanged
        assert ("smartpool_pool_size", (("pool", f"redis-{HOST}:{REDIS_PORT}/15"),)) in got
        assert b"password" not in generate_latest(registry)
    finally:
        engine.dispose()


def test_statsd_names_a_redis_pool_smartpool_redis_name(rpool: SmartRedisPool, name: str) -> None:
    client = RecordingStatsd()
    with StatsdMetrics(rpool, client, gauge_interval=60) as m:
        assert m.prefix == f"smartpool.redis.{name.replace('-', '_')}" and not m.events
        traffic(rpool, 2)
    p = m.prefix
    assert {f"{p}.pool_size", f"{p}.pool_max", f"{p}.breaker_state", f"{p}.checkouts"} <= client.names()
    assert sum(v for k, n, v in client.sent if k == "c" and n == f"{p}.checkouts") == 2
    client2 = RecordingStatsd()
    with StatsdMetrics(redis.Redis(connection_pool=rpool), client2, gauge_interval=60, name="cache") as m2:
        assert m2.prefix == "smartpool.redis.cache"
    with pytest.raises(ValueError, match="stats mode only"):
        StatsdMetrics(rpool, client, events=True)


def test_metrics_refuse_what_is_no_pool() -> None:
    bad: Any = object()
    with pytest.raises(TypeError, match="got object"):
        health(bad)

"""The Redis pools measure and profile as SmartPool does: timings, listeners, top holders, OpenTelemetry."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio

from sqlalchemy_smartpool import AsyncSmartRedisPool, SmartRedisPool
from sqlalchemy_smartpool import stats as S
from sqlalchemy_smartpool.profiling import CheckoutTiming

from ._services import HOST, REDIS_PORT, require_redis

pytestmark = pytest.mark.integration

sdk_metrics = pytest.importorskip("opentelemetry.sdk.metrics")
sdk_export = pytest.importorskip("opentelemetry.sdk.metrics.export")

HERE = Path(__file__).name


@pytest.fixture
def name() -> str:
    return f"sp-prof-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def rpool(name: str) -> Iterator[SmartRedisPool]:
    require_redis()
    pool = SmartRedisPool(
        host=HOST, port=REDIS_PORT, db=15, client_name=name, name=name, max_size=3, holder_sample_every=1
    )
    yield pool
    pool.close()


def pings(pool: SmartRedisPool, n: int) -> None:
    r = redis.Redis(connection_pool=pool)
    for _ in range(n):
        assert r.ping() is True


def test_sync_pool_timings_listeners_and_holders(rpool: SmartRedisPool) -> None:
    got: list[CheckoutTiming] = []
    rpool.add_checkout_listener(got.append, location=True)
    pings(rpool, 5)
    st = rpool.stats()
    assert st.timings[S.USE_TIME].count == st.checkouts == 5
    assert st.timings[S.CREATE_TIME].count == st.connections_created
    assert len(got) == 5 and all(t.location and "pings" in t.location and HERE in t.location for t in got)
    top = rpool.top_holders()
    assert top and "pings" in top[0].location and top[0].count == 5
    rpool.reset()  # a fresh engine keeps the listeners
    pings(rpool, 2)
    assert len(got) == 7
    assert rpool.remove_checkout_listener(got.append)


def test_sync_pool_through_opentelemetry(rpool: SmartRedisPool, name: str) -> None:
    from sqlalchemy_smartpool.metrics import OpenTelemetryMetrics

    reader = sdk_export.InMemoryMetricReader()
    provider = sdk_metrics.MeterProvider(metric_readers=[reader])
    try:
        OpenTelemetryMetrics(rpool, meter_provider=provider)
        pings(rpool, 4)
        data = reader.get_metrics_data()
        metrics = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
        use = metrics["db.client.connection.use_time"].data.data_points[0]
        assert use.count == 4 and use.attributes["db.client.connection.pool.name"] == name
    finally:
        provider.shutdown()


def test_async_pool_holders_point_at_the_coroutine(name: str) -> None:
    require_redis()

    async def run() -> tuple[list[CheckoutTiming], list[str]]:
        pool = AsyncSmartRedisPool(
            host=HOST, port=REDIS_PORT, db=15, client_name=name, name=name, max_size=2, holder_sample_every=1
        )
        got: list[CheckoutTiming] = []
        pool.add_checkout_listener(got.append, location=True)
        r = redis.asyncio.Redis(connection_pool=pool)
        try:
            for _ in range(3):
                assert await r.ping() is True
            return got, [h.location for h in pool.top_holders()]
        finally:
            await pool.aclose()

    got, holders = asyncio.run(run())
    assert len(got) == 3 and all(t.location and "run" in t.location for t in got)
    assert holders and HERE in holders[0]

"""Per-checkout cost, SmartPool vs QueuePool vs psycopg_pool, as pytest-benchmark groups.

Compare within a group (``--benchmark-group-by=group``, the default): the
``checkout`` group is the pool's bare overhead, ``context-manager`` adds
SQLAlchemy's Connection, ``validated`` is a checkout that must be known good.
``smartpool bench overhead`` measures the same with interleaved rounds.
"""

from __future__ import annotations

from typing import Any

import pytest


def _checkout(engine: Any) -> None:
    engine.pool.connect().close()


def _with_connect(engine: Any) -> None:
    with engine.connect():
        pass


@pytest.mark.benchmark(group="checkout")
def test_checkout_smartpool(benchmark: Any, smartpool_engine: Any) -> None:
    benchmark(_checkout, smartpool_engine)
    assert smartpool_engine.pool.stats().pool_in_use == 0


@pytest.mark.benchmark(group="checkout")
def test_checkout_queuepool(benchmark: Any, queuepool_engine: Any) -> None:
    benchmark(_checkout, queuepool_engine)
    assert queuepool_engine.pool.checkedout() == 0


@pytest.mark.benchmark(group="checkout")
def test_checkout_psycopg_pool(benchmark: Any, pg_pool: Any) -> None:
    benchmark(lambda: pg_pool.putconn(pg_pool.getconn()))


@pytest.mark.benchmark(group="context-manager")
def test_connect_smartpool(benchmark: Any, smartpool_engine: Any) -> None:
    benchmark(_with_connect, smartpool_engine)


@pytest.mark.benchmark(group="context-manager")
def test_connect_queuepool(benchmark: Any, queuepool_engine: Any) -> None:
    benchmark(_with_connect, queuepool_engine)


@pytest.mark.benchmark(group="context-manager")
def test_connection_psycopg_pool(benchmark: Any, pg_pool: Any) -> None:
    def body() -> None:
        with pg_pool.connection():
            pass

    benchmark(body)


@pytest.mark.benchmark(group="validated")
def test_validated_smartpool_bypass_window(benchmark: Any, smartpool_engine: Any) -> None:
    before = smartpool_engine.pool.stats().validations
    benchmark(_checkout, smartpool_engine)
    # a busy pool never pings: the bypass window is what makes it cheap
    assert smartpool_engine.pool.stats().validations - before <= 2


@pytest.mark.benchmark(group="validated")
def test_validated_smartpool_every_checkout(benchmark: Any, smartpool_always_validate: Any) -> None:
    before = smartpool_always_validate.pool.stats().validations
    benchmark(_checkout, smartpool_always_validate)
    assert smartpool_always_validate.pool.stats().validations > before


@pytest.mark.benchmark(group="validated")
def test_validated_queuepool_pre_ping(benchmark: Any, queuepool_pre_ping: Any) -> None:
    benchmark(_checkout, queuepool_pre_ping)

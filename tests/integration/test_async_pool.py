"""AsyncSmartPool on the real servers, for every asyncio driver.

asyncpg, psycopg 3 (async), aiomysql and aiosqlite (a file database): queries
and transactions, FIFO hand-off and growth under load, prewarm, idle shrink,
jittered lifetimes, validation of killed connections, the breaker on a dead
port, outage and recovery through :class:`FaultProxy`, leak reports naming the
asyncio task, and the refusal of a second event loop. PostgreSQL counts are
checked on the server (``pg_stat_activity`` by the test's application_name).

Every wait on the pool or the server polls a condition with a bound; no test
sleeps a guessed amount and then asserts that something (did not) happen.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from sqlalchemy_smartpool import CircuitBreakerConfig, CircuitOpenError, PoolTimeout
from sqlalchemy_smartpool.errors import WrongEventLoop
from sqlalchemy_smartpool.testing import FaultMode, FaultProxy

from ._async import (
    ASYNC_DRIVERS,
    PG_DRIVERS,
    SERVER_DRIVERS,
    AsyncBackend,
    AsyncEngineFactory,
    async_backend,
    async_engines,
    pg_async_url,
    pool_of,
    session_id,
    until,
)
from ._services import HOST
from .conftest import MyAdmin, PgAdmin

pytestmark = pytest.mark.integration


@pytest.fixture(params=ASYNC_DRIVERS)
def abackend(request: pytest.FixtureRequest, tmp_path: Path, app_name: str) -> AsyncBackend:
    return async_backend(request.param, tmp_path, app_name)


@pytest.fixture(params=SERVER_DRIVERS)
def server_backend(request: pytest.FixtureRequest, tmp_path: Path, app_name: str) -> AsyncBackend:
    return async_backend(request.param, tmp_path, app_name)


@pytest.fixture
def make_async(app_name: str) -> Iterator[AsyncEngineFactory]:
    with async_engines(app_name) as factory:
        yield factory


def server_count(backend: AsyncBackend, request: pytest.FixtureRequest) -> int | None:
    """Backends tagged with this test's application_name (PostgreSQL only; else None)."""
    if backend.kind != "postgresql":
        return None
    admin: PgAdmin = request.getfixturevalue("pg_admin")
    return admin.count(backend.app)


def server_admin(backend: AsyncBackend, request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("pg_admin" if backend.kind == "postgresql" else "my_admin")


def kill_sessions(backend: AsyncBackend, request: pytest.FixtureRequest, ids: set[int]) -> None:
    admin = server_admin(backend, request)
    if backend.kind == "postgresql":
        for pid in ids:
            admin.query("SELECT pg_terminate_backend(%s)", pid)
    else:
        my: MyAdmin = admin
        my.kill(ids)


async def matches_server(pool: Any, backend: AsyncBackend, request: pytest.FixtureRequest) -> str:
    """Wait (bounded) until the pool's open connections equal the server's count of them."""
    last = ""

    def same() -> bool:
        nonlocal last
        st = pool.stats()
        count = server_count(backend, request)
        last = f"pool size={st.pool_size} pending={st.connections_pending} server={count}"
        return st.connections_pending == 0 and (count is None or count == st.pool_size)

    assert await until(same, timeout=10), last
    return last


async def hold_at_once(engine: Any, backend: AsyncBackend, n: int, keep: list[Any]) -> set[int]:
    """Session ids of ``n`` connections checked out at the same time (so all distinct)."""
    conns = [await engine.connect() for _ in range(n)]
    try:
        ids = {await session_id(backend, c, keep) for c in conns}
    finally:
        for c in conns:
            await c.close()
    assert len(ids) == n
    return ids


def free_port() -> int:
    """A local TCP port nothing listens on (bound once, then released)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
    return port


# ----------------------------------------------------------------------------- basics


def test_queries_and_transactions(
    abackend: AsyncBackend, make_async: AsyncEngineFactory, table_name: str
) -> None:
    async def scenario() -> None:
        engine = make_async(abackend.url, driver=abackend.driver, min_size=1, max_size=3)
        pool = pool_of(engine)
        t = table_name
        try:
            async with engine.connect() as conn:
                assert (await conn.exec_driver_sql("SELECT 1")).scalar_one() == 1
                assert (await conn.execute(sa.select(sa.literal("smartpool")))).scalar_one() == "smartpool"
            async with engine.begin() as conn:
                await conn.exec_driver_sql(f"CREATE TABLE {t} (id INTEGER PRIMARY KEY, note VARCHAR(20))")
            try:
                async with engine.begin() as conn:
                    await conn.exec_driver_sql(f"INSERT INTO {t} (id, note) VALUES (1, 'kept')")
                with pytest.raises(RuntimeError, match="roll me back"):
                    async with engine.begin() as conn:
                        await conn.exec_driver_sql(f"INSERT INTO {t} (id, note) VALUES (2, 'dropped')")
                        raise RuntimeError("roll me back")
                # returned mid-transaction, never committed: rolled back on return
                async with engine.connect() as conn:
                    await conn.exec_driver_sql(f"INSERT INTO {t} (id, note) VALUES (3, 'uncommitted')")
                async with engine.connect() as conn:
                    rows = (await conn.exec_driver_sql(f"SELECT id FROM {t} ORDER BY id")).scalars().all()
                assert list(rows) == [1]
            finally:
                async with engine.begin() as conn:
                    await conn.exec_driver_sql(f"DROP TABLE IF EXISTS {t}")
            assert await until(lambda: pool.stats().pool_in_use <= 1)
            pool._core.check_invariants()
        finally:
            await engine.dispose()

    asyncio.run(scenario())


def test_fifo_handoff_and_growth_under_load(
    abackend: AsyncBackend, make_async: AsyncEngineFactory, request: pytest.FixtureRequest
) -> None:
    """50 tasks on max_size 5: every one is served, in (nearly) the order they asked,
    the pool grows to max_size and never past it, and matches the server afterwards."""
    n, max_size = 50, 5

    async def scenario() -> None:
        engine = make_async(
            abackend.url, driver=abackend.driver, min_size=2, max_size=max_size, acquire_timeout=30
        )
        pool = pool_of(engine)
        try:
            await pool.wait(timeout=15)
            assert pool.stats().pool_size == 2
            served: list[int] = []
            waited: dict[int, float] = {}
            peak = 0

            async def worker(i: int) -> None:
                nonlocal peak
                t0 = time.monotonic()
                async with engine.connect() as conn:
                    waited[i] = time.monotonic() - t0
                    served.append(i)
                    st = pool.stats()
                    peak = max(peak, st.pool_size)
                    assert st.pool_size + st.connections_pending <= max_size, st
                    assert (await conn.exec_driver_sql("SELECT 1")).scalar_one() == 1
                    await asyncio.sleep(0.005)

            tasks = [asyncio.create_task(worker(i), name=f"fifo-{i}") for i in range(n)]
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)

            assert sorted(served) == list(range(n))
            displacement = max(abs(pos - i) for pos, i in enumerate(served))
            assert displacement <= max_size, f"served out of order: {served}"
            # (order, not wall-clock waits: on a loaded machine a task served at once can
            # still be descheduled for longer than a queued one waits)
            assert len(waited) == n
            assert peak == max_size, f"grew only to {peak}"
            stats = pool.stats()
            assert stats.pool_in_use == 0 and stats.requests_waiting == 0
            assert stats.counters["checkouts"] == n
            assert stats.counters["timeouts"] == 0
            assert stats.counters["connections_created"] == max_size
            pool._core.check_invariants()
            await matches_server(pool, abackend, request)
        finally:
            await engine.dispose()

    asyncio.run(scenario())


def test_prewarm_growth_and_idle_shrink(
    abackend: AsyncBackend, make_async: AsyncEngineFactory, request: pytest.FixtureRequest
) -> None:
    async def scenario() -> None:
        engine = make_async(
            abackend.url,
            driver=abackend.driver,
            min_size=2,
            max_size=6,
            idle_timeout=0.5,
            housekeeping_interval=0.1,
        )
        pool = pool_of(engine)
        try:
            await pool.wait(timeout=15)
            assert pool.stats().pool_size == 2
            assert (await matches_server(pool, abackend, request)).startswith("pool size=2")

            release = asyncio.Event()
            entered = 0

            async def holder() -> None:
                nonlocal entered
                async with engine.connect() as conn:
                    await conn.exec_driver_sql("SELECT 1")
                    entered += 1
                    await release.wait()

            tasks = [asyncio.create_task(holder(), name=f"holder-{i}") for i in range(6)]
            assert await until(lambda: entered == 6, timeout=15), pool.status()
            assert pool.stats().pool_size == 6
            await matches_server(pool, abackend, request)
            release.set()
            await asyncio.gather(*tasks)

            assert await until(lambda: pool.stats().pool_size == 2, timeout=10), pool.status()
            await matches_server(pool, abackend, request)
            assert pool.stats().counters["connections_idle_closed"] == 4
            pool._core.check_invariants()
        finally:
            await engine.dispose()

    asyncio.run(scenario())


def test_jittered_lifetime_retires_connections(
    abackend: AsyncBackend, make_async: AsyncEngineFactory, request: pytest.FixtureRequest
) -> None:
    """max_lifetime 1 s with 30 % jitter: every first-generation connection is retired
    (closed on the server too), each at its own drawn age, and the pool stays at min_size."""
    keep: list[Any] = []

    async def scenario() -> None:
        engine = make_async(
            abackend.url,
            driver=abackend.driver,
            min_size=2,
            max_size=4,
            max_lifetime=1.0,
            lifetime_jitter=0.3,
            housekeeping_interval=0.1,
        )
        pool = pool_of(engine)
        try:
            await pool.wait(timeout=15)
            lives = [s.expires_at - s.created_at for s in pool._core.idle]
            assert len(lives) == 2 and all(0.7 - 1e-6 <= life <= 1.0 for life in lives), lives
            assert lives[0] != lives[1], "lifetimes are not jittered"
            first = await hold_at_once(engine, abackend, 2, keep)
            t0 = time.monotonic()
            seen: set[int] = set()
            # keep the pool busy, lightly, until both first-generation connections are gone
            while pool.stats().counters["connections_expired"] < 2 or not seen - first:
                assert time.monotonic() - t0 < 10, pool.status()
                async with engine.connect() as conn:
                    seen.add(await session_id(abackend, conn, keep))
                await asyncio.sleep(0.02)
            assert seen - first, "no replacement connection was ever handed out"
            if abackend.has_server:
                admin = server_admin(abackend, request)
                assert await until(lambda: not admin.alive(first), timeout=10), "retired sessions linger"
            assert await until(lambda: pool.stats().pool_size >= 2, timeout=10), pool.status()
            await matches_server(pool, abackend, request)
            pool._core.check_invariants()
        finally:
            await engine.dispose()

    asyncio.run(scenario())


# ------------------------------------------------------------------------ validation


def test_validation_interval_zero_pings_every_checkout(
    abackend: AsyncBackend, make_async: AsyncEngineFactory
) -> None:
    async def scenario() -> None:
        engine = make_async(
            abackend.url, driver=abackend.driver, min_size=1, max_size=2, validation_interval=0
        )
        pool = pool_of(engine)
        try:
            await pool.wait(timeout=15)
            before = pool.stats().counters["validations"]
            for _ in range(10):
                async with engine.connect() as conn:
                    assert (await conn.exec_driver_sql("SELECT 1")).scalar_one() == 1
            assert pool.stats().counters["validations"] - before == 10
            assert pool.stats().counters["validations_failed"] == 0
        finally:
            await engine.dispose()

    asyncio.run(scenario())


@pytest.mark.parametrize("interval", [0.0, 60.0], ids=["ping-always", "liveness-look"])
def test_killed_idle_connections_are_replaced(
    server_backend: AsyncBackend,
    make_async: AsyncEngineFactory,
    request: pytest.FixtureRequest,
    interval: float,
) -> None:
    """Every idle connection killed on the server: the next checkouts detect them (a ping
    on each checkout, or -- with a long validation_interval -- the socket liveness look)
    and replace them; not one request fails."""
    backend = server_backend
    keep: list[Any] = []

    async def scenario() -> None:
        engine = make_async(
            backend.url, driver=backend.driver, min_size=3, max_size=5, validation_interval=interval
        )
        pool = pool_of(engine)
        try:
            await pool.wait(timeout=15)
            sessions = await hold_at_once(engine, backend, 3, keep)
            assert pool.stats().pool_size == 3
            admin = server_admin(backend, request)
            kill_sessions(backend, request, sessions)
            assert await until(lambda: not admin.alive(sessions), timeout=10), "kill did not take"
            if interval:
                # the look sees the server's goodbye (FIN, an error packet) once it has arrived;
                # the server drops a session from its list a moment before it closes the socket
                assert await until(
                    lambda: all(s.poller is not None and s.poller.poll(0) for s in pool._core.idle),
                    timeout=10,
                )

            failures: list[BaseException] = []
            fresh: set[int] = set()

            async def request_once() -> None:
                try:
                    async with engine.connect() as conn:
                        fresh.add(await session_id(backend, conn, keep))
                        assert (await conn.exec_driver_sql("SELECT 1")).scalar_one() == 1
                except Exception as err:
                    failures.append(err)

            await asyncio.gather(*(request_once() for _ in range(3)))
            for _ in range(10):
                await request_once()
            assert not failures, (failures, pool.stats().counters)
            assert not (fresh & sessions), "a killed session was handed out"
            counters = pool.stats().counters
            assert counters["validations_failed"] == 3, counters
            assert await until(lambda: pool.stats().pool_size >= 3, timeout=10), pool.status()
            await matches_server(pool, backend, request)
            pool._core.check_invariants()
        finally:
            await engine.dispose()

    asyncio.run(scenario())


# --------------------------------------------------------------------- breaker, outage


def _dead_url(driver: str, port: int) -> str:
    if driver in PG_DRIVERS:
        return pg_async_url(driver, port=port)
    return f"mysql+aiomysql://root@{HOST}:{port}/test"


def test_dead_port_fails_fast_and_opens_the_breaker(
    server_backend: AsyncBackend, make_async: AsyncEngineFactory
) -> None:
    """Nothing listens: checkouts fail with PoolTimeout or CircuitOpenError within the
    acquire timeout (never the driver's raw error, never a hang) and the breaker opens."""
    acquire_timeout = 0.5

    async def scenario() -> None:
        engine = make_async(
            _dead_url(server_backend.driver, free_port()),
            min_size=1,
            max_size=4,
            acquire_timeout=acquire_timeout,
            connect_timeout=1,
            breaker=CircuitBreakerConfig(failure_threshold=2, backoff_initial=0.2, backoff_max=0.5),
        )
        pool = pool_of(engine)
        try:
            kinds: list[str] = []
            for _ in range(8):
                t0 = time.monotonic()
                with pytest.raises((PoolTimeout, CircuitOpenError)) as info:
                    async with engine.connect():
                        pass
                assert time.monotonic() - t0 < acquire_timeout + 1.0
                kinds.append(type(info.value).__name__)
            assert "CircuitOpenError" in kinds, kinds
            assert await until(lambda: pool.stats().breaker_state in ("open", "half_open"), timeout=5)
            assert pool.stats().counters["breaker_opened"] >= 1
            assert pool.stats().pool_size == 0
            pool._core.check_invariants()
        finally:
            await engine.dispose()

    asyncio.run(scenario())


@pytest.mark.slow
@pytest.mark.parametrize("driver", PG_DRIVERS)
def test_outage_and_recovery_through_the_proxy(
    driver: str,
    pg_proxy: FaultProxy,
    make_async: AsyncEngineFactory,
    app_name: str,
    request: pytest.FixtureRequest,
) -> None:
    """PostgreSQL behind FaultProxy: working, then refused (and every link reset), then back.
    During the outage checkouts fail fast with the pool's errors (or the driver's for a
    query on a connection that was reset under it) and the breaker opens; afterwards the
    pool serves again within a few seconds, refills to min_size and matches the server."""
    pytest.importorskip(driver)
    backend = AsyncBackend(driver, pg_proxy.url_for(pg_async_url(driver)), "postgresql", app_name)

    async def scenario() -> None:
        engine = make_async(
            backend.url,
            driver=driver,
            min_size=2,
            max_size=5,
            acquire_timeout=1.0,
            connect_timeout=1,
            validation_interval=0,
            breaker=CircuitBreakerConfig(failure_threshold=2, backoff_initial=0.2, backoff_max=0.5),
        )
        pool = pool_of(engine)
        try:
            await pool.wait(timeout=15)
            for _ in range(5):
                async with engine.connect() as conn:
                    assert (await conn.exec_driver_sql("SELECT 1")).scalar_one() == 1

            pg_proxy.mode = FaultMode.REFUSE
            pg_proxy.reset_all()
            t_out = time.monotonic()
            outcomes: dict[str, int] = {}
            while pool.stats().breaker_state != "open" or sum(outcomes.values()) < 5:
                assert time.monotonic() - t_out < 15, (outcomes, pool.status())
                t0 = time.monotonic()
                try:
                    async with engine.connect() as conn:
                        await conn.exec_driver_sql("SELECT 1")
                    pytest.fail("a query succeeded while the database was unreachable")
                except (PoolTimeout, CircuitOpenError, sa_exc.DBAPIError) as err:
                    name = type(err).__name__
                    outcomes[name] = outcomes.get(name, 0) + 1
                assert time.monotonic() - t0 < 2.5, "a checkout hung during the outage"
                await asyncio.sleep(0.01)
            assert pool.stats().counters["breaker_opened"] >= 1

            pg_proxy.mode = FaultMode.PASS
            t_back = time.monotonic()
            while True:
                try:
                    async with engine.connect() as conn:
                        assert (await conn.exec_driver_sql("SELECT 1")).scalar_one() == 1
                    break
                except (PoolTimeout, CircuitOpenError, sa_exc.DBAPIError):
                    assert time.monotonic() - t_back < 10, f"no recovery: {pool.status()}"
                    await asyncio.sleep(0.01)
            recovered = time.monotonic() - t_back
            print(f"[measured] {driver}: outage outcomes {outcomes}; recovered in {recovered:.2f}s")
            assert await until(lambda: pool.stats().pool_size >= 2, timeout=10), pool.status()
            for _ in range(10):
                async with engine.connect() as conn:
                    assert (await conn.exec_driver_sql("SELECT 1")).scalar_one() == 1
            assert pool.stats().breaker_state == "closed"
            await matches_server(pool, backend, request)
            pool._core.check_invariants()
        finally:
            await engine.dispose()

    asyncio.run(scenario())


# ------------------------------------------------------------------------------ leaks


async def checkout_in_named_task_site(engine: Any, hold: asyncio.Event, held: asyncio.Event) -> None:
    async with engine.connect() as conn:
        await conn.exec_driver_sql("SELECT 'leak-marker-5d1'")
        held.set()
        await hold.wait()


def test_leak_report_names_the_task_and_its_checkout(
    abackend: AsyncBackend, make_async: AsyncEngineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sqlalchemy_smartpool.leaks")

    async def scenario() -> None:
        engine = make_async(
            abackend.url,
            driver=abackend.driver,
            min_size=1,
            max_size=3,
            leak_detection_threshold=0.2,
            housekeeping_interval=0.05,
        )
        pool = pool_of(engine)
        try:
            hold, held = asyncio.Event(), asyncio.Event()
            task = asyncio.create_task(
                checkout_in_named_task_site(engine, hold, held), name="report-me-task-42"
            )
            await asyncio.wait_for(held.wait(), 15)
            assert await until(lambda: bool(pool.suspected_leaks()), timeout=10), pool.status()
            (leak,) = pool.suspected_leaks()
            assert "report-me-task-42" in leak.thread, leak
            assert "checkout_in_named_task_site" in leak.stack, leak.stack
            assert leak.last_statement is not None and "leak-marker-5d1" in leak.last_statement

            def warned() -> bool:
                return any(
                    r.levelno == logging.WARNING
                    and "report-me-task-42" in r.getMessage()
                    and "checkout_in_named_task_site" in r.getMessage()
                    for r in caplog.records
                )

            assert await until(warned, timeout=10), [r.getMessage() for r in caplog.records]
            hold.set()
            await task
            assert pool.suspected_leaks() == []
            assert await until(lambda: pool.stats().counters["leaks_returned"] == 1, timeout=5)
            assert pool.stats().counters["leaks_suspected"] == 1
        finally:
            await engine.dispose()

    asyncio.run(scenario())


# -------------------------------------------------------------------- other event loop


def test_another_event_loop_is_refused_cleanly(
    abackend: AsyncBackend, make_async: AsyncEngineFactory, request: pytest.FixtureRequest
) -> None:
    """Used on loop A, then (no dispose) on loop B: WrongEventLoop, nothing leaked or
    counted; after ``await engine.dispose()`` on A the engine works on a new loop."""
    engine = make_async(abackend.url, driver=abackend.driver, min_size=2, max_size=4)
    first_pool = pool_of(engine)

    async def use() -> int:
        async with engine.connect() as conn:
            return int((await conn.exec_driver_sql("SELECT 1")).scalar_one())

    loop_a = asyncio.new_event_loop()
    try:

        async def on_a() -> None:
            await first_pool.wait(timeout=15)
            assert await use() == 1
            await matches_server(first_pool, abackend, request)

        loop_a.run_until_complete(on_a())
        before = first_pool.stats()

        async def on_b() -> None:
            for _ in range(3):
                with pytest.raises(WrongEventLoop, match="another event loop"):
                    await use()

        asyncio.run(on_b())
        after = first_pool.stats()
        assert (after.pool_size, after.pool_idle, after.pool_in_use) == (2, 2, 0), after
        assert after.requests_waiting == 0 and after.connections_pending == 0
        assert after.counters["checkouts"] == before.counters["checkouts"]
        first_pool._core.check_invariants()
        if abackend.kind == "postgresql":
            assert server_count(abackend, request) == 2

        loop_a.run_until_complete(engine.dispose())
    finally:
        loop_a.close()
    assert first_pool.stats().pool_size == 0

    async def on_c() -> None:
        try:
            assert await use() == 1
            pool = pool_of(engine)
            assert pool is not first_pool
            await pool.wait(timeout=15)
            await matches_server(pool, abackend, request)
            pool._core.check_invariants()
        finally:
            await engine.dispose()

    asyncio.run(on_c())
    if abackend.kind == "postgresql":
        admin: PgAdmin = request.getfixturevalue("pg_admin")
        assert asyncio.run(until(lambda: admin.count(abackend.app) == 0, timeout=10))


def test_metrics_and_health_read_an_async_engine(
    abackend: AsyncBackend, make_async: AsyncEngineFactory
) -> None:
    """The exporters take an AsyncEngine as they take an Engine, and agree with stats()."""
    from sqlalchemy_smartpool.metrics import PrometheusCollector, health

    async def scenario() -> None:
        engine = make_async(abackend.url, driver=abackend.driver, min_size=1, max_size=3)
        pool = pool_of(engine)
        try:
            async with engine.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")
                report = health(engine)
                assert report["status"] == "ok" and report["pool_class"] == "AsyncSmartPool"
                collector = PrometheusCollector(engine, registry=None)
                samples = {s.name: s.value for m in collector.collect() for s in m.samples}
                assert samples["smartpool_pool_in_use"] == pool.stats().pool_in_use == 1
            assert pool.stats().pool_in_use == 0
        finally:
            await engine.dispose()

    asyncio.run(scenario())

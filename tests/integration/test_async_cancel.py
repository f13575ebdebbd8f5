"""Cancellation safety of AsyncSmartPool under load, on PostgreSQL (asyncpg, psycopg async).

50 tasks loop over checkout / query / return on a pool of max_size 8 while
10,000 cancellations land at random points: while waiting for a connection,
inside a query (``pg_sleep(0.001)``) and during the return (the reset's
rollback). They come from ``asyncio.timeout()`` with tiny deadlines,
``asyncio.wait_for``, TaskGroup cancellation and ``task.cancel()`` after a
random number of loop turns or a short sleep. Only cancellations that hit an
operation in progress are counted (the operation sees ``CancelledError``).

SQLAlchemy may invalidate a connection cancelled mid-query (the pool then
replaces it). Afterwards: every connection was held by one task at a time
(tracked in the test and through the pool's checkout/checkin events), the
pool settles with nothing in use and no waiter, its invariants hold, no slot
is lost (a burst of max_size concurrent checkouts succeeds) and its size
equals the server's count of its backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import event

from ._async import PG_DRIVERS, AsyncEngineFactory, async_engines, pg_async_url, pool_of, until
from ._services import require_postgres
from .conftest import PgAdmin, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout and TaskGroup need 3.11"),
]

TARGET = 10_000
TASKS = 50
MAX_SIZE = 8
TIME_LIMIT = 45.0  # seconds of load at most; the target is normally reached in well under half


@dataclass
class Holders:
    """Who holds which DBAPI connection right now; any overlap is a violation."""

    held: dict[int, str] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    #: every DBAPI connection ever seen, kept alive so that no id() is reused
    seen: dict[int, Any] = field(default_factory=dict)

    def take(self, conn: Any, who: str) -> int:
        key = id(conn)
        self.seen[key] = conn
        other = self.held.get(key)
        if other is not None:
            self.violations.append(f"{conn!r} held by {other} and {who}")
        self.held[key] = who
        return key

    def give_back(self, key: int, who: str) -> None:
        if self.held.pop(key, None) != who:
            self.violations.append(f"{key} given back by {who}, who did not hold it")


@pytest.fixture
def make_async(app_name: str) -> Iterator[AsyncEngineFactory]:
    with async_engines(app_name) as factory:
        yield factory


def task_name() -> str:
    task = asyncio.current_task()
    return task.get_name() if task is not None else "?"


@pytest.mark.parametrize("driver", PG_DRIVERS)
def test_ten_thousand_cancellations_lose_nothing(
    driver: str, make_async: AsyncEngineFactory, app_name: str, pg_admin: PgAdmin
) -> None:
    pytest.importorskip(driver)
    require_postgres()
    rng = random.Random(0xC0FFEE)

    async def scenario() -> None:
        engine = make_async(
            pg_async_url(driver),
            driver=driver,
            min_size=2,
            max_size=MAX_SIZE,
            acquire_timeout=15,
            housekeeping_interval=0.1,
        )
        pool = pool_of(engine)
        app_level = Holders()  # what the tasks see inside ``async with engine.connect()``
        pool_level = Holders()  # what the pool hands out and takes back (its events)
        by_record: dict[int, tuple[int, str]] = {}

        @event.listens_for(pool, "checkout")
        def on_checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
            who = task_name()
            by_record[id(record)] = (pool_level.take(dbapi_conn, who), who)

        @event.listens_for(pool, "checkin")
        def on_checkin(dbapi_conn: Any, record: Any) -> None:
            entry = by_record.pop(id(record), None)
            if entry is not None:
                pool_level.give_back(*entry)

        cancelled: Counter[str] = Counter()  # phase -> cancellations that hit an operation
        completed = 0
        other_errors: list[BaseException] = []
        stop = asyncio.Event()

        async def operation(
            in_use: asyncio.Event | None = None, returning: asyncio.Event | None = None
        ) -> None:
            nonlocal completed
            phase = "checkout"
            try:
                async with engine.connect() as conn:
                    phase = "use"
                    if in_use is not None:
                        in_use.set()
                    dbapi_conn = conn.sync_connection.connection.dbapi_connection  # type: ignore[union-attr]
                    who = task_name()
                    key = app_level.take(dbapi_conn, who)
                    try:
                        sql = "SELECT pg_sleep(0.001)" if rng.random() < 0.5 else "SELECT 1"
                        await conn.exec_driver_sql(sql)
                    finally:
                        app_level.give_back(key, who)
                    phase = "return"  # leaving the block returns it: the reset's rollback awaits
                    if returning is not None:
                        returning.set()
                completed += 1
            except asyncio.CancelledError:
                cancelled[phase] += 1
                raise

        async def timeout_cm() -> None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(rng.uniform(0, 0.02)):
                    await operation()

        async def wait_for() -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(operation(), rng.uniform(0, 0.02))

        async def direct_cancel() -> None:
            """task.cancel() while it waits, in its query, or as it gives the connection back."""
            target = rng.choice(("checkout", "use", "return"))
            mark = asyncio.Event()
            victim = operation(
                in_use=mark if target == "use" else None, returning=mark if target == "return" else None
            )
            task = asyncio.create_task(victim, name=f"{task_name()}-victim")
            if target == "checkout":
                if rng.random() < 0.5:
                    for _ in range(rng.randrange(0, 6)):
                        await asyncio.sleep(0)
                else:
                    await asyncio.sleep(rng.uniform(0, 0.003))
            else:
                marked = asyncio.ensure_future(mark.wait())
                await asyncio.wait([task, marked], return_when=asyncio.FIRST_COMPLETED)
                marked.cancel()
                for _ in range(rng.randrange(0, 3) if target == "use" else 0):
                    await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        async def task_group() -> None:
            async def failing() -> None:
                await asyncio.sleep(rng.uniform(0, 0.003))
                raise _Boom

            try:
                async with asyncio.TaskGroup() as tg:
                    for i in range(3):
                        tg.create_task(operation(), name=f"{task_name()}-tg{i}")
                    tg.create_task(failing())
            except Exception as group:  # an ExceptionGroup of our _Boom alone (no except* on 3.10)
                if not all(isinstance(e, _Boom) for e in getattr(group, "exceptions", [group])):
                    raise

        actions = [timeout_cm, wait_for, direct_cancel, task_group, operation]
        weights = [2, 2, 5, 1, 1]

        async def worker() -> None:
            while not stop.is_set():
                action = rng.choices(actions, weights)[0]
                try:
                    await action()
                except Exception as err:  # the only acceptable errors are cancellations
                    other_errors.append(err)
                    stop.set()
                if sum(cancelled.values()) >= TARGET:
                    stop.set()

        t0 = time.monotonic()
        try:
            await pool.wait(timeout=15)
            workers = [asyncio.create_task(worker(), name=f"worker-{i}") for i in range(TASKS)]
            try:
                await asyncio.wait_for(stop.wait(), TIME_LIMIT)
            except TimeoutError:
                stop.set()
            await asyncio.wait_for(asyncio.gather(*workers), 30)
            load_s = time.monotonic() - t0
            total = sum(cancelled.values())
            stats = pool.stats()
            print(
                f"[measured] {driver}: {total} cancellations {dict(cancelled)}, {completed} completed, "
                f"{load_s:.1f}s; created={stats.counters['connections_created']} "
                f"invalidated={stats.counters['connections_invalidated']}"
            )
            assert not other_errors, other_errors[:5]
            assert total >= TARGET, f"only {total} cancellations in {load_s:.1f}s"
            assert all(cancelled[p] > 0 for p in ("checkout", "use", "return")), cancelled
            assert completed > 0

            # settle: nothing in use, nobody waiting, no connect in flight
            def settled() -> bool:
                st = pool.stats()
                return st.pool_in_use == 0 and st.requests_waiting == 0 and st.connections_pending == 0

            assert await until(settled, timeout=15), pool.status()
            pool._core.check_invariants()
            stats = pool.stats()
            assert stats.pool_in_use == 0
            assert stats.pool_size + stats.connections_pending <= MAX_SIZE, stats
            assert not app_level.violations, app_level.violations[:5]
            assert not pool_level.violations, pool_level.violations[:5]
            assert not app_level.held, app_level.held
            assert not pool_level.held, pool_level.held

            # no slot lost: max_size checkouts at once, all within the timeout
            entered = 0
            release = asyncio.Event()

            async def hold() -> None:
                nonlocal entered
                async with engine.connect() as conn:
                    await conn.exec_driver_sql("SELECT 1")
                    entered += 1
                    await release.wait()

            burst = [asyncio.create_task(hold()) for _ in range(MAX_SIZE)]
            assert await until(lambda: entered == MAX_SIZE, timeout=15), pool.status()
            assert pool.stats().pool_size == MAX_SIZE
            release.set()
            await asyncio.gather(*burst)

            last = ""

            def matches() -> bool:
                nonlocal last
                st = pool.stats()
                count = pg_admin.count(app_name)
                last = f"pool size={st.pool_size} pending={st.connections_pending} server={count}"
                return st.connections_pending == 0 and st.pool_size == count

            assert await until(matches, timeout=15), last
            pool._core.check_invariants()
        finally:
            stop.set()
            await engine.dispose()

    asyncio.run(scenario())
    assert wait_until(lambda: pg_admin.count(app_name) == 0, timeout=10), "backends left after dispose"


class _Boom(Exception):
    """Raised by a TaskGroup member so the group cancels its siblings."""

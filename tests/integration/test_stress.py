"""Many threads hammering one SmartPool, with invariants checked during and after.

A holder registry, keyed both by the DBAPI connection object and by the
server's session id, asserts that no connection is ever held by two threads
at once. Afterwards the pool's counts must agree with themselves
(``check_invariants``), with the work the threads did (checkouts,
invalidations, no timeouts) and with the server (one backend per pooled
connection, nothing leaked).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa

from sqlalchemy_smartpool import SmartPool

from .conftest import EngineFactory, MyAdmin, PgAdmin, mysql_url, pg_url, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class Registry:
    """Who holds which connection right now; any overlap is a violation."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    by_conn: dict[int, str] = field(default_factory=dict)
    by_session: dict[int, str] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    sessions_seen: set[int] = field(default_factory=set)

    def take(self, table: dict[int, str], key: int, me: str) -> None:
        with self.lock:
            other = table.get(key)
            if other is not None:
                self.violations.append(f"{key} held by {other} and {me}")
            table[key] = me

    def give_back(self, table: dict[int, str], key: int, me: str) -> None:
        with self.lock:
            if table.pop(key, None) != me:
                self.violations.append(f"{key} released by {me} but not held by it")


@dataclass
class Result:
    checkouts: int = 0
    invalidations: int = 0
    errors: list[BaseException] = field(default_factory=list)
    registry: Registry = field(default_factory=Registry)
    elapsed: float = 0.0


def hammer(
    engine: sa.Engine,
    session_sql: str,
    *,
    threads: int,
    per_thread: int,
    invalidate_rate: float = 0.01,
    max_hold: float = 0.002,
    max_think: float = 0.0,
    during: Callable[[threading.Event], None] | None = None,
) -> Result:
    """Run ``threads`` x ``per_thread`` checkouts; ``during`` runs alongside until they finish."""
    result = Result()
    reg = result.registry
    count_lock = threading.Lock()
    start = threading.Barrier(threads + 1)
    done = threading.Event()

    def work(n: int) -> None:
        me = f"t{n}"
        rng = random.Random(n)
        checkouts = invalidations = 0
        try:
            start.wait()
            for _ in range(per_thread):
                with engine.connect() as conn:
                    key = id(conn.connection.dbapi_connection)
                    reg.take(reg.by_conn, key, me)
                    session = int(conn.exec_driver_sql(session_sql).scalar_one())
                    reg.take(reg.by_session, session, me)
                    time.sleep(rng.uniform(0, max_hold))
                    reg.give_back(reg.by_session, session, me)
                    reg.give_back(reg.by_conn, key, me)
                    with reg.lock:
                        reg.sessions_seen.add(session)
                    if rng.random() < invalidate_rate:
                        conn.invalidate()
                        invalidations += 1
                checkouts += 1
                if max_think:
                    time.sleep(rng.uniform(0, max_think))
        except BaseException as exc:
            with count_lock:
                result.errors.append(exc)
        finally:
            with count_lock:
                result.checkouts += checkouts
                result.invalidations += invalidations

    workers = [threading.Thread(target=work, args=(i,), name=f"stress-{i}") for i in range(threads)]
    for t in workers:
        t.start()

    def beside() -> None:
        try:
            assert during is not None
            during(done)
        except BaseException as exc:
            with count_lock:
                result.errors.append(exc)

    side = threading.Thread(target=beside) if during else None
    start.wait()
    t0 = time.monotonic()
    if side:
        side.start()
    for t in workers:
        t.join(timeout=120)
    result.elapsed = time.monotonic() - t0
    done.set()
    if side:
        side.join(timeout=30)
    assert not any(t.is_alive() for t in workers), "a worker is stuck"
    return result


def check_pool_after(pool: SmartPool, result: Result, *, disposed: bool = False) -> None:
    assert not result.registry.violations, result.registry.violations[:5]
    assert not result.errors, result.errors[:3]
    pool._core.check_invariants()
    stats = pool.stats()
    c = stats.counters
    assert c["timeouts"] == 0 and c["rejected_queue_full"] == 0, c
    assert stats.in_use == 0 and stats.waiting == 0, pool.status()
    # each successful checkout counted once (a replaced connection is not a second checkout)
    assert c["checkouts"] == result.checkouts, (c, result.checkouts)
    assert c["connections_invalidated"] >= result.invalidations
    # quiescent: every connection the pool opened is either still pooled or was closed
    assert wait_until(
        lambda: (
            (s := pool.stats()).connections_pending == 0
            and s.counters["connections_created"] == s.size + s.counters["connections_closed"]
        ),
        timeout=10,
    ), pool.stats()
    # dispose() empties the pool; the refill to min_size waits for the next checkout
    assert (0 if disposed else stats.min_size) <= pool.stats().size <= stats.max_size


PG_PID = "SELECT pg_backend_pid()"


def test_stress_postgresql(make_engine: EngineFactory, app_name: str, pg_admin: PgAdmin) -> None:
    engine = make_engine(pg_url(app_name), poolclass=SmartPool, min_size=2, max_size=10, acquire_timeout=20)
    pool = engine.pool
    max_seen = [0]

    def watch(done: threading.Event) -> None:
        while not done.is_set():
            max_seen[0] = max(max_seen[0], pool.stats().size)
            with pool._lock:  # a consistent view, as every pool operation sees it
                pool._core.check_invariants()
            time.sleep(0.02)

    result = hammer(engine, PG_PID, threads=32, per_thread=150, during=watch)
    assert result.checkouts == 32 * 150
    assert result.invalidations > 0
    check_pool_after(pool, result)
    assert pool.stats().counters["connections_invalidated"] == result.invalidations
    assert max_seen[0] <= 10
    assert wait_until(lambda: pg_admin.count(app_name) == pool.stats().size, timeout=10), (
        pg_admin.pids(app_name),
        pool.status(),
    )


def test_stress_postgresql_with_concurrent_dispose(
    make_engine: EngineFactory, app_name: str, pg_admin: PgAdmin
) -> None:
    engine = make_engine(pg_url(app_name), poolclass=SmartPool, min_size=2, max_size=10, acquire_timeout=20)
    pool = engine.pool
    disposals = [0]

    def dispose_repeatedly(done: threading.Event) -> None:
        rng = random.Random(7)
        while not done.is_set():
            time.sleep(rng.uniform(0.005, 0.04))
            pool.dispose()
            disposals[0] += 1

    result = hammer(engine, PG_PID, threads=32, per_thread=100, during=dispose_repeatedly)
    assert disposals[0] >= 5
    assert result.checkouts == 32 * 100
    check_pool_after(pool, result, disposed=True)
    # after the last dispose, connections may sit in a pool whose background work is
    # stopped; a checkout that must wait restarts it -- but the server must match either way
    assert wait_until(lambda: pg_admin.count(app_name) == pool.stats().size, timeout=10), (
        pg_admin.pids(app_name),
        pool.status(),
    )
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1


def test_stress_postgresql_with_background_churn(
    make_engine: EngineFactory, app_name: str, pg_admin: PgAdmin
) -> None:
    """Lifetimes, idle shrinking, keepalives and validations all racing the load: the
    housekeeper must never retire, ping or close a connection a thread is using."""
    engine = make_engine(
        pg_url(app_name),
        poolclass=SmartPool,
        min_size=2,
        max_size=10,
        acquire_timeout=20,
        max_lifetime=0.3,
        idle_timeout=0.2,
        keepalive_interval=0.05,
        validation_interval=0.02,
        housekeeping_interval=0.05,
    )
    pool = engine.pool
    # fewer threads than max_size, with pauses: connections also sit idle, so they get
    # validated on checkout, pinged, shrunk and retired while others are in use
    result = hammer(engine, PG_PID, threads=8, per_thread=100, max_hold=0.004, max_think=0.02)
    assert result.checkouts == 8 * 100  # every query ran: nothing was closed under a user
    check_pool_after(pool, result)
    c = pool.stats().counters
    for key in ("connections_expired", "validations", "keepalives"):  # the churn really happened
        assert c[key] > 0, c
    assert wait_until(lambda: pg_admin.count(app_name) == pool.stats().size, timeout=10), (
        pg_admin.pids(app_name),
        pool.status(),
    )


def test_stress_mariadb(make_engine: EngineFactory, my_admin: MyAdmin) -> None:
    engine = make_engine(
        mysql_url("pymysql"), poolclass=SmartPool, min_size=2, max_size=6, acquire_timeout=20
    )
    pool = engine.pool
    result = hammer(engine, "SELECT CONNECTION_ID()", threads=12, per_thread=100)
    assert result.checkouts == 12 * 100
    check_pool_after(pool, result)
    # the server knows exactly the pooled sessions among all it ever served us
    size = pool.stats().size
    conns: list[Any] = [engine.connect() for _ in range(size)]
    try:
        pooled = {int(c.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one()) for c in conns}
        assert pool.stats().size == size  # all came from idle: no connect happened
    finally:
        for c in conns:
            c.close()
    assert len(pooled) == size
    seen = result.registry.sessions_seen | pooled
    assert wait_until(lambda: my_admin.alive(seen) == pooled, timeout=10), (my_admin.alive(seen), pooled)

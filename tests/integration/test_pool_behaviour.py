"""SmartPool's policies observed on a real PostgreSQL server.

The pool's own gauges can lie together with the bug they should reveal, so
sizes are cross-checked against ``pg_stat_activity`` (scoped to the test's
``application_name``) and connection identity against backend pids.
Timing bounds are loose on the side a slow machine can push them and tight
only where the behaviour must be immediate (fail-fast paths).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from sqlalchemy_smartpool import PoolTimeout, SmartPool, TooManyWaiters

from ._services import require_mysql
from .conftest import EngineFactory, PgAdmin, mysql_url, pg_url, wait_until

pytestmark = pytest.mark.integration


def pid_of(conn: sa.Connection) -> int:
    return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


@pytest.fixture
def pg(pg_admin: PgAdmin, app_name: str, make_engine: EngineFactory) -> Iterator[Any]:
    """``pg(**pool_kw)`` -> an engine on PostgreSQL with SmartPool, tagged with the test's app name."""

    def factory(**kw: Any) -> sa.Engine:
        return make_engine(pg_url(app_name), poolclass=SmartPool, **kw)

    yield factory


def test_prewarm_opens_min_size_backends(pg: Any, pg_admin: PgAdmin, app_name: str) -> None:
    engine = pg(min_size=3, max_size=6)
    assert pg_admin.count(app_name) == 0  # nothing opens before start (create_engine is lazy)
    engine.pool.wait(timeout=15)
    assert wait_until(lambda: pg_admin.count(app_name) == 3, timeout=5), pg_admin.pids(app_name)
    time.sleep(0.3)  # and no more than that without demand
    assert pg_admin.count(app_name) == 3
    assert engine.pool.stats().size == 3


def test_growth_under_load_never_exceeds_max_size(pg: Any, pg_admin: PgAdmin, app_name: str) -> None:
    engine = pg(min_size=1, max_size=4)
    pool = engine.pool
    pool.wait(timeout=15)
    stop = threading.Event()
    server_samples: list[int] = []
    pool_samples: list[int] = []
    errors: list[BaseException] = []

    def sample() -> None:
        admin = PgAdmin()  # its own connection: pg_admin belongs to the main thread
        try:
            while not stop.is_set():
                server_samples.append(admin.count(app_name))
                s = pool.stats()
                pool_samples.append(s.size + s.connections_pending)
                time.sleep(0.01)
        finally:
            admin.close()

    def work() -> None:
        try:
            while not stop.is_set():
                with engine.connect() as conn:
                    conn.exec_driver_sql("SELECT pg_sleep(0.03)")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)] + [threading.Thread(target=sample)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    assert max(server_samples) <= 4, server_samples
    assert max(pool_samples) <= 4, pool_samples
    assert max(server_samples) == 4, f"never grew to max_size: {server_samples}"
    assert pool.stats().counters["timeouts"] == 0
    pool._core.check_invariants()


def test_shrinks_to_min_size_after_idle_timeout(pg: Any, pg_admin: PgAdmin, app_name: str) -> None:
    engine = pg(min_size=1, max_size=4, idle_timeout=1, housekeeping_interval=0.1)
    pool = engine.pool
    held = [engine.connect() for _ in range(4)]
    for c in held:
        c.exec_driver_sql("SELECT 1")
    assert pg_admin.count(app_name) == 4
    for c in held:
        c.close()
    released = time.monotonic()
    time.sleep(0.3)
    assert pool.stats().size == 4, "closed idle connections before idle_timeout"
    assert wait_until(lambda: pool.stats().size == 1, timeout=8), pool.status()
    assert time.monotonic() - released >= 0.9
    assert wait_until(lambda: pg_admin.count(app_name) == 1, timeout=5), pg_admin.pids(app_name)
    assert pool.stats().counters["connections_idle_closed"] == 3
    time.sleep(1.3)  # and never below min_size
    assert pool.stats().size == 1 and pg_admin.count(app_name) == 1
    pool._core.check_invariants()


def test_max_lifetime_retires_idle_never_checked_out(pg: Any, pg_admin: PgAdmin, app_name: str) -> None:
    engine = pg(min_size=2, max_size=3, max_lifetime=1, housekeeping_interval=0.1, validation_interval=10)
    pool = engine.pool
    pool.wait(timeout=15)
    first = pg_admin.pids(app_name)
    assert len(first) == 2
    held = engine.connect()
    held_pid = pid_of(held)
    seen: set[int] = set(first)
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:  # hold across 2+ lifetimes
        seen |= pg_admin.pids(app_name)
        assert held_pid in pg_admin.pids(app_name), "a checked-out connection was retired"
        time.sleep(0.1)
    assert pid_of(held) == held_pid  # still the same session, still answering
    assert held.exec_driver_sql("SELECT 1").scalar_one() == 1
    assert len(seen) >= 3, f"idle connections were not recycled: {seen}"
    assert not (first - {held_pid}) & pg_admin.pids(app_name)
    held.close()  # past its lifetime: closed on return, replaced in the background
    assert wait_until(lambda: held_pid not in pg_admin.pids(app_name)), "expired connection kept after return"
    assert pool.stats().counters["connections_expired"] >= 3
    assert wait_until(lambda: pool.stats().size == 2), pool.status()
    pool._core.check_invariants()


def test_acquire_timeout_message(pg: Any) -> None:
    engine = pg(min_size=1, max_size=1, acquire_timeout=0.3)
    pool = engine.pool
    with engine.connect():
        t0 = time.monotonic()
        with pytest.raises(PoolTimeout) as info:
            engine.connect()
        waited = time.monotonic() - t0
    assert isinstance(info.value, sa.exc.TimeoutError)  # what existing except clauses catch
    msg = str(info.value)
    for part in ("size=1", "in_use=1", "idle=0", "waiting=0", "timeout=0.3s"):
        assert part in msg, msg
    assert 0.25 <= waited < 10
    assert pool.stats().counters["timeouts"] == 1
    with engine.connect() as conn:  # the pool is fine afterwards
        assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
    pool._core.check_invariants()


def test_max_waiting_fails_fast(pg: Any) -> None:
    engine = pg(min_size=1, max_size=1, max_waiting=1, acquire_timeout=10)
    pool = engine.pool
    holder = engine.connect()
    got: list[int] = []

    def queue_up() -> None:
        with engine.connect() as conn:
            got.append(pid_of(conn))

    queued = threading.Thread(target=queue_up)
    queued.start()
    assert wait_until(lambda: pool.stats().waiting == 1, timeout=5)
    elapsed = []
    for _ in range(3):
        t0 = time.perf_counter()
        with pytest.raises(TooManyWaiters) as info:
            engine.connect()
        elapsed.append(time.perf_counter() - t0)
    assert min(elapsed) < 0.05 and max(elapsed) < 1.0, elapsed  # no waiting at all
    assert "max_waiting=1" in str(info.value)
    assert pool.stats().counters["rejected_queue_full"] == 3
    holder.close()
    queued.join(timeout=10)
    assert len(got) == 1  # the queued caller was served
    pool._core.check_invariants()


def test_fifo_fairness_between_waiters(pg: Any) -> None:
    engine = pg(min_size=1, max_size=1, acquire_timeout=15)
    pool = engine.pool
    pool.wait(timeout=15)
    holder = engine.connect()
    order: list[str] = []

    def worker(name: str) -> None:
        with engine.connect() as conn:
            order.append(name)
            conn.exec_driver_sql("SELECT 1")
            time.sleep(0.01)

    threads = []
    for i, name in enumerate("ABCDE"):
        t = threading.Thread(target=worker, args=(name,))
        t.start()
        threads.append(t)
        assert wait_until(lambda n=i + 1: pool.stats().waiting == n, timeout=5)
    holder.close()
    for t in threads:
        t.join(timeout=15)
    assert order == list("ABCDE")
    assert pool.stats().counters["checkouts_waited"] == 5
    pool._core.check_invariants()


@pytest.mark.parametrize("reuse", ["lifo", "fifo"])
def test_reuse_order_by_backend_pid(pg: Any, reuse: str) -> None:
    engine = pg(min_size=3, max_size=3, reuse=reuse)
    engine.pool.wait(timeout=15)
    conns = [engine.connect() for _ in range(3)]
    pids = [pid_of(c) for c in conns]
    assert len(set(pids)) == 3
    for c in conns:  # returned in order pids[0], pids[1], pids[2]
        c.close()
    sequence = []
    for _ in range(4):
        with engine.connect() as conn:
            sequence.append(pid_of(conn))
    if reuse == "lifo":
        assert sequence == [pids[2]] * 4  # the hottest connection, every time
    else:
        assert sequence == [pids[0], pids[1], pids[2], pids[0]]  # round robin, oldest idle first


def test_timeout_racing_a_handover_loses_nothing(pg: Any) -> None:
    """A waiter that times out just as a connection is handed to it must either use it
    or leave it in the pool -- never drop it."""
    engine = pg(min_size=2, max_size=2, acquire_timeout=0.02, validation_interval=30)
    pool = engine.pool
    pool.wait(timeout=15)
    outcomes = {"served": 0, "timeout": 0}
    lock = threading.Lock()

    def waiter() -> None:
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            key = "served"
        except PoolTimeout:
            key = "timeout"
        with lock:
            outcomes[key] += 1

    for i in range(60):
        held = [pool.connect() for _ in range(2)]  # DBAPI level: cheap, exact release time
        threads = [threading.Thread(target=waiter) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.017 + (i % 7) * 0.001)  # release right around the waiters' deadline
        for h in held:
            h.close()
        for t in threads:
            t.join(timeout=10)
        stats = pool.stats()
        assert (stats.size, stats.in_use, stats.idle, stats.waiting) == (2, 0, 2, 0), pool.status()
        pool._core.check_invariants()
    assert outcomes["served"] + outcomes["timeout"] == 180
    assert outcomes["served"] and outcomes["timeout"], outcomes  # both sides of the race were hit
    counters = pool.stats().counters
    assert counters["timeouts"] == outcomes["timeout"]
    assert counters["connections_created"] == 2  # nothing lost and re-opened
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1


def _slow_connects(pool: Any, delay: float) -> None:
    """Make every connect of ``pool`` take ``delay`` seconds longer, so background connects
    are surely in flight (the pool's own ``connect`` event: no dialect-level listener)."""
    sa.event.listen(pool, "connect", lambda *a: time.sleep(delay))


def test_close_with_connects_in_flight_leaves_nothing_open(pg: Any, pg_admin: PgAdmin, app_name: str) -> None:
    """A connect finishing after close() is closed, not parked in the closed pool."""
    engine = pg(min_size=2, max_size=4)
    pool = engine.pool
    _slow_connects(pool, 0.3)
    with pytest.raises(PoolTimeout):
        pool.wait(timeout=0)  # starts the prewarm without waiting for it
    assert wait_until(lambda: pool.stats().connections_pending == 2, timeout=2)
    pool.close()
    assert wait_until(lambda: pool.stats().connections_pending == 0, timeout=10)
    time.sleep(0.2)
    assert pool.stats().size == 0, pool.status()
    assert pg_admin.count(app_name) == 0


# -- regressions: bugs these tests found (now fixed) ------------------------------------------


def test_engine_dispose_with_connects_in_flight_leaves_nothing_open(
    pg: Any, pg_admin: PgAdmin, app_name: str
) -> None:
    """Connects in flight at Engine.dispose() are closed when they land, not kept open in
    the abandoned pool until it is garbage collected."""
    engine = pg(min_size=2, max_size=4)
    old = engine.pool
    _slow_connects(old, 0.3)
    with pytest.raises(PoolTimeout):
        old.wait(timeout=0)
    assert wait_until(lambda: old.stats().connections_pending == 2, timeout=2)
    engine.dispose()
    assert wait_until(lambda: old.stats().connections_pending == 0, timeout=10)
    time.sleep(0.2)
    assert old.stats().size == 0, old.status()
    assert pg_admin.count(app_name) == 0  # the new pool has not started yet


def test_dispose_then_fast_path_checkout_restarts_background_work(
    pg: Any, pg_admin: PgAdmin, app_name: str
) -> None:
    """After dispose(), a checkout served at once from idle restarts background work too
    (refill to min_size, idle_timeout, lifetimes), not only a checkout that waits."""
    engine = pg(min_size=2, max_size=4, housekeeping_interval=0.1)
    pool = engine.pool
    pool.wait(timeout=15)
    held = engine.connect()
    pool.dispose()  # closes the idle one; the held one stays
    held.close()  # back to idle: size 1 < min_size
    for _ in range(5):
        with engine.connect() as conn:  # served from idle at once
            conn.exec_driver_sql("SELECT 1")
    assert wait_until(lambda: pool.stats().size == 2, timeout=3), pool.status()
    assert pg_admin.count(app_name) == 2


def test_connect_submitted_as_dispose_stops_housekeeper_is_not_lost(pg: Any) -> None:
    """A connect submitted just as dispose() stops the housekeeper is not dropped silently
    (that leaked its `pending` reservation for good and starved the waiter)."""
    engine = pg(min_size=0, max_size=1, acquire_timeout=1.5)
    pool = engine.pool
    pool.wait(timeout=15)  # starts the housekeeper (nothing to prewarm)
    hk = pool._engine._rt
    submit = hk.submit

    def dispose_wins_the_race(fn: Any) -> None:
        # the interleaving of `_spawn_connects` with a concurrent dispose(): the
        # housekeeper was running when checked, and is stopped when the job arrives
        hk.stop()
        submit(fn)

    hk.submit = dispose_wins_the_race
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
    finally:
        assert pool.stats().connections_pending == 0, pool.status()


def test_keepalive_with_validation_query_leaves_no_open_transaction(
    pg: Any, pg_admin: PgAdmin, app_name: str
) -> None:
    """A keepalive running validation_query on psycopg2 must end the transaction it opened."""
    engine = pg(
        min_size=2, max_size=2, keepalive_interval=0.2, validation_query="SELECT 1", housekeeping_interval=0.1
    )
    pool = engine.pool
    pool.wait(timeout=15)
    assert wait_until(lambda: pool.stats().counters["keepalives"] >= 4, timeout=5)
    states = pg_admin.states(app_name)
    assert len(states) == 2
    assert set(states.values()) == {"idle"}, states


def test_engine_dispose_keeps_dialect_listeners_and_connects_in_flight(pg: Any) -> None:
    """recreate() must not add another listener to the shared dialect each time: they piled
    up, and mutating them failed connects in flight ("deque mutated during iteration")."""
    engine = pg(min_size=2, max_size=4)
    listeners = len(engine.dialect.dispatch.do_connect)
    old = engine.pool
    sa.event.listen(engine, "do_connect", lambda *a: time.sleep(0.3))  # connects in flight, inside do_connect
    with pytest.raises(PoolTimeout):
        old.wait(timeout=0)
    assert wait_until(lambda: old.stats().connections_pending == 2, timeout=2)
    for _ in range(3):
        engine.dispose()
    assert wait_until(lambda: old.stats().connections_pending == 0, timeout=10)
    assert old.stats().counters["connections_failed"] == 0, "connects failed: RuntimeError deque mutated"
    assert len(engine.dialect.dispatch.do_connect) == listeners + 1  # + the test's own


def _no_such_db_url(app: str) -> str:
    return pg_url(app).replace("/test?", "/smartpool_no_such_db?")


def test_connect_error_reaches_the_caller(
    make_engine: EngineFactory, app_name: str, pg_admin: PgAdmin
) -> None:
    """A permanent connect error reaches the caller as the driver's error, as with QueuePool."""
    import psycopg2

    engine = make_engine(_no_such_db_url(app_name), poolclass=SmartPool, min_size=0, acquire_timeout=5)
    with pytest.raises(sa.exc.OperationalError) as info:
        engine.connect()
    assert isinstance(info.value.orig, psycopg2.OperationalError), repr(info.value.orig)
    assert "does not exist" in str(info.value)


@pytest.mark.parametrize("breaker_on", [True, False])
def test_transient_connect_failures_name_their_cause(make_engine: EngineFactory, breaker_on: bool) -> None:
    """Connects that keep failing transiently (connection refused): the caller's error --
    CircuitOpenError once the breaker opens, else PoolTimeout -- carries the driver's error."""
    import psycopg2

    from sqlalchemy_smartpool import CircuitBreakerConfig, CircuitOpenError

    engine = make_engine(
        "postgresql+psycopg2://postgres@127.0.0.1:1/test",  # nothing listens on port 1: refused
        poolclass=SmartPool,
        min_size=0,
        acquire_timeout=5 if breaker_on else 0.5,
        breaker=CircuitBreakerConfig(enabled=breaker_on),
    )
    expected = CircuitOpenError if breaker_on else PoolTimeout
    t0 = time.monotonic()
    with pytest.raises(expected) as info:
        engine.connect()
    assert time.monotonic() - t0 < 4.5  # the breaker fails it before acquire_timeout
    assert "refused" in str(info.value), str(info.value)
    assert isinstance(info.value.__cause__, psycopg2.OperationalError), repr(info.value.__cause__)
    if breaker_on:
        assert isinstance(info.value.orig, psycopg2.OperationalError)  # type: ignore[attr-defined]


def test_pymysql_reconnect_by_sqlalchemy_has_no_read_timeout(make_engine: EngineFactory) -> None:
    """PyMySQL's handshake read_timeout (= connect_timeout) must be cleared on connections
    SQLAlchemy re-opens itself too, or every query longer than connect_timeout dies."""
    require_mysql()
    engine = make_engine(mysql_url("pymysql"), poolclass=SmartPool, min_size=1, max_size=2, connect_timeout=1)
    engine.pool.wait(timeout=15)
    with engine.connect() as conn:  # control: the pool's own connect cleared the handshake timeout
        assert conn.exec_driver_sql("SELECT SLEEP(1.3)").scalar_one() == 0
    fired: list[bool] = []

    @sa.event.listens_for(engine.pool, "checkout")
    def stale_once(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        if not fired:  # the classic "pessimistic ping" recipe finding a dead connection
            fired.append(True)
            raise sa.exc.DisconnectionError("simulated stale connection")

    with engine.connect() as conn:
        assert fired
        assert conn.exec_driver_sql("SELECT SLEEP(1.3)").scalar_one() == 0


# -- known bugs ------------------------------------------------------------------------------


def test_fatal_validation_error_reaches_caller_and_counts_the_close(
    pg: Any, pg_admin: PgAdmin, app_name: str
) -> None:
    engine = pg(min_size=2, max_size=3, validation_interval=0.1, validation_query="SELECT 1/0")
    pool = engine.pool
    pool.wait(timeout=15)
    time.sleep(0.3)  # idle past validation_interval: the next checkout validates
    with pytest.raises(sa.exc.DataError):  # as SQLAlchemy's pre-ping: not a disconnect, so raised
        engine.connect()
    assert wait_until(lambda: pool.stats().size == 2 and pg_admin.count(app_name) == 2), pool.status()
    c = pool.stats().counters
    assert c["connections_created"] == pool.stats().size + c["connections_closed"], c

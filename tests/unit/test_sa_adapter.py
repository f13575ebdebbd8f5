"""SmartPool, the SQLAlchemy adapter, over a mock DBAPI and the injected fake clock.

No server: connections are :class:`MockConnection` objects made by a counting
creator. Time that the pool reads (validation windows, lifetimes) comes from
:class:`~.conftest.FakeClock` and moves only when a test advances it. Background
connects and housekeeping still run on the housekeeper's threads, so every
effect of them is awaited with a bound (:func:`until`), never a fixed sleep.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import create_async_engine

from sqlalchemy_smartpool import AsyncSmartPool, PoolTimeout, SmartPool
from sqlalchemy_smartpool import stats as S
from sqlalchemy_smartpool.engine import SLOT_ATTR

from .conftest import FakeClock

BOUND = 5.0  # seconds of real time any background effect may take (a loaded 2-core box)


def until(predicate: Callable[[], bool], timeout: float = BOUND) -> bool:
    """Poll ``predicate`` until true or ``timeout`` real seconds passed."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(0.002)
    return True


class MockCursor:
    def __init__(self, conn: MockConnection) -> None:
        self.conn = conn

    def execute(self, sql: str, *args: Any) -> None:
        if self.conn.dead:
            raise ConnectionResetError("server closed the connection")
        self.conn.executed.append(sql)

    def fetchall(self) -> list[tuple[int]]:
        return [(1,)]

    def close(self) -> None:
        pass


class MockConnection:
    """A DBAPI connection double: records what the pool does to it."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.dead = False
        self.closed = False
        self.executed: list[str] = []
        self.rollbacks = 0

    def cursor(self) -> MockCursor:
        return MockCursor(self)

    def rollback(self) -> None:
        self.rollbacks += 1

    def commit(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"<MockConnection {self.n}>"


class Creator:
    """The pool's creator: counts calls; ``gate`` (if set) holds connect number >= ``gate_from``."""

    def __init__(self) -> None:
        self.made: list[MockConnection] = []
        self.gate: threading.Event | None = None
        self.gate_from = 1
        self._lock = threading.Lock()

    def __call__(self) -> MockConnection:
        with self._lock:
            conn = MockConnection(len(self.made) + 1)
            self.made.append(conn)
        if self.gate is not None and conn.n >= self.gate_from:
            assert self.gate.wait(BOUND), "test never opened the gate"
        return conn

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.made)


#: deterministic defaults: no jitter, fast housekeeper polling (its timers follow the fake clock)
DEFAULTS: dict[str, Any] = {
    "min_size": 0,
    "max_size": 3,
    "lifetime_jitter": 0.0,
    "housekeeping_interval": 0.01,
    "acquire_timeout": 2.0,
    "track_wait_times": False,
}


@pytest.fixture
def creator() -> Creator:
    return Creator()


@pytest.fixture
def make_pool(clock: FakeClock, creator: Creator) -> Iterator[Callable[..., SmartPool]]:
    pools: list[SmartPool] = []

    def make(**kw: Any) -> SmartPool:
        pool = SmartPool(creator, clock=clock, **{**DEFAULTS, **kw})
        pools.append(pool)
        return pool

    yield make
    if creator.gate is not None:
        creator.gate.set()
    for pool in pools:
        pool.close()


def ok(pool: SmartPool) -> None:
    with pool._lock:
        pool._core.check_invariants()


def dbapi(fairy: Any) -> MockConnection:
    conn = fairy.dbapi_connection
    assert isinstance(conn, MockConnection)
    return conn


# ------------------------------------------------------------------ checkout / checkin


def test_checkout_and_checkin_are_counted_and_reuse_the_connection(
    make_pool: Callable[..., SmartPool], creator: Creator
) -> None:
    pool = make_pool()
    a = pool.connect()
    first = dbapi(a)
    assert (pool.checkedout(), pool.checkedin(), pool.size()) == (1, 0, 1)
    ok(pool)
    a.close()
    assert (pool.checkedout(), pool.checkedin(), pool.size()) == (0, 1, 1)
    ok(pool)
    b = pool.connect()
    assert dbapi(b) is first, "an idle connection is reused"
    c = pool.connect()  # a second one is opened while the first is out
    assert dbapi(c) is not first
    assert (pool.checkedout(), pool.size()) == (2, 2)
    b.close()
    c.close()
    ok(pool)
    st = pool.stats()
    assert st.counters[S.CHECKOUTS] == 3
    assert st.counters[S.CONNECTIONS_CREATED] == 2 == creator.calls
    assert (st.pool_in_use, st.pool_idle, st.pool_size) == (0, 2, 2)


def test_do_get_and_do_return_conn_keep_the_core_consistent(make_pool: Callable[..., SmartPool]) -> None:
    pool = make_pool(max_size=2)
    recs = [pool._do_get(), pool._do_get()]
    ok(pool)
    assert pool._core.in_use == 2 and not pool._core.idle
    for rec in recs:
        assert rec.__dict__[SLOT_ATTR].id in pool._core.leased
    pool._do_return_conn(recs[0])
    ok(pool)
    assert pool._core.in_use == 1 and len(pool._core.idle) == 1
    # an invalidated record (no DBAPI connection any more) leaves the pool instead of going idle
    recs[1].invalidate()
    pool._do_return_conn(recs[1])
    ok(pool)
    assert (pool._core.size, pool._core.in_use, len(pool._core.idle)) == (1, 0, 1)
    assert pool.stats().counters[S.CONNECTIONS_INVALIDATED] == 1


def test_do_return_conn_closes_a_record_that_is_not_the_pools(
    make_pool: Callable[..., SmartPool],
) -> None:
    pool = make_pool()
    rec = pool._do_get()
    foreign = sa.pool.base._ConnectionRecord(pool)  # made outside _do_get: no slot
    conn = foreign.dbapi_connection
    assert isinstance(conn, MockConnection)
    pool._do_return_conn(foreign)
    assert conn.closed
    ok(pool)
    assert pool._core.size == 1  # the pool's own count is untouched
    pool._do_return_conn(rec)
    ok(pool)


# ------------------------------------------------------------------ lifetimes


def test_connection_past_its_lifetime_is_not_reused_after_checkin(
    make_pool: Callable[..., SmartPool], clock: FakeClock
) -> None:
    pool = make_pool(max_lifetime=10.0)
    a = pool.connect()
    old = dbapi(a)
    clock.advance(11.0)  # expires while checked out: never retired in use ...
    assert not old.closed
    a.close()  # ... but on its return
    assert until(lambda: old.closed)
    ok(pool)
    assert pool.size() == 0
    assert pool.stats().counters[S.CONNECTIONS_EXPIRED] == 1
    b = pool.connect()
    assert dbapi(b) is not old
    b.close()


def test_idle_connection_expires_by_lifetime_on_the_fake_clock(
    make_pool: Callable[..., SmartPool], clock: FakeClock
) -> None:
    pool = make_pool(max_lifetime=10.0)
    a = pool.connect()
    old = dbapi(a)
    a.close()
    clock.advance(5.0)
    b = pool.connect()
    assert dbapi(b) is old, "not expired yet"
    b.close()
    clock.advance(6.0)  # 11 s after it was opened: the housekeeper retires it while idle
    assert until(lambda: old.closed), "an expired idle connection was not retired"
    assert until(lambda: pool.size() == 0)
    ok(pool)
    assert pool.stats().counters[S.CONNECTIONS_EXPIRED] == 1
    c = pool.connect()
    assert dbapi(c) is not old
    c.close()


# ------------------------------------------------------------------ validation


def pings(conn: MockConnection) -> int:
    return conn.executed.count("SELECT 1")


def test_validation_is_bypassed_within_the_interval_and_done_after_it(
    make_pool: Callable[..., SmartPool], clock: FakeClock
) -> None:
    pool = make_pool(validation_query="SELECT 1", validation_interval=1.0)
    a = pool.connect()
    conn = dbapi(a)
    a.close()
    assert pings(conn) == 0, "a fresh connection needs no ping"
    clock.advance(0.5)
    pool.connect().close()
    assert pings(conn) == 0, "used 0.5 s ago: within the 1 s bypass window"
    clock.advance(0.9)  # 0.9 s after its last use (the checkin above)
    pool.connect().close()
    assert pings(conn) == 0
    clock.advance(1.1)
    pool.connect().close()
    assert pings(conn) == 1, "idle longer than validation_interval: pinged"
    st = pool.stats()
    assert (st.counters[S.VALIDATIONS], st.counters[S.VALIDATIONS_FAILED]) == (1, 0)
    # the window restarts from the last use, not from the ping
    clock.advance(0.5)
    pool.connect().close()
    assert pings(conn) == 1
    ok(pool)


def test_failed_ping_replaces_the_connection(
    make_pool: Callable[..., SmartPool], clock: FakeClock, creator: Creator
) -> None:
    pool = make_pool(validation_query="SELECT 1", validation_interval=1.0)
    a = pool.connect()
    old = dbapi(a)
    a.close()
    old.dead = True  # the server dropped it while idle
    clock.advance(2.0)
    b = pool.connect()
    new = dbapi(b)
    assert new is not old and not new.dead
    assert until(lambda: old.closed)
    assert creator.calls == 2
    st = pool.stats()
    assert st.counters[S.VALIDATIONS_FAILED] == 1
    assert st.counters[S.CHECKOUTS] == 2  # the replacement is the checkout that counts
    assert (pool.size(), pool.checkedout()) == (1, 1)
    ok(pool)
    b.close()
    ok(pool)


def test_without_validation_query_or_dialect_nothing_is_pinged(
    make_pool: Callable[..., SmartPool], clock: FakeClock
) -> None:
    pool = make_pool(validation_interval=0.0)  # a bare pool has no ping of its own
    a = pool.connect()
    conn = dbapi(a)
    a.close()
    clock.advance(5.0)
    pool.connect().close()
    assert pings(conn) == 0
    assert pool.stats().counters[S.VALIDATIONS] == 0


# ------------------------------------------------------------------ GC return, dispose


def test_return_made_while_the_pool_lock_is_held_is_deferred_not_deadlocked(
    make_pool: Callable[..., SmartPool],
) -> None:
    """A finalizer run by the garbage collector inside the pool's own bookkeeping
    (same thread, lock held) must not block on the lock: the return is finished
    by a helper thread once the lock is free."""
    pool = make_pool()
    rec = pool._do_get()
    with pool._lock:
        pool._do_return_conn(rec)  # from the lock-owning thread: must come back at once
        assert pool._core.in_use == 1, "returned under the lock: must be deferred"
        # the helper blocks on the lock this thread holds, so it is still there
        helpers = [th for th in threading.enumerate() if th.name == "smartpool-gc-return"]
        assert helpers
    assert until(lambda: pool.checkedin() == 1), "the deferred return never finished"
    ok(pool)


@pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")  # "garbage collector is trying to clean up"
def test_fairy_collected_while_the_lock_is_held_comes_back_later(
    make_pool: Callable[..., SmartPool],
) -> None:
    pool = make_pool()
    fairy = pool.connect()
    conn = dbapi(fairy)
    with pool._lock:
        del fairy  # CPython finalizes it here, in the lock-owning thread
        assert pool._core.in_use == 1
        assert any(th.name == "smartpool-gc-return" for th in threading.enumerate())
    assert until(lambda: pool._core.in_use == 0), "a collected checkout never came back"
    ok(pool)
    assert (pool.checkedin(), pool.size()) == (1, 1)
    assert not conn.closed and conn.rollbacks == 1  # reset on return, then parked idle


def test_dispose_drops_connects_started_before_it(
    make_pool: Callable[..., SmartPool], creator: Creator
) -> None:
    pool = make_pool(min_size=2)
    gate = creator.gate = threading.Event()
    creator.gate_from = 2  # the first connect passes, the refill to min_size hangs
    a = pool.connect()
    first = dbapi(a)
    assert until(lambda: creator.calls == 2), "no refill to min_size after the first connect"
    assert pool._core.pending == 1
    a.close()
    pool.dispose()
    assert first.closed, "dispose closes the idle connections"
    gate.set()  # the refill started before dispose() finishes now: it must not be kept
    assert until(lambda: creator.made[1].closed), "a connect of the disposed generation was kept"
    assert until(lambda: pool._core.pending == 0)
    ok(pool)
    assert pool.size() == 0 and pool.checkedin() == 0
    st = pool.stats()
    assert st.counters[S.CONNECTIONS_CREATED] == 2
    # the pool stays usable; the next checkout restarts background work
    b = pool.connect()
    assert dbapi(b) not in creator.made[:2]
    b.close()
    ok(pool)


def test_checkout_held_across_dispose_comes_back_normally(
    make_pool: Callable[..., SmartPool],
) -> None:
    pool = make_pool()
    a = pool.connect()
    conn = dbapi(a)
    pool.dispose()
    assert not conn.closed, "dispose never closes a connection in use"
    a.close()
    ok(pool)
    assert (pool.size(), pool.checkedin()) == (1, 1)
    b = pool.connect()
    assert dbapi(b) is conn
    b.close()


# ------------------------------------------------------------------ errors


def test_timeout_is_a_sqlalchemy_timeout_naming_the_pool_state(
    make_pool: Callable[..., SmartPool],
) -> None:
    pool = make_pool(max_size=1, acquire_timeout=0.2, name="unit-timeout")
    held = pool.connect()
    t0 = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        pool.connect()
    waited = time.monotonic() - t0
    assert isinstance(info.value, sa_exc.TimeoutError)
    msg = str(info.value)
    assert "unit-timeout" in msg
    assert "size=1 in_use=1 idle=0" in msg
    assert "max_size=1" in msg and "timeout=0.2s" in msg
    assert 0.15 <= waited < 0.2 + BOUND
    assert pool.stats().counters[S.TIMEOUTS] == 1
    held.close()
    ok(pool)


def test_sync_pool_refuses_an_async_dialect_and_back() -> None:
    async_engine = create_async_engine("sqlite+aiosqlite://")
    sync_engine = sa.create_engine("sqlite://")
    try:
        with pytest.raises(sa_exc.ArgumentError, match="AsyncSmartPool"):
            SmartPool(lambda: None, dialect=async_engine.sync_engine.dialect)
        with pytest.raises(sa_exc.ArgumentError, match="poolclass=SmartPool"):
            AsyncSmartPool(lambda: None, dialect=sync_engine.dialect)
        with pytest.raises(sa_exc.ArgumentError):
            create_async_engine("sqlite+aiosqlite://", poolclass=SmartPool)
        with pytest.raises(sa_exc.ArgumentError):
            sa.create_engine("sqlite://", poolclass=AsyncSmartPool)
    finally:
        sync_engine.dispose()

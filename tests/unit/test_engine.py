"""PoolEngine on a fake runtime: connect retries as timers, permanent errors, one deadline.

The runtime here is deterministic: jobs run inline when submitted, timers fire
only when a waiting caller (or ``sleep``) moves the fake clock to them. So the
engine's orchestration is tested without threads, sockets or real time.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from sqlalchemy_smartpool import stats as S
from sqlalchemy_smartpool.config import PoolConfig
from sqlalchemy_smartpool.core import Waiter
from sqlalchemy_smartpool.engine import PoolEngine
from sqlalchemy_smartpool.errors import NEUTRAL, AcquireTimeout

from .conftest import Conn, FakeClock


class Timer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeRuntime:
    """Inline jobs; timers fire when the fake clock is moved by a wait or a sleep."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.timers: list[tuple[float, int, Timer, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.stopped = False
        self.delays: list[float] = []

    @property
    def alive(self) -> bool:
        return not self.stopped

    def call_at(self, when: float, fn: Callable[[], None]) -> Timer:
        timer = Timer()
        heapq.heappush(self.timers, (when, next(self._seq), timer, fn))
        return timer

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        self.delays.append(delay)
        return self.call_at(self.clock() + delay, fn)

    def submit(self, fn: Callable[[], None]) -> bool:
        if self.stopped:
            return False
        fn()
        return True

    def stop(self) -> None:
        self.stopped = True

    def run_until(self, until: float, done: Callable[[], bool] = lambda: False) -> None:
        """Fire due timers in order, moving the clock, until ``done()`` or ``until``."""
        while not done():
            if not self.timers or self.timers[0][0] > until:
                self.clock.now = max(self.clock.now, until)
                return
            when, _, timer, fn = heapq.heappop(self.timers)
            self.clock.now = max(self.clock.now, when)
            if not timer.cancelled and not self.stopped:
                fn()

    def new_waiter(self, since: float) -> Waiter[Any]:
        rt = self

        class FakeWaiter(Waiter[Any]):
            __slots__ = ()

            def wait(self, timeout: float) -> bool:
                rt.run_until(rt.clock() + timeout, lambda: self.slot is not None or self.error is not None)
                return self.slot is not None or self.error is not None

        return FakeWaiter(since)

    def sleep(self, seconds: float) -> None:
        self.run_until(self.clock() + seconds)

    def check_caller(self) -> None:
        pass


class Transient(Exception):
    pass


class Permanent(Exception):
    pass


class FakeBackend:
    """Opens Conn objects; ``failures`` is a queue of errors the next opens raise."""

    def __init__(self) -> None:
        self.failures: list[BaseException] = []
        self.opened: list[Conn] = []
        self.closed: list[Conn] = []
        self.attempts = 0
        self.alive = True

    def open(self) -> Conn:
        self.attempts += 1
        if self.failures:
            raise self.failures.pop(0)
        conn = Conn()
        self.opened.append(conn)
        return conn

    def close(self, conn: Conn, reason: BaseException | None = None) -> None:
        self.closed.append(conn)

    def ping(self, conn: Conn) -> bool:
        return self.alive

    def is_transient(self, err: BaseException) -> bool:
        return isinstance(err, Transient)

    def is_permanent(self, err: BaseException) -> bool:
        return isinstance(err, Permanent)

    def socket_fd(self, conn: Conn) -> int | None:
        return None

    def server_limit(self, conn: Conn) -> int | None:
        return 7

    def closed_probe(self, conn: Conn) -> Callable[[], bool] | None:
        return None


Made = tuple[PoolEngine[Conn], FakeBackend, FakeRuntime]


def slot(conn: Conn) -> Any:
    found = PoolEngine.slot_of(conn)
    assert found is not None, "not a pooled connection"
    return found


def build_engine(clock: FakeClock, **settings: Any) -> Made:
    """An engine over :class:`FakeBackend` on a :class:`FakeRuntime`, started with one
    connection; the ``make`` fixture (conftest) hands this out bound to the test's clock."""
    config = PoolConfig(min_size=0, max_size=2, lifetime_jitter=0.0, barge_window=0.0).replace(**settings)
    backend = FakeBackend()
    runtimes: list[FakeRuntime] = []

    def runtime(name: str, workers: int) -> FakeRuntime:
        runtimes.append(FakeRuntime(clock))
        return runtimes[-1]

    engine: PoolEngine[Conn] = PoolEngine(
        config, backend, name="unit", errors=NEUTRAL, runtime=runtime, clock=clock
    )
    engine.checkin(slot(engine.checkout()))  # starts the runtime, one connection
    return engine, backend, runtimes[-1]


def test_a_transient_connect_error_is_retried_on_a_timer_not_in_a_sleep(make: Callable[..., Made]) -> None:
    engine, backend, rt = make(max_size=2, retry_attempts=2, retry_backoff_initial=0.1, retry_backoff_max=1.0)
    held = engine.checkout()
    backend.failures = [Transient("refused"), Transient("refused")]
    before = backend.attempts
    conn = engine.checkout()  # waits: the connect fails twice, each retry is a timer
    assert backend.attempts - before == 3 and conn is backend.opened[-1]
    assert [d for d in rt.delays if d < 0.5] and all(d <= 1.0 for d in rt.delays)
    stats = engine.stats()
    assert stats.counters[S.CONNECTIONS_FAILED] == 2 and stats.connections_pending == 0
    engine.checkin(slot(held))
    engine.check_invariants()


def test_a_caller_times_out_with_the_last_connect_error_while_connects_keep_failing(
    make: Callable[..., Made],
) -> None:
    engine, backend, _ = make(max_size=2, retry_attempts=1, acquire_timeout=2.0)
    held = engine.checkout()
    backend.failures = [Transient("refused")] * 1000
    with pytest.raises(AcquireTimeout, match="last connect error: Transient: refused"):
        engine.checkout()
    stats = engine.stats()
    assert stats.connections_pending == 0 and stats.requests_waiting == 0
    assert stats.counters[S.TIMEOUTS] == 1
    engine.checkin(slot(held))
    engine.check_invariants()


def test_a_permanent_error_reaches_the_caller_at_once_and_stops_refilling(
    make: Callable[..., Made], clock: FakeClock
) -> None:
    engine, backend, rt = make(min_size=2, max_size=3, retry_attempts=3)
    rt.run_until(clock() + 1)  # refills to min_size: a connect has worked
    assert engine.stats().pool_size == 2
    a, b = engine.checkout(), engine.checkout()
    backend.failures = [Permanent("password authentication failed")]
    t0 = clock()
    with pytest.raises(Permanent):
        engine.checkout()
    assert clock() == t0, "no waiting for a connect that cannot work"
    engine.checkin(slot(a), usable=False)  # one gone: a pool that refilled would dial now
    attempts = backend.attempts
    rt.run_until(clock() + 5)  # ten housekeeping ticks
    assert backend.attempts == attempts, "nobody asked: no connect after a permanent error"
    engine.checkin(slot(b))
    engine.check_invariants()


def test_the_server_limit_is_read_once_and_reported(make: Callable[..., Made]) -> None:
    engine, _, _ = make(max_size=9)
    assert engine.stats().server_max_connections == 7



@pytest.mark.parametrize(("window", "served_after"), [(0.0, 0.001), (0.005, 0.005)])
def test_a_connection_kept_for_a_barging_caller_reaches_the_queue_when_the_window_ends(
    make: Callable[..., Made], clock: FakeClock, window: float, served_after: float
) -> None:
    engine, _, rt = make(max_size=1, barge_window=window)
    held = engine.checkout()
    rt.call_at(clock() + 0.001, lambda: engine.checkin(slot(held)))  # returned while we wait
    t0 = clock()
    assert engine.checkout() is held
    assert clock() - t0 == pytest.approx(served_after)
    engine.checkin(slot(held))
    engine.check_invariants()


def test_return_judged_gives_the_slot_back_whatever_interrupts_the_look(make: Callable[..., Made]) -> None:
    engine, backend, _ = make(max_size=2)
    conn = engine.checkout()

    def interrupted() -> tuple[bool, bool]:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.return_judged(slot(conn), interrupted)
    stats = engine.stats()
    assert stats.pool_in_use == 0 and conn in backend.closed, "no slot lost, the connection not trusted"
    engine.check_invariants()


def test_return_judged_a_connection_that_died_in_use_makes_older_ones_suspect(
    make: Callable[..., Made], clock: FakeClock
) -> None:
    engine, _, _ = make(max_size=2)
    older = engine.checkout()
    clock.now += 0.01
    dead = engine.checkout()
    assert engine.is_leased(slot(dead))
    engine.checkin(slot(older))
    engine.return_judged(slot(dead), lambda: (False, True))
    assert not engine.is_leased(slot(dead))
    assert slot(older).validated_at < engine.core.suspect_before, "validated before its next use"
    assert engine.connections() == [older] and engine.connections(in_use_only=True) == []
    engine.check_invariants()


def test_return_judged_usable_goes_back_idle(make: Callable[..., Made]) -> None:
    engine, _, _ = make(max_size=2)
    conn = engine.checkout()
    assert engine.connections(in_use_only=True) == [conn]
    engine.return_judged(slot(conn), lambda: (True, False))
    assert engine.connections() == [conn] and engine.stats().pool_idle == 1
    engine.check_invariants()

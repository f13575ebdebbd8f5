"""PoolCore's live operations: a lowered max_size, drain epochs, pause, retiring (pure policy).

The transitional bound after ``max_size`` is lowered (docs/operations.md):
``size + pending`` may stay above it only by connections that were checked
out (or being opened, or pinged) at that moment and are still out; the
excess never grows, and no connection idles while it lasts. The state
machine at the end drives random interleavings of checkouts, returns,
connects, pings, resizes, drains and pauses against that rule.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, precondition, rule

from sqlalchemy_smartpool import stats as S
from sqlalchemy_smartpool.config import PoolConfig
from sqlalchemy_smartpool.core import MARKED, PoolCore, Slot, Waiter

from .conftest import Conn, FakeClock
from .test_core_stateful import PoolMachine

Make = Callable[..., PoolCore[Conn]]


def fill(core: PoolCore[Conn], now: float, n: int) -> list[Slot[Conn]]:
    """Open ``n`` connections (as background connects do) and leave them idle."""
    slots = []
    for _ in range(n):
        core.pending += 1
        slot, waiter = core.connect_succeeded(Conn(), now)
        assert waiter is None
        slots.append(slot)
    return slots


def take(core: PoolCore[Conn], now: float, n: int) -> list[Slot[Conn]]:
    out = []
    for _ in range(n):
        slot = core.take_idle(now)
        assert slot is not None
        out.append(slot)
    return out


def test_a_lowered_max_closes_the_least_recently_used_idle_connections_first(
    make_core: Make, clock: FakeClock
) -> None:
    core = make_core(max_size=6)
    slots = fill(core, clock(), 6)
    for i, slot in enumerate(slots):
        slot.last_used = clock() + i  # slots[0] is the least recently used
    close, drop = core.apply_config(core.config.replace(max_size=4))
    assert [s.id for s in close] == [slots[0].id, slots[1].id] and not drop
    assert core.size == 4 and core.counters[S.CONNECTIONS_RETIRED] == 2
    core.check_invariants()


def test_in_use_connections_above_a_lowered_max_close_on_return_never_under_their_holder(
    make_core: Make, clock: FakeClock
) -> None:
    core = make_core(max_size=6, max_lifetime=100.0)
    fill(core, clock(), 6)
    held = take(core, clock(), 5)  # one idle, five out
    own = {s.id: s.expires_at for s in held}
    close, _ = core.apply_config(core.config.replace(max_size=2))
    assert len(close) == 1 and core.size == 5
    assert all(s.expires_at == MARKED for s in held) and set(core.over_marks) == {s.id for s in held}
    core.check_invariants()
    # whichever come back first close, until the pool fits
    for slot in held[:3]:
        waiter, closed = core.checkin(slot, clock())
        assert closed and waiter is None
        core.check_invariants()
    assert core.size == 2 and core.counters[S.CONNECTIONS_RETIRED] == 4
    assert not core.over_marks, "the pool fits: the others keep their connections"
    assert [s.expires_at for s in held[3:]] == [own[s.id] for s in held[3:]], "their own lifetimes back"
    assert core.checkin(held[3], clock()) == (None, False) and len(core.idle) == 1


def test_connects_in_flight_above_a_lowered_max_are_to_be_dropped(make_core: Make, clock: FakeClock) -> None:
    core = make_core(max_size=6)
    take(core, clock(), 0)
    fill(core, clock(), 2)
    take(core, clock(), 2)
    core.pending = 3
    _, drop = core.apply_config(core.config.replace(max_size=3))
    assert drop and core.stale_connects == 3
    core.check_invariants()  # 2 + 3 > 3: allowed while those three are in flight
    core.connect_dropped()
    core.connect_dropped()
    core.connect_dropped()
    assert core.stale_connects == 0 and core.pending == 0
    core.check_invariants()


def test_no_drop_when_the_connects_in_flight_still_fit(make_core: Make, clock: FakeClock) -> None:
    core = make_core(max_size=6)
    fill(core, clock(), 2)
    core.pending = 1
    _, drop = core.apply_config(core.config.replace(max_size=4))
    assert not drop and core.stale_connects == 0


def test_raising_max_again_lifts_the_marks(make_core: Make, clock: FakeClock) -> None:
    core = make_core(max_size=4)
    fill(core, clock(), 4)
    held = take(core, clock(), 4)
    core.apply_config(core.config.replace(max_size=2))
    assert len(core.over_marks) == 4
    core.apply_config(core.config.replace(max_size=8))
    assert not core.over_marks and all(s.expires_at != MARKED for s in held)
    for slot in held:
        assert core.checkin(slot, clock()) == (None, False)
    assert len(core.idle) == 4


def test_drain_closes_idle_now_and_in_use_on_return_even_with_waiters(
    make_core: Make, clock: FakeClock
) -> None:
    core = make_core(max_size=3)
    fill(core, clock(), 3)
    held = take(core, clock(), 2)
    idle = core.drain()
    assert len(idle) == 1 and core.size == 2 and core.epoch == 1
    waiter: Waiter[Conn] = Waiter(clock())
    core.add_waiter(waiter)
    served, closed = core.checkin(held[0], clock())
    assert served is None and closed, "an old connection serves nobody, not even a waiter"
    fresh, to = core.connect_succeeded(Conn(), clock()) if core.plan_connects(clock()) else (None, None)
    assert fresh is not None and to is waiter and fresh.epoch == 1
    assert core.checkin(fresh, clock()) == (None, False), "a connection of the new epoch is reused"
    assert core.checkin(held[1], clock())[1]
    assert core.counters[S.CONNECTIONS_RETIRED] == 3
    core.check_invariants()


def test_a_connection_out_for_a_ping_during_a_drain_is_closed_when_it_comes_back(
    make_core: Make, clock: FakeClock
) -> None:
    core = make_core(max_size=2, keepalive_interval=1.0)
    fill(core, clock(), 1)
    clock.advance(2)
    plan = core.housekeep(clock())
    assert len(plan.ping) == 1
    core.drain()
    assert core.pinged(plan.ping[0], True, clock()) == (None, True)
    assert core.size == 0
    core.check_invariants()


def test_pause_holds_checkouts_parks_returns_and_opens_nothing(make_core: Make, clock: FakeClock) -> None:
    core = make_core(max_size=3)
    fill(core, clock(), 2)
    held = take(core, clock(), 1)[0]
    core.pause()
    assert core.take_idle(clock()) is None
    waiters: list[Waiter[Conn]] = [Waiter(clock()) for _ in range(3)]
    for w in waiters:
        core.add_waiter(w)
    assert core.plan_connects(clock()) == 0, "nothing is opened while paused"
    assert core.reserve_probe_connect() is not None and core.take_for_probe() is None
    assert core.checkin(held, clock()) == (None, False) and len(core.idle) == 2
    core.pending += 1
    _, to = core.connect_succeeded(Conn(), clock())  # a connect that was in flight
    assert to is None and len(core.idle) == 3
    core.check_invariants()
    assert "paused" in core.describe()
    served = core.resume(clock())
    assert served == waiters, "in their order"
    assert all(w.slot is not None for w in waiters) and not core.idle
    core.check_invariants()


def test_a_retiring_pool_serves_its_waiters_then_closes_what_comes_back(
    make_core: Make, clock: FakeClock
) -> None:
    core = make_core(min_size=2, max_size=2)
    fill(core, clock(), 2)
    a, b = take(core, clock(), 2)
    waiter: Waiter[Conn] = Waiter(clock())
    core.add_waiter(waiter)
    assert core.retire() == [] and not core.refill
    assert core.checkin(a, clock()) == (waiter, False), "a queued caller still gets a connection"
    assert waiter.slot is a
    assert core.checkin(b, clock()) == (None, True)
    assert not core.retired
    assert core.checkin(a, clock()) == (None, True)
    assert core.retired and core.size == 0 and core.plan_connects(clock()) == 0
    core.check_invariants()


def test_a_new_lifetime_is_drawn_from_each_connections_creation(make_core: Make, clock: FakeClock) -> None:
    core = make_core(max_size=3, max_lifetime=None)
    slots = fill(core, clock(), 2)
    created = clock()
    held = take(core, clock(), 1)[0]
    clock.advance(50)
    core.apply_config(core.config.replace(max_lifetime=30.0))
    assert all(s.expires_at == created + 30.0 for s in slots)
    assert core.checkin(held, clock()) == (None, True), "past its new lifetime: retired on return"
    assert len(core.housekeep(clock()).close) == 1


def test_the_breaker_takes_new_settings_for_the_next_decision(make_core: Make, clock: FakeClock) -> None:
    core = make_core(breaker_failure_threshold=5)
    for _ in range(2):
        core.note_connect_failure(OSError("refused"), clock())
    assert not core.breaker.is_open
    core.apply_config(core.config.replace(breaker_failure_threshold=3))
    core.note_connect_failure(OSError("refused"), clock())
    assert core.breaker.is_open
    core.apply_config(core.config.replace(breaker_enabled=False))
    assert not core.breaker.is_open


def test_reuse_order_changes_at_once(make_core: Make, clock: FakeClock) -> None:
    core = make_core(max_size=3, reuse="lifo")
    slots = fill(core, clock(), 3)
    core.apply_config(core.config.replace(reuse="fifo"))
    assert core.take_idle(clock()) is slots[0]


# -- the state machine -------------------------------------------------------------------


class LivePoolMachine(PoolMachine):
    """The core's state machine with live operations mixed in."""

    def __init__(self) -> None:
        super().__init__()
        self.stale = 0  # of the connects in flight, those the engine drops on arrival
        self.excess_cap = 0  # the excess over max_size may only shrink after a change

    @initialize()
    def no_cap(self) -> None:
        self.excess_cap = 0

    def _excess(self) -> int:
        return self.c.size + self.c.pending - self.c.config.max_size

    @rule(min_size=st.integers(0, 3), extra=st.integers(0, 4))
    def resize(self, min_size: int, extra: int) -> None:
        if self.c.closed:
            return
        new = self.c.config.replace(min_size=min_size, max_size=max(1, min_size + extra))
        held_ids = {s.id for s in self.held + self.pinging}
        close, drop = self.c.apply_config(new)
        assert not {s.id for s in close} & held_ids, "closed under its holder"
        if drop:
            self.stale = self.pending
        self.excess_cap = max(0, self._excess())
        self._plan()

    @precondition(lambda self: self.steps % 5 == 4)
    @rule()
    def drain(self) -> None:
        held_ids = {s.id for s in self.held + self.pinging}
        idle = self.c.drain()
        assert not {s.id for s in idle} & held_ids
        self.stale = self.pending  # the engine bumps its generation: all are dropped on arrival
        self._plan()

    @rule()
    def pause(self) -> None:
        self.c.pause()

    @rule()
    def resume(self) -> None:
        if not self.c.paused:
            return
        for waiter in self.c.resume(self.clock()):
            assert waiter.slot is not None
            self._served(waiter, waiter.slot)
        self._plan()

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def connect_succeeds(self, data: st.DataObject) -> None:  # type: ignore[override]
        stale = self.stale and data.draw(st.booleans(), label="the stale one")
        if not stale and self.stale == self.pending:
            stale = True
        if stale:
            self.pending -= 1
            self.stale -= 1
            self.c.connect_dropped()  # the engine closes it
            self._plan()
            return
        self.pending -= 1
        slot, waiter = self.c.connect_succeeded(Conn(), self.clock())
        if waiter is not None:
            self._served(waiter, slot)
        self._plan()

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def connect_succeeds_too(self, data: st.DataObject) -> None:  # type: ignore[override]
        self.connect_succeeds(data)

    @precondition(lambda self: self.pending)
    @rule(attempts=st.integers(0, 2))
    def connect_gives_up(self, attempts: int) -> None:
        if self.stale:
            self.stale -= 1  # let it be a stale one: the worst case for the allowance
        super().connect_gives_up(attempts)

    @precondition(lambda self: self.pinging)
    @rule(data=st.data(), ok=st.booleans())
    def ping_done(self, data: st.DataObject, ok: bool) -> None:
        slot = self.pinging.pop(data.draw(st.integers(0, len(self.pinging) - 1), label="pinged"))
        waiter, close = self.c.pinged(slot, ok, self.clock())
        if close:
            self._plan()
        elif waiter is not None:
            self._served(waiter, slot)

    @rule()
    def housekeeping(self) -> None:
        if self.c.paused:  # waiters may well have nothing coming while paused
            plan = self.c.housekeep(self.clock())
            assert plan.connects == 0, "nothing is opened while paused"
            self.pinging.extend(plan.ping)
            return
        super().housekeeping()

    @invariant()
    def consistent(self) -> None:
        self.steps += 1
        if self.core is None:
            return
        core = self.core
        core.check_invariants()
        assert core.pending == self.pending
        assert list(core.waiters) == self.queue, "queue order differs from arrival order"
        assert set(core.leased) == {s.id for s in self.held}
        assert core.maintaining == len(self.pinging)
        excess = self._excess()
        assert excess <= self.excess_cap, f"the excess over max_size grew: {excess} > {self.excess_cap}"
        self.excess_cap = min(self.excess_cap, max(0, excess))
        if core.size > core.config.max_size:
            assert not core.idle, "a connection idles above max_size"
        if core.paused:
            assert all(w.slot is None for w in self.queue)
        for slot in core.idle:
            assert slot.epoch == core.epoch, "a drained connection idles"


LivePoolMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLivePoolCoreStateful = LivePoolMachine.TestCase


def test_the_machine_really_exercises_shrinking() -> None:
    """The rules reach the transition: a run of the machine's own moves, with a fixed seed."""
    rng = random.Random(7)
    clock = FakeClock()
    core: PoolCore[Conn] = PoolCore(PoolConfig(min_size=0, max_size=6, lifetime_jitter=0.0), clock, rng=rng)
    fill(core, clock(), 6)
    held = take(core, clock(), 6)
    core.apply_config(core.config.replace(max_size=2))
    assert core.size - core.config.max_size == 4 and len(core.over_marks) == 6
    rng.shuffle(held)
    closed = [core.checkin(s, clock())[1] for s in held]
    assert closed == [True] * 4 + [False] * 2

"""PoolCore, the pure state machine, driven step by step on a fake clock.

Connections are plain objects; every test re-checks the core's own
invariants after each step through ``step()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sqlalchemy_smartpool import stats as S
from sqlalchemy_smartpool.breaker import BreakerState
from sqlalchemy_smartpool.core import HousekeepingPlan, PoolCore, Slot, Waiter
from sqlalchemy_smartpool.errors import CircuitOpen as CircuitOpenError
from sqlalchemy_smartpool.errors import PoolClosedError as PoolClosed
from sqlalchemy_smartpool.errors import WaitQueueFull as TooManyWaiters

from .conftest import Conn, FakeClock

Core = PoolCore[Conn]
MakeCore = Callable[..., Core]


def ok(core: Core) -> Core:
    core.check_invariants()
    return core


def connect(core: Core, clock: FakeClock, n: int = 1) -> list[tuple[Slot[Conn], Waiter[Conn] | None]]:
    """Finish ``n`` planned connects successfully."""
    out = []
    for _ in range(n):
        assert core.pending > 0, "no connect was planned"
        out.append(core.connect_succeeded(Conn(), clock()))
        ok(core)
    return out


def fill_idle(core: Core, clock: FakeClock, n: int) -> list[Slot[Conn]]:
    """Open ``n`` connections and park them idle (bypassing the connect planner)."""
    core.pending += n
    slots = [slot for slot, waiter in connect(core, clock, n) if waiter is None]
    assert len(slots) == n
    return slots


def checkout(core: Core, clock: FakeClock) -> Slot[Conn]:
    slot = core.take_idle(clock())
    assert slot is not None
    ok(core)
    return slot


def wait(core: Core, clock: FakeClock) -> Waiter[Conn]:
    w: Waiter[Conn] = Waiter(clock())
    core.add_waiter(w)
    ok(core)
    return w


def fail_connect(core: Core, clock: FakeClock, error: BaseException | None = None) -> list[Waiter[Conn]]:
    failed = core.connect_failed(error or ConnectionRefusedError(), clock())
    ok(core)
    return failed


def counters(core: Core) -> dict[str, int]:
    return core.counter_snapshot()


# -- checkout -------------------------------------------------------------------------


def test_fast_path_takes_an_idle_connection(make_core: MakeCore, clock: FakeClock) -> None:
    core = ok(make_core())
    assert core.take_idle(clock()) is None
    (slot,) = fill_idle(core, clock, 1)
    clock.advance(1)
    got = checkout(core, clock)
    assert got is slot and got.checked_out_at == clock()
    assert (core.size, core.in_use, len(core.idle)) == (1, 1, 0)
    assert counters(core)[S.CHECKOUTS] == 1 and counters(core)[S.CHECKOUTS_WAITED] == 0
    assert core.take_idle(clock()) is None


def test_lifo_keeps_the_most_recently_returned_hot(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(reuse="lifo")
    fill_idle(core, clock, 3)
    a, b, c = (checkout(core, clock) for _ in range(3))
    for slot in (a, b, c):
        core.checkin(slot, clock.advance(1))
    assert checkout(core, clock) is c
    assert checkout(core, clock) is b


def test_fifo_rotates_through_all(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(reuse="fifo")
    fill_idle(core, clock, 3)
    a, b, c = (checkout(core, clock) for _ in range(3))
    for slot in (a, b, c):
        core.checkin(slot, clock.advance(1))
    assert checkout(core, clock) is a
    assert checkout(core, clock) is b


def test_waiters_are_served_in_arrival_order(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(max_size=1, max_concurrent_connects=1)
    w1, w2, w3 = wait(core, clock), wait(core, clock), wait(core, clock)
    assert core.plan_connects(clock()) == 1, "one connect for the queue, bounded by max_size"
    ((slot, served),) = connect(core, clock)
    assert served is w1 and w1.slot is slot and w2.slot is None
    waiter, close = core.checkin(slot, clock.advance(1))
    assert (waiter, close) == (w2, False) and w2.slot is slot
    ok(core)
    waiter, _ = core.checkin(slot, clock.advance(1))
    assert waiter is w3
    ok(core)
    assert counters(core)[S.CHECKOUTS_WAITED] == 3 and counters(core)[S.CHECKOUTS] == 3


def test_no_barging_while_anyone_waits(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(max_size=1)
    (slot,) = fill_idle(core, clock, 1)
    held = checkout(core, clock)
    w = wait(core, clock)
    # the returned connection goes straight to the waiter, never through the idle list
    waiter, _ = core.checkin(held, clock.advance(1))
    assert waiter is w and not core.idle
    assert core.take_idle(clock()) is None, "a newcomer cannot take it"
    assert slot is held


def test_take_idle_refuses_while_waiters_are_queued(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core()
    fill_idle(core, clock, 1)
    core.waiters.append(Waiter(clock()))  # a waiter the adapter queued ahead of this caller
    assert core.take_idle(clock()) is None


def test_remove_waiter(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core()
    w1, w2 = wait(core, clock), wait(core, clock)
    assert core.remove_waiter(w1) is True
    assert list(core.waiters) == [w2]
    assert core.remove_waiter(w1) is False, "already gone"
    core.pending += 1
    ((_, served),) = connect(core, clock)
    assert served is w2
    assert core.remove_waiter(w2) is False, "served: the caller must use its slot"
    core.note_timeout()
    assert counters(core)[S.TIMEOUTS] == 1


def test_max_waiting_fails_fast(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(max_waiting=2)
    wait(core, clock)
    wait(core, clock)
    with pytest.raises(TooManyWaiters) as info:
        wait(core, clock)
    assert "max_waiting=2" in str(info.value) and "waiting=2" in str(info.value)
    assert len(core.waiters) == 2 and counters(core)[S.REJECTED_FULL] == 1


def test_unbounded_wait_queue_by_default(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core()
    for _ in range(500):
        wait(core, clock)
    assert len(core.waiters) == 500


# -- growth -----------------------------------------------------------------------------


def test_plan_connects_refills_to_min_size(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(min_size=3, max_size=10, max_concurrent_connects=2)
    assert core.plan_connects(clock()) == 2, "bounded by max_concurrent_connects"
    assert core.plan_connects(clock()) == 0, "both slots in flight"
    connect(core, clock)
    assert core.plan_connects(clock()) == 1, "one more to reach min_size"
    connect(core, clock, 2)
    assert core.plan_connects(clock()) == 0 and core.size == 3 and len(core.idle) == 3


def test_plan_connects_for_waiters_bounded_by_max_size(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(max_size=3, max_concurrent_connects=8)
    fill_idle(core, clock, 1)
    checkout(core, clock)
    for _ in range(6):
        wait(core, clock)
    assert core.plan_connects(clock()) == 2, "room for 2 under max_size=3"
    assert core.size + core.pending == 3
    assert core.plan_connects(clock()) == 0


def test_plan_connects_counts_connects_in_flight_against_waiters(
    make_core: MakeCore, clock: FakeClock
) -> None:
    core = make_core(max_size=10, max_concurrent_connects=4)
    wait(core, clock)
    assert core.plan_connects(clock()) == 1
    assert core.plan_connects(clock()) == 0, "the waiter is already covered"
    wait(core, clock)
    assert core.plan_connects(clock()) == 1


def test_connect_succeeded_serves_the_longest_waiter(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core()
    w1, w2 = wait(core, clock), wait(core, clock)
    assert core.plan_connects(clock()) == 2
    clock.advance(2)
    (slot1, s1), (slot2, s2) = connect(core, clock, 2)
    assert (s1, s2) == (w1, w2)
    assert w1.slot is slot1 and w2.slot is slot2
    assert slot1.created_at == clock() and slot1.checked_out_at == clock()
    assert core.in_use == 2 and counters(core)[S.CONNECTIONS_CREATED] == 2


def test_a_new_pool_dials_only_for_waiters_until_a_connect_worked(
    make_core: MakeCore, clock: FakeClock
) -> None:
    core = make_core(refill=False, min_size=3, max_concurrent_connects=3)
    assert core.plan_connects(clock()) == 0, "nobody asked: no connect"
    core.add_waiter(Waiter(clock()))
    assert core.plan_connects(clock()) == 1, "one for the waiter, no prewarm yet"
    connect(core, clock)
    assert core.refill
    assert core.plan_connects(clock()) == 2, "it worked: now restore min_size"


def test_a_permanent_connect_error_stops_refilling(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(min_size=3, max_concurrent_connects=3)
    assert core.plan_connects(clock()) == 3
    core.connect_failed(RuntimeError("password authentication failed"), clock(), permanent=True)
    assert not core.refill
    fail_connect(core, clock)
    fail_connect(core, clock)
    assert core.plan_connects(clock()) == 0, "an unused pool dials nobody after a permanent error"


def test_connect_succeeded_without_waiters_parks_idle(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(min_size=1)
    assert core.plan_connects(clock()) == 1
    ((slot, waiter),) = connect(core, clock)
    assert waiter is None and list(core.idle) == [slot]


# -- connect failures and the breaker ----------------------------------------------------


def test_connect_failed_opens_breaker_and_fails_hopeless_waiters(
    make_core: MakeCore, clock: FakeClock
) -> None:
    core = make_core(breaker_failure_threshold=2, breaker_jitter=0.0, max_concurrent_connects=1)
    w1, w2 = wait(core, clock), wait(core, clock)
    assert core.plan_connects(clock()) == 1
    assert fail_connect(core, clock) == [], "breaker still closed: keep waiting"
    assert core.plan_connects(clock()) == 1
    failed = fail_connect(core, clock, ConnectionRefusedError("host db1 password=s3cret"))
    assert failed == [w1, w2] and not core.waiters
    assert core.breaker.state is BreakerState.OPEN
    err = w1.error
    assert isinstance(err, CircuitOpenError) and w2.error is err
    assert err.retry_after == pytest.approx(core.config.breaker.backoff_initial)
    message = str(err)
    assert "2 failed connects" in message and "ConnectionRefusedError" in message
    assert "s3cret" not in message and "size=0" in message
    c = counters(core)
    assert c[S.CONNECTIONS_FAILED] == 2 and c[S.REJECTED_BREAKER] == 2 and c[S.BREAKER_OPENED] == 1


def test_waiters_keep_waiting_while_a_connect_is_in_flight(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(breaker_failure_threshold=1, max_concurrent_connects=2)
    w = wait(core, clock)
    wait(core, clock)
    assert core.plan_connects(clock()) == 2
    assert fail_connect(core, clock) == [], "the other connect may still succeed"
    ((_, served),) = connect(core, clock)
    assert served is w and not core.breaker.is_open


def test_waiters_keep_waiting_while_connections_are_in_use(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(breaker_failure_threshold=1)
    fill_idle(core, clock, 1)
    held = checkout(core, clock)
    w = wait(core, clock)
    core.plan_connects(clock())
    assert fail_connect(core, clock) == [] and core.breaker.is_open
    waiter, _ = core.checkin(held, clock.advance(1))
    assert waiter is w, "a returned connection still serves the queue"


def test_add_waiter_fails_fast_when_breaker_open_and_nothing_can_come_back(
    make_core: MakeCore, clock: FakeClock
) -> None:
    core = make_core(breaker_failure_threshold=1, breaker_jitter=0.0)
    core.plan_connects(clock())  # nothing wanted: min_size=0, no waiters
    core.pending += 1
    fail_connect(core, clock)
    with pytest.raises(CircuitOpenError) as info:
        wait(core, clock)
    assert info.value.retry_after > 0 and counters(core)[S.REJECTED_BREAKER] == 1
    clock.now = core.breaker.next_probe_at  # probe due: waiting for it makes sense again
    w = wait(core, clock)
    assert core.plan_connects(clock()) == 1 and core.breaker.state is BreakerState.HALF_OPEN
    assert core.plan_connects(clock()) == 0, "one probe at a time"
    ((_, served),) = connect(core, clock)
    assert served is w and not core.breaker.is_open


def test_add_waiter_allowed_when_breaker_open_but_a_connection_is_in_use(
    make_core: MakeCore, clock: FakeClock
) -> None:
    core = make_core(breaker_failure_threshold=1)
    fill_idle(core, clock, 1)
    checkout(core, clock)
    core.pending += 1
    fail_connect(core, clock)
    assert core.breaker.is_open
    wait(core, clock)


def test_half_open_plans_exactly_one_probe(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(breaker_failure_threshold=1, min_size=3, max_concurrent_connects=3)
    assert core.plan_connects(clock()) == 3
    fail_connect(core, clock)
    fail_connect(core, clock)
    fail_connect(core, clock)
    assert core.plan_connects(clock()) == 0, "open: no dialing before the probe time"
    clock.now = core.breaker.next_probe_at
    assert core.plan_connects(clock()) == 1
    assert core.plan_connects(clock.advance(60)) == 0


def test_note_connect_failure_reports_whether_retrying_helps(make_core: MakeCore) -> None:
    core = make_core(breaker_failure_threshold=2)
    assert core.note_connect_failure(OSError(), 0.0) is True
    assert core.note_connect_failure(OSError(), 0.0) is False, "the breaker opened"
    assert counters(core)[S.CONNECTIONS_FAILED] == 2


def test_the_probe_is_the_only_connect_in_flight(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(breaker_failure_threshold=1, min_size=2, max_concurrent_connects=2)
    assert core.plan_connects(clock()) == 2
    fail_connect(core, clock)  # opens; the other connect is still dialing
    probed = False
    for _ in range(4):
        clock.advance(3600)
        core.plan_connects(clock())
        if core.breaker.state is BreakerState.HALF_OPEN:
            probed = True
            assert core.pending == 1, "whatever fails next is taken for the probe"
        if core.pending:
            fail_connect(core, clock)
    assert probed


# -- checkin, lifetimes, discards -------------------------------------------------------


def test_unusable_checkin_shrinks_and_plans_a_replacement(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(min_size=2)
    fill_idle(core, clock, 2)
    slot = checkout(core, clock)
    assert core.checkin(slot, clock(), usable=False) == (None, True)
    ok(core)
    assert core.size == 1 and counters(core)[S.CONNECTIONS_INVALIDATED] == 1
    assert core.plan_connects(clock()) == 1


def test_unusable_checkin_with_waiters_replaces_for_them(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(max_size=1)
    fill_idle(core, clock, 1)
    slot = checkout(core, clock)
    w = wait(core, clock)
    assert core.checkin(slot, clock(), usable=False) == (None, True)
    assert core.plan_connects(clock()) == 1
    ((_, served),) = connect(core, clock)
    assert served is w


def test_lifetime_is_jittered_within_bounds(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(max_lifetime=100.0, lifetime_jitter=0.2)
    ends = [core.new_slot(Conn(), clock()).expires_at - clock() for _ in range(200)]
    assert all(80.0 < e <= 100.0 for e in ends)
    assert max(ends) - min(ends) > 10, "spread, so connections do not all retire together"
    assert make_core(max_lifetime=None).new_slot(Conn(), 0.0).expires_at == float("inf")


def test_expired_connection_is_closed_at_checkin_never_while_leased(
    make_core: MakeCore, clock: FakeClock
) -> None:
    core = make_core(max_lifetime=100.0, lifetime_jitter=0.0)
    fill_idle(core, clock, 2)
    young = checkout(core, clock)
    old = checkout(core, clock)
    clock.advance(150)
    plan = core.housekeep(clock())
    assert plan.close == [] and core.size == 2, "leased: never retired under the user"
    ok(core)
    assert core.checkin(old, clock()) == (None, True)
    ok(core)
    assert core.size == 1 and counters(core)[S.CONNECTIONS_EXPIRED] == 1
    young.expires_at = clock() + 1  # not yet due
    assert core.checkin(young, clock()) == (None, False)


def test_expired_idle_connections_are_closed_by_housekeeping(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(max_lifetime=100.0, lifetime_jitter=0.1, min_size=2, max_size=4)
    slots = fill_idle(core, clock, 2)
    clock.advance(89)
    assert core.housekeep(clock()).close == []
    clock.advance(11)  # every jittered end is in (90, 100]
    plan = core.housekeep(clock())
    ok(core)
    assert sorted(s.id for s in plan.close) == sorted(s.id for s in slots)
    assert core.size == 0 and counters(core)[S.CONNECTIONS_EXPIRED] == 2
    assert plan.connects == 2, "replaced to keep min_size"


def test_idle_connections_shrink_to_min_after_idle_timeout(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(min_size=1, idle_timeout=60.0, max_lifetime=None)
    fill_idle(core, clock, 3)
    a, b, c = (checkout(core, clock) for _ in range(3))
    core.checkin(a, clock())
    core.checkin(b, clock.advance(10))
    core.checkin(c, clock.advance(10))
    assert core.housekeep(clock.advance(35)).close == [], "a idle 55s: not yet"
    plan = core.housekeep(clock.advance(40))  # a 95s, b 85s, c 75s idle: all stale
    ok(core)
    assert plan.close == [a, b], "longest idle first, down to min_size"
    assert list(core.idle) == [c] and core.size == 1
    assert counters(core)[S.CONNECTIONS_IDLE_CLOSED] == 2
    assert core.housekeep(clock.advance(1000)).close == [], "never below min_size"


def test_keepalive_pings_long_idle_connections(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(keepalive_interval=30.0, idle_timeout=600.0, max_lifetime=None)
    a, b = fill_idle(core, clock, 2)
    clock.advance(20)
    core.checkin(checkout(core, clock), clock())  # b (lifo) used again at +20
    plan = core.housekeep(clock.advance(10))
    assert plan.ping == [a] and core.maintaining == 1 and list(core.idle) == [b]
    ok(core)
    assert core.take_idle(clock()) is b, "a is out for its ping"
    waiter, close = core.pinged(a, True, clock.advance(1))
    ok(core)
    assert (waiter, close) == (None, False) and a.validated_at == clock()
    assert a.last_used == clock() - 31, "a ping is no use: idle time still counts"
    assert core.housekeep(clock.advance(29)).ping == [], "validated 29s ago"
    assert counters(core)[S.KEEPALIVES] == 1


def test_failed_keepalive_drops_the_connection(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(keepalive_interval=5.0, min_size=1, max_lifetime=None)
    (a,) = fill_idle(core, clock, 1)
    assert core.housekeep(clock.advance(5)).ping == [a]
    assert core.pinged(a, False, clock()) == (None, True)
    ok(core)
    assert core.size == 0 and core.maintaining == 0
    assert core.plan_connects(clock()) == 1


def test_pinged_connection_serves_a_waiter(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(keepalive_interval=5.0, max_size=1, max_lifetime=None)
    (a,) = fill_idle(core, clock, 1)
    core.housekeep(clock.advance(5))
    w = wait(core, clock)
    assert core.plan_connects(clock()) == 0, "max_size reached: the pinged one will do"
    waiter, close = core.pinged(a, True, clock())
    ok(core)
    assert (waiter, close) == (w, False) and w.slot is a


def test_discard_leased_and_maintained(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(keepalive_interval=5.0, max_lifetime=None)
    a, _b = fill_idle(core, clock, 2)
    held = checkout(core, clock)
    core.discard(held)
    ok(core)
    plan = core.housekeep(clock.advance(5))
    core.discard(plan.ping[0])
    ok(core)
    assert core.size == 0 and core.maintaining == 0 and core.in_use == 0
    assert counters(core)[S.CONNECTIONS_INVALIDATED] == 2
    assert a in (held, plan.ping[0])


def test_leaks_are_selected_by_threshold(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(leak_detection_threshold=10.0)
    fill_idle(core, clock, 3)
    tracked = checkout(core, clock)
    tracked.lease = object()
    untracked = checkout(core, clock)  # no lease captured: nothing to report
    clock.advance(5)
    late = checkout(core, clock)
    late.lease = object()
    assert core.housekeep(clock.advance(5)).leaks == [tracked]
    assert sorted(s.id for s in core.housekeep(clock.advance(5)).leaks) == sorted([tracked.id, late.id])
    assert untracked.lease is None
    assert make_core().housekeep(clock()).leaks == [], "threshold None: off"


def test_housekeep_without_work_is_empty(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core()
    plan = core.housekeep(clock())
    assert not plan and isinstance(plan, HousekeepingPlan)
    plan.connects = 1
    assert plan


# -- validation -----------------------------------------------------------------------


def test_validation_due_after_validation_interval(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(validation_interval=2.0)
    (slot,) = fill_idle(core, clock, 1)
    assert not core.validation_due(slot, clock.advance(2.0)), "exactly the interval: still fresh"
    assert core.validation_due(slot, clock.advance(0.01))


def test_validation_off(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(validate_on_checkout=False)
    (slot,) = fill_idle(core, clock, 1)
    core.mark_suspect(clock.advance(100))
    assert not core.validation_due(slot, clock())


def test_mark_suspect_forces_validation_of_older_connections(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(validation_interval=60.0)
    (old,) = fill_idle(core, clock, 1)
    clock.advance(1)
    core.mark_suspect(clock())
    clock.advance(0.5)
    (fresh,) = fill_idle(core, clock, 1)
    assert core.validation_due(old, clock()) and not core.validation_due(fresh, clock())
    old.validated_at = clock()  # the adapter validated it
    assert not core.validation_due(old, clock())


def test_retire_idle_before(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core()
    old = fill_idle(core, clock, 2)
    held = checkout(core, clock)
    clock.advance(1)
    (new,) = fill_idle(core, clock, 1)
    retired = core.retire_idle_before(clock())
    ok(core)
    assert retired == [s for s in old if s is not held] and list(core.idle) == [new]
    assert core.size == 2 and counters(core)[S.CONNECTIONS_INVALIDATED] == 1
    assert core.retire_idle_before(clock()) == []


# -- shutdown and reporting ---------------------------------------------------------------


def test_close_returns_idle_and_closes_the_rest_on_return(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(max_size=3)
    fill_idle(core, clock, 3)
    held = checkout(core, clock)
    checkout(core, clock)
    idle, waiters = core.close()
    ok(core)
    assert len(idle) == 1 and not core.idle and waiters == []
    assert core.closed and core.size == 2
    with pytest.raises(PoolClosed):
        wait(core, clock)
    assert core.plan_connects(clock()) == 0
    assert core.checkin(held, clock()) == (None, True), "checked-out ones close on return"
    ok(core)
    assert core.size == 1 and counters(core)[S.CONNECTIONS_EXPIRED] == 0


def test_close_fails_waiters(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(max_size=1)
    fill_idle(core, clock, 1)
    checkout(core, clock)
    w1, w2 = wait(core, clock), wait(core, clock)
    idle, waiters = core.close()
    ok(core)
    assert idle == [] and waiters == [w1, w2] and not core.waiters
    assert isinstance(w1.error, PoolClosed) and w2.error is w1.error
    assert "closed" in str(w1.error)
    assert core.remove_waiter(w1) is False, "failed: the caller raises its error"


def test_drain_idle_keeps_the_pool_usable(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(min_size=2)
    fill_idle(core, clock, 2)
    held = checkout(core, clock)
    assert len(core.drain_idle()) == 1
    ok(core)
    assert core.size == 1 and core.checkin(held, clock()) == (None, False)
    assert core.plan_connects(clock()) == 1


def test_connect_finishing_after_close_is_not_kept(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(min_size=1)
    assert core.plan_connects(clock()) == 1
    core.close()
    core.connect_succeeded(Conn(), clock())
    ok(core)
    assert not core.idle and core.size == 0


def test_ping_finishing_after_close_closes(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(keepalive_interval=5.0)
    (a,) = fill_idle(core, clock, 1)
    core.housekeep(clock.advance(5))
    core.close()
    assert core.pinged(a, True, clock()) == (None, True)


def test_describe_has_the_numbers(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(min_size=1, max_size=4, acquire_timeout=2.5)
    fill_idle(core, clock, 2)
    checkout(core, clock)
    assert core.describe() == (
        "size=2 in_use=1 idle=1 waiting=0 pending=0 min_size=1 max_size=4 timeout=2.5s breaker=closed"
    )
    assert repr(core.idle[0]).startswith("<Slot #")


def test_check_invariants_catches_bad_counts(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core()
    fill_idle(core, clock, 1)
    core.size += 1
    with pytest.raises(AssertionError, match="size=2"):
        core.check_invariants()
    core.size -= 1
    core.idle.append(core.idle[0])
    core.size += 1
    with pytest.raises(AssertionError, match="idle twice"):
        core.check_invariants()


def test_counter_snapshot_merges_the_hot_path_counter(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core()
    fill_idle(core, clock, 1)
    checkout(core, clock)
    snap: dict[str, Any] = core.counter_snapshot()
    assert snap[S.CHECKOUTS] == 1 and set(snap) == set(S.COUNTERS)
    snap[S.CHECKOUTS] = 99
    assert core.counter_snapshot()[S.CHECKOUTS] == 1, "a copy"


def test_barge_window_lets_a_caller_ahead_only_while_the_head_is_young(
    make_core: MakeCore, clock: FakeClock
) -> None:
    core = make_core(min_size=1, max_size=1, barge_window=0.005)
    core.plan_connects(clock())
    ((slot, _),) = connect(core, clock)
    assert core.take_idle(clock()) is slot
    head = Waiter[Conn](clock())
    core.add_waiter(head)
    clock.advance(0.001)
    assert core.checkin(slot, clock()) == (None, False), "kept idle for a barging caller"
    ok(core)
    clock.advance(0.001)
    assert core.take_idle(clock()) is slot, "a caller inside the head's window goes ahead"
    clock.advance(0.004)
    assert core.checkin(slot, clock()) == (head, False), "past the window: the queue is served"
    assert head.slot is slot
    ok(core)


def test_serve_waiters_hands_over_what_nobody_barged_for(make_core: MakeCore, clock: FakeClock) -> None:
    core = make_core(min_size=1, max_size=1, barge_window=0.005)
    core.plan_connects(clock())
    ((slot, _),) = connect(core, clock)
    assert core.take_idle(clock()) is slot
    head = Waiter[Conn](clock())
    core.add_waiter(head)
    core.checkin(slot, clock())
    assert core.serve_waiters(clock()) == [], "still inside the window"
    clock.advance(0.006)
    assert core.serve_waiters(clock()) == [head] and head.slot is slot
    assert core.take_idle(clock()) is None
    ok(core)

"""PoolCore under random interleavings: a hypothesis state machine plays the adapter.

Rules are what an adapter and its callers can do (acquire, release, give up,
finish or fail background connects, housekeeping ticks, keepalive results,
dispose, close) with the clock moving in between; a model of who holds what
is checked against the core after every step.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from sqlalchemy_smartpool.breaker import BreakerState
from sqlalchemy_smartpool.config import CircuitBreakerConfig, PoolConfig
from sqlalchemy_smartpool.core import PoolCore, Slot, Waiter
from sqlalchemy_smartpool.errors import CircuitOpen as CircuitOpenError
from sqlalchemy_smartpool.errors import PoolClosedError as PoolClosed
from sqlalchemy_smartpool.errors import WaitQueueFull as TooManyWaiters

from .conftest import Conn, FakeClock

IDLE_TIMEOUT = 10.0
LEAK_THRESHOLD = 4.0


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.core: PoolCore[Conn] | None = None
        self.held: list[Slot[Conn]] = []  # checked out by callers
        self.queue: list[Waiter[Conn]] = []  # waiting callers, in arrival order
        self.finished: set[int] = set()  # ids of waiters served, failed or withdrawn
        self._keep: list[Waiter[Conn]] = []  # ...kept alive so no id is reused
        self.pinging: list[Slot[Conn]] = []  # out for a keepalive ping
        self.pending = 0  # connects the model knows are in flight
        self.steps = 0
        self.last_counters: dict[str, int] = {}

    # -- setup and helpers ------------------------------------------------------------

    @initialize(
        min_size=st.integers(0, 3),
        extra=st.integers(0, 3),
        concurrency=st.integers(1, 3),
        max_waiting=st.integers(0, 4),
        lifetime=st.sampled_from([None, 6.0, 30.0]),
        keepalive=st.sampled_from([None, 3.0]),
        reuse=st.sampled_from(["lifo", "fifo"]),
        threshold=st.integers(1, 3),
        breaker_on=st.booleans(),
        leaks=st.booleans(),
        seed=st.integers(0, 2**16),
    )
    def setup(
        self,
        min_size: int,
        extra: int,
        concurrency: int,
        max_waiting: int,
        lifetime: float | None,
        keepalive: float | None,
        reuse: str,
        threshold: int,
        breaker_on: bool,
        leaks: bool,
        seed: int,
    ) -> None:
        config = PoolConfig(
            min_size=min_size,
            max_size=max(1, min_size + extra),
            max_concurrent_connects=concurrency,
            max_waiting=max_waiting,
            max_lifetime=lifetime,
            lifetime_jitter=0.2,
            keepalive_interval=keepalive,
            idle_timeout=IDLE_TIMEOUT,
            reuse=reuse,  # type: ignore[arg-type]
            barge_window=0.0,  # the machine checks strict FIFO; barging has its own tests
            leak_detection_threshold=LEAK_THRESHOLD if leaks else None,
            breaker=CircuitBreakerConfig(
                enabled=breaker_on, failure_threshold=threshold, backoff_initial=1.0, backoff_max=4.0
            ),
        )
        self.core = PoolCore(config, self.clock, name="machine", rng=random.Random(seed))
        self._plan()  # the adapter starts: prewarm to min_size

    @property
    def c(self) -> PoolCore[Conn]:
        assert self.core is not None
        return self.core

    def _plan(self) -> None:
        n = self.c.plan_connects(self.clock())
        if self.c.breaker.state is BreakerState.HALF_OPEN:
            assert n <= 1, "one probe at a time"
        elif self.c.breaker.is_open:
            assert n == 0, "no dialing before the probe is due"
        self.pending += n

    def _lend(self, slot: Slot[Conn]) -> None:
        assert all(slot.id != h.id for h in self.held), "one connection, two holders"
        if self.c.config.leak_detection_threshold is not None:
            slot.lease = object()  # the adapter captures the checkout site
        self.held.append(slot)

    def _finish(self, waiter: Waiter[Conn]) -> None:
        self.finished.add(id(waiter))
        self._keep.append(waiter)

    def _served(self, waiter: Waiter[Conn], slot: Slot[Conn]) -> None:
        assert id(waiter) not in self.finished, "a waiter was served twice"
        assert self.queue and waiter is self.queue[0], "not the longest waiter: FIFO broken"
        assert waiter.slot is slot and waiter.error is None
        self.queue.pop(0)
        self._finish(waiter)
        self._lend(slot)

    # -- callers ----------------------------------------------------------------------

    @rule()
    def acquire(self) -> None:
        now = self.clock()
        idle = list(self.c.idle)
        slot = self.c.take_idle(now)
        if slot is not None:
            assert not self.queue, "barged past a waiter"
            assert slot is (idle[-1] if self.c.config.reuse == "lifo" else idle[0]), "wrong reuse order"
            self._lend(slot)
            return
        waiter: Waiter[Conn] = Waiter(now)
        try:
            self.c.add_waiter(waiter)
        except PoolClosed:
            assert self.c.closed
            return
        except TooManyWaiters:
            cap = self.c.config.max_waiting
            assert cap and len(self.queue) >= cap
            return
        except CircuitOpenError as err:
            assert self.c.breaker.is_open and err.retry_after > 0
            assert not self.c.idle and not self.held and not self.pinging
            return
        self.queue.append(waiter)
        self._plan()

    @precondition(lambda self: self.held)
    @rule(data=st.data(), usable=st.booleans())
    def release(self, data: st.DataObject, usable: bool) -> None:
        self._release(self.held.pop(data.draw(st.integers(0, len(self.held) - 1), label="holder")), usable)

    @precondition(lambda self: self.held)
    @rule()
    def release_latest(self) -> None:
        """The common case, as a rule of its own so it is drawn often."""
        self._release(self.held.pop(), True)

    def _release(self, slot: Slot[Conn], usable: bool) -> None:
        now = self.clock()
        waiter, close = self.c.checkin(slot, now, usable=usable)
        if close:
            assert waiter is None
            assert not usable or now >= slot.expires_at or self.c.closed
            self._plan()
        elif waiter is not None:
            self._served(waiter, slot)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def validation_fails(self, data: st.DataObject) -> None:
        slot = self.held.pop(data.draw(st.integers(0, len(self.held) - 1), label="holder"))
        self.c.discard(slot)
        self._plan()

    @precondition(lambda self: self.queue)
    @rule(data=st.data())
    def give_up(self, data: st.DataObject) -> None:
        waiter = self.queue.pop(data.draw(st.integers(0, len(self.queue) - 1), label="waiter"))
        assert self.c.remove_waiter(waiter)
        self.c.note_timeout()
        self._finish(waiter)

    # -- background connects -------------------------------------------------------------

    @precondition(lambda self: self.pending)
    @rule()
    def connect_succeeds(self) -> None:
        self.pending -= 1
        size = self.c.size
        slot, waiter = self.c.connect_succeeded(Conn(), self.clock())
        if self.c.closed:  # the adapter closes it at once
            assert waiter is None and self.c.size == size
        if waiter is not None:
            self._served(waiter, slot)
        self._plan()

    @precondition(lambda self: self.pending)
    @rule()
    def connect_succeeds_too(self) -> None:
        self.connect_succeeds()

    @precondition(lambda self: self.pending)
    @rule()
    def connect_attempt_fails(self) -> None:
        self.c.note_connect_failure(ConnectionRefusedError(), 0.0)

    @precondition(lambda self: self.pending)
    @rule(attempts=st.integers(0, 2))
    def connect_gives_up(self, attempts: int) -> None:
        for _ in range(attempts):
            self.c.note_connect_failure(TimeoutError(), 0.0)
        self.pending -= 1
        failed = self.c.connect_abandoned()
        if failed:
            assert failed == self.queue, "all waiters fail together, none twice"
            assert not self.pending and not self.held and not self.pinging and not self.c.idle, (
                "failed waiters a connection could still have served"
            )
            for w in failed:
                assert isinstance(w.error, CircuitOpenError) and w.slot is None
                self._finish(w)
            self.queue.clear()

    # -- timed work ----------------------------------------------------------------------

    @rule(seconds=st.sampled_from([0.0, 0.1, 1.0, 2.5, 4.0, 7.0, 15.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(seconds=st.sampled_from([0.5, 3.0, 11.0]))
    def tick(self, seconds: float) -> None:
        """What the housekeeper thread does: wake up a little later and do its rounds."""
        self.clock.advance(seconds)
        self.housekeeping()

    @rule()
    def housekeeping(self) -> None:
        now = self.clock()
        held_ids = {s.id for s in self.held}
        plan = self.c.housekeep(now)
        for slot in plan.close:
            assert slot.id not in held_ids, "closed under its holder"
            assert now >= slot.expires_at or now - slot.last_used >= IDLE_TIMEOUT
        for slot in plan.ping:
            assert slot.id not in held_ids
            self.pinging.append(slot)
        threshold = self.c.config.leak_detection_threshold
        for slot in plan.leaks:
            assert threshold is not None and slot.id in held_ids
            assert now - slot.checked_out_at >= threshold
        self.pending += plan.connects
        if self.queue and not self.c.closed and self.c.breaker.state is BreakerState.CLOSED:
            assert self.pending or self.held or self.pinging, "waiters stranded with nothing coming"

    @precondition(lambda self: self.pinging)
    @rule(data=st.data(), ok=st.booleans())
    def ping_done(self, data: st.DataObject, ok: bool) -> None:
        slot = self.pinging.pop(data.draw(st.integers(0, len(self.pinging) - 1), label="pinged"))
        waiter, close = self.c.pinged(slot, ok, self.clock())
        if close:
            assert waiter is None and (not ok or self.c.closed)
            self._plan()
        elif waiter is not None:
            self._served(waiter, slot)

    # -- lifecycle ----------------------------------------------------------------------

    @precondition(lambda self: self.steps % 8 == 7)  # rare: it empties the pool
    @rule()
    def dispose(self) -> None:
        drained = self.c.drain_idle()
        assert not {s.id for s in drained} & {s.id for s in self.held + self.pinging}
        self.c.breaker.reset()

    @precondition(lambda self: self.steps >= 25 and self.core is not None and not self.core.closed)
    @rule()
    def close(self) -> None:
        _, failed = self.c.close()
        assert failed == self.queue
        assert all(isinstance(w.error, PoolClosed) for w in failed)
        for w in failed:
            self._finish(w)
        self.queue.clear()

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def consistent(self) -> None:
        self.steps += 1
        if self.core is None:
            return
        core = self.core
        core.check_invariants()
        assert core.pending == self.pending
        assert list(core.waiters) == self.queue, "queue order differs from arrival order"
        assert set(core.leased) == {s.id for s in self.held} and core.in_use == len(self.held)
        assert core.maintaining == len(self.pinging)
        idle_ids = {s.id for s in core.idle}
        held_ids = [s.id for s in self.held]
        ping_ids = {s.id for s in self.pinging}
        assert len(held_ids) == len(set(held_ids))
        assert not idle_ids & set(held_ids) and not idle_ids & ping_ids and not ping_ids & set(held_ids)
        assert core.size >= 0 and core.size + core.pending <= core.config.max_size
        if core.closed:
            assert not self.queue and not core.idle, "a closed pool keeps nothing idle"
        cap = core.config.max_waiting
        assert not cap or len(self.queue) <= cap, "max_waiting exceeded"
        counters = core.counter_snapshot()
        for key, before in self.last_counters.items():
            assert counters[key] >= before, f"counter {key} went down"
        self.last_counters = counters


PoolMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestPoolCoreStateful = PoolMachine.TestCase

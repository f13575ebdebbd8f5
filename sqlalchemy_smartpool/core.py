"""The pool's state machine, shared by every adapter (SQLAlchemy, asyncio, Redis).

Pure bookkeeping: no threads, no sockets, no locks. The adapter holds one
lock around every call, performs the I/O the core asks for (open, close,
ping) outside it, and wakes the waiters the core hands back with whatever
primitive suits it (a ``threading.Lock``, an ``asyncio.Future``). Time comes
from the ``now`` arguments, so the whole policy is testable with a fake clock.

Rules the core enforces:

* fairness: a returned or new connection goes to the longest waiter; a
  caller only takes an idle connection when nobody is waiting (no barging);
* growth without stalls: connects run in the background and race the
  returns, so a caller never waits on a connect a returned connection beats;
* bounds: ``size + pending <= max_size`` always, ``size >= min_size``
  restored by background connects, idle ones above it closed after
  ``idle_timeout``, every connection retired by its jittered lifetime, never
  while in use.
"""

from __future__ import annotations

import copy
import itertools
import logging
import random
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from . import logs
from . import stats as S
from .breaker import BreakerState, CircuitBreaker
from .config import PoolConfig
from .errors import NEUTRAL, CircuitOpen, ErrorTypes, describe_error
from .sizing import connects_wanted, idle_to_close

C = TypeVar("C")

_ids = itertools.count(1)

#: ``Slot.expires_at`` of a checked-out connection that must come back through the slow
#: path of :meth:`PoolCore.checkin` (drained, retiring, or above a lowered ``max_size``);
#: the fast path's lifetime test catches it at no extra cost
MARKED = float("-inf")


class Slot(Generic[C]):
    """One open connection and the pool's notes about it."""

    __slots__ = (
        "checked_out_at",
        "conn",
        "created_at",
        "epoch",
        "expires_at",
        "id",
        "last_used",
        "lease",
        "poller",
        "token",
        "validated_at",
    )

    def __init__(self, conn: C, now: float, expires_at: float) -> None:
        self.conn = conn
        self.id = next(_ids)
        self.created_at = now
        self.expires_at = expires_at
        self.last_used = now
        self.validated_at = now
        self.checked_out_at = 0.0
        # set by leak tracking while checked out: (thread name, stack), else None
        self.lease: object | None = None
        #: the adapter's non-blocking look at the socket (``select.poll``), or None
        self.poller: Any = None
        #: the pool's drain epoch when it was opened: older ones are not reused
        self.epoch = 0
        #: its fleet-budget lease (fleet.py): > 0 a token, 0 none (store down), -1 fenced
        self.token = 0

    def __repr__(self) -> str:
        return f"<Slot #{self.id}>"


class Waiter(Generic[C]):
    """A caller queued for a connection. Adapters subclass it to add a wake primitive."""

    __slots__ = ("error", "since", "slot")

    def __init__(self, since: float) -> None:
        self.slot: Slot[C] | None = None
        self.error: BaseException | None = None
        self.since = since

    def wake(self) -> None:
        """Called by the adapter after ``slot`` or ``error`` was set."""

    def wait(self, timeout: float) -> bool:
        """Block (or await) until woken; False on timeout. The runtime's subclass implements it."""
        raise NotImplementedError


class HousekeepingPlan(Generic[C]):
    """What the housekeeper must do after one tick, outside the lock."""

    __slots__ = ("close", "connects", "leaks", "ping")

    def __init__(self) -> None:
        self.close: list[Slot[C]] = []
        self.ping: list[Slot[C]] = []
        self.connects = 0
        self.leaks: list[Slot[C]] = []

    def __bool__(self) -> bool:
        return bool(self.close or self.ping or self.connects or self.leaks)


class PoolCore(Generic[C]):
    """Counts, idle connections, waiters and the policies that move them."""

    def __init__(
        self,
        config: PoolConfig,
        clock: Callable[[], float],
        *,
        name: str = "pool",
        rng: random.Random | None = None,
        errors: ErrorTypes = NEUTRAL,
    ) -> None:
        self.config = config
        #: the exception classes the adapter's users catch
        self.errors = errors
        self.name = name
        self._rng = rng or random.Random()
        self._lifo = config.reuse == "lifo"
        self.idle: deque[Slot[C]] = deque()
        self.waiters: deque[Waiter[C]] = deque()
        #: every checked-out slot, by id (needed for leak tracking and invariants)
        self.leased: dict[int, Slot[C]] = {}
        #: open connections: idle + in use + being pinged by the housekeeper
        self.size = 0
        #: connects in flight
        self.pending = 0
        #: idle slots taken out by the housekeeper for a keepalive ping
        self.maintaining = 0
        self.closed = False
        #: restore ``min_size`` on its own? Only once a connect has worked, and not after a
        #: permanent connect error until a caller asks again: a pool nobody uses dials nobody
        self.refill = False
        #: slots validated before this instant are validated on their next checkout
        self.suspect_before = 0.0
        #: the last failed connect attempt, for error messages and ``__cause__``
        self.last_connect_error: BaseException | None = None
        self.last_connect_error_at = float("-inf")
        #: checkouts wait, nothing is opened (``pause()``); idle connections stay parked
        self.paused = False
        #: a swapped-out pool: returns serve its remaining waiters or close, nothing idles
        self.retiring = False
        #: bumped by ``drain()``: connections of an older epoch are closed, never reused
        self.epoch = 0
        #: checked-out connections above a lowered ``max_size``, by slot id, with their own
        #: end of life: each comes back through the slow path and is closed while over
        self.over_marks: dict[int, float] = {}
        #: connects in flight when ``max_size`` was lowered below the pool (dropped on arrival)
        self.stale_connects = 0
        #: a ceiling below ``max_size`` set from outside: the fleet budget's share (fleet.py)
        self.cap: int | None = None
        self.counters: dict[str, int] = dict.fromkeys(S.COUNTERS, 0)
        #: kept out of ``counters`` because the adapters' hot paths bump it directly
        self.checkouts = 0
        #: log records decided under the lock (outage, breaker), written by the engine after it
        self.notes: list[logs.Note] = []
        #: the outage log policy: one line when connects start failing, few while they do
        self.outage = logs.OutageTracker()
        self.breaker = CircuitBreaker(
            config.breaker, clock, rng=self._rng, name=name, on_transition=self._breaker_moved
        )

    # -- derived gauges ---------------------------------------------------------------

    @property
    def in_use(self) -> int:
        return len(self.leased)

    @property
    def limit(self) -> int:
        """The ceiling in force: ``max_size``, or the fleet budget's cap when lower."""
        cap = self.cap
        top = self.config.max_size
        return top if cap is None or cap >= top else cap

    def set_cap(self, cap: int | None) -> None:
        """Put a ceiling below ``max_size`` (None lifts it). Above it, the checked-out connections
        are marked and the first to come back are closed until the pool fits (as for a lowered
        ``max_size``); idle ones above it go after ``idle_timeout``. A checkout is never cut short."""
        self.cap = cap
        if self.size > self.limit:
            for slot in self.leased.values():
                if slot.id not in self.over_marks and slot.expires_at != MARKED:
                    self.over_marks[slot.id] = slot.expires_at
                    slot.expires_at = MARKED
        elif self.over_marks:
            self._unmark_over()

    def new_slot(self, conn: C, now: float) -> Slot[C]:
        """Wrap a freshly opened connection, drawing its jittered end of life."""
        lifetime = self.config.max_lifetime
        if lifetime is None:
            expires = float("inf")
        else:
            expires = now + lifetime * (1.0 - self.config.lifetime_jitter * self._rng.random())
        slot = Slot(conn, now, expires)
        slot.epoch = self.epoch
        return slot

    # -- checkout ---------------------------------------------------------------------

    def take_idle(self, now: float) -> Slot[C] | None:
        """The fast path: an idle connection if nobody is queued ahead of the caller."""
        waiters = self.waiters
        if not self.idle or (waiters and not self._may_barge(now)) or self.paused:
            return None
        slot = self.idle.pop() if self._lifo else self.idle.popleft()
        slot.checked_out_at = now  # _lease(), inlined: this is every checkout's cost
        self.leased[slot.id] = slot
        self.checkouts += 1
        return slot

    def add_waiter(self, waiter: Waiter[C]) -> None:
        """Queue a caller, or refuse at once when waiting cannot help."""
        if self.closed:
            raise self.errors.closed(f"pool {self.name} is closed")
        cap = self.config.max_waiting
        if cap and len(self.waiters) >= cap:
            self.counters[S.REJECTED_FULL] += 1
            raise self.errors.queue_full(
                f"pool {self.name}: wait queue full ({len(self.waiters)} waiting, "
                f"max_waiting={cap}); {self.describe()}"
            )
        if self._breaker_blocks():
            self.counters[S.REJECTED_BREAKER] += 1
            raise self._circuit_error()
        self.waiters.append(waiter)

    def remove_waiter(self, waiter: Waiter[C]) -> bool:
        """Withdraw a waiter that gave up. False if it was already served (use its slot)."""
        if waiter.slot is not None or waiter.error is not None:
            return False
        try:
            self.waiters.remove(waiter)
        except ValueError:
            return False
        return True

    def note_timeout(self) -> None:
        self.counters[S.TIMEOUTS] += 1

    def plan_connects(self, now: float) -> int:
        """How many background connects to start now; they are counted as pending."""
        limit = self.limit
        if self.closed or self.size + self.pending >= limit or self.paused:
            return 0  # the common answer under contention, without the sizing call
        want = connects_wanted(
            size=self.size,
            pending=self.pending,
            waiting=len(self.waiters),
            min_size=min(self.config.min_size, limit) if self.refill else 0,
            max_size=limit,
            max_concurrent=self.config.max_concurrent_connects,
        )
        if want and self.breaker.is_open and self.pending:
            # a probe must be the only connect in flight, or another's failure
            # would be taken for the probe's
            return 0
        if want and not self.breaker.allow_connect():
            return 0
        if want and self.breaker.state is BreakerState.HALF_OPEN:
            want = 1  # exactly one probe at a time
        self.pending += want
        return want

    # -- results of background work ---------------------------------------------------

    def connect_succeeded(self, conn: C, now: float) -> tuple[Slot[C], Waiter[C] | None]:
        """A background connect finished: serve the longest waiter or park it idle.

        After ``close()`` the slot is neither counted nor parked; the adapter
        must close its connection (it checks ``closed`` under the same lock).
        """
        self.pending -= 1
        self.counters[S.CONNECTIONS_CREATED] += 1
        self.breaker.record_success()
        if self.outage.since is not None:
            self._note(self.outage.succeeded(now))
        self.refill = True
        slot = self.new_slot(conn, now)
        if self.closed:  # nothing will ever take it: the adapter sees ``closed`` and closes it
            return slot, None
        self.size += 1
        return slot, self._place(slot, now)

    def note_connect_failure(self, error: BaseException, now: float) -> bool:
        """One connect attempt failed. Returns whether retrying is still worthwhile
        (False once the breaker has opened)."""
        self.counters[S.CONNECTIONS_FAILED] += 1
        self.last_connect_error = error
        self.last_connect_error_at = now
        breaker = self.breaker
        cause = describe_error(error)
        probe = breaker.state is BreakerState.HALF_OPEN
        self._note(self.outage.started(now, cause))  # before the breaker's own notes
        breaker.record_failure(error)
        is_open = breaker.is_open
        retry_in = breaker.retry_after() if is_open else None
        self._note(self.outage.failed(now, cause, probe=probe, retry_in=retry_in))
        return not is_open

    def connect_abandoned(
        self, error: BaseException | None = None, *, permanent: bool = False
    ) -> list[Waiter[C]]:
        """A background connect gave up: fail the waiters it leaves hopeless.

        ``permanent`` (bad credentials, unknown database, a bug in a connect
        hook): no retry can help, so every waiter gets that error now -- as
        with QueuePool, where the caller's own connect raises it. Otherwise
        waiters are failed only once the breaker blocks all hope.
        """
        self.pending -= 1
        if permanent:
            self.refill = False
        if permanent and error is not None and self.waiters:
            return self._fail_waiters(lambda i: error if i == 0 else _clone(error))
        if self._breaker_blocks() and not self.pending:
            err = self._circuit_error()
            failed = self._fail_waiters(lambda _: err)
            self.counters[S.REJECTED_BREAKER] += len(failed)
            return failed
        return []

    def connect_failed(self, error: BaseException, now: float, *, permanent: bool = False) -> list[Waiter[C]]:
        """A background connect failed once and gave up (no retries)."""
        self.note_connect_failure(error, now)
        return self.connect_abandoned(error, permanent=permanent)

    def connect_dropped(self) -> None:
        """A connect finished for a generation of the pool that was disposed meanwhile:
        it is not kept (the adapter closes it)."""
        self.pending -= 1
        self.counters[S.CONNECTIONS_CREATED] += 1
        if self.stale_connects:
            self.stale_connects -= 1

    # -- checkin ----------------------------------------------------------------------

    def checkin(self, slot: Slot[C], now: float, usable: bool = True) -> tuple[Waiter[C] | None, bool]:
        """A connection came back. Returns (waiter to wake, whether to close the connection).

        ``usable=False`` means the adapter found it invalidated or detached: it
        leaves the pool and a replacement is planned by the next ``plan_connects``.
        """
        self.leased.pop(slot.id, None)
        slot.last_used = now
        if usable and not self.waiters and now < slot.expires_at and not self.closed:
            self.idle.append(slot)  # _place(), inlined for the common case
            return None, False
        if slot.expires_at == MARKED:  # drained, retiring, or above a lowered max_size
            if not usable:
                self.over_marks.pop(slot.id, None)
            elif self.retiring and self.waiters and not self.closed and not self.paused:
                self.over_marks.pop(slot.id, None)
                return self._place(slot, now), False
            elif self._retire_on_return(slot):
                self.size -= 1
                self.counters[S.CONNECTIONS_RETIRED] += 1
                return None, True
        if not usable:
            self.size -= 1
            self.counters[S.CONNECTIONS_INVALIDATED] += 1
            return None, True
        if now < slot.expires_at and not self.closed and self._may_barge(now):
            self.idle.append(slot)  # kept for a caller arriving within the barge window
            return None, False
        if now >= slot.expires_at or self.closed:
            self.size -= 1
            if not self.closed:
                self.counters[S.CONNECTIONS_EXPIRED] += 1
            return None, True
        return self._place(slot, now), False

    def _may_barge(self, now: float) -> bool:
        """May a caller go ahead of the queue? Only inside ``barge_window`` of the head's wait."""
        window = self.config.barge_window
        # ``since + window`` is also when the engine's serve timer fires: at that instant
        # the answer must be no (``now - since < window`` can round the other way)
        return bool(window) and bool(self.waiters) and now < self.waiters[0].since + window

    def serve_waiters(self, now: float) -> list[Waiter[C]]:
        """Hand idle connections to waiters whose barge window has passed; the adapter wakes them."""
        served = []
        while self.idle and self.waiters and not self._may_barge(now) and not self.paused:
            slot = self.idle.pop() if self._lifo else self.idle.popleft()
            waiter = self._place(slot, now, touch=False)
            if waiter is not None:
                served.append(waiter)
        return served

    def discard(self, slot: Slot[C]) -> None:
        """A connection the caller holds (checked out or taken for a ping) is gone."""
        if self.leased.pop(slot.id, None) is None:
            self.maintaining -= 1
        self.over_marks.pop(slot.id, None)
        self.size -= 1
        self.counters[S.CONNECTIONS_INVALIDATED] += 1

    def validation_due(self, slot: Slot[C], now: float) -> bool:
        """Validate a checkout only if it sat idle long enough for the server or network
        to have dropped it, or if a disconnect seen elsewhere made it suspect."""
        if not self.config.validate_on_checkout:
            return False
        if slot.validated_at < self.suspect_before:
            return True
        return now - slot.last_used > self.config.validation_interval

    def retire_idle_before(self, now: float) -> list[Slot[C]]:
        """Take out every idle connection opened before ``now`` (a disconnect was seen
        and nothing validates them); the caller closes them."""
        old = [s for s in self.idle if s.created_at < now]
        if old:
            self.idle = deque(s for s in self.idle if s.created_at >= now)
            self.size -= len(old)
            self.counters[S.CONNECTIONS_INVALIDATED] += len(old)
        return old

    def mark_suspect(self, now: float) -> None:
        """A disconnect was seen: every connection older than now is validated before reuse."""
        self.suspect_before = max(self.suspect_before, now)  # callers read the clock before the lock

    # -- housekeeping -----------------------------------------------------------------

    def housekeep(self, now: float) -> HousekeepingPlan[C]:
        """One tick of timed work: retire expired and surplus idle connections, pick
        long-idle ones for a keepalive ping, refill to ``min_size``, find leaks."""
        plan: HousekeepingPlan[C] = HousekeepingPlan()
        cfg = self.config
        if self.idle:
            keep: deque[Slot[C]] = deque()
            for slot in self.idle:
                if now >= slot.expires_at:
                    plan.close.append(slot)
                    self.counters[S.CONNECTIONS_EXPIRED] += 1
                else:
                    keep.append(slot)
            surplus = idle_to_close(
                idle_since=[s.last_used for s in keep],
                size=self.size - len(plan.close),
                min_size=min(cfg.min_size, self.limit),
                idle_timeout=cfg.idle_timeout,
                now=now,
            )
            if surplus:
                closing = set(surplus)
                kept: deque[Slot[C]] = deque()
                for i, slot in enumerate(keep):
                    if i in closing:
                        plan.close.append(slot)
                        self.counters[S.CONNECTIONS_IDLE_CLOSED] += 1
                    else:
                        kept.append(slot)
                keep = kept
            if cfg.keepalive_interval is not None:
                stay: deque[Slot[C]] = deque()
                for slot in keep:
                    if now - max(slot.last_used, slot.validated_at) >= cfg.keepalive_interval:
                        plan.ping.append(slot)
                    else:
                        stay.append(slot)
                keep = stay
            self.idle = keep
            self.size -= len(plan.close)
            self.maintaining += len(plan.ping)
        threshold = cfg.leak_detection_threshold
        if threshold is not None:
            for slot in self.leased.values():
                if slot.lease is not None and now - slot.checked_out_at >= threshold:
                    plan.leaks.append(slot)
        plan.connects = self.plan_connects(now)
        return plan

    def pinged(self, slot: Slot[C], ok: bool, now: float) -> tuple[Waiter[C] | None, bool]:
        """A keepalive ping ended. Returns (waiter to wake, whether to close it)."""
        self.counters[S.KEEPALIVES] += 1
        return self.probed(slot, ok, now)

    # -- health probes (PoolEngine.probe) ---------------------------------------------

    def take_for_probe(self) -> Slot[C] | None:
        """An idle connection for a health probe's ping, out of idle like one taken for a
        keepalive (``maintaining``: not a checkout). None while callers wait: they come first."""
        if not self.idle or self.waiters or self.paused:
            return None
        slot = self.idle.pop() if self._lifo else self.idle.popleft()
        self.maintaining += 1
        return slot

    def probed(self, slot: Slot[C], ok: bool, now: float) -> tuple[Waiter[C] | None, bool]:
        """A health probe's ping (or, through :meth:`pinged`, a keepalive's) ended: the slot
        leaves ``maintaining``. Returns (waiter to wake, whether to close it)."""
        self.maintaining -= 1
        if not ok or self.closed:
            self.size -= 1
            self.counters[S.CONNECTIONS_INVALIDATED] += 1
            return None, True
        if self._outlived(slot):
            return None, True
        slot.validated_at = now
        return self._place(slot, now, touch=False), False

    def reserve_probe_connect(self) -> str | None:
        """Count one connect for a health probe as pending; else why not (full, breaker)."""
        if self.closed:
            return "pool closed"
        if self.paused:
            return "pool paused: nothing is opened until resume()"
        if self.size + self.pending >= self.config.max_size:
            return (
                f"no idle connection to ping and no room for another "
                f"(size={self.size} pending={self.pending} max_size={self.config.max_size})"
            )
        breaker = self.breaker
        if breaker.is_open and (self.pending or not breaker.allow_connect()):
            # while open, a connect may only be the breaker's single probe
            return f"circuit breaker {breaker.state.value}; next probe in {breaker.retry_after():.2f}s"
        self.pending += 1
        return None

    # -- shutdown ---------------------------------------------------------------------

    def drain_idle(self) -> list[Slot[C]]:
        """Take every idle connection out (for ``dispose``); the caller closes them."""
        drained = list(self.idle)
        self.idle.clear()
        self.size -= len(drained)
        return drained

    def close(self) -> tuple[list[Slot[C]], list[Waiter[C]]]:
        """Close for good: idle connections to close and waiters to fail."""
        self.closed = True
        err = self.errors.closed(f"pool {self.name} is closed")
        return self.drain_idle(), self._fail_waiters(lambda _: err)

    # -- live operations (docs/operations.md) -----------------------------------------

    def apply_config(self, config: PoolConfig) -> tuple[list[Slot[C]], bool]:
        """Put a new config in force. Returns (idle connections to close now, whether the
        connects in flight must be dropped on arrival).

        A lowered ``max_size`` closes idle connections first (least recently
        used first) down to it; if the pool is still above it, every checked-out
        connection is marked, and the first ones to come back are closed until
        the pool fits (:meth:`_retire_on_return`) -- a checkout is never cut
        short. Connects in flight then would only add to the excess: the engine
        drops them (its generation) and they count as ``stale_connects``. A new
        lifetime is redrawn for every connection from its creation time.
        """
        old = self.config
        self.config = config
        self._lifo = config.reuse == "lifo"
        if config.breaker != old.breaker:
            self.breaker.apply(config.breaker)
        if (config.max_lifetime, config.lifetime_jitter) != (old.max_lifetime, old.lifetime_jitter):
            self._redraw_lifetimes()
        close: list[Slot[C]] = []
        drop = False
        limit = config.max_size
        if self.size > limit and self.idle:
            excess = min(self.size - limit, len(self.idle))
            close = [self.idle.popleft() for _ in range(excess)]  # the least recently used
            self.size -= excess
            self.counters[S.CONNECTIONS_RETIRED] += excess
        if self.pending and self.size + self.pending > limit:
            drop = True
            self.stale_connects = self.pending
        if self.size > limit:
            for slot in self.leased.values():
                if slot.id not in self.over_marks:
                    self.over_marks[slot.id] = slot.expires_at
                    slot.expires_at = MARKED
        elif self.over_marks:
            self._unmark_over()
        return close, drop

    def fence(self, slots: list[Slot[C]]) -> list[Slot[C]]:
        """Connections whose fleet-budget lease was lost: never handed out again. Returns the idle
        ones to close now; a checked-out one is closed when it comes back, one being pinged
        when its ping ends (its epoch matches no pool's)."""
        close: list[Slot[C]] = []
        for slot in slots:
            slot.token = -1
            slot.epoch = -1
            if slot.id in self.leased:
                self.over_marks.pop(slot.id, None)
                slot.expires_at = MARKED
            else:
                try:
                    self.idle.remove(slot)
                except ValueError:
                    continue  # out for a keepalive ping, or already gone
                self.size -= 1
                close.append(slot)
        self.counters[S.CONNECTIONS_RETIRED] += len(close)
        return close

    def drain(self) -> list[Slot[C]]:
        """Retire every connection open now: idle ones are returned to close at once, checked-out
        ones close when they come back (never reused, not even by a waiter). Connections
        opened from now on belong to the new epoch. The caller also drops connects in flight."""
        self.epoch += 1
        for slot in self.leased.values():
            slot.expires_at = MARKED  # an over-max mark keeps its own end of life in over_marks
        idle = self.drain_idle()
        self.counters[S.CONNECTIONS_RETIRED] += len(idle)
        return idle

    def retire(self) -> list[Slot[C]]:
        """A swapped-out pool: stop refilling; connections that come back serve the waiters
        still queued here, or close. Returns the idle connections to close now."""
        self.retiring = True
        self.refill = False
        for slot in self.leased.values():
            slot.expires_at = MARKED
        idle = self.drain_idle()
        self.counters[S.CONNECTIONS_RETIRED] += len(idle)
        return idle

    @property
    def retired(self) -> bool:
        """A retiring pool that has nothing left: no connection, connect or waiter."""
        return self.retiring and not self.size and not self.pending and not self.waiters

    def pause(self) -> None:
        """Checkouts queue (and time out as usual), nothing is opened; returns park idle."""
        self.paused = True

    def resume(self, now: float) -> list[Waiter[C]]:
        """End a pause: idle connections go to the waiters in their order; the adapter wakes
        them and plans connects for the rest."""
        self.paused = False
        served = []
        while self.idle and self.waiters:
            slot = self.idle.pop() if self._lifo else self.idle.popleft()
            waiter = self._place(slot, now, touch=False)
            if waiter is not None:
                served.append(waiter)
        return served

    def _retire_on_return(self, slot: Slot[C]) -> bool:
        """A marked connection came back usable: close it (True), or restore its lifetime."""
        own = self.over_marks.pop(slot.id, None)
        if slot.epoch != self.epoch or self.retiring:
            return True
        if own is None:
            return False  # not ours to judge: its lifetime decides
        limit = self.limit
        if self.size > limit:
            if self.size - 1 <= limit:
                self._unmark_over()  # this close makes it fit: the others keep theirs
            return True
        slot.expires_at = own
        self._unmark_over()  # the pool fits again: the others keep their connections
        return False

    def _outlived(self, slot: Slot[C]) -> bool:
        """A connection back from a keepalive or probe ping that must not idle: drained,
        retiring, or above a lowered ``max_size``. Counted out of the pool if so."""
        if slot.epoch == self.epoch and not self.retiring and self.size <= self.limit:
            return False
        self.size -= 1
        self.counters[S.CONNECTIONS_RETIRED] += 1
        return True

    def _unmark_over(self) -> None:
        for sid, own in self.over_marks.items():
            slot = self.leased.get(sid)
            if slot is not None and slot.epoch == self.epoch and not self.retiring:
                slot.expires_at = own
        self.over_marks.clear()

    def _redraw_lifetimes(self) -> None:
        lifetime, jitter = self.config.max_lifetime, self.config.lifetime_jitter
        for slot in [*self.idle, *self.leased.values()]:
            if lifetime is None:
                own = float("inf")
            else:
                own = slot.created_at + lifetime * (1.0 - jitter * self._rng.random())
            if slot.expires_at != MARKED:
                slot.expires_at = own
            elif slot.id in self.over_marks:
                self.over_marks[slot.id] = own

    # -- reporting --------------------------------------------------------------------

    def counter_snapshot(self) -> dict[str, int]:
        out = dict(self.counters)
        out[S.CHECKOUTS] = self.checkouts
        return out

    def describe(self) -> str:
        """The pool's state in one line, for error messages."""
        return (
            f"size={self.size} in_use={self.in_use} idle={len(self.idle)} "
            f"waiting={len(self.waiters)} pending={self.pending} "
            f"min_size={self.config.min_size} max_size={self.config.max_size} "
            f"timeout={self.config.acquire_timeout:g}s breaker={self.breaker.state.value}"
            + (" paused" if self.paused else "")
            + (" retiring" if self.retiring else "")
        )

    def check_invariants(self) -> None:
        """Raise AssertionError if the counts disagree (used by tests; cheap enough to call often)."""
        assert self.size >= 0, self.describe()
        assert self.pending >= 0, self.describe()
        assert self.maintaining >= 0, self.describe()
        assert self.size == len(self.idle) + len(self.leased) + self.maintaining, self.describe()
        # above a lowered max_size only by what was out when it was lowered (docs/operations.md)
        allowance = len(self.over_marks) + min(self.stale_connects, self.pending) + self.maintaining
        assert self.size + self.pending <= self.config.max_size + allowance, self.describe()
        assert self.size <= self.config.max_size or not self.idle, "idle above max_size: " + self.describe()
        for sid in self.over_marks:
            assert sid in self.leased, f"an over-max mark on #{sid}, which is not checked out"
        # idle connections and waiters coexist only inside a barge window, or while paused
        assert (
            not (self.idle and self.waiters) or self.config.barge_window > 0 or self.paused
        ), self.describe()
        ids = [s.id for s in self.idle]
        assert len(ids) == len(set(ids)), "a connection is idle twice"
        assert not set(ids) & set(self.leased), "a connection is both idle and checked out"

    # -- internals --------------------------------------------------------------------

    def _lease(self, slot: Slot[C], now: float) -> None:
        slot.checked_out_at = now
        self.leased[slot.id] = slot
        self.checkouts += 1

    def _place(self, slot: Slot[C], now: float, *, touch: bool = True) -> Waiter[C] | None:
        """Give a connection to the longest waiter, else park it idle."""
        if touch:
            slot.last_used = now
        if self.waiters and not self.paused:
            waiter = self.waiters.popleft()
            self._lease(slot, now)
            self.counters[S.CHECKOUTS_WAITED] += 1
            waiter.slot = slot
            return waiter
        self.idle.append(slot)
        return None

    def _fail_waiters(self, error_for: Callable[[int], BaseException]) -> list[Waiter[C]]:
        """Empty the queue, giving the i-th waiter ``error_for(i)``; the adapter wakes them."""
        failed = list(self.waiters)
        self.waiters.clear()
        for i, w in enumerate(failed):
            w.error = error_for(i)
        return failed

    def _breaker_blocks(self) -> bool:
        """Waiting is hopeless when the breaker is open and no connection can come back."""
        return (
            self.breaker.is_open
            and not self.idle
            and not self.leased
            and not self.maintaining
            and self.breaker.retry_after() > 0
        )

    def _circuit_error(self) -> CircuitOpen:
        retry = self.breaker.retry_after()
        err = self.errors.circuit_open(
            f"pool {self.name}: circuit breaker open after "
            f"{self.breaker.consecutive_failures} failed connects "
            f"({self.breaker.last_error or 'unknown error'}); next probe in {retry:.2f}s; "
            f"{self.describe()}",
            retry,
            self.last_connect_error,
        )
        err.__cause__ = self.last_connect_error
        return err

    def _note(self, note: logs.Note | None) -> None:
        if note is not None and len(self.notes) < _MAX_NOTES:
            self.notes.append(note)

    def _breaker_moved(self, old: BreakerState, new: BreakerState) -> None:
        breaker = self.breaker
        if new is BreakerState.CLOSED:
            self.counters[S.BREAKER_CLOSED] += 1
        fields: dict[str, Any] = {
            "from_state": old.value,
            "to_state": new.value,
            "because": breaker.moved_because,
        }
        if new is BreakerState.OPEN:
            retry = breaker.retry_after()
            fields.update(
                failures=breaker.consecutive_failures, cause=breaker.last_error, retry_in_s=round(retry, 3)
            )
            if old is BreakerState.CLOSED:
                self.counters[S.BREAKER_OPENED] += 1
                level, msg = (
                    logging.INFO,
                    (
                        "circuit breaker opened after %d consecutive connect failures (%s); checkouts that "
                        "need a new connection fail fast; next probe in %.2fs"
                    ),
                )
            else:  # a failed probe: the outage's own line says so once per backoff step
                self.counters[S.BREAKER_REOPENED] += 1
                level, msg = (
                    logging.DEBUG,
                    "circuit breaker probe failed (%d failures, %s); next probe in %.2fs",
                )
            args: tuple[Any, ...] = (
                breaker.consecutive_failures,
                breaker.last_error or "unknown error",
                retry,
            )
        elif new is BreakerState.HALF_OPEN:
            self.counters[S.BREAKER_HALF_OPENED] += 1
            level, msg, args = logging.DEBUG, "circuit breaker half-open: one probe connect may go", ()
        elif breaker.moved_because == "reset":
            level, msg, args = logging.INFO, "circuit breaker reset (pool disposed)", ()
        else:  # a probe worked: the outage's end is logged at INFO by the connect
            level, msg, args = logging.DEBUG, "circuit breaker closed: a probe connect worked", ()
        event = (
            logs.BREAKER_OPENED
            if new is BreakerState.OPEN
            else (logs.BREAKER_HALF_OPEN if new is BreakerState.HALF_OPEN else logs.BREAKER_CLOSED)
        )
        self._note(logs.Note(logs.BREAKER_LOGGER, level, event, msg, args, fields, audit=True))


#: deferred records kept at most (the engine writes them after each connect; a bound all the same)
_MAX_NOTES = 256


def _clone(error: BaseException) -> BaseException:
    """A copy of ``error`` for another waiter (one exception object raised in several
    threads would have its traceback rewritten by each); the original if it won't copy."""
    try:
        twin = copy.copy(error)
    except Exception:
        return error
    return twin if type(twin) is type(error) else error

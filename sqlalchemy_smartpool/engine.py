"""The pool engine: the orchestration every pool needs, written once.

:class:`PoolEngine` drives :class:`~.core.PoolCore` (the pure state machine)
for every adapter -- SQLAlchemy's sync and asyncio pools, the Redis pools.
It owns one lock around the core, the checkout with its single deadline,
waiting, validation with the bypass window and the socket liveness look,
background connects with retries scheduled as timers (no worker sleeps),
keepalive, leak tracking, dispose generations, closing and stats.

An adapter supplies only what differs between ecosystems:

* a :class:`Backend`: how to open, close and ping one connection, and how
  to classify a connect error;
* a :class:`Runtime` factory: timers, background jobs and the wait primitive
  (threads in :mod:`.sched`, an event loop in :mod:`.sched_asyncio`);
* an :class:`~.errors.ErrorTypes` table: the exceptions its users catch.

The engine is blocking-style code. Under asyncio it runs inside greenlets
(as SQLAlchemy's asyncio extension runs the whole sync Engine): a wait or a
ping is an ``await`` done by the runtime, so there is no second, hand-kept
async copy of any of this. Settings are read from ``self.config`` at each use,
so the engine can be reconfigured while it runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import select
import socket
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar

from . import fleet, forks, leaks, live, logs, profiling
from . import stats as S
from .backoff import Backoff
from .config import PoolConfig
from .core import MARKED, PoolCore, Slot, Waiter
from .errors import ErrorTypes, describe_error
from .health import PROBE_FAILED, PROBE_OK, PROBE_SKIPPED, PROBE_TIMEOUT, ProbeResult

logger = logging.getLogger(logs.ENGINE_LOGGER)

C = TypeVar("C")

#: attribute set on every pooled connection object: its :class:`~.core.Slot`
SLOT_ATTR = "_smartpool_slot"
#: an adapter may leave why a connection is bad on it here (a redacted one-line description:
#: the ping's disconnect, the error it was invalidated for), for the audit's ``cause``
CAUSE_ATTR = "_smartpool_cause"

_POLL_EVENTS = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP
_BOUNDS = S.TIME_BUCKETS


class Backend(Protocol[C]):
    """What an adapter knows about its connections; every call may block (or await)."""

    def open(self) -> C:
        """Open one connection (raise the driver's error on failure)."""
        ...

    def close(self, conn: C, reason: BaseException | None = None) -> None:
        """Close one connection for good (``reason``: the error that condemned it)."""
        ...

    def ping(self, conn: C) -> bool:
        """True if alive, False if dead (a disconnect). Raise any other error,
        which reaches the caller of a checkout, as SQLAlchemy's pre-ping does."""
        ...

    def is_transient(self, err: BaseException) -> bool:
        """Might a retry of this connect succeed (network, server starting)?"""
        ...

    def is_permanent(self, err: BaseException) -> bool:
        """Would every retry fail the same way (bad password, unknown database)?"""
        ...

    def socket_fd(self, conn: C) -> int | None:
        """The connection's socket, for the liveness look and the ping watchdog."""
        ...

    def server_limit(self, conn: C) -> int | None:
        """The server's connection limit for this client, read once after the first connect."""
        ...

    def closed_probe(self, conn: C) -> Callable[[], bool] | None:
        """A cheap "the driver knows it is gone" check, for drivers that read in the background."""
        ...


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Runtime(Protocol):
    """Timers, background jobs and waiting, for threads or for an event loop."""

    @property
    def alive(self) -> bool: ...

    def call_at(self, when: float, fn: Callable[[], None]) -> Cancellable: ...

    def call_later(self, delay: float, fn: Callable[[], None]) -> Cancellable: ...

    def submit(self, fn: Callable[[], None]) -> bool: ...

    def stop(self) -> None: ...

    def new_waiter(self, since: float) -> Waiter[Any]: ...

    def sleep(self, seconds: float) -> None:
        """Pause the calling request (a thread sleeps, a task awaits)."""
        ...

    def check_caller(self) -> None:
        """Raise if the current caller cannot use this runtime (another event loop)."""
        ...


class Pending(Generic[C]):
    """A checkout :meth:`PoolEngine.checkout_nowait` could not finish without blocking."""

    __slots__ = ("_engine", "_slot", "_t0")

    def __init__(self, engine: PoolEngine[C], slot: Slot[C] | None, t0: float) -> None:
        self._engine = engine
        self._slot = slot
        self._t0 = t0

    def finish(self) -> C:
        """Wait for a connection and/or validate it (blocks; awaits from a greenlet)."""
        return self._engine._finish_checkout(self._slot, self._t0)


class PoolEngine(Generic[C]):
    """One pool's orchestration over :class:`PoolCore`; see the module docstring."""

    def __init__(
        self,
        config: PoolConfig,
        backend: Backend[C],
        *,
        name: str,
        errors: ErrorTypes,
        runtime: Callable[[str, int], Runtime],
        clock: Callable[[], float] = time.monotonic,
        can_validate: bool = True,
        budget_target: Callable[[], str] | None = None,
    ) -> None:
        self.backend = backend
        self.name = name
        self.errors = errors
        self._clock = clock
        self._make_runtime = runtime
        self.core: PoolCore[C] = PoolCore(config, clock, name=name, errors=errors)
        # An RLock, so that a return made by the garbage collector in a thread
        # that holds the lock can be detected and deferred instead of deadlocking.
        self._lock = threading.RLock()
        self._owned: Callable[[], bool] = self._lock._is_owned  # type: ignore[attr-defined]
        self._acquire = self._lock.acquire
        self._release = self._lock.release
        self._rt: Runtime | None = None
        #: bumped by dispose(): connects started before it are not kept
        self._generation = 0
        self._waits: S.WaitSampler | None = S.WaitSampler() if config.track_wait_times else None
        # histograms (stats.Timing), recorded under the lock already held at each point
        timed = config.track_wait_times
        self._wait_hist: S.Timing | None = S.Timing() if timed else None
        self._uses: S.Timing | None = S.Timing() if timed else None
        self._creates: S.Timing | None = S.Timing() if timed else None
        #: checkout listeners and top-holder sampling (profiling.py)
        self.listeners = profiling.Listeners()
        self._holders = profiling.HolderStats(config.holder_sample_every)
        self._can_validate = can_validate
        self._apply(config)
        self._leak_reports = leaks.LeakReporter(name)
        #: the server's connection limit, read after the first connect (None: unknown)
        self.server_limit: int | None = None
        self._limit_read = False
        #: the last permanent connect error and when it happened, for wait()
        self._permanent: tuple[BaseException, float] | None = None
        #: the fleet budget (fleet.py): leases in Redis for every physical connection
        self.fleet: fleet.FleetBudget | None = None
        #: local instant until which the fleet leases are trusted; checkouts compare with it
        self._lease_until = float("inf")
        #: every open connection of a budgeted pool, by slot id (their lease tokens)
        self._fleet_slots: dict[int, Slot[C]] = {}
        self._sync_queued = False
        self._deny_armed = False
        #: a denied lease is not asked for again before this (the retry timer's instant)
        self._denied_until = float("-inf")
        self._denied_streak = 0
        #: tokens of connects still opening (renewals carry them); those lost meanwhile
        self._fleet_opening: set[int] = set()
        self._opening_lost: set[int] = set()
        if config.budget is not None:
            self.fleet = fleet.build(config, target=budget_target or (lambda: self.name), clock=clock)
        forks.register(self)  # a forked child starts clean (forks.py); nothing on the checkout path

    def _apply(self, config: PoolConfig) -> None:
        """Put ``config`` in force; the hot path reads these copies, not the config."""
        self.config = config
        self.core.config = config
        was = self.__dict__.get("_validate")
        self._validate = config.validate_on_checkout and self._can_validate
        if was is not None and was != self._validate:  # turned off or on while running
            self._skipped_flip(turned_off=was)
        self._interval = config.validation_interval
        self._timeout = config.acquire_timeout
        self._leak_threshold = config.leak_detection_threshold
        self._barging = config.barge_window > 0
        self._serve_armed = self.__dict__.get("_serve_armed", False)  # a live change keeps an armed timer
        if config.track_wait_times != (self._waits is not None):
            self._waits = S.WaitSampler() if config.track_wait_times else None
        self._holders.every = config.holder_sample_every
        self._retrace()

    def _retrace(self) -> None:
        """Which checkouts get a lease (see :meth:`_trace`): every one with leak detection or a
        checkout listener, one in ``holder_sample_every`` for top_holders(), else none."""
        every = self.config.holder_sample_every
        self._trace_all = self._leak_threshold is not None or bool(self.listeners.entries)
        self._trace_every = 1 if self._trace_all else every
        self._want_location = every > 0 or self.listeners.want_location

    def rename(self, name: str) -> None:
        """Call the pool ``name`` from now on (log lines, errors, stats): an adapter that
        learns the pool's name only at the first connect (the URL's database) says so."""
        old, self.name = self.name, name
        self.core.name = name
        self.core.breaker._name = name
        self._leak_reports.pool_name = name
        rt = self._rt
        if rt is not None and hasattr(rt, "name"):
            rt.name = name
        if old != name:
            logs.event(logger, logging.DEBUG, name, logs.POOL_NAMED, "named after its URL (was %s)", old)

    def _flush_notes(self) -> None:
        """Write the records the core decided under the lock (outage, breaker), outside it."""
        if not self.core.notes:  # read without the lock: a list is never torn
            return
        with self._lock:
            notes, self.core.notes = self.core.notes, []
        logs.emit(self.name, notes)

    # ------------------------------------------------------------------ checkout

    def checkout(self) -> C:
        """Hand out a connection: idle at once, else the first one freed or opened.

        One deadline (``acquire_timeout`` from now) bounds the whole checkout,
        waiting and validation of replacements included.
        """
        got = self.checkout_nowait()
        if got.__class__ is Pending:  # ~50 ns for having the fast path once, not twice
            return got.finish()
        return got  # type: ignore[return-value]

    def checkout_nowait(self) -> C | Pending[C]:
        """The part of :meth:`checkout` that never blocks.

        Returns the connection when an idle one needs no validation; otherwise
        a :class:`Pending` whose ``finish()`` waits and/or validates (blocking,
        or awaiting under asyncio). An asyncio adapter calls this directly and
        enters a greenlet only for ``finish()``: the usual checkout costs none.
        """
        t0 = self._clock()
        # acquire/try/finally, not ``with``: half the cost (~90 ns) on every checkout
        self._acquire()
        try:
            slot = self.core.take_idle(t0)
        finally:
            self._release()
        if slot is None:
            return Pending(self, None, t0)
        if self._rt is None:  # served from connections returned after dispose()
            self._ensure_started()
        if t0 >= self._lease_until:  # fleet leases unconfirmed for a TTL (a pause): re-sync first
            return Pending(self, slot, t0)
        if self._validate and (
            t0 - slot.last_used > self._interval
            or slot.validated_at < self.core.suspect_before
            # on every checkout (~0.3 us; ``check_socket``): an EOF that arrived while
            # the connection was in use, or a socket closed under it, is visible at once
            or (slot.poller is not None and slot.poller.poll(0))
        ):
            return Pending(self, slot, t0)
        every = self._trace_every
        if every and not self.core.checkouts % every:
            self._trace(slot, 0.0)
        return slot.conn

    def _finish_checkout(self, slot: Slot[C] | None, t0: float) -> C:
        """The blocking rest of a checkout begun at ``t0``: wait when ``slot`` is None, validate."""
        deadline = t0 + self._timeout
        wait = 0.0
        if slot is not None and t0 >= self._lease_until:
            slot = self._lease_checked(slot)
        if slot is None:
            slot = self._wait(t0, deadline)
            while self._clock() >= self._lease_until:  # a pause while waiting: never use a lost lease
                kept = self._lease_checked(slot)
                if kept is not None:
                    break
                slot = self._wait(t0, deadline)
            # a connection handed over while we waited was returned after t0: its idle
            # time counts from now (or it would look negative and skip every check)
            now = self._clock()
            wait = now - t0
            waits = self._waits
            if waits is not None:  # immediate checkouts waited 0: counted, not timed
                waits.record(wait, self.core.checkouts)
                hist = self._wait_hist
                if hist is not None:
                    with self._lock:  # the slow path: exact counts are worth the lock
                        hist.record(wait)
            if self._validate and (
                now - slot.last_used > self._interval
                or slot.validated_at < self.core.suspect_before
                or (slot.poller is not None and slot.poller.poll(0))
            ):
                slot = self._validated(slot, deadline)
        else:
            slot = self._validated(slot, deadline)
        every = self._trace_every
        if every and not self.core.checkouts % every:
            self._trace(slot, wait)
        return slot.conn

    def _trace(self, slot: Slot[C], wait: float) -> None:
        """Give a checkout its lease: the leak-detection stack, or where it came from for
        top_holders() and the checkout listeners (only what they need is captured)."""
        every = self._holders.every
        # here for sampling alone, or for every checkout (leaks, listeners) and maybe sampled too
        sampled = not self._trace_all or (every > 0 and not self.core.checkouts % every)
        if self._leak_threshold is not None:
            lease = leaks.capture()
            lease.wait = wait
            lease.sampled = sampled
            slot.lease = lease
            return
        where = leaks.caller(2) if (sampled or self.listeners.want_location) else None
        slot.lease = profiling.Sample(where, wait, sampled)

    def _wait(self, t0: float, deadline: float) -> Slot[C]:
        self._ensure_started()
        rt = self._rt
        if rt is None:  # closed
            raise self.errors.closed(f"pool {self.name} is closed")
        rt.check_caller()
        waiter = rt.new_waiter(t0)
        core = self.core
        with self._lock:
            slot = core.take_idle(t0)
            if slot is not None:
                return slot
            core.add_waiter(waiter)  # raises when waiting cannot help
            connects = core.plan_connects(t0)
        if connects:
            self._spawn_connects(connects)
        try:
            woken = waiter.wait(deadline - self._clock())
        except BaseException:
            # cancelled (asyncio) or interrupted: withdraw, or give back what we were handed
            with self._lock:
                withdrawn = core.remove_waiter(waiter)
            if not withdrawn and waiter.slot is not None:
                self._give_back(waiter.slot)
            raise
        if not woken:
            with self._lock:
                gave_up = core.remove_waiter(waiter)
                if gave_up:
                    core.note_timeout()
                    state = core.describe()
                    if self.fleet is not None:  # a full budget is the usual reason then
                        state += f"; {self.fleet.describe()}"
                    cause = core.last_connect_error if core.last_connect_error_at >= t0 else None
            if gave_up:
                described = describe_error(cause) if cause is not None else None
                why = f"; last connect error: {described}" if described is not None else ""
                if logger.isEnabledFor(logging.DEBUG):
                    waited = self._clock() - t0
                    logs.event(
                        logger,
                        logging.DEBUG,
                        self.name,
                        logs.CHECKOUT_TIMEOUT,
                        "checkout gave up after %.3fs; %s%s",
                        waited,
                        state,
                        why,
                        wait_s=round(waited, 6),
                        cause=described,
                    )
                raise self.errors.timeout(
                    f"pool {self.name}: no connection available within "
                    f"{self.config.acquire_timeout:g}s; {state}{why}"
                ) from cause
        if waiter.error is not None:
            raise waiter.error
        assert waiter.slot is not None
        return waiter.slot

    def _validated(self, slot: Slot[C], deadline: float) -> Slot[C]:
        """Ping until a connection answers; dead ones are dropped and replaced in the background."""
        core = self.core
        while True:
            try:
                ok = self._ping(slot)
            except BaseException as err:
                # not a disconnect (or a cancellation): the caller gets it, as with
                # SQLAlchemy's pre-ping; the connection is not trusted again
                with self._lock:
                    core.checkouts -= 1
                    core.discard(slot)
                    connects = core.plan_connects(self._clock())
                self._close_now(
                    slot.conn, err if isinstance(err, Exception) else None, why=logs.CLOSE_VALIDATION_ERROR
                )
                if connects:
                    self._spawn_connects(connects)
                raise
            now = self._clock()
            with self._lock:
                core.counters[S.VALIDATIONS] += 1
                if ok:
                    slot.validated_at = now
                    return slot
                core.counters[S.VALIDATIONS_FAILED] += 1
                core.checkouts -= 1  # the replacement is the checkout that counts
                core.discard(slot)
                core.mark_suspect(now)
                connects = core.plan_connects(now)
                nxt = core.take_idle(now)
            self._close_soon(slot.conn, logs.CLOSE_VALIDATION_FAILED)
            if connects:
                self._spawn_connects(connects)
            if nxt is None:
                if now >= deadline:
                    raise self.errors.timeout(
                        f"pool {self.name}: no valid connection within "
                        f"{self.config.acquire_timeout:g}s; {self.describe()}"
                    )
                nxt = self._wait(now, deadline)
            slot = nxt
            if not core.validation_due(slot, now):
                return slot

    def _ping_within(self, conn: C, timeout: float, cut: list[bool] | None = None) -> bool:
        """``backend.ping(conn)``, cut off after ``timeout`` by shutting the socket down
        (the ping then fails or raises); a cut is noted in ``cut`` when one is given."""
        backend = self.backend
        fd = backend.socket_fd(conn)
        rt = self._rt
        watchdog = None
        if fd is not None and rt is not None:

            def abort(fd: int = fd) -> None:
                if cut is not None:
                    cut.append(True)
                _abort_socket(fd)

            watchdog = rt.call_later(timeout, abort)
        try:
            return backend.ping(conn)
        finally:
            if watchdog is not None:
                watchdog.cancel()

    def _ping(self, slot: Slot[C]) -> bool:
        """One validation, cut off after ``validation_timeout``."""
        ok = self._ping_within(slot.conn, self.config.validation_timeout)
        if not ok:
            cause = _take_cause(slot.conn)
            msg = "connection #%d failed validation%s"
            tail = f": {cause}" if cause else ""
            logs.event(
                logger,
                logging.DEBUG,
                self.name,
                logs.VALIDATION_FAILED,
                msg,
                slot.id,
                tail,
                conn_id=slot.id,
                cause=cause,
            )
            logs.audit(self.name, logs.VALIDATION_FAILED, msg, slot.id, tail, conn_id=slot.id, cause=cause)
        return ok

    # ------------------------------------------------------------------- checkin

    def checkin(self, slot: Slot[C], usable: bool = True) -> None:
        """A connection came back: to the longest waiter, idle, or closed.

        ``usable=False``: the adapter found it invalidated; it leaves the pool
        and is replaced in the background.
        """
        if self._owned():
            # the GC ran a finalizer while this thread is inside the pool's
            # bookkeeping: finish the return once the lock is free
            threading.Thread(
                target=self.checkin, args=(slot, usable), name="smartpool-gc-return", daemon=True
            ).start()
            return
        lease = slot.lease
        if lease is not None:  # cleared while we still hold it: the next holder sets its own
            slot.lease = None
        now = self._clock()
        held = now - slot.checked_out_at  # before the core hands the slot to a waiter
        uses = self._uses
        self._acquire()
        try:
            waiter, close = self.core.checkin(slot, now, usable)
            if uses is not None:  # Timing.record, inlined: every checkin pays it (~80 ns)
                i = bisect_left(_BOUNDS, held)
                uses.counts[i] += 1
                uses.sums[i] += held
        finally:
            self._release()
        if waiter is not None:
            waiter.wake()
        elif close:
            self._closed_on_return(slot, now, usable)
        elif self._barging and not self._serve_armed:
            self._arm_serve()
        if lease is not None:
            self._lease_returned(slot, lease, now, held)

    def _lease_returned(self, slot: Slot[C], lease: Any, now: float, held: float) -> None:
        """A traced checkout came back: leak bookkeeping, top holders, checkout listeners."""
        if isinstance(lease, leaks.Lease):
            self._leak_returned(slot, lease, now)
        if lease.sampled:
            self._holders.returned(lease.location, held)
        if self.listeners.entries:
            self.listeners.call(
                profiling.CheckoutTiming(
                    pool=self.name,
                    connection_id=slot.id,
                    wait=lease.wait,
                    held=held,
                    location=profiling.format_location(lease.location),
                )
            )

    # -------------------------------------------------------------- profiling

    def add_checkout_listener(self, fn: profiling.Listener, *, location: bool = False) -> None:
        """Call ``fn(CheckoutTiming)`` at every checkin (wait, hold time, and with ``location``
        the caller's ``file:line``). Costs nothing while no listener is registered."""
        self.listeners.add(fn, location)
        self._retrace()

    def remove_checkout_listener(self, fn: profiling.Listener) -> bool:
        """Stop calling ``fn``; False if it was not registered."""
        found = self.listeners.remove(fn)
        self._retrace()
        return found

    def adopt_listeners(self, other: profiling.Listeners) -> None:
        """Take over another engine's listeners (a pool that makes a new engine keeps them)."""
        self.listeners = other
        self._retrace()

    def top_holders(self, n: int = 10, *, by: str = "total") -> list[profiling.Holder]:
        """The code locations that hold connections longest, from sampled checkouts
        (``holder_sample_every``); ``by="p99"`` ranks by their 99th percentile hold time."""
        now = self._clock()
        with self._lock:
            current = [
                (getattr(s.lease, "location", None), now - s.checked_out_at)
                for s in self.core.leased.values()
                if getattr(s.lease, "sampled", False)
            ]
        return self._holders.top(n, by, current)

    def return_judged(self, slot: Slot[C], judge: Callable[[], tuple[bool, bool]]) -> None:
        """A connection came back that the adapter must look at first.

        ``judge()`` (which may block or await) answers ``(usable, died)``:
        may it serve again, and did it die while held. Whatever interrupts the
        look (a cancellation, ``KeyboardInterrupt``), the slot goes back -- as
        unusable -- before the exception propagates, so no slot is lost. One
        that died in use makes the older ones suspect (:meth:`disconnect_seen`).
        """
        try:
            usable, died = judge()
        except BaseException:
            self.checkin(slot, False)
            raise
        if died:
            self.disconnect_seen()
        self.checkin(slot, usable)

    def is_leased(self, slot: Slot[C]) -> bool:
        """Is ``slot`` checked out of this engine now? (False: returned already, or not ours.)"""
        return self.core.leased.get(slot.id) is slot

    def connections(self, *, in_use_only: bool = False) -> list[C]:
        """A snapshot of the connections the pool holds: idle ones first, then those checked out."""
        with self._lock:
            held = [s.conn for s in self.core.leased.values()]
            if in_use_only:
                return held
            return [s.conn for s in self.core.idle] + held

    def _arm_serve(self) -> None:
        """A connection was kept idle for a barging caller: make sure the queue gets it
        once the head's window has passed, if nobody took it by then."""
        with self._lock:
            core = self.core
            if self._serve_armed or not (core.idle and core.waiters):
                return
            self._serve_armed = True
            when = core.waiters[0].since + self.config.barge_window
        rt = self._rt
        if rt is None or not rt.alive:
            self._serve()
            return
        ref = weakref.ref(self)
        rt.call_at(when, lambda: _serve(ref))

    def _serve(self) -> None:
        with self._lock:
            self._serve_armed = False
            served = self.core.serve_waiters(self._clock())
        for waiter in served:
            waiter.wake()
        self._arm_serve()

    def _closed_on_return(self, slot: Slot[C], now: float, usable: bool = True) -> None:
        with self._lock:
            connects = self.core.plan_connects(now)
            closed = self.core.closed
        if not usable:
            why = logs.CLOSE_INVALIDATED
            held = now - slot.checked_out_at
            cause = _take_cause(slot.conn)
            logs.audit(
                self.name,
                logs.INVALIDATE,
                "connection #%d came back unusable after %.3fs%s",
                slot.id,
                held,
                f": {cause}" if cause else "",
                conn_id=slot.id,
                held_s=round(held, 6),
                cause=cause,
            )
        else:
            why = logs.CLOSE_POOL_CLOSED if closed else logs.CLOSE_MAX_LIFETIME
            if not closed and slot.expires_at == MARKED:  # drained, retiring, above a lowered max_size
                why = logs.CLOSE_RETIRED
                if slot.token == fleet.FENCED:
                    why = logs.CLOSE_FENCED
                elif self.core.cap is not None and self.core.cap < self.config.max_size:
                    why = logs.CLOSE_OVER_SHARE
        self._close_soon(slot.conn, why)
        if connects:
            self._spawn_connects(connects)

    def _give_back(self, slot: Slot[C]) -> None:
        """A connection handed to a waiter that never took it (cancelled as it was woken)."""
        with self._lock:
            self.core.checkouts -= 1
            self.core.counters[S.CHECKOUTS_WAITED] -= 1
        self.checkin(slot)

    @staticmethod
    def slot_of(conn: Any) -> Slot[Any] | None:
        """The pool's notes on a connection it opened (None: not one of ours)."""
        return getattr(conn, SLOT_ATTR, None)

    def _leak_returned(self, slot: Slot[C], lease: Any, now: float) -> None:
        if leaks.returned_by_gc():
            self._leak_reports.collected(slot, lease, now)
            key = S.LEAKS_COLLECTED
        elif self._leak_reports.returned(slot, lease, now):
            key = S.LEAKS_RETURNED
        else:
            return
        with self._lock:
            self.core.counters[key] += 1

    def discard(self, slot: Slot[C]) -> None:
        """A checked-out connection the adapter has already closed (detached, terminated)."""
        with self._lock:
            self.core.discard(slot)
            self.core.counters[S.CONNECTIONS_CLOSED] += 1
            connects = self.core.plan_connects(self._clock())
        if self.fleet is not None:
            self._lease_back(slot)
        logs.audit(
            self.name,
            logs.CLOSE,
            "connection #%d closed (%s)",
            slot.id,
            logs.CLOSE_DETACHED,
            conn_id=slot.id,
            reason=logs.CLOSE_DETACHED,
        )
        if connects:
            self._spawn_connects(connects)

    def disconnect_seen(self) -> None:
        """A connection died in use: older ones are suspect, validated before reuse.

        Without validation there is no such check, so the older idle ones are
        retired (as SQLAlchemy does), closed and replaced in the background.
        """
        now = self._clock()
        retired: list[Slot[C]] = []
        connects = 0
        with self._lock:
            self.core.mark_suspect(now)
            if not self._validate:
                retired = self.core.retire_idle_before(now)
                connects = self.core.plan_connects(now)
        for slot in retired:
            self._close_soon(slot.conn, logs.CLOSE_SUSPECT)
        if connects:
            self._spawn_connects(connects)

    # ------------------------------------------------------------- public verbs

    def wait_ready(self, timeout: float) -> None:
        """Start and block until ``min_size`` connections are open (prewarm).

        Fails at once on a permanent connect error; a timeout names the pool's
        state and the last connect error.
        """
        start = self._clock()
        with self._lock:
            self.core.refill = True  # the caller asked for min_size now
        self._ensure_started(force_plan=True)
        deadline = start + timeout
        while True:
            with self._lock:
                ready = self.core.size >= self.config.min_size
                state = self.core.describe()
                cause = self.core.last_connect_error if self.core.last_connect_error_at >= start else None
                permanent = self._permanent
            if ready:
                return
            if permanent is not None and permanent[1] >= start:
                raise permanent[0]
            rt = self._rt
            if self._clock() >= deadline or rt is None:
                why = f"; last connect error: {describe_error(cause)}" if cause is not None else ""
                raise self.errors.timeout(
                    f"pool {self.name} not ready after {timeout:g}s; {state}{why}"
                ) from cause
            rt.sleep(0.005)

    # -------------------------------------------------------------- health probe

    #: when the connect a probe started began, while it runs (one at a time: a database
    #: that hangs must not collect a hanging connect per health check)
    _probe_since: float | None = None

    def probe(self, timeout: float) -> ProbeResult:
        """Does the database answer? For a health check; never takes a caller's place.

        Pings one idle connection -- taken out as for a keepalive, so it is no
        checkout and no caller can get it meanwhile -- with a watchdog that shuts
        its socket down after ``timeout``. With no idle connection (or a dead
        one) a fresh connect is started, which joins the pool, and waited for up
        to the rest of ``timeout``. Nothing is probed while callers queue for
        every connection and none can be added (their checkouts say enough), nor
        while the breaker holds connects back. Runs only when called: a pool
        nobody asks is never probed. Under asyncio, call it in a greenlet on the
        pool's loop (``await spawn(engine.probe, timeout)``).
        """
        clock = self._clock
        start = clock()
        deadline = start + timeout
        self._ensure_started()
        rt = self._rt
        if rt is None:
            return ProbeResult(PROBE_SKIPPED, "none", 0.0, "pool closed")
        rt.check_caller()
        with self._lock:
            slot = self.core.take_for_probe()
        if slot is not None:
            result = self._probe_ping(slot, start, deadline)
            if result is not None:
                return result
        return self._probe_connect(rt, start, deadline)

    def _probe_ping(self, slot: Slot[C], start: float, deadline: float) -> ProbeResult | None:
        """Ping a connection taken for a probe and give it back; None: it was dead (a
        disconnect, e.g. after a server restart), so a fresh connect must decide."""
        fired: list[bool] = []
        error: BaseException | None = None
        ok = False
        try:
            ok = self._ping_within(slot.conn, max(deadline - self._clock(), 0.0), fired)
        except BaseException as err:  # a cancellation too: the connection is not trusted again
            error = err
        now = self._clock()
        alive = ok and error is None
        with self._lock:
            waiter, close = self.core.probed(slot, alive, now)
            if not alive:
                self.core.mark_suspect(now)  # as a failed validation: the older ones are checked
            connects = self.core.plan_connects(now) if close else 0
        if waiter is not None:
            waiter.wake()
        if close:
            self._close_soon(slot.conn, logs.CLOSE_PROBE_FAILED if not alive else self._ok_closed_why())
        if connects:
            self._spawn_connects(connects)
        if error is not None and not isinstance(error, Exception):
            raise error
        if alive:
            return ProbeResult(PROBE_OK, "ping", now - start)
        if fired:
            took = now - start
            return ProbeResult(PROBE_TIMEOUT, "ping", took, f"no answer to a ping within {took:.3g}s")
        if error is not None:
            return ProbeResult(PROBE_FAILED, "ping", now - start, describe_error(error))
        return None

    def _probe_connect(self, rt: Runtime, start: float, deadline: float) -> ProbeResult:
        """Open one connection for a probe (it joins the pool) and wait for it until ``deadline``."""
        with self._lock:
            since = self._probe_since
            refused = self.core.reserve_probe_connect() if since is None else None
            if since is None and refused is None:
                self._probe_since = start
            generation = self._generation
        if since is not None:
            took = self._clock() - start
            busy = f"the connect of an earlier probe, started {start - since:.3g}s ago, has not finished"
            return ProbeResult(PROBE_TIMEOUT, "connect", took, busy)
        if refused is not None:
            return ProbeResult(PROBE_SKIPPED, "none", self._clock() - start, refused)
        done = rt.new_waiter(start)
        outcome: list[BaseException | None] = []
        ref = weakref.ref(self)
        budget = max(deadline - self._clock(), 0.0)

        def job() -> None:
            try:
                outcome.append(_probe_open(ref, generation, deadline))
            finally:
                done.error = _PROBE_DONE  # the waiter contract: woken once slot or error is set
                done.wake()

        if not self._submit_job(job):
            with self._lock:  # stopped in between: give the reservation back
                self.core.pending -= 1
                self._probe_since = None
            return ProbeResult(PROBE_SKIPPED, "none", self._clock() - start, "pool stopped")
        woken = done.wait(budget)
        took = self._clock() - start
        if not woken or not outcome:
            return ProbeResult(PROBE_TIMEOUT, "connect", took, f"no connection within {budget:.3g}s")
        error = outcome[0]
        if error is not None:
            return ProbeResult(PROBE_FAILED, "connect", took, describe_error(error))
        return ProbeResult(PROBE_OK, "connect", took)

    def _probe_opened(self, generation: int, deadline: float) -> BaseException | None:
        """The probe's connect, through the pool's own path (no retries); the error, if it failed.

        Read from the counters around it: a connect of the pool's own that ends at
        the same moment can blur which one failed, never whether the database answers.
        """
        with self._lock:
            created = self.core.counters[S.CONNECTIONS_CREATED]
            failed = self.core.counters[S.CONNECTIONS_FAILED]
        try:
            self._open_one(generation, self.config.retry_attempts + 1, deadline)
        finally:
            with self._lock:
                self._probe_since = None
        with self._lock:
            core = self.core
            counters = core.counters
            if counters[S.CONNECTIONS_CREATED] > created or counters[S.CONNECTIONS_FAILED] == failed:
                return None
            return core.last_connect_error or RuntimeError("connect failed")

    def stats(self) -> S.PoolStats:
        """A consistent snapshot of gauges, counters and wait percentiles."""
        waits = self._waits if self._waits is not None else S.WaitSampler(1)
        p50, p95, p99 = waits.percentiles(50, 95, 99, checkouts=self.core.checkouts)
        with self._lock:
            core = self.core
            counters = core.counter_snapshot()
            if self._validate:  # every checkout was validated or skipped; in-flight ones count as skipped
                counters[S.VALIDATIONS_SKIPPED] = self._skipped_estimate()
            else:  # as it stood when a live change turned validation off (0 if it never ran)
                counters[S.VALIDATIONS_SKIPPED] = self._skipped_frozen
            timings: dict[str, S.Distribution] = {}
            if self._wait_hist is not None and self._uses is not None and self._creates is not None:
                waited = sum(self._wait_hist.counts)
                timings[S.WAIT_TIME] = self._wait_hist.snapshot(zeros=core.checkouts - waited)
                timings[S.USE_TIME] = self._uses.snapshot()
                timings[S.CREATE_TIME] = self._creates.snapshot()
            leaked = 0
            if self._leak_threshold is not None:
                leaked = sum(
                    1 for s in core.leased.values() if isinstance(s.lease, leaks.Lease) and s.lease.reported
                )
            return S.PoolStats(
                name=self.name,
                pool_size=core.size,
                pool_idle=len(core.idle),
                pool_in_use=core.in_use,
                requests_waiting=len(core.waiters),
                connections_pending=core.pending,
                pool_min=self.config.min_size,
                pool_max=self.config.max_size,
                breaker_state=core.breaker.state.value,
                counters=counters,
                wait_p50=p50,
                wait_p95=p95,
                wait_p99=p99,
                wait_max=waits.max,
                wait_sum=waits.total,
                closed=core.closed,
                server_max_connections=self.server_limit,
                acquire_timeout=self.config.acquire_timeout,
                leaks_outstanding=leaked,
                timings=timings,
            )

    def describe(self) -> str:
        with self._lock:
            return self.core.describe()

    def suspected_leaks(self) -> list[leaks.LeakInfo]:
        """Checkouts held longer than ``leak_detection_threshold``, oldest first."""
        threshold = self.config.leak_detection_threshold
        if threshold is None:
            return []
        now = self._clock()
        with self._lock:
            held = [s for s in self.core.leased.values() if now - s.checked_out_at >= threshold]
        return leaks.describe(sorted(held, key=lambda s: s.checked_out_at), now)

    def dispose(self) -> int:
        """Close idle connections and stop background work; the pool stays usable.

        Checked-out connections come back normally; the next checkout restarts
        background work. Returns the number of idle connections closed.
        """
        self._stop_runtime()
        with self._lock:
            self._generation += 1
            self._rt = None
            idle = self.core.drain_idle()
            self.core.breaker.reset()
            restart = bool(self.core.waiters)
        self._flush_notes()
        for slot in idle:
            self._close_now(slot.conn, why=logs.CLOSE_DISPOSED)
        logs.audit(
            self.name, logs.POOL_DISPOSED, "disposed: %d idle connections closed", len(idle), closed=len(idle)
        )
        if restart:
            self._ensure_started()
        return len(idle)

    # ------------------------------------------------- live operations (docs/operations.md)

    #: called from every housekeeping tick after the housekeeping (settings watch, retiring)
    _tick_hooks: tuple[Callable[[], None], ...] = ()

    def reconfigure(
        self, changes: Mapping[str, Any], *, source: str = "reconfigure"
    ) -> dict[str, tuple[Any, Any]]:
        """Put ``changes`` (PoolConfig fields, ``breaker_<field>``) in force at once; returns what
        changed as ``{field: (old, new)}``.

        Validated as a whole against the config in force, under the engine's
        lock: an invalid change (or one of :data:`~.live.NOT_LIVE`) raises
        :class:`~.errors.ConfigError` naming field, value and ``source``, and
        nothing changes. Sizes: a lowered ``max_size`` closes idle connections
        first, then the first checked-out ones to come back until the pool fits
        (a checkout is never cut short); a raised ``min_size`` is refilled in the
        background (once the pool has connected), a raised ``max_size`` serves
        the waiters. Timeouts apply to checkouts that start from now; lifetimes
        are redrawn for every connection from its creation; breaker and retry
        settings decide the next connect. Audit-logged (``config_changed``).
        """
        now = self._clock()
        with self._lock:
            old = self.config
            new = live.replace_config(old, changes, source)
            diff = live.config_diff(old, new)
            live.check_live(diff, source)
            if not diff:
                return {}
            if self.core.closed:
                raise self.errors.closed(f"pool {self.name} is closed")
            close, drop = self.core.apply_config(new)
            if drop:
                self._generation += 1  # connects in flight would only add to the excess
            self._apply(new)
            served = self.core.serve_waiters(now)
            connects = self.core.plan_connects(now)
        rt = self._rt
        if rt is not None and "max_concurrent_connects" in diff:
            resize = getattr(rt, "set_max_workers", None)
            if resize is not None:
                resize(new.max_concurrent_connects + 2)
        for slot in close:
            self._close_soon(slot.conn, logs.CLOSE_RETIRED)
        for waiter in served:
            waiter.wake()
        if connects:
            self._spawn_connects(connects)
        if rt is not None and rt.alive:
            self._housekeep()  # a shorter lifetime or idle_timeout takes effect now, not at the next tick
        live.audit_changes(self.name, diff, source)
        return diff

    def drain(self, *, event: str = live.DRAINED, source: str = "drain()") -> int:
        """Retire every connection open now, so that new ones are opened fresh.

        Idle connections are closed now, checked-out ones when they come back
        (never handed out again), connects in flight are dropped on arrival;
        the waiters and ``min_size`` are served by new connections. Returns how
        many were closed now. Audit-logged (``event``).
        """
        now = self._clock()
        with self._lock:
            if self.core.closed:
                return 0
            self._generation += 1
            idle = self.core.drain()
            in_use = self.core.in_use
            connects = self.core.plan_connects(now)
        for slot in idle:
            self._close_soon(slot.conn, logs.CLOSE_RETIRED)
        if connects:
            self._spawn_connects(connects)
        live.audit(
            self.name,
            event,
            f"{source}: {len(idle)} idle connections closed, {in_use} checked out close when returned",
            closed_now=len(idle),
            close_on_return=in_use,
            source=source,
        )
        return len(idle)

    def retire(self) -> None:
        """Wind down a pool nobody checks out from any more (``swap_pool``).

        Idle connections close now; each one that comes back serves a caller
        still queued here, or closes; nothing is refilled. Once nothing is out,
        the pool closes for good (checked at each housekeeping tick).
        """
        with self._lock:
            idle = self.core.retire()
            done = self.core.retired
        for slot in idle:
            self._close_soon(slot.conn, logs.CLOSE_RETIRED)
        if done:
            self._retired()
            return
        self.add_tick_hook(self._retire_tick)
        rt = self._rt
        if rt is None or not rt.alive:
            self._ensure_started()

    def _retire_tick(self) -> None:
        with self._lock:
            idle = self.core.drain_idle()  # a connect that finished for a waiter that gave up
            self.core.counters[S.CONNECTIONS_RETIRED] += len(idle)
            done = self.core.retired
        for slot in idle:
            self._close_soon(slot.conn, logs.CLOSE_RETIRED)
        if done:
            self._retired()

    def _retired(self) -> None:
        self.remove_tick_hook(self._retire_tick)
        self.close()
        live.audit(self.name, live.POOL_RETIRED, "retired, every connection closed")

    def pause(self) -> None:
        """Hold every checkout (each waits within its ``acquire_timeout``) and open nothing.

        Checked-out connections are used and returned as usual; returned ones
        stay idle. For a maintenance window shorter than the timeout: callers
        wait instead of failing. Audit-logged (``paused``).
        """
        with self._lock:
            if self.core.paused:
                return
            self.core.pause()
        live.audit(self.name, live.PAUSED, "paused; checkouts wait")

    def resume(self) -> None:
        """End :meth:`pause`: the waiters are served in their order, by idle connections first."""
        now = self._clock()
        with self._lock:
            if not self.core.paused:
                return
            served = self.core.resume(now)
            waiting = len(self.core.waiters)
            connects = self.core.plan_connects(now)
        for waiter in served:
            waiter.wake()
        if connects:
            self._spawn_connects(connects)
        live.audit(
            self.name,
            live.RESUMED,
            f"resumed; {len(served)} waiters served, {waiting} wait for a connection",
            served=len(served),
        )

    @property
    def paused(self) -> bool:
        return self.core.paused

    def _ok_closed_why(self) -> str:
        """Why a connection that answered its ping is closed: the pool closed, or retired."""
        return logs.CLOSE_POOL_CLOSED if self.core.closed else logs.CLOSE_RETIRED

    #: ``validations_skipped`` across live toggles of validation: the estimate frozen when it
    #: was turned off, and (checkouts, good validations) when it was turned on again
    _skipped_frozen = 0
    _skipped_base = (0, 0)

    def _skipped_estimate(self) -> int:
        counters = self.core.counters
        ok = counters[S.VALIDATIONS] - counters[S.VALIDATIONS_FAILED]
        checkouts, ok_before = self._skipped_base
        return self._skipped_frozen + max(0, (self.core.checkouts - checkouts) - (ok - ok_before))

    def _skipped_flip(self, *, turned_off: bool) -> None:
        if turned_off:
            self._skipped_frozen = self._skipped_estimate()
        else:
            counters = self.core.counters
            good = counters[S.VALIDATIONS] - counters[S.VALIDATIONS_FAILED]
            self._skipped_base = (self.core.checkouts, good)

    def add_tick_hook(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` at every housekeeping tick (timer thread or event loop: keep it short)."""
        with self._lock:
            self._tick_hooks = (*self._tick_hooks, fn)

    def remove_tick_hook(self, fn: Callable[[], None]) -> None:
        with self._lock:
            self._tick_hooks = tuple(h for h in self._tick_hooks if h != fn)

    def _run_tick_hooks(self) -> None:
        for fn in self._tick_hooks:
            try:
                fn()
            except Exception:  # one hook's bug must not stop the housekeeping
                logger.exception("pool %s: tick hook failed", self.name)

    def close(self) -> None:
        """Close for good: fail waiters, close idle connections, stop background work.

        Connections still checked out are closed when they come back.
        """
        with self._lock:
            idle, waiters = self.core.close()
        for w in waiters:
            w.wake()
        self._stop_runtime()
        for slot in idle:
            self._close_now(slot.conn, why=logs.CLOSE_POOL_CLOSED)
        if self.fleet is not None:
            self._fleet_leave_if_done()
        logs.audit(
            self.name,
            logs.POOL_CLOSED,
            "closed for good: %d idle connections closed, %d waiters failed",
            len(idle),
            len(waiters),
            closed=len(idle),
            waiters=len(waiters),
        )

    def _after_fork_in_child(self) -> None:
        """In a forked child (run by :mod:`.forks` at the fork): forget the parent's connections.

        They stay the parent's: their sockets are quarantined (nothing the child
        does reaches the parent's sessions), the backend's optional ``forget``
        makes each inert without I/O, and they are kept alive so no finalizer
        runs on them. The engine gets a fresh lock (the parent's may be held by
        a thread that does not exist here), a fresh core and no runtime: like a
        new pool, it dials nobody until the child's first checkout.
        """
        old_core, old_rt = self.core, self._rt
        conns = [s.conn for s in old_core.idle] + [s.conn for s in old_core.leased.values()]
        self._lock = threading.RLock()
        self._owned = self._lock._is_owned  # type: ignore[attr-defined]
        self._acquire = self._lock.acquire
        self._release = self._lock.release
        self.core = PoolCore(self.config, self._clock, name=self.name, errors=self.errors)
        self.core.closed = old_core.closed
        self.core.paused, self.core.retiring = old_core.paused, old_core.retiring  # live state carries over
        self._rt = None
        self._generation += 1  # connects the parent had in flight are not ours
        self._serve_armed = False
        self._permanent = None
        self._waits = S.WaitSampler() if self.config.track_wait_times else None
        timed = self.config.track_wait_times  # the histograms count the new core's checkouts
        self._wait_hist = S.Timing() if timed else None
        self._uses = S.Timing() if timed else None
        self._creates = S.Timing() if timed else None
        self._holders = profiling.HolderStats(self.config.holder_sample_every)  # its lock is fresh
        self.listeners.after_fork()
        self._leak_reports = leaks.LeakReporter(self.name)
        if self.fleet is not None:  # the parent's leases stay the parent's
            self.fleet.after_fork()
            self._fleet_slots = {}
            self._lease_until = float("inf")
            self._sync_queued = False
            self._deny_armed = False
            self._fleet_opening = set()
            self._opening_lost = set()
        forks.keep(old_core, old_rt, conns)
        backend = self.backend
        for conn in conns:  # first the byte-level guarantee, then the adapter's bookkeeping
            try:
                fd = backend.socket_fd(conn)
            except Exception:
                fd = None
            forks.quarantine(fd)
        forget: Callable[[C], None] | None = getattr(backend, "forget", None)
        if forget is not None:
            for conn in conns:
                forget(conn)

    def count(self, key: str, n: int = 1) -> None:
        """Add ``n`` to counter ``key`` from outside the engine (the statement guard), under the lock."""
        with self._lock:
            self.core.counters[key] += n

    def check_invariants(self) -> None:
        with self._lock:
            self.core.check_invariants()

    # ------------------------------------------------------------ background work

    def _ensure_started(self, *, force_plan: bool = False) -> None:
        rt = self._rt
        if rt is not None and rt.alive and not force_plan:
            return
        with self._lock:
            if self.core.closed:
                return
            rt = self._rt
            started = rt is None or not rt.alive
            if started:
                rt = self._rt = self._make_runtime(self.name, self.config.max_concurrent_connects + 2)
            connects = self.core.plan_connects(self._clock())
        if started:
            self._schedule_tick()
        if connects:
            self._spawn_connects(connects)

    def _stop_runtime(self) -> None:
        rt = self._rt
        if rt is not None:
            rt.stop()

    def _schedule_tick(self) -> None:
        rt = self._rt
        if rt is None or not rt.alive:
            return
        ref = weakref.ref(self)
        # the pool's own work: never in the context (correlation id) of whoever started it
        contextvars.Context().run(rt.call_later, self.config.housekeeping_interval, lambda: _tick(ref))

    def _spawn_connects(self, n: int) -> None:
        """Start ``n`` connects already counted as pending in the core."""
        deadline = self._clock() + self.config.acquire_timeout
        ref = weakref.ref(self)
        generation = self._generation
        bounced = 0
        for _ in range(n):
            if not self._submit_job(lambda: _connect(ref, generation, 1, deadline)):
                bounced += 1
        if bounced:  # stopped in between (dispose): give the reservations back
            with self._lock:
                self.core.pending -= bounced
                waiting = bool(self.core.waiters)
            if waiting:  # someone needs a connection: start over (never for an idle pool)
                self._ensure_started()

    def _submit_job(self, job: Callable[[], None]) -> bool:
        rt = self._rt
        return rt is not None and rt.alive and rt.submit(job)

    def _open_one(self, generation: int, attempt: int, deadline: float) -> None:
        """One connect attempt; a transient failure schedules the next one as a timer.

        Every failed attempt feeds the breaker at once (so it can open during
        the retries); retries stop when it opens and never outlast the checkout
        timeout of the callers this connect is for. A permanent error (bad
        password, unknown database) is not retried: it reaches the waiters now
        and the pool stops refilling on its own until a caller asks again.
        """
        backend = self.backend
        token = 0
        if self.fleet is not None:
            token = self._lease_for_connect()
            if token < 0:  # the budget is full, or this pool is at its share: wait for a return
                self._connect_denied()
                return
        started = self._clock()
        try:
            conn = backend.open()
        except Exception as err:
            if token > 0:
                self._opened(token)
                self._token_back(token)
            now = self._clock()
            permanent = backend.is_permanent(err) or not backend.is_transient(err)
            with self._lock:
                go_on = self.core.note_connect_failure(err, now)
            self._flush_notes()
            cfg = self.config
            if go_on and not permanent and attempt <= cfg.retry_attempts:
                delay = _backoff(cfg.retry_backoff_initial, cfg.retry_backoff_max, attempt)
                rt = self._rt
                if now + delay < deadline and rt is not None and rt.alive:
                    ref = weakref.ref(self)
                    rt.call_later(delay, lambda: _retry(ref, generation, attempt + 1, deadline))
                    return
            self._abandon(err, permanent)
            return
        if not self._limit_read:  # before anyone can be handed the connection
            self._limit_read = True
            self._read_server_limit(conn)
        poller = None
        if self.config.check_socket and self._validate:
            try:
                poller = _watch(backend.socket_fd(conn), backend.closed_probe(conn))
            except Exception:
                poller = None
        now = self._clock()
        with self._lock:
            creates = self._creates
            if creates is not None:
                creates.record(now - started)
            if generation != self._generation:  # dispose() ran meanwhile
                self.core.connect_dropped()
                keep = False
                waiter = None
                slot = None
            else:
                slot, waiter = self.core.connect_succeeded(conn, now)
                slot.poller = poller
                setattr(conn, SLOT_ATTR, slot)
                keep = not self.core.closed
                if self.fleet is not None:
                    # a lease lost while it opened: unleased now, leased or fenced by the next sync
                    slot.token = fleet.UNLEASED if token in self._opening_lost else token
                    self._fleet_opening.discard(token)
                    self._opening_lost.discard(token)
                    if keep:
                        self._fleet_slots[slot.id] = slot
            connects = self.core.plan_connects(now)
        self._flush_notes()
        if keep and slot is not None:
            took = now - started
            logs.audit(
                self.name,
                logs.CONNECT,
                "connection #%d opened in %.3fs",
                slot.id,
                took,
                conn_id=slot.id,
                connect_s=round(took, 6),
            )
        else:  # dropped (no slot) after dispose(), or the pool was closed meanwhile
            self._close_now(conn, why=logs.CLOSE_DISPOSED if slot is None else logs.CLOSE_POOL_CLOSED)
            if slot is None and token > 0:
                self._opened(token)
                self._token_back(token)
        if waiter is not None:
            waiter.wake()
        if connects:
            self._spawn_connects(connects)

    def _retry(self, generation: int, attempt: int, deadline: float) -> None:
        ref = weakref.ref(self)
        if not self._submit_job(lambda: _connect(ref, generation, attempt, deadline)):
            with self._lock:  # stopped meanwhile: give the reservation back
                self.core.pending -= 1

    def _abandon(self, err: BaseException, permanent: bool) -> None:
        now = self._clock()
        with self._lock:
            failed = self.core.connect_abandoned(err, permanent=permanent)
            breaker = self.core.breaker
            probe_at = breaker.next_probe_at if breaker.is_open else None
            if permanent:
                self._permanent = (err, now)
            # probe again only for someone: waiters, or a pool that has worked before
            wanted = bool(self.core.waiters) or self.core.refill
        # no line here: the core noted the failure (outage_started, then once per backoff step)
        for w in failed:
            w.wake()
        rt = self._rt
        if probe_at is not None and wanted and rt is not None and rt.alive:
            ref = weakref.ref(self)
            contextvars.Context().run(rt.call_at, probe_at, lambda: _kick(ref))

    def _read_server_limit(self, conn: C) -> None:
        try:
            limit = self.backend.server_limit(conn)
        except Exception as err:  # informative only: never fail the pool for it
            cause = describe_error(err)
            logs.event(
                logger,
                logging.DEBUG,
                self.name,
                logs.SERVER_LIMIT_UNKNOWN,
                "could not read the server's connection limit: %s",
                cause,
                cause=cause,
            )
            return
        self.server_limit = limit
        if limit is not None and self.config.max_size > limit:
            logs.event(
                logger,
                logging.WARNING,
                self.name,
                logs.SERVER_LIMIT,
                "max_size=%d exceeds the server's connection limit (%d): the server "
                "will refuse connections before this pool reaches its ceiling",
                self.config.max_size,
                limit,
                max_size=self.config.max_size,
                limit=limit,
            )

    def _housekeep(self) -> None:
        now = self._clock()
        if self.fleet is not None:
            self._fleet_tick(now)
        with self._lock:
            plan = self.core.housekeep(now)
        for slot in plan.close:  # the core's own test: expired, else surplus idle
            self._close_soon(
                slot.conn, logs.CLOSE_MAX_LIFETIME if now >= slot.expires_at else logs.CLOSE_IDLE_TIMEOUT
            )
        for slot in plan.ping:
            if not self._submit_job(lambda s=slot: self._keepalive(s)):  # type: ignore[misc]
                self._keepalive(slot)
        if plan.connects:
            self._spawn_connects(plan.connects)
        for slot in plan.leaks:
            if self._leak_reports.suspected(slot, now):
                with self._lock:
                    self.core.counters[S.LEAKS_SUSPECTED] += 1

    def _keepalive(self, slot: Slot[C]) -> None:
        try:
            ok = self._ping(slot)
        except Exception as err:  # a background ping has nobody to tell: the connection goes
            cause = describe_error(err)
            logs.event(
                logger,
                logging.DEBUG,
                self.name,
                logs.KEEPALIVE_FAILED,
                "keepalive of connection #%d failed: %s",
                slot.id,
                cause,
                conn_id=slot.id,
                cause=cause,
            )
            ok = False
        now = self._clock()
        with self._lock:
            waiter, close = self.core.pinged(slot, ok, now)
            connects = self.core.plan_connects(now) if close else 0
        if waiter is not None:
            waiter.wake()
        if close:
            self._close_now(slot.conn, why=logs.CLOSE_KEEPALIVE_FAILED if not ok else self._ok_closed_why())
        if connects:
            self._spawn_connects(connects)

    def _kick(self) -> None:
        with self._lock:
            connects = self.core.plan_connects(self._clock())
        if connects:
            self._spawn_connects(connects)

    def _close_soon(self, conn: C, why: str = logs.CLOSE_UNSPECIFIED) -> None:
        """Close off the request path when background jobs run (``why``: the audit's reason)."""
        if not self._submit_job(lambda: self._close_now(conn, why=why)):
            self._close_now(conn, why=why)

    def _close_now(
        self, conn: C, reason: BaseException | None = None, *, why: str = logs.CLOSE_UNSPECIFIED
    ) -> None:
        """Close one connection; ``reason`` (the error that condemned it) goes to the backend,
        ``why`` (one of the ``logs.CLOSE_*`` reasons) to the audit record."""
        try:
            self.backend.close(conn, reason)
        except Exception as err:
            failed = describe_error(err)
            logs.event(
                logger, logging.DEBUG, self.name, logs.CLOSE_FAILED, "close failed: %s", failed, cause=failed
            )
        finally:
            with self._lock:
                self.core.counters[S.CONNECTIONS_CLOSED] += 1
        slot = getattr(conn, SLOT_ATTR, None)
        if self.fleet is not None and slot is not None:
            self._lease_back(slot)
        if logs.audit_enabled():
            conn_id = slot.id if slot is not None else None
            age = round(self._clock() - slot.created_at, 3) if slot is not None else None
            condemned = describe_error(reason) if reason is not None else None
            logs.audit(
                self.name,
                logs.CLOSE,
                "connection #%s closed (%s)",
                conn_id if conn_id else "?",
                why,
                conn_id=conn_id,
                reason=why,
                age_s=age,
                cause=condemned,
            )

    # --------------------------------------------------------- fleet budget (fleet.py)

    def _offload(self, fn: Callable[[], Any]) -> Any:
        """Run a blocking store call off the event loop when the runtime has one (asyncio)."""
        blocking = getattr(self._rt, "blocking", None)
        return blocking(fn) if blocking is not None else fn()

    def _fleet_counts(self) -> tuple[list[int], int, int]:
        """(tokens held, connections without a lease, in use + waiting), under the lock."""
        tokens = [s.token for s in self._fleet_slots.values() if s.token > 0]
        tokens.extend(self._fleet_opening)  # leases of connects still opening
        unleased = sum(1 for s in self._fleet_slots.values() if s.token == fleet.UNLEASED)
        return tokens, unleased, self.core.in_use + len(self.core.waiters)

    def _lease_for_connect(self) -> int:
        """A lease for one new connection: its token, 0 to open one without (store down, within
        the local cap), or -1 (denied). One round trip; serialized with syncs and other connects,
        so a connect that follows a denial is answered locally until the retry is due."""
        fl = self.fleet
        assert fl is not None
        for _ in range(2):
            with fl.single_flight():
                if self._clock() < self._denied_until:
                    return -1  # denied a moment ago: the retry timer asks again, not every waiter
                with self._lock:
                    tokens, _unleased, busy = self._fleet_counts()
                asked = functools.partial(fl.acquire, held=len(tokens), busy=busy)
                token, stale = self._offload(asked)
                if not stale:
                    now = self._clock()
                    with self._lock:
                        if token > 0:
                            self._fleet_opening.add(token)  # a renewal must not drop it meanwhile
                            self._denied_streak = 0
                        elif token < 0:
                            self._denied_streak += 1
                            self._denied_until = now + fl.retry_delay(self._denied_streak)
                    break
            self._fleet_sync()  # the holder had expired: fence what was lost, then ask again
        else:
            return -1
        self._lease_until = fl.lease_until
        with self._lock:
            if token == fleet.UNLEASED:
                held = len(self._fleet_slots)
                cap = fl.down_cap(held)
                self.core.set_cap(cap)
                if self.core.size + self.core.pending > cap:
                    return -1
            elif fl.store_up:
                self.core.set_cap(fl.keep if fl.keep >= 0 else None)
        return int(token)

    def _opened(self, token: int) -> None:
        """A connect with lease ``token`` ended without a pooled connection."""
        with self._lock:
            self._fleet_opening.discard(token)
            self._opening_lost.discard(token)

    def _connect_denied(self) -> None:
        """No lease for a planned connect: give the reservation back; ask again while callers wait."""
        fl = self.fleet
        assert fl is not None
        with self._lock:
            self.core.pending -= 1
            delay = max(self._denied_until - self._clock(), fl.retry_delay(0))
            arm = bool(self.core.waiters) and not self._deny_armed
            if arm:
                self._deny_armed = True  # one retry timer for all denied connects, not one each
        rt = self._rt
        if arm and rt is not None and rt.alive:
            ref = weakref.ref(self)
            contextvars.Context().run(rt.call_later, delay, lambda: _denied_retry(ref))
        elif arm:
            self._deny_armed = False

    def _denied_retry(self) -> None:
        with self._lock:
            self._deny_armed = False
        self._kick()

    def _lease_back(self, slot: Slot[C]) -> None:
        """A connection closed: its lease goes back (queued, sent by a background job)."""
        with self._lock:
            self._fleet_slots.pop(slot.id, None)
            token, slot.token = slot.token, fleet.FENCED
            done = self.core.closed and not self._fleet_slots
        if token > 0:
            self._token_back(token)
        if done:
            self._fleet_leave_if_done()

    def _token_back(self, token: int) -> None:
        """Give a lease back a moment after its connection closed: the server ends the backend a
        little after the client's goodbye, and the budget counts backends, not sockets."""
        fl = self.fleet
        assert fl is not None
        if not fl.release(token):
            return  # a flush is already scheduled; it takes this one too
        rt = self._rt
        if rt is not None and rt.alive:
            ref = weakref.ref(self)
            contextvars.Context().run(rt.call_later, fleet.RELEASE_GRACE, lambda: _flush_soon(ref))
        else:
            self._flush_releases()

    def _flush_soon(self) -> None:
        if not self._submit_job(self._flush_releases):
            self._flush_releases()

    def _flush_releases(self) -> None:
        fl = self.fleet
        assert fl is not None
        with fl.single_flight():
            self._offload(fl.flush_releases)

    def _fleet_leave_if_done(self) -> None:
        """The pool closed and its last connection is gone: leave the fleet in one round trip."""
        fl = self.fleet
        assert fl is not None
        with self._lock:
            if not self.core.closed or self._fleet_slots:
                return
        with fl.single_flight():
            fl.leave()

    def _fleet_tick(self, now: float) -> None:
        """At each housekeeping tick: note demand; renew the leases when due (as a background job)."""
        fl = self.fleet
        assert fl is not None
        with self._lock:
            fl.sample(self.core.in_use + len(self.core.waiters))
            used = bool(self._fleet_slots) or fl.acquires or fl.denied
            queue = used and not self._sync_queued and fl.sync_due(now)
            if queue:
                self._sync_queued = True
        if queue and not self._submit_job(self._fleet_sync_job):
            with self._lock:
                self._sync_queued = False

    def _fleet_sync_job(self) -> None:
        try:
            self._fleet_sync()
        finally:
            with self._lock:
                self._sync_queued = False

    def _lease_checked(self, slot: Slot[C]) -> Slot[C] | None:
        """A checkout with leases unconfirmed past their TTL: re-sync; a connection whose lease
        was lost is closed (None: the caller waits for another)."""
        self._fleet_sync(force=True)
        if slot.token == fleet.FENCED:
            self.checkin(slot, usable=True)  # marked and of no epoch: closed as fenced
            return None
        return slot

    def _fleet_sync(self, *, force: bool = False) -> None:
        """Renew every lease and report demand (one round trip); fence the connections whose
        leases were lost and lease the ones opened while the store was down."""
        fl = self.fleet
        assert fl is not None
        with fl.single_flight():
            if force and self._clock() < self._lease_until:
                return  # another caller synced while this one waited for the lock
            with self._lock:
                tokens, unleased, busy = self._fleet_counts()
            answer = self._offload(lambda: fl.sync(tokens, unleased, busy))
            self._lease_until = fl.lease_until
            now = self._clock()
            close: list[Slot[C]] = []
            with self._lock:
                if answer is None:  # the store is down: the local policy's cap
                    self.core.set_cap(fl.down_cap(len(self._fleet_slots)))
                    return
                lost = set(answer.lost)
                self._opening_lost |= lost & self._fleet_opening
                candidates = [s for s in self._fleet_slots.values() if s.token in lost or s.token == 0]
                # the ones in use first: they are doing work; idle ones cost nothing to close
                candidates.sort(key=lambda s: s.id not in self.core.leased)
                granted = list(answer.granted)
                fenced = []
                for s in candidates:
                    if granted:
                        s.token = granted.pop()
                    else:
                        fenced.append(s)
                for s in fenced:
                    del self._fleet_slots[s.id]
                fl.fenced += len(fenced)
                close = self.core.fence(fenced)
                self.core.set_cap(answer.keep if answer.keep >= 0 else None)
                connects = self.core.plan_connects(now)
        for token in granted:  # more than needed (a connection closed meanwhile)
            self._token_back(token)
        for s in close:
            self._close_soon(s.conn, logs.CLOSE_FENCED)
        if connects:
            self._spawn_connects(connects)

    def fleet_status(self) -> dict[str, Any] | None:
        """The fleet budget as this pool sees it (None without a budget): share, leases, store."""
        fl = self.fleet
        if fl is None:
            return None
        with self._lock:
            slots = list(self._fleet_slots.values())
            out = fl.status(
                leases=sum(1 for s in slots if s.token > 0),
                unleased=sum(1 for s in slots if s.token == fleet.UNLEASED),
            ).as_dict()
            out["pool_size"] = self.core.size
            out["cap"] = self.core.limit
        return out


# ---------------------------------------------------------------------- helpers


def _watch(fd: int | None, closed: Callable[[], bool] | None) -> Any:
    """What the liveness look polls (``.poll(0)`` truthy = look closer). A driver that reads
    its socket in the event loop (asyncpg, aiomysql) knows first, and may already have
    closed the socket and freed its number: its own state is asked. Otherwise a poll
    object on the socket. None: nothing to look at."""
    if closed is not None:
        return _DriverWatch(closed)
    if fd is None:
        return None
    poller = select.poll()
    try:
        poller.register(fd, _POLL_EVENTS)
    except (TypeError, ValueError, OSError):  # not a real socket (a test double, a closed one)
        return None
    return poller


class _DriverWatch:
    """``poll(0)`` as the driver's "closed" flag, for the liveness look."""

    __slots__ = ("_closed",)

    def __init__(self, closed: Callable[[], bool]) -> None:
        self._closed = closed

    def poll(self, timeout: int) -> bool:
        return self._closed()


def _take_cause(conn: Any) -> str | None:
    """What the adapter left on ``conn`` about why it is bad (see :data:`CAUSE_ATTR`), once."""
    cause = getattr(conn, CAUSE_ATTR, None)
    if cause is not None:
        with contextlib.suppress(AttributeError):
            delattr(conn, CAUSE_ATTR)
    return cause if isinstance(cause, str) else None


def _abort_socket(fd: int) -> None:
    """Shut a hung connection's socket down so the call blocked on it returns."""
    try:
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        s.close()


def _backoff(initial: float, maximum: float, attempt: int) -> float:
    """The jittered delay before retry number ``attempt`` (1-based)."""
    b = Backoff(initial, maximum)
    b.attempt = attempt - 1
    return b.next_delay()


def _tick(ref: weakref.ref[PoolEngine[Any]]) -> None:
    engine = ref()
    if engine is None:
        return
    try:
        engine._housekeep()
        if engine._tick_hooks:
            engine._run_tick_hooks()
    finally:
        engine._schedule_tick()


def _serve(ref: weakref.ref[PoolEngine[Any]]) -> None:
    engine = ref()
    if engine is not None:
        engine._serve()


def _kick(ref: weakref.ref[PoolEngine[Any]]) -> None:
    engine = ref()
    if engine is not None:
        engine._kick()


def _flush_soon(ref: weakref.ref[PoolEngine[Any]]) -> None:
    engine = ref()
    if engine is not None:
        engine._flush_soon()


def _denied_retry(ref: weakref.ref[PoolEngine[Any]]) -> None:
    engine = ref()
    if engine is not None:
        engine._denied_retry()


def _retry(ref: weakref.ref[PoolEngine[Any]], generation: int, attempt: int, deadline: float) -> None:
    engine = ref()
    if engine is not None:
        engine._retry(generation, attempt, deadline)


def _connect(ref: weakref.ref[PoolEngine[Any]], generation: int, attempt: int, deadline: float) -> None:
    engine = ref()
    if engine is not None:
        engine._open_one(generation, attempt, deadline)


class _ProbeDone(Exception):
    """Marks a probe's connect as finished on the waiter it wakes (never raised)."""


_PROBE_DONE = _ProbeDone()


def _probe_open(ref: weakref.ref[PoolEngine[Any]], generation: int, deadline: float) -> BaseException | None:
    engine = ref()
    if engine is None:
        return RuntimeError("pool gone")
    return engine._probe_opened(generation, deadline)

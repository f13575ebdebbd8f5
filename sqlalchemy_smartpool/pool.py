"""SmartPool: the SQLAlchemy adapter over :class:`~sqlalchemy_smartpool.core.PoolCore`.

SQLAlchemy's pool keeps a ``_ConnectionRecord`` per DBAPI connection and
wraps each checkout in a ``_ConnectionFairy``; a subclass supplies
``_do_get`` and ``_do_return_conn``. Here they are the only hot path: one
lock around the core's bookkeeping, nothing else. Waiting,
connecting, closing and timed work live in the pieces named after them.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, cast

from sqlalchemy import event
from sqlalchemy.pool import Pool
from sqlalchemy.pool.base import _ConnDialect, _ConnectionRecord

from . import drivers, leaks
from . import stats as S
from .config import PoolConfig, from_pool_arguments
from .core import PoolCore, Slot, Waiter
from .errors import describe_error
from .retry import connect_with_retry
from .sa_errors import SQLALCHEMY_ERRORS, PoolTimeout
from .sched import Housekeeper

logger = logging.getLogger("sqlalchemy_smartpool.pool")

_UNSET: Any = object()
_SLOT = "_smartpool_slot"



class _ThreadWaiter(Waiter[_ConnectionRecord]):
    """A queued thread, parked on its own pre-acquired lock (released to wake it)."""

    __slots__ = ("_lock",)

    def __init__(self, since: float) -> None:
        super().__init__(since)
        self._lock = threading.Lock()
        self._lock.acquire()

    def wake(self) -> None:
        self._lock.release()

    def wait(self, timeout: float) -> bool:
        return self._lock.acquire(timeout=max(timeout, 0.0))


class SmartPool(Pool):
    """A fair, adaptive, self-healing pool for SQLAlchemy engines.

    Use ``create_engine(url, poolclass=SmartPool, min_size=5, max_size=100)``
    or pass ``pool_config=PoolConfig(...)``; every :class:`PoolConfig` field is
    also a keyword here (and so of ``create_engine``). SQLAlchemy's own pool
    arguments are honoured too, so switching only ``poolclass`` keeps an
    app's settings: ``pool_size`` -> ``min_size``, ``pool_size + max_overflow``
    -> ``max_size``, ``pool_timeout`` -> ``acquire_timeout``, ``pool_recycle``
    -> ``max_lifetime``, ``pool_pre_ping`` -> ``validate_on_checkout``,
    ``pool_use_lifo`` -> ``reuse``.

    Background work (prewarm to ``min_size``, growth, shrinking, lifetimes)
    starts at the first checkout or at :meth:`wait` -- not in the constructor,
    because ``create_engine`` attaches the dialect's connect hooks only after
    it built the pool.
    """

    def __init__(
        self,
        creator: Any,
        pool_config: PoolConfig | None = None,
        min_size: Any = _UNSET,
        max_size: Any = _UNSET,
        acquire_timeout: Any = _UNSET,
        idle_timeout: Any = _UNSET,
        max_lifetime: Any = _UNSET,
        lifetime_jitter: Any = _UNSET,
        keepalive_interval: Any = _UNSET,
        reuse: Any = _UNSET,
        validate_on_checkout: Any = _UNSET,
        validation_interval: Any = _UNSET,
        validation_query: Any = _UNSET,
        validation_timeout: Any = _UNSET,
        max_waiting: Any = _UNSET,
        max_concurrent_connects: Any = _UNSET,
        connect_timeout: Any = _UNSET,
        retry_attempts: Any = _UNSET,
        retry_backoff_initial: Any = _UNSET,
        retry_backoff_max: Any = _UNSET,
        leak_detection_threshold: Any = _UNSET,
        housekeeping_interval: Any = _UNSET,
        track_wait_times: Any = _UNSET,
        name: Any = _UNSET,
        breaker: Any = _UNSET,
        # SQLAlchemy's spellings, as create_engine() passes them
        pool_size: Any = _UNSET,
        max_overflow: Any = _UNSET,
        timeout: Any = _UNSET,
        recycle: Any = _UNSET,
        pre_ping: Any = _UNSET,
        use_lifo: Any = _UNSET,
        # passed through to sqlalchemy.pool.Pool
        echo: Any = None,
        logging_name: str | None = None,
        reset_on_return: Any = True,
        events: Any = None,
        dialect: Any = None,
        _dispatch: Any = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        given = {
            k: v
            for k, v in locals().items()
            if v is not _UNSET and k in PoolConfig.__dataclass_fields__ and k != "breaker"
        }
        if breaker is not _UNSET:
            given["breaker"] = breaker
        sa_given = {
            "pool_size": pool_size,
            "max_overflow": max_overflow,
            "timeout": timeout,
            "recycle": recycle,
            "pre_ping": pre_ping,
            "use_lifo": use_lifo,
        }
        sa_given = {k: v for k, v in sa_given.items() if v is not _UNSET}
        self._config = from_pool_arguments(pool_config, given, sa_given)
        Pool.__init__(
            self,
            creator,
            recycle=-1,  # lifetimes are ours (jittered, never in the request thread)
            echo=echo,
            logging_name=logging_name or self._config.name,
            reset_on_return=reset_on_return,
            events=events,
            dialect=dialect,
            pre_ping=False,  # validation is ours (with a bypass window)
            _dispatch=_dispatch,
        )
        self._clock: Callable[[], float] = clock or time.monotonic
        self._pool_name = self._config.name or f"0x{id(self):x}"
        # An RLock, so that a return made by the garbage collector (SQLAlchemy's
        # finalizer of a dropped connection) in a thread that holds the lock can
        # be detected and deferred instead of deadlocking; ~6 ns dearer than a Lock.
        self._lock = threading.RLock()
        self._owned = self._lock._is_owned  # type: ignore[attr-defined]
        self._core: PoolCore[_ConnectionRecord] = PoolCore(
            self._config, self._clock, name=self._pool_name, errors=SQLALCHEMY_ERRORS
        )
        self._acquire = self._lock.acquire
        self._release = self._lock.release
        self._lifo = self._config.reuse == "lifo"
        self._validation_interval = self._config.validation_interval
        self._waits: S.WaitSampler | None = S.WaitSampler() if self._config.track_wait_times else None
        self._leak_threshold = self._config.leak_detection_threshold
        # without a dialect (a bare pool) there is no ping, only a validation_query
        can_validate = self._config.validation_query is not None or not isinstance(
            self._dialect, _ConnDialect
        )
        self._validate = self._config.validate_on_checkout and can_validate
        self._hk: Housekeeper | None = None
        real_dialect = not isinstance(self._dialect, _ConnDialect)
        if real_dialect and self._config.connect_timeout is not None:
            drivers.install_connect_timeout(self._dialect, self._config.connect_timeout)
        if real_dialect and self._leak_threshold is not None:
            drivers.install_statement_hook(self._dialect, _note_statement)
        # recreate() copies the old pool's listeners (``_dispatch``): add it once
        if drivers.needs_after_connect(self._dialect) and not event.contains(
            self, "connect", drivers.after_connect
        ):
            event.listen(self, "connect", drivers.after_connect)
        #: bumped by dispose(): connects started before it are not kept
        self._generation = 0
        self._ping_opens_transaction = drivers.ping_opens_transaction(self._dialect)
        self._leak_reports = leaks.LeakReporter(self._pool_name)

    # ------------------------------------------------------------------ public API

    @property
    def config(self) -> PoolConfig:
        return self._config

    def stats(self) -> S.PoolStats:
        """A consistent snapshot of gauges, counters and wait percentiles."""
        waits = self._waits if self._waits is not None else S.WaitSampler(1)
        p50, p95, p99 = waits.percentiles(50, 95, 99, checkouts=self._core.checkouts)
        with self._lock:
            core = self._core
            return S.PoolStats(
                name=self._pool_name,
                pool_size=core.size,
                pool_idle=len(core.idle),
                pool_in_use=core.in_use,
                requests_waiting=len(core.waiters),
                connections_pending=core.pending,
                pool_min=self._config.min_size,
                pool_max=self._config.max_size,
                breaker_state=core.breaker.state.value,
                counters=core.counter_snapshot(),
                wait_p50=p50,
                wait_p95=p95,
                wait_p99=p99,
                wait_max=waits.max,
                wait_sum=waits.total,
                closed=core.closed,
            )

    def wait(self, timeout: float = 30.0) -> None:
        """Start the pool and block until ``min_size`` connections are open (prewarm).

        Raises :class:`PoolTimeout` naming the pool's state if that takes longer.
        """
        self._ensure_started()
        deadline = self._clock() + timeout
        while True:
            with self._lock:
                ready = self._core.size >= self._config.min_size
                state = self._core.describe()
            if ready:
                return
            if self._clock() >= deadline:
                raise PoolTimeout(f"pool {self._pool_name} not ready after {timeout:g}s; {state}")
            time.sleep(0.005)

    def suspected_leaks(self) -> list[leaks.LeakInfo]:
        """Checkouts held longer than ``leak_detection_threshold``, oldest first."""
        threshold = self._leak_threshold
        if threshold is None:
            return []
        now = self._clock()
        with self._lock:
            held = [s for s in self._core.leased.values() if now - s.checked_out_at >= threshold]
        return leaks.describe(sorted(held, key=lambda s: s.checked_out_at), now)

    def close(self) -> None:
        """Close for good: fail waiters, close idle connections, stop background work.

        Connections still checked out are closed when they come back.
        """
        with self._lock:
            idle, waiters = self._core.close()
        for w in waiters:
            w.wake()
        self._stop_housekeeper()
        for slot in idle:
            self._close_record(slot.conn)

    # ---------------------------------------------------- sqlalchemy.pool.Pool API

    def status(self) -> str:
        with self._lock:
            return f"SmartPool {self._core.describe()}"

    def size(self) -> int:
        return self._core.size

    def checkedin(self) -> int:
        return len(self._core.idle)

    def checkedout(self) -> int:
        return self._core.in_use

    def overflow(self) -> int:
        return max(0, self._core.size - self._config.min_size)

    def timeout(self) -> float:
        return self._config.acquire_timeout

    def dispose(self) -> None:
        """Close idle connections and stop background work; the pool stays usable
        (checked-out connections come back normally, the next checkout restarts it)."""
        self._stop_housekeeper()
        with self._lock:
            self._generation += 1
            self._hk = None  # the next checkout starts background work again
            idle = self._core.drain_idle()
            self._core.breaker.reset()
            restart = bool(self._core.waiters)
        for slot in idle:
            self._close_record(slot.conn)
        self.logger.info("Pool disposed. %s", self.status())
        if restart:
            self._ensure_started()

    def recreate(self) -> SmartPool:
        self.logger.info("Pool recreating")
        return self.__class__(
            self._creator,
            pool_config=self._config,
            echo=self.echo,
            logging_name=self._orig_logging_name,
            reset_on_return=self._reset_on_return,
            _dispatch=self.dispatch,
            dialect=self._dialect,
            clock=self._clock if self._clock is not time.monotonic else None,
        )

    # The hot path. It is PoolCore.take_idle / PoolCore.checkin inlined, with
    # explicit acquire/release instead of ``with``: that took this class's share
    # of a checkout+checkin from ~1.6 us to ~0.9 us (SQLAlchemy's own
    # record/fairy work is ~5 us more; docs/benchmarks.md). Anything unusual
    # falls through to the core's full versions. The stress tests
    # (tests/integration/test_stress.py) check the core's invariants after
    # thousands of fast-path checkouts racing waits, invalidations and dispose().

    def _do_get(self) -> _ConnectionRecord:
        clock = self._clock
        t0 = clock()
        core = self._core
        self._acquire()
        idle = core.idle
        if idle and not core.waiters:
            slot = idle.pop() if self._lifo else idle.popleft()
            slot.checked_out_at = t0
            core.leased[slot.id] = slot
            core.checkouts += 1
            self._release()
        else:
            self._release()
            slot = self._wait_for_slot(t0)
            waits = self._waits
            if waits is not None:  # immediate checkouts waited 0: counted, not timed
                waits.record(clock() - t0, core.checkouts)
        if self._validate and (
            t0 - slot.last_used > self._validation_interval or slot.validated_at < core.suspect_before
        ):
            slot = self._validated(slot, t0)
        if self._leak_threshold is not None:
            slot.lease = leaks.capture()
        if self._hk is None:  # served from connections returned after dispose()
            self._ensure_started()
        return slot.conn

    def _do_return_conn(self, record: Any) -> None:
        if self._owned():
            # the GC ran a finalizer while this thread is inside the pool's
            # bookkeeping: finish the return once the lock is free
            threading.Thread(
                target=self._do_return_conn, args=(record,), name="smartpool-gc-return", daemon=True
            ).start()
            return
        slot: Slot[_ConnectionRecord] | None = record.__dict__.get(_SLOT)
        if (
            slot is not None
            and slot.lease is None
            and record.dbapi_connection is not None
            and record._soft_invalidate_time <= record.starttime
        ):
            now = self._clock()
            core = self._core
            self._acquire()
            if now < slot.expires_at and not core.waiters and not core.closed:
                del core.leased[slot.id]
                slot.last_used = now
                core.idle.append(slot)
                self._release()
                return
            self._release()
        self._return_slow(record, slot)

    # Pool._return_conn only forwards here; skipping the extra frame is measurable.
    _return_conn = _do_return_conn

    def _return_slow(self, record: Any, slot: Slot[_ConnectionRecord] | None) -> None:
        if slot is None:  # not ours (e.g. a record made by SQLAlchemy internals); just close it
            record.close()
            return
        usable = record.dbapi_connection is not None and record._soft_invalidate_time <= record.starttime
        lease = slot.lease
        now = self._clock()
        with self._lock:
            waiter, close = self._core.checkin(slot, now, usable=usable)
            connects = self._core.plan_connects(now) if close else 0
        if lease is not None:
            slot.lease = None
            self._leak_returned(slot, lease, now)
        if waiter is not None:
            waiter.wake()
        if close:
            self._close_soon(record)
        if connects:
            self._spawn_connects(connects)

    def _leak_returned(self, slot: Slot[_ConnectionRecord], lease: Any, now: float) -> None:
        if leaks.returned_by_gc():
            self._leak_reports.collected(slot, lease, now)
            key = S.LEAKS_COLLECTED
        elif self._leak_reports.returned(slot, lease, now):
            key = S.LEAKS_RETURNED
        else:
            return
        with self._lock:
            self._core.counters[key] += 1

    def _invalidate(
        self, connection: Any, exception: BaseException | None = None, _checkin: bool = True
    ) -> None:
        # SQLAlchemy's version makes every older connection reconnect, in the
        # request threads. A disconnect usually means "this one died"; for a
        # server restart the others fail validation and are replaced in the
        # background. So: mark them suspect instead.
        # Without validation there is no such check, so retire the older idle
        # connections (as SQLAlchemy does), but close and replace them here in
        # the background rather than in the next callers' threads.
        now = self._clock()
        retired: list[Slot[_ConnectionRecord]] = []
        connects = 0
        with self._lock:
            self._core.mark_suspect(now)
            if not self._validate:
                retired = self._core.retire_idle_before(now)
                connects = self._core.plan_connects(now)
        for slot in retired:
            self._close_soon(slot.conn)
        if retired and connects:
            self._spawn_connects(connects)
        if _checkin and getattr(connection, "is_valid", False):
            connection.invalidate(exception)

    # ----------------------------------------------------------------- waiting

    def _wait_for_slot(self, t0: float) -> Slot[_ConnectionRecord]:
        self._ensure_started()
        timeout = self._config.acquire_timeout
        waiter = _ThreadWaiter(t0)
        with self._lock:
            slot = self._core.take_idle(t0)
            if slot is not None:
                return slot
            self._core.add_waiter(waiter)  # raises when waiting cannot help
            connects = self._core.plan_connects(t0)
        if connects:
            self._spawn_connects(connects)
        if not waiter.wait(t0 + timeout - self._clock()):
            with self._lock:
                core = self._core
                gave_up = core.remove_waiter(waiter)
                if gave_up:
                    core.note_timeout()
                    state = core.describe()
                    cause = core.last_connect_error if core.last_connect_error_at >= t0 else None
            if gave_up:
                why = f"; last connect error: {describe_error(cause)}" if cause is not None else ""
                raise PoolTimeout(
                    f"pool {self._pool_name}: no connection available within {timeout:g}s; {state}{why}"
                ) from cause
        if waiter.error is not None:
            raise waiter.error
        assert waiter.slot is not None
        return waiter.slot

    def _validated(self, slot: Slot[_ConnectionRecord], t0: float) -> Slot[_ConnectionRecord]:
        """Ping until a connection answers; dead ones are dropped and replaced in the background."""
        while True:
            try:
                ok = self._ping(slot, fatal_raises=True)
            except BaseException as err:
                # as SQLAlchemy's pre-ping: an error that is not a disconnect reaches the caller
                with self._lock:
                    self._core.checkouts -= 1
                    self._core.discard(slot)
                    connects = self._core.plan_connects(self._clock())
                slot.conn.invalidate(err)
                with self._lock:
                    self._core.counters[S.CONNECTIONS_CLOSED] += 1
                if connects:
                    self._spawn_connects(connects)
                raise
            now = self._clock()
            with self._lock:
                core = self._core
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
            self._close_soon(slot.conn)
            if connects:
                self._spawn_connects(connects)
            if nxt is None:
                if now - t0 >= self._config.acquire_timeout:
                    raise PoolTimeout(
                        f"pool {self._pool_name}: no valid connection within "
                        f"{self._config.acquire_timeout:g}s; {self.status()}"
                    )
                nxt = self._wait_for_slot(now)
            slot = nxt
            if not self._core.validation_due(slot, now):
                return slot

    def _ping(self, slot: Slot[_ConnectionRecord], *, fatal_raises: bool = False) -> bool:
        """Validate one connection, bounded by ``validation_timeout`` via the housekeeper.

        False for a dead connection. Any other error is raised when
        ``fatal_raises`` (a checkout, as SQLAlchemy's pre-ping does) and counts
        as dead otherwise (a background keepalive has nobody to tell). A ping
        that opened a transaction (``SELECT 1`` on psycopg) is rolled back, so
        no pooled connection sits "idle in transaction".
        """
        dbapi_conn = slot.conn.dbapi_connection
        if dbapi_conn is None:
            return False
        watchdog = None
        fd = drivers.socket_fd(dbapi_conn)
        hk = self._hk
        if fd is not None and hk is not None:
            watchdog = hk.call_later(self._config.validation_timeout, lambda: drivers.abort_socket(fd))
        # an error the dialect's own ping raised was already judged (by is_disconnect and
        # any handle_error hook, which may downgrade a disconnect): don't second-guess it
        judged = False
        try:
            query = self._config.validation_query
            if query is None:
                # the dialect's ping answers False for a disconnect and raises anything else
                judged = True
                if not self._dialect._do_ping_w_event(dbapi_conn):
                    return False
                judged = False
            else:
                cursor = dbapi_conn.cursor()
                try:
                    cursor.execute(query)
                    cursor.fetchall()
                finally:
                    cursor.close()
            if query is not None or self._ping_opens_transaction:
                dbapi_conn.rollback()
            return True
        except Exception as err:
            if fatal_raises and (judged or not self._is_disconnect(err, dbapi_conn)):
                raise
            logger.info("pool %s: validation failed: %s", self._pool_name, describe_error(err))
            return False
        finally:
            if watchdog is not None:
                watchdog.cancel()

    def _is_disconnect(self, err: BaseException, dbapi_conn: Any) -> bool:
        dbapi = getattr(self._dialect, "loaded_dbapi", None)
        error_cls = getattr(dbapi, "Error", None)
        if error_cls is None or not isinstance(err, error_cls):
            return self._config.validation_query is not None and isinstance(err, OSError)
        try:
            return bool(cast(Any, self._dialect).is_disconnect(err, dbapi_conn, None))
        except Exception:
            return False

    # ------------------------------------------------------- background work

    def _ensure_started(self) -> None:
        if self._hk is not None and self._hk.alive:
            return
        with self._lock:
            if self._core.closed or (self._hk is not None and self._hk.alive):
                return
            self._hk = Housekeeper(
                self._pool_name, workers=self._config.max_concurrent_connects + 2, clock=self._clock
            )
            connects = self._core.plan_connects(self._clock())
        self._schedule_tick()
        if connects:
            self._spawn_connects(connects)

    def _stop_housekeeper(self) -> None:
        hk = self._hk
        if hk is not None:
            hk.stop()

    def _schedule_tick(self) -> None:
        hk = self._hk
        if hk is None or not hk.alive:
            return
        ref = weakref.ref(self)
        hk.call_later(self._config.housekeeping_interval, lambda: _tick(ref))

    def _spawn_connects(self, n: int) -> None:
        hk = self._hk
        job = functools.partial(_connect, weakref.ref(self), self._generation)
        bounced = 0
        for _ in range(n):
            # no background threads, or stopped in between (dispose): give the reservation back
            if hk is None or not hk.alive or not hk.submit(job):
                bounced += 1
        if bounced:
            with self._lock:
                self._core.pending -= bounced
                waiting = bool(self._core.waiters)
            if waiting:  # someone needs a connection: start over (never for an idle, abandoned pool)
                self._ensure_started()

    def _housekeep(self) -> None:
        now = self._clock()
        with self._lock:
            plan = self._core.housekeep(now)
        for slot in plan.close:
            self._close_soon(slot.conn)
        for slot in plan.ping:
            self._submit(lambda s=slot: self._keepalive(s))  # type: ignore[misc]
        if plan.connects:
            self._spawn_connects(plan.connects)
        for slot in plan.leaks:
            if self._leak_reports.suspected(slot, now):
                with self._lock:
                    self._core.counters[S.LEAKS_SUSPECTED] += 1

    def _keepalive(self, slot: Slot[_ConnectionRecord]) -> None:
        ok = self._ping(slot)
        now = self._clock()
        with self._lock:
            waiter, close = self._core.pinged(slot, ok, now)
            connects = self._core.plan_connects(now) if close else 0
        if waiter is not None:
            waiter.wake()
        if close:
            self._close_record(slot.conn)
        if connects:
            self._spawn_connects(connects)

    def _open_one(self, generation: int) -> None:
        """Body of a background connect: open, then serve the longest waiter or park idle.

        Every failed attempt feeds the breaker at once (so it can open during
        the retries); retries stop when it opens and never outlast the
        checkout timeout of the callers this connect is for. After a failure
        nothing is re-planned at once -- the next housekeeping tick or the
        breaker's probe time does that, so a dead database is not hammered.
        """
        cfg = self._config
        deadline = self._clock() + cfg.acquire_timeout
        try:
            record = connect_with_retry(
                lambda: _ConnectionRecord(self),
                attempts=cfg.retry_attempts + 1,
                initial=cfg.retry_backoff_initial,
                maximum=cfg.retry_backoff_max,
                is_transient=self._is_transient,
                on_failure=self._note_connect_failure,
                deadline=deadline,
                clock=self._clock,
            )
        except Exception as err:
            with self._lock:
                failed = self._core.connect_abandoned(err, permanent=not self._is_transient(err))
                breaker = self._core.breaker
                probe_at = breaker.next_probe_at if breaker.is_open else None
            # while the breaker is open its own log lines tell the story; keep probes quiet
            logger.log(
                logging.DEBUG if probe_at is not None else logging.WARNING,
                "pool %s: connect failed: %s",
                self._pool_name,
                describe_error(err),
            )
            for w in failed:
                w.wake()
            hk = self._hk
            if probe_at is not None and hk is not None:
                ref = weakref.ref(self)
                hk.call_at(probe_at, lambda: _kick(ref))
            return
        now = self._clock()
        with self._lock:
            if generation != self._generation:  # dispose() ran meanwhile
                self._core.connect_dropped()
                connects = self._core.plan_connects(now)
                closed = True
                waiter = None
            else:
                slot, waiter = self._core.connect_succeeded(record, now)
                record.__dict__[_SLOT] = slot
                connects = self._core.plan_connects(now)
                closed = self._core.closed
        if closed:
            if connects:
                self._spawn_connects(connects)
            self._close_record(record)
            return
        if waiter is not None:
            waiter.wake()
        if connects:
            self._spawn_connects(connects)

    def _note_connect_failure(self, err: BaseException) -> bool:
        with self._lock:
            return self._core.note_connect_failure(err, self._clock())

    def _is_transient(self, err: BaseException) -> bool:
        dbapi = getattr(self._dialect, "loaded_dbapi", None)
        operational = getattr(dbapi, "OperationalError", None)
        return (
            operational is not None
            and isinstance(err, operational)
            and not drivers.is_permanent_connect_error(err)
        )

    def _kick(self) -> None:
        with self._lock:
            connects = self._core.plan_connects(self._clock())
        if connects:
            self._spawn_connects(connects)

    def _submit(self, job: Callable[[], None]) -> None:
        hk = self._hk
        if hk is None or not hk.alive or not hk.submit(job):
            job()

    def _close_soon(self, record: _ConnectionRecord) -> None:
        """Close off the request thread when background workers run."""
        self._submit(lambda: self._close_record(record))

    def _close_record(self, record: _ConnectionRecord) -> None:
        try:
            record.close()
        finally:
            with self._lock:
                self._core.counters[S.CONNECTIONS_CLOSED] += 1


# ------------------------------------------------------------------ helpers


def _note_statement(record: Any, statement: str) -> None:
    slot = record.__dict__.get(_SLOT)
    lease = slot.lease if slot is not None else None
    if isinstance(lease, leaks.Lease):
        leaks.note_statement(lease, statement)


def _tick(ref: weakref.ref[SmartPool]) -> None:
    pool = ref()
    if pool is None:
        return
    try:
        pool._housekeep()
    finally:
        pool._schedule_tick()


def _kick(ref: weakref.ref[SmartPool]) -> None:
    pool = ref()
    if pool is not None:
        pool._kick()


def _connect(ref: weakref.ref[SmartPool], generation: int) -> None:
    pool = ref()
    if pool is not None:
        pool._open_one(generation)

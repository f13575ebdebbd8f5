"""The housekeeper: the one owner of a pool's timed and background work (threads).

This is the engine's :class:`~.engine.Runtime` for threaded pools.

One timer thread keeps a heap of deadlines (the periodic tick, validation
watchdogs, breaker probes) and never blocks on I/O; blocking jobs (connect,
close, ping) go to a few worker threads. Both hold only a weak reference to
their owner, so a pool that is dropped without ``dispose()`` does not keep
threads alive forever.
"""

from __future__ import annotations

import contextvars
import functools
import heapq
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from . import logs
from .core import Waiter

logger = logging.getLogger(logs.SCHED_LOGGER)

_STOP = object()


class ThreadWaiter(Waiter[Any]):
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


class Timer:
    """A scheduled call; ``cancel()`` is O(1) (the entry is skipped when due, and
    swept out of the heap once cancelled ones are the majority)."""

    __slots__ = ("cancelled", "fn", "owner", "when")

    def __init__(self, when: float, fn: Callable[[], None], owner: Housekeeper | None = None) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False
        self.owner = owner

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            if self.owner is not None:
                self.owner._cancelled += 1  # approximate under races; only triggers a sweep


class Housekeeper:
    """Timer thread + bounded worker threads, started lazily, stopped by ``stop()``."""

    def __init__(
        self,
        name: str,
        *,
        workers: int,
        clock: Callable[[], float] = time.monotonic,
        worker_idle_exit: float = 60.0,
    ) -> None:
        self.name = name
        self._clock = clock
        self._max_workers = workers
        self._worker_idle_exit = worker_idle_exit
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Timer]] = []
        self._cancelled = 0
        self._seq = itertools.count()
        self._timer_thread: threading.Thread | None = None
        self._jobs: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._workers = 0
        self._idle_workers = 0
        self._stopped = False
        self._pid = os.getpid()

    # -- timed work -------------------------------------------------------------------

    def call_at(self, when: float, fn: Callable[[], None]) -> Timer:
        """Run ``fn`` at ``when`` on the timer thread, in the caller's ``contextvars``
        context (as asyncio's ``call_later`` does: a correlation ID follows the work)."""
        timer = Timer(when, functools.partial(contextvars.copy_context().run, fn), self)
        with self._cond:
            if self._stopped:
                timer.cancelled = True
                return timer
            heap = self._heap
            if self._cancelled > 64 and self._cancelled * 2 > len(heap):
                # every validation arms a watchdog and nearly all are cancelled:
                # without a sweep they would sit here until their deadline
                heap[:] = [entry for entry in heap if not entry[2].cancelled]
                heapq.heapify(heap)
                self._cancelled = 0
            heapq.heappush(heap, (when, next(self._seq), timer))
            if self._heap[0][2] is timer:
                self._cond.notify()
            if self._timer_thread is None:
                self._timer_thread = threading.Thread(
                    target=self._run_timers, name=f"smartpool-timer-{self.name}", daemon=True
                )
                self._timer_thread.start()
        return timer

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        return self.call_at(self._clock() + delay, fn)

    def _run_timers(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopped:
                        return
                    if self._heap:
                        delay = self._heap[0][0] - self._clock()
                        if delay <= 0:
                            _, _, timer = heapq.heappop(self._heap)
                            break
                        self._cond.wait(delay)
                    elif not self._cond.wait(self._worker_idle_exit) and not self._heap:
                        # nothing scheduled (the pool was dropped): let the thread go;
                        # the next call_at() starts a new one
                        self._timer_thread = None
                        return
            if timer.cancelled:
                continue
            try:
                timer.fn()
            except Exception:  # a bug in one task must not kill the housekeeper
                logs.event(
                    logger,
                    logging.ERROR,
                    self.name,
                    logs.TASK_FAILED,
                    "housekeeping task failed",
                    exc_info=True,
                )

    # -- blocking work ----------------------------------------------------------------

    def submit(self, fn: Callable[[], None]) -> bool:
        """Run ``fn`` on a worker thread; False (and nothing runs) once stopped.

        It runs in the caller's ``contextvars`` context, as an asyncio task would.

        A worker is spawned when the queued jobs outnumber the idle workers
        and the cap allows; otherwise the job waits for the next free one.
        """
        with self._cond:
            if self._stopped:
                return False
            spawn = self._jobs.qsize() >= self._idle_workers and self._workers < self._max_workers
            if spawn:
                self._workers += 1
            # queued under the lock so an idle worker cannot decide to exit in between
            self._jobs.put(functools.partial(contextvars.copy_context().run, fn))
        if spawn:
            threading.Thread(
                target=self._run_worker, name=f"smartpool-worker-{self.name}", daemon=True
            ).start()
        return True

    def _run_worker(self) -> None:
        cond = self._cond
        while True:
            with cond:
                self._idle_workers += 1
            try:
                job = self._jobs.get(timeout=self._worker_idle_exit)
            except queue.Empty:
                with cond:
                    self._idle_workers -= 1
                    if self._jobs.empty():
                        self._workers -= 1
                        return
                continue
            with cond:
                self._idle_workers -= 1
                if job is _STOP:
                    self._workers -= 1
                    return
            try:
                job()  # type: ignore[operator]
            except Exception:
                logs.event(
                    logger, logging.ERROR, self.name, logs.JOB_FAILED, "background job failed", exc_info=True
                )

    # -- waiting ----------------------------------------------------------------------

    def new_waiter(self, since: float) -> ThreadWaiter:
        return ThreadWaiter(since)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def check_caller(self) -> None:
        """Any thread may use a threaded pool."""

    # -- lifecycle --------------------------------------------------------------------

    def stop(self) -> None:
        """Cancel timed work and let workers exit after their current job. Idempotent."""
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
            self._heap.clear()
            self._cond.notify_all()
            workers = self._workers
        for _ in range(workers):
            self._jobs.put(_STOP)

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def alive(self) -> bool:
        """Running in this process: after ``os.fork()`` the child has none of its threads."""
        return not self._stopped and self._pid == os.getpid()

"""The engine's runtime on an asyncio event loop: timers, background tasks, waiting.

The engine is blocking-style code; under asyncio it runs inside greenlets, as
SQLAlchemy's asyncio extension runs its whole sync Engine. The adapter passes
the greenlet bridge in (``spawn`` runs a blocking-style function as a
coroutine, ``await_`` awaits from inside one), so this module needs neither
SQLAlchemy nor redis. A runtime belongs to the loop it was started on; a
caller on another loop gets :class:`~.errors.WrongEventLoop` before it can
touch anything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from asyncio.events import _get_running_loop
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from . import logs
from .core import Waiter
from .errors import WrongEventLoop

logger = logging.getLogger(logs.SCHED_LOGGER)

Spawn = Callable[[Callable[[], None]], Coroutine[Any, Any, None]]
AwaitFn = Callable[[Awaitable[Any]], Any]


class LoopWaiter(Waiter[Any]):
    """A queued task, parked on a future of its loop."""

    __slots__ = ("_await", "_fut", "_loop", "_thread")

    def __init__(self, since: float, loop: asyncio.AbstractEventLoop, await_: AwaitFn, thread: int) -> None:
        super().__init__(since)
        self._loop = loop
        self._await = await_
        self._thread = thread
        self._fut: asyncio.Future[bool] = loop.create_future()

    def _resolve(self, value: bool) -> None:
        if not self._fut.done():
            self._fut.set_result(value)

    def wake(self) -> None:
        if threading.get_ident() == self._thread:
            self._resolve(True)
        else:  # a return made off the loop (garbage collector, another thread)
            self._loop.call_soon_threadsafe(self._resolve, True)

    def wait(self, timeout: float) -> bool:
        handle = self._loop.call_later(max(timeout, 0.0), self._resolve, False)
        try:
            # a cancellation of the task arrives here as CancelledError; the engine withdraws
            return bool(self._await(self._fut))
        finally:
            handle.cancel()


class _Timer:
    __slots__ = ("cancelled", "handle")

    def __init__(self) -> None:
        self.cancelled = False
        self.handle: asyncio.Handle | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self.handle is not None:
            self.handle.cancel()


class LoopRuntime:
    """Timers as ``loop.call_later``, jobs as tasks running ``spawn(job)``."""

    def __init__(
        self,
        name: str,
        *,
        loop: asyncio.AbstractEventLoop,
        spawn: Spawn,
        await_: AwaitFn,
        clock: Callable[[], float],
        in_greenlet: Callable[[], bool] | None = None,
    ) -> None:
        self.name = name
        self.loop = loop
        self._in_greenlet = in_greenlet
        self._spawn = spawn
        self._await = await_
        self._clock = clock
        self._thread = threading.get_ident()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = False
        self._pid = os.getpid()

    @property
    def alive(self) -> bool:
        return not self._stopped and self._pid == os.getpid() and not self.loop.is_closed()

    def _on_loop(self) -> bool:
        return threading.get_ident() == self._thread

    # -- timed work -------------------------------------------------------------------

    def call_at(self, when: float, fn: Callable[[], None]) -> _Timer:
        return self.call_later(when - self._clock(), fn)

    def call_later(self, delay: float, fn: Callable[[], None]) -> _Timer:
        timer = _Timer()

        def fire() -> None:
            if timer.cancelled or self._stopped:
                return
            try:
                fn()
            except Exception:  # a bug in one task must not go unnoticed, nor stop the others
                failed = "housekeeping task failed"
                logs.event(logger, logging.ERROR, self.name, logs.TASK_FAILED, failed, exc_info=True)

        def arm() -> None:
            if not timer.cancelled and not self._stopped:
                timer.handle = self.loop.call_later(max(delay, 0.0), fire)

        if self._on_loop():
            arm()
        elif self.alive:
            self.loop.call_soon_threadsafe(arm)
        return timer

    # -- blocking work ----------------------------------------------------------------

    def submit(self, fn: Callable[[], None]) -> bool:
        if not self.alive:
            return False
        if self._on_loop():
            self._start(fn)
        else:
            try:
                self.loop.call_soon_threadsafe(self._start, fn)
            except RuntimeError:  # the loop closed in between
                return False
        return True

    def _start(self, fn: Callable[[], None]) -> None:
        task = self.loop.create_task(self._job(fn), name=f"smartpool-{self.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _job(self, fn: Callable[[], None]) -> None:
        try:
            await self._spawn(fn)
        except asyncio.CancelledError:
            raise
        except Exception:
            failed = "background job failed"
            logs.event(logger, logging.ERROR, self.name, logs.JOB_FAILED, failed, exc_info=True)

    def blocking(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run in the loop's executor and awaited, from the engine's blocking-style code
        (a greenlet on the loop); a direct call elsewhere. For the fleet budget's store calls:
        a Redis that hangs must not hang the loop."""
        if not self._on_loop() or self._in_greenlet is None or not self._in_greenlet():
            return fn()
        return self._await(self.loop.run_in_executor(None, fn))

    # -- waiting ----------------------------------------------------------------------

    def new_waiter(self, since: float) -> LoopWaiter:
        return LoopWaiter(since, self.loop, self._await, self._thread)

    def sleep(self, seconds: float) -> None:
        self._await(asyncio.sleep(seconds))

    def check_caller(self) -> None:
        check_loop(self, self.name)

    # -- lifecycle --------------------------------------------------------------------

    def stop(self) -> None:
        """Stop timers; jobs in flight finish (their results are dropped by the engine)."""
        self._stopped = True


def runtime_on_running_loop(
    name: str,
    *,
    spawn: Spawn,
    await_: AwaitFn,
    clock: Callable[[], float],
    in_greenlet: Callable[[], bool] | None = None,
) -> LoopRuntime:
    """A runtime bound to the running loop; ``WrongEventLoop`` when there is none."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise WrongEventLoop(f"pool {name}: an asyncio pool needs a running event loop") from None
    return LoopRuntime(name, loop=loop, spawn=spawn, await_=await_, clock=clock, in_greenlet=in_greenlet)


def check_on_loop(engine: Any) -> None:
    """Refuse (``WrongEventLoop``) a caller on another loop than the engine's runtime
    (one identity test on the hot path; the story only when it fails)."""
    rt = engine._rt
    if isinstance(rt, LoopRuntime) and _get_running_loop() is not rt.loop:
        rt.check_caller()


def checkout_on_loop(engine: Any) -> Any:
    """``engine.checkout()`` after :func:`check_on_loop` (from a greenlet: it may await)."""
    check_on_loop(engine)
    return engine.checkout()


def check_loop(rt: LoopRuntime, name: str) -> None:
    """Refuse a caller whose running loop is not the one the pool's connections live on."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        raise WrongEventLoop(
            f"pool {name}: an asyncio pool is used outside a running event loop"
        ) from None
    if running is not rt.loop:
        raise WrongEventLoop(
            f"pool {name}: used from another event loop than the one its connections belong to; "
            "dispose the engine (await engine.dispose()) before using it on a new loop"
        )

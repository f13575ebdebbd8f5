"""SQLAlchemy's greenlet bridge, handed to the asyncio runtime by every asyncio adapter.

``spawn`` runs the engine's blocking-style code as a coroutine; ``await_``
awaits from inside it (``await_only`` before SQLAlchemy 2.1).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from sqlalchemy.util import concurrency

from .sched_asyncio import AwaitFn, LoopRuntime, runtime_on_running_loop

#: ``await spawn(fn, *args)`` runs ``fn(*args)`` in a greenlet
spawn: Callable[..., Coroutine[Any, Any, Any]] = concurrency.greenlet_spawn
await_: AwaitFn = getattr(concurrency, "await_", None) or concurrency.await_only
#: whether the caller runs inside one of those greenlets (where ``await_`` works)
in_greenlet: Callable[[], bool] = concurrency.in_greenlet


def loop_runtime(name: str, clock: Callable[[], float]) -> LoopRuntime:
    """The engine's runtime on the running event loop (``WrongEventLoop`` outside one)."""
    return runtime_on_running_loop(name, spawn=spawn, await_=await_, clock=clock, in_greenlet=in_greenlet)


__all__ = ["await_", "loop_runtime", "spawn"]

"""Leak tracking: where a long-held connection was checked out, and reporting it once.

Capturing a stack costs microseconds, so it only happens when
``leak_detection_threshold`` is set; the frames are reduced to
(file, line, function) at capture time so no locals are kept alive.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sys
import threading
from collections.abc import Iterable
from typing import Any

from . import logs
from .errors import redact

logger = logging.getLogger(logs.LEAKS_LOGGER)

#: frames from these packages' directories are skipped: the user wants *their* call site.
#: Directory prefixes, not name fragments, so a user's own ``learn_sqlalchemy/`` stays in.
#: Looked up in ``sys.modules`` (never imported here: the engine imports neither).
_SKIP_PACKAGES = ("sqlalchemy", "redis", "greenlet", "sqlalchemy_smartpool")
_skip: tuple[str, ...] = ()
_skip_seen: frozenset[str] = frozenset()
_skip_modules = -1


def _skip_dirs() -> tuple[str, ...]:
    global _skip, _skip_seen, _skip_modules
    modules = len(sys.modules)  # nothing imported since the last look: same answer (~30 ns)
    if modules == _skip_modules:
        return _skip
    _skip_modules = modules
    loaded = frozenset(p for p in _SKIP_PACKAGES if p in sys.modules)
    if loaded != _skip_seen:
        paths = [getattr(sys.modules[p], "__file__", None) for p in loaded]
        _skip = tuple(os.path.join(os.path.dirname(os.path.abspath(f)), "") for f in paths if f)
        _skip_seen = loaded
    return _skip


_MAX_FRAMES = 40


class Lease:
    """Who holds a connection: the thread, the stack of the checkout, the last SQL run."""

    __slots__ = ("correlation_id", "reported", "sampled", "stack", "statement", "thread", "wait")

    def __init__(
        self, thread: str, stack: tuple[tuple[str, int, str], ...], correlation_id: str | None = None
    ) -> None:
        self.thread = thread
        self.stack = stack
        self.reported = False
        #: the request that checked out (:func:`~.logs.correlation_id`), for the leak report
        self.correlation_id = correlation_id
        #: the last statement executed on the connection (SQL text only, never parameters)
        self.statement: str | None = None
        #: seconds the checkout queued, and whether top_holders() samples it (profiling.py)
        self.wait = 0.0
        self.sampled = False

    @property
    def location(self) -> tuple[str, int, str] | None:
        """The caller's own frame (innermost outside the pool), as profiling reports it."""
        return self.stack[-1] if self.stack else None

    def format_stack(self) -> str:
        return "".join(f'  File "{f}", line {n}, in {fn}\n' for f, n, fn in self.stack)


@dataclasses.dataclass(frozen=True)
class LeakInfo:
    """A suspected leak as :meth:`SmartPool.suspected_leaks` lists it."""

    connection_id: int
    thread: str
    held_for: float
    stack: str
    last_statement: str | None


def capture() -> Lease:
    """The current thread and call stack, innermost frame last, pool internals skipped."""
    frames: list[tuple[str, int, str]] = []
    skip = _skip_dirs()
    f: Any = sys._getframe(1)
    glet = _current_greenlet()
    while len(frames) < _MAX_FRAMES:
        if f is None:
            # a greenlet's stack ends at its start: go on in the greenlet that switched to it
            # (an asyncio checkout runs in SQLAlchemy's greenlet; the caller's coroutine is above)
            glet = getattr(glet, "parent", None)
            f = getattr(glet, "gr_frame", None)
            if f is None:
                break
        code = f.f_code
        filename = code.co_filename
        if not filename.startswith(skip):
            frames.append((filename, f.f_lineno, code.co_name))
        f = f.f_back
    frames.reverse()
    return Lease(_holder(), tuple(frames), logs.current_correlation_id())


def caller(depth: int = 1) -> tuple[str, int, str] | None:
    """The innermost frame outside the pool and the libraries it wraps: (file, line, function).

    The cheap half of :func:`capture` (one frame kept, no thread name), for sampling
    who holds connections; ``None`` if every frame is a library's.
    """
    skip = _skip_dirs()
    f: Any = sys._getframe(depth)
    glet = _current_greenlet()
    for _ in range(200):
        if f is None:
            glet = getattr(glet, "parent", None)
            f = getattr(glet, "gr_frame", None)
            if f is None:
                return None
        code = f.f_code
        if not code.co_filename.startswith(skip):
            return (code.co_filename, f.f_lineno, code.co_name)
        f = f.f_back
    return None


def _current_greenlet() -> Any:
    """The running greenlet, if greenlet is loaded (never imported here)."""
    mod = sys.modules.get("greenlet")
    return mod.getcurrent() if mod is not None else None


def _holder() -> str:
    """The thread, and the asyncio task when there is one (an asyncio pool's checkout)."""
    thread = threading.current_thread().name
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop: a thread
        return thread
    return thread if task is None else f"{thread}, task {task.get_name()}"


def describe(slots: Iterable[Any], now: float) -> list[LeakInfo]:
    out = []
    for slot in slots:
        lease = slot.lease
        if isinstance(lease, Lease):
            out.append(
                LeakInfo(
                    slot.id, lease.thread, now - slot.checked_out_at, lease.format_stack(), lease.statement
                )
            )
    return out


#: statements are cut to this length in reports: enough to recognise, not a data dump
MAX_STATEMENT = 300


def note_statement(lease: Lease, statement: str) -> None:
    lease.statement = statement if len(statement) <= MAX_STATEMENT else statement[:MAX_STATEMENT] + "..."


class LeakReporter:
    """Logs each suspected leak once, its return if it comes back, and
    connections the garbage collector reclaimed without a return -- on the
    ``sqlalchemy_smartpool.leaks`` logger and on the audit logger."""

    def __init__(self, pool_name: str) -> None:
        self.pool_name = pool_name

    def _details(self, lease: Lease) -> str:
        statement = f"\n  last statement: {redact(lease.statement)}" if lease.statement else ""
        return f"checked out by thread {lease.thread!r} at:\n{lease.format_stack()}{statement}"

    def _report(self, level: int, event: str, msg: str, *args: Any, **fields: Any) -> None:
        logs.event(logger, level, self.pool_name, event, msg, *args, _depth=3, **fields)
        logs.audit(self.pool_name, event, msg, *args, **fields)

    @staticmethod
    def _fields(slot: Any, lease: Lease, held: float) -> dict[str, Any]:
        return {
            "conn_id": slot.id,
            "held_s": round(held, 3),
            "holder": lease.thread,
            "stack": lease.format_stack(),
            "statement": redact(lease.statement) if lease.statement else None,
            "correlation_id": lease.correlation_id,  # the checkout's, not the housekeeper's
        }

    def suspected(self, slot: Any, now: float) -> bool:
        """Report a connection held past the threshold; True the first time only."""
        lease = slot.lease
        if not isinstance(lease, Lease) or lease.reported:
            return False
        lease.reported = True
        held = now - slot.checked_out_at
        self._report(
            logging.WARNING,
            logs.LEAK_SUSPECTED,
            "connection #%d held for %.1fs -- possible leak; %s",
            slot.id,
            held,
            self._details(lease),
            **self._fields(slot, lease, held),
        )
        return True

    def returned(self, slot: Any, lease: Any, now: float) -> bool:
        """Note the return of a reported leak; True if it had been reported."""
        if isinstance(lease, Lease) and lease.reported:
            held = now - slot.checked_out_at
            self._report(
                logging.INFO,
                logs.LEAK_RETURNED,
                "connection #%d reported as a possible leak came back after %.1fs",
                slot.id,
                held,
                conn_id=slot.id,
                held_s=round(held, 3),
                holder=lease.thread,
                correlation_id=lease.correlation_id,
            )
            return True
        return False

    def collected(self, slot: Any, lease: Any, now: float) -> None:
        """A checkout was never returned: the garbage collector reclaimed it."""
        if not isinstance(lease, Lease):
            return
        held = now - slot.checked_out_at
        self._report(
            logging.WARNING,
            logs.LEAK_COLLECTED,
            "connection #%d was never returned; the garbage collector reclaimed it after %.1fs; %s",
            slot.id,
            held,
            self._details(lease),
            **self._fields(slot, lease, held),
        )


def returned_by_gc() -> bool:
    """Is the current checkin SQLAlchemy's garbage-collection cleanup of a fairy?

    SQLAlchemy returns a dropped connection through ``_finalize_fairy(...,
    is_gc_cleanup=True)`` with no public flag for it, so look a few frames up.
    Only called when leak detection is on.
    """
    f: Any = sys._getframe(1)
    for _ in range(8):
        if f is None:
            return False
        if f.f_code.co_name == "_finalize_fairy":
            return bool(f.f_locals.get("is_gc_cleanup"))
        f = f.f_back
    return False

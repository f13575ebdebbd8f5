"""Leak tracking: where a long-held connection was checked out, and reporting it once.

Capturing a stack costs microseconds, so it only happens when
``leak_detection_threshold`` is set; the frames are reduced to
(file, line, function) at capture time so no locals are kept alive.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger("sqlalchemy_smartpool.leaks")

#: frames from these packages are skipped: the user wants *their* call site
_SKIP = ("sqlalchemy/", "sqlalchemy_smartpool/", "sqlalchemy\\", "sqlalchemy_smartpool\\")
_MAX_FRAMES = 40


@dataclasses.dataclass(frozen=True)
class Lease:
    """Who holds a connection: the thread and the stack of the checkout."""

    thread: str
    stack: tuple[tuple[str, int, str], ...]
    reported: list[bool] = dataclasses.field(default_factory=lambda: [False], compare=False)

    def format_stack(self) -> str:
        return "".join(f'  File "{f}", line {n}, in {fn}\n' for f, n, fn in self.stack)


@dataclasses.dataclass(frozen=True)
class LeakInfo:
    """A suspected leak as :meth:`SmartPool.suspected_leaks` lists it."""

    connection_id: int
    thread: str
    held_for: float
    stack: str


def capture() -> Lease:
    """The current thread and call stack, innermost frame last, pool internals skipped."""
    frames: list[tuple[str, int, str]] = []
    f: Any = sys._getframe(1)
    while f is not None and len(frames) < _MAX_FRAMES:
        code = f.f_code
        filename = code.co_filename
        if not any(part in filename for part in _SKIP):
            frames.append((filename, f.f_lineno, code.co_name))
        f = f.f_back
    frames.reverse()
    return Lease(threading.current_thread().name, tuple(frames))


def describe(slots: Iterable[Any], now: float) -> list[LeakInfo]:
    out = []
    for slot in slots:
        lease = slot.lease
        if isinstance(lease, Lease):
            out.append(LeakInfo(slot.id, lease.thread, now - slot.checked_out_at, lease.format_stack()))
    return out


class LeakReporter:
    """Logs each suspected leak once, and its return if it comes back."""

    def __init__(self, pool_name: str) -> None:
        self.pool_name = pool_name
        self.suspected_count = 0
        self.returned_count = 0

    def suspected(self, slot: Any, now: float) -> bool:
        lease = slot.lease
        if not isinstance(lease, Lease) or lease.reported[0]:
            return False
        lease.reported[0] = True
        self.suspected_count += 1
        logger.warning(
            "pool %s: connection #%d held for %.1fs by thread %r -- possible leak; checked out at:\n%s",
            self.pool_name,
            slot.id,
            now - slot.checked_out_at,
            lease.thread,
            lease.format_stack(),
        )
        return True

    def returned(self, slot: Any, lease: Any, now: float) -> None:
        if isinstance(lease, Lease) and lease.reported[0]:
            self.returned_count += 1
            logger.info(
                "pool %s: connection #%d reported as a possible leak came back after %.1fs",
                self.pool_name,
                slot.id,
                now - slot.checked_out_at,
            )

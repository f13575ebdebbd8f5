"""Connect retry: a few more attempts for transient failures, with backoff and jitter."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from .backoff import Backoff

T = TypeVar("T")


def connect_with_retry(
    connect: Callable[[], T],
    *,
    attempts: int,
    initial: float,
    maximum: float,
    is_transient: Callable[[BaseException], bool],
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``connect`` up to ``attempts`` times while it fails transiently.

    A non-transient error (bad password, unknown database) is raised at
    once: retrying cannot fix it. ``deadline`` (a ``clock`` instant) bounds
    the whole loop, so retries never outlast the caller's checkout timeout.
    """
    backoff = Backoff(initial, maximum)
    for attempt in range(1, attempts + 1):
        try:
            return connect()
        except Exception as err:
            if attempt >= attempts or not is_transient(err):
                raise
            delay = backoff.next_delay()
            if deadline is not None and clock() + delay >= deadline:
                raise
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover

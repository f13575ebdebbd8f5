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
    on_failure: Callable[[BaseException], bool] | None = None,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``connect`` up to ``attempts`` times while it fails transiently.

    A non-transient error (bad password, unknown database) is raised at
    once: retrying cannot fix it. ``on_failure`` sees every failed attempt
    (the pool feeds its circuit breaker there) and returns False to stop
    retrying, e.g. once the breaker opened. ``deadline`` (a ``clock``
    instant) bounds the whole loop, so retries never outlast the checkout
    timeout of the callers waiting for this connection.
    """
    backoff = Backoff(initial, maximum)
    for attempt in range(1, attempts + 1):
        try:
            return connect()
        except Exception as err:
            go_on = on_failure(err) if on_failure is not None else True
            if not go_on or attempt >= attempts or not is_transient(err):
                raise
            delay = backoff.next_delay()
            if deadline is not None and clock() + delay >= deadline:
                raise
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover

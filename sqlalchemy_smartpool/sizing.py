"""Adaptive sizing: how many connections to open, and which idle ones to close.

Two pure functions, no state: the core feeds them its counts.
"""

from __future__ import annotations

from collections.abc import Sequence


def connects_wanted(
    *,
    size: int,
    pending: int,
    waiting: int,
    min_size: int,
    max_size: int,
    max_concurrent: int,
) -> int:
    """Connects to start now.

    Enough to restore ``min_size``, plus one per waiter not already covered by
    a connect in flight -- bounded by ``max_size`` and by ``max_concurrent``
    connects at once. Opening one connection per waiter would be wrong: a
    returned connection usually arrives first (HikariCP's "Welcome to the
    Jungle"), and every extra connect costs the server a backend. The waiter
    takes whichever comes first, so a few connects in flight are enough to
    grow under sustained demand without stampeding on a burst.
    """
    refill = min_size - (size + pending)
    demand = waiting - pending
    want = max(refill, demand, 0)
    room = max_size - size - pending
    slots = max_concurrent - pending
    return max(0, min(want, room, slots))


def idle_to_close(
    *,
    idle_since: Sequence[float],
    size: int,
    min_size: int,
    idle_timeout: float,
    now: float,
) -> list[int]:
    """Indexes into ``idle_since`` (last-use times, in idle order) to close for idleness.

    Only connections idle for at least ``idle_timeout`` go, longest idle
    first, and never below ``min_size``.
    """
    surplus = size - min_size
    if surplus <= 0:
        return []
    stale = [i for i, t in enumerate(idle_since) if now - t >= idle_timeout]
    stale.sort(key=lambda i: idle_since[i])
    return stale[:surplus]

"""connects_wanted / idle_to_close: tables of known answers plus the properties that must always hold."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sqlalchemy_smartpool.sizing import connects_wanted, idle_to_close

FAST = settings(max_examples=300, deadline=None, database=None)


@pytest.mark.parametrize(
    ("size", "pending", "waiting", "min_size", "max_size", "max_concurrent", "expected"),
    [
        (0, 0, 0, 0, 10, 2, 0),  # nothing wanted
        (0, 0, 0, 5, 10, 2, 2),  # refill to min, bounded by concurrency
        (0, 0, 0, 5, 10, 8, 5),  # refill exactly to min, no more
        (4, 0, 0, 5, 10, 2, 1),  # one short of min
        (3, 2, 0, 5, 10, 4, 0),  # in-flight connects already cover the refill
        (6, 0, 0, 5, 10, 2, 0),  # above min, nobody waiting
        (5, 0, 3, 5, 10, 2, 2),  # demand bounded by concurrency
        (5, 1, 3, 5, 10, 4, 2),  # one waiter is covered by the connect in flight
        (2, 1, 1, 0, 10, 2, 0),  # the only waiter is covered
        (9, 0, 5, 0, 10, 4, 1),  # bounded by room under max_size
        (10, 0, 5, 0, 10, 4, 0),  # full
        (8, 2, 5, 0, 10, 4, 0),  # full counting pending
        (0, 0, 1, 0, 1, 1, 1),  # smallest pool serves its first waiter
        (0, 3, 9, 0, 10, 2, 0),  # more in flight than max_concurrent: nothing more
        (2, 0, 1, 5, 10, 8, 3),  # refill and demand overlap: the larger wins, not the sum
        (0, 0, 7, 3, 10, 8, 7),
    ],
)
def test_connects_wanted_table(
    size: int, pending: int, waiting: int, min_size: int, max_size: int, max_concurrent: int, expected: int
) -> None:
    got = connects_wanted(
        size=size,
        pending=pending,
        waiting=waiting,
        min_size=min_size,
        max_size=max_size,
        max_concurrent=max_concurrent,
    )
    assert got == expected


@st.composite
def pool_counts(draw: st.DrawFn) -> dict[str, int]:
    max_size = draw(st.integers(1, 50))
    min_size = draw(st.integers(0, max_size))
    size = draw(st.integers(0, max_size))
    pending = draw(st.integers(0, max_size - size))
    return {
        "size": size,
        "pending": pending,
        "waiting": draw(st.integers(0, 100)),
        "min_size": min_size,
        "max_size": max_size,
        "max_concurrent": draw(st.integers(1, 10)),
    }


@FAST
@given(pool_counts())
def test_connects_wanted_properties(c: dict[str, int]) -> None:
    got = connects_wanted(**c)
    room = c["max_size"] - c["size"] - c["pending"]
    slots = c["max_concurrent"] - c["pending"]
    assert got >= 0
    assert got <= room, "never exceeds max_size"
    assert c["pending"] + got <= max(c["max_concurrent"], c["pending"]), "never exceeds concurrency"
    # never more than the larger of the two needs
    assert got <= max(c["min_size"] - c["size"] - c["pending"], c["waiting"] - c["pending"], 0)
    # refills towards min_size as far as the bounds allow
    short = c["min_size"] - c["size"] - c["pending"]
    assert got >= min(max(short, 0), room, max(slots, 0))
    # every waiter not covered by a connect in flight gets one, as far as the bounds allow
    assert got >= min(max(c["waiting"] - c["pending"], 0), room, max(slots, 0))


@pytest.mark.parametrize(
    ("idle_since", "size", "min_size", "timeout", "now", "expected"),
    [
        ([], 0, 0, 10, 100, []),
        ([0, 0, 0], 3, 3, 10, 100, []),  # at min: keep all
        ([0, 0, 0], 3, 5, 10, 100, []),  # below min (size counts leased too)
        ([0, 50, 95], 3, 0, 10, 100, [0, 1]),  # only the stale ones
        ([95, 50, 0], 3, 0, 10, 100, [2, 1]),  # longest idle first
        ([30, 10, 20, 40], 4, 2, 10, 100, [1, 2]),  # never below min: the two oldest
        ([30, 10, 20, 40], 10, 0, 10, 100, [1, 2, 0, 3]),
        ([90], 1, 0, 10, 100, [0]),  # exactly idle_timeout counts as stale
        ([90.5], 1, 0, 10, 100, []),
        ([0, 0], 5, 4, 10, 100, [0]),  # leased ones count towards min
    ],
)
def test_idle_to_close_table(
    idle_since: list[float], size: int, min_size: int, timeout: float, now: float, expected: list[int]
) -> None:
    got = idle_to_close(idle_since=idle_since, size=size, min_size=min_size, idle_timeout=timeout, now=now)
    assert got == expected


@FAST
@given(
    idle_since=st.lists(st.floats(0, 1000, allow_nan=False), max_size=30),
    extra=st.integers(0, 10),
    min_size=st.integers(0, 40),
    timeout=st.floats(0.001, 500, allow_nan=False),
)
def test_idle_to_close_properties(idle_since: list[float], extra: int, min_size: int, timeout: float) -> None:
    now = 1000.0
    size = len(idle_since) + extra  # the rest are checked out
    got = idle_to_close(idle_since=idle_since, size=size, min_size=min_size, idle_timeout=timeout, now=now)
    assert len(set(got)) == len(got), "an index twice"
    assert all(0 <= i < len(idle_since) for i in got)
    assert all(now - idle_since[i] >= timeout for i in got), "only stale ones"
    assert size - len(got) >= min(min_size, size), "never below min_size"
    stale = [i for i, t in enumerate(idle_since) if now - t >= timeout]
    assert len(got) == min(len(stale), max(0, size - min_size)), "every stale one above min goes"
    kept_stale = [idle_since[i] for i in stale if i not in got]
    if got and kept_stale:
        assert max(idle_since[i] for i in got) <= min(kept_stale), "longest idle first"

"""Backoff delays (connect retries and breaker probes), with a seeded random source."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sqlalchemy_smartpool.backoff import Backoff


class Transient(Exception):
    pass


class Fatal(Exception):
    pass


def is_transient(err: BaseException) -> bool:
    return isinstance(err, Transient)


class FlakyConnect:
    """Fails with the given errors in order, then returns a connection."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "conn"


# -- Backoff --------------------------------------------------------------------------


def test_delays_grow_geometrically_and_cap() -> None:
    b = Backoff(0.1, 1.0, multiplier=2.0, jitter=0.0)
    assert [b.next_delay() for _ in range(7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    b.reset()
    assert b.next_delay() == pytest.approx(0.1)


def test_multiplier_one_is_constant() -> None:
    b = Backoff(0.3, 5.0, multiplier=1.0, jitter=0.0)
    assert {b.next_delay() for _ in range(20)} == {0.3}


@settings(max_examples=200, deadline=None, database=None)
@given(
    initial=st.floats(0.001, 10),
    spread=st.floats(1, 100),
    multiplier=st.floats(1, 4),
    jitter=st.floats(0, 1),
    seed=st.integers(0, 2**32),
)
def test_jittered_delays_stay_in_bounds(
    initial: float, spread: float, multiplier: float, jitter: float, seed: int
) -> None:
    maximum = initial * spread
    b = Backoff(initial, maximum, multiplier=multiplier, jitter=jitter, rng=random.Random(seed))
    for n in range(30):
        base = min(maximum, initial * multiplier**n)
        delay = b.next_delay()
        assert 0.0 <= delay <= maximum
        assert base * (1 - jitter) * (1 - 1e-12) <= delay <= base * (1 + jitter) * (1 + 1e-12)


def test_jitter_spreads_delays_and_is_reproducible_with_a_seeded_rng() -> None:
    a = Backoff(1.0, 10.0, multiplier=1.0, jitter=0.5, rng=random.Random(42))
    b = Backoff(1.0, 10.0, multiplier=1.0, jitter=0.5, rng=random.Random(42))
    first = [a.next_delay() for _ in range(50)]
    assert first == [b.next_delay() for _ in range(50)]
    assert len(set(first)) == 50, "jitter must spread the delays"
    assert min(first) >= 0.5 and max(first) <= 1.5
    assert min(first) < 0.75 and max(first) > 1.25, "both directions"


def test_jitter_never_pushes_past_the_cap() -> None:
    b = Backoff(1.0, 1.0, jitter=0.5, rng=random.Random(42))
    delays = [b.next_delay() for _ in range(50)]
    assert max(delays) == 1.0 and min(delays) >= 0.5


def test_a_long_outage_does_not_overflow() -> None:
    """The breaker calls next_delay once per failed probe, for as long as the database
    is down: after ~1000 probes multiplier**attempt overflowed a float."""
    b = Backoff(0.25, 1.0, multiplier=2.0, jitter=0.2, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(5000)]
    assert 0.8 <= delays[-1] <= 1.0
    zero = Backoff(0.0, 1.0, multiplier=10.0, jitter=0.0)
    assert {zero.next_delay() for _ in range(2000)} == {0.0}

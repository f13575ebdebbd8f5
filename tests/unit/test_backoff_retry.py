"""Backoff delays and connect_with_retry, on a fake clock with a fake sleep."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sqlalchemy_smartpool.backoff import Backoff
from sqlalchemy_smartpool.retry import connect_with_retry

from .conftest import FakeClock


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


# -- connect_with_retry ----------------------------------------------------------------


def retry(
    connect: FlakyConnect,
    clock: FakeClock,
    *,
    attempts: int = 3,
    initial: float = 1.0,
    maximum: float = 10.0,
    **kwargs: Any,
) -> str:
    return connect_with_retry(
        connect,
        attempts=attempts,
        initial=initial,
        maximum=maximum,
        is_transient=is_transient,
        clock=clock,
        sleep=clock.sleep,
        **kwargs,
    )


def test_first_try_success_does_not_sleep(clock: FakeClock) -> None:
    connect = FlakyConnect()
    assert retry(connect, clock) == "conn"
    assert connect.calls == 1 and clock.sleeps == []


def test_transient_errors_are_retried_with_growing_delays(clock: FakeClock) -> None:
    connect = FlakyConnect(Transient(), Transient())
    assert retry(connect, clock, attempts=3) == "conn"
    assert connect.calls == 3
    first, second = clock.sleeps
    assert 0.8 <= first <= 1.2 and 1.6 <= second <= 2.4  # default jitter 0.2


def test_delays_are_capped(clock: FakeClock) -> None:
    connect = FlakyConnect(*[Transient() for _ in range(6)])
    assert retry(connect, clock, attempts=7, initial=0.5, maximum=1.0) == "conn"
    assert len(clock.sleeps) == 6 and max(clock.sleeps) <= 1.0


def test_stops_after_attempts_and_raises_the_last_error(clock: FakeClock) -> None:
    errors = [Transient("1"), Transient("2"), Transient("3"), Transient("4")]
    connect = FlakyConnect(*errors)
    with pytest.raises(Transient) as info:
        retry(connect, clock, attempts=3)
    assert info.value is errors[2]
    assert connect.calls == 3 and len(clock.sleeps) == 2


def test_single_attempt_never_retries(clock: FakeClock) -> None:
    connect = FlakyConnect(Transient())
    with pytest.raises(Transient):
        retry(connect, clock, attempts=1)
    assert connect.calls == 1 and clock.sleeps == []


def test_non_transient_error_is_raised_at_once(clock: FakeClock) -> None:
    connect = FlakyConnect(Transient(), Fatal("bad password"))
    with pytest.raises(Fatal):
        retry(connect, clock, attempts=5)
    assert connect.calls == 2 and len(clock.sleeps) == 1


def test_base_exceptions_are_not_swallowed(clock: FakeClock) -> None:
    connect = FlakyConnect(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        retry(connect, clock, attempts=5)
    assert connect.calls == 1


def test_deadline_bounds_the_retries(clock: FakeClock) -> None:
    # first delay is 0.8..1.2 (fits before the deadline), the second 1.6..2.4 would end past it
    connect = FlakyConnect(*[Transient() for _ in range(10)])
    with pytest.raises(Transient):
        retry(connect, clock, attempts=10, deadline=clock.now + 2.3)
    assert connect.calls == 2 and len(clock.sleeps) == 1


def test_deadline_already_close_means_no_sleep(clock: FakeClock) -> None:
    connect = FlakyConnect(Transient(), Transient())
    with pytest.raises(Transient):
        retry(connect, clock, attempts=3, deadline=clock.now + 0.5)
    assert connect.calls == 1 and clock.sleeps == []


def test_on_failure_sees_every_failed_attempt_and_can_stop_retrying(clock: FakeClock) -> None:
    seen: list[BaseException] = []

    def on_failure(err: BaseException) -> bool:
        seen.append(err)
        return len(seen) < 2  # "the breaker opened" after the second failure

    errors = [Transient(), Transient(), Transient()]
    connect = FlakyConnect(*errors)
    with pytest.raises(Transient) as info:
        retry(connect, clock, attempts=5, on_failure=on_failure)
    assert seen == errors[:2] and info.value is errors[1]
    assert connect.calls == 2 and len(clock.sleeps) == 1


def test_on_failure_also_sees_non_transient_errors(clock: FakeClock) -> None:
    seen: list[BaseException] = []

    def on_failure(err: BaseException) -> bool:
        seen.append(err)
        return True

    connect = FlakyConnect(Fatal())
    with pytest.raises(Fatal):
        retry(connect, clock, on_failure=on_failure)
    assert len(seen) == 1 and connect.calls == 1

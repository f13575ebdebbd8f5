"""CircuitBreaker: closed -> open -> half-open (one probe) -> closed, on a fake clock."""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest

from sqlalchemy_smartpool.breaker import BreakerState, CircuitBreaker
from sqlalchemy_smartpool.config import CircuitBreakerConfig

from .conftest import FakeClock

CLOSED, OPEN, HALF = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class Recorder:
    def __init__(self) -> None:
        self.moves: list[tuple[BreakerState, BreakerState]] = []

    def __call__(self, old: BreakerState, new: BreakerState) -> None:
        self.moves.append((old, new))


def make(clock: FakeClock, moves: Recorder | None = None, **settings: Any) -> CircuitBreaker:
    settings.setdefault("jitter", 0.0)
    return CircuitBreaker(
        CircuitBreakerConfig(**settings), clock, rng=random.Random(5), name="unit", on_transition=moves
    )


def open_it(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.config.failure_threshold):
        breaker.record_failure(ConnectionRefusedError())
    assert breaker.state is OPEN


def probe_fails(breaker: CircuitBreaker, clock: FakeClock) -> float:
    """Wait for the next probe, let it fail; returns the delay chosen for the one after."""
    clock.now = max(clock.now, breaker.next_probe_at)
    assert breaker.allow_connect()
    breaker.record_failure(TimeoutError())
    return breaker.next_probe_at - clock.now


def test_opens_after_threshold_consecutive_failures(clock: FakeClock) -> None:
    moves = Recorder()
    b = make(clock, moves, failure_threshold=3)
    b.record_failure(OSError())
    b.record_failure(OSError())
    assert b.state is CLOSED and b.allow_connect() and not b.is_open
    b.record_failure(OSError())
    assert b.state is OPEN and b.is_open
    assert b.consecutive_failures == 3
    assert moves.moves == [(CLOSED, OPEN)]


def test_success_resets_the_consecutive_count(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=3)
    for _ in range(5):
        b.record_failure(OSError())
        b.record_failure(OSError())
        b.record_success()
    assert b.state is CLOSED and b.consecutive_failures == 0


def test_open_rejects_until_next_probe_then_one_probe(clock: FakeClock) -> None:
    moves = Recorder()
    b = make(clock, moves, failure_threshold=1, backoff_initial=2.0, backoff_max=30.0)
    b.record_failure(OSError())
    assert b.next_probe_at == clock.now + 2.0
    assert b.retry_after() == 2.0
    assert not b.allow_connect()
    clock.advance(1.5)
    assert not b.allow_connect()
    assert b.retry_after() == pytest.approx(0.5)
    clock.advance(0.5)
    assert b.allow_connect(), "the probe is due"
    assert b.state is HALF and b.probe_in_flight and b.is_open
    assert b.retry_after() == 0.0
    for _ in range(3):
        assert not b.allow_connect(), "exactly one probe in flight"
    clock.advance(100)
    assert not b.allow_connect(), "still one probe, however long it takes"
    assert moves.moves == [(CLOSED, OPEN), (OPEN, HALF)]


def test_successful_probe_closes(clock: FakeClock) -> None:
    moves = Recorder()
    b = make(clock, moves, failure_threshold=1)
    b.record_failure(OSError())
    probe_fails(b, clock)
    clock.now = b.next_probe_at
    assert b.allow_connect()
    b.record_success()
    assert b.state is CLOSED and not b.is_open and not b.probe_in_flight
    assert b.allow_connect() and b.allow_connect(), "closed: no limit on connects"
    assert b.retry_after() == 0.0
    assert moves.moves[-1] == (HALF, CLOSED)


def test_failed_probes_back_off_exponentially_up_to_max(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=1, backoff_initial=1.0, backoff_max=10.0, backoff_multiplier=2.0)
    b.record_failure(OSError())
    delays = [b.next_probe_at - clock.now]
    delays += [probe_fails(b, clock) for _ in range(6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert b.state is OPEN


def test_backoff_restarts_from_initial_after_recovery(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=1, backoff_initial=1.0, backoff_max=60.0)
    b.record_failure(OSError())
    for _ in range(4):
        probe_fails(b, clock)
    clock.now = b.next_probe_at
    assert b.allow_connect()
    b.record_success()
    b.record_failure(OSError())
    assert b.next_probe_at - clock.now == 1.0


def test_probe_delays_with_jitter_stay_in_bounds(clock: FakeClock) -> None:
    jitter = 0.3
    b = make(clock, failure_threshold=1, backoff_initial=1.0, backoff_max=16.0, jitter=jitter)
    b.record_failure(OSError())
    delays = [b.next_probe_at - clock.now] + [probe_fails(b, clock) for _ in range(9)]
    for n, delay in enumerate(delays):
        base = min(16.0, 2.0**n)
        eps = 1e-9  # next_probe_at - now loses a few ulps
        assert base * (1 - jitter) - eps <= delay <= min(16.0, base * (1 + jitter)) + eps, (n, delay)
    assert len({round(d, 9) for d in delays[5:]}) > 1, "jitter must spread the capped delays"


def test_failure_ratio_opens_with_enough_calls(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=100, failure_ratio=0.5, ratio_window=10.0, ratio_min_calls=4)
    b.record_success()
    b.record_failure(OSError())
    b.record_success()
    assert b.state is CLOSED
    b.record_failure(OSError())  # 2 of 4 failed: 0.5 >= 0.5
    assert b.state is OPEN


def test_failure_ratio_needs_min_calls(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=100, failure_ratio=0.1, ratio_min_calls=4)
    for _ in range(3):
        b.record_failure(OSError())
    assert b.state is CLOSED


def test_failure_ratio_below_threshold_stays_closed(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=100, failure_ratio=0.5, ratio_min_calls=4)
    for _ in range(10):
        b.record_success()
        b.record_success()
        b.record_failure(OSError())
    assert b.state is CLOSED


def test_failure_ratio_forgets_calls_outside_the_window(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=100, failure_ratio=0.5, ratio_window=10.0, ratio_min_calls=4)
    for _ in range(3):
        b.record_failure(OSError())
    clock.advance(10.5)
    b.record_success()
    b.record_failure(OSError())  # the old failures fell out: only 2 calls in the window
    assert b.state is CLOSED
    b.record_failure(OSError())
    b.record_failure(OSError())  # 3 of 4 in the window
    assert b.state is OPEN


def test_failure_ratio_starts_fresh_after_recovery(clock: FakeClock) -> None:
    """The outage's failures must not count against the database once a probe succeeded:
    one ordinary failure right after recovery must not re-open the breaker."""
    b = make(clock, failure_threshold=100, failure_ratio=0.5, ratio_window=60.0, ratio_min_calls=4)
    for _ in range(4):
        b.record_failure(OSError())
    assert b.state is OPEN
    clock.now = b.next_probe_at
    assert b.allow_connect()
    b.record_success()
    b.record_failure(OSError())
    assert b.state is CLOSED


def test_consecutive_threshold_still_applies_in_ratio_mode(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=2, failure_ratio=0.9, ratio_min_calls=50)
    b.record_failure(OSError())
    b.record_failure(OSError())
    assert b.state is OPEN


def test_stale_failure_while_open_does_not_push_the_probe_back(clock: FakeClock) -> None:
    """A connect started before the breaker opened fails after it: that is no failed probe,
    so it must neither move the next probe nor grow the backoff."""
    b = make(clock, failure_threshold=1, backoff_initial=1.0, backoff_max=60.0)
    b.record_failure(OSError())
    probe_at = b.next_probe_at
    clock.advance(0.5)
    b.record_failure(OSError())  # the second of two connects in flight when it opened
    assert b.next_probe_at == probe_at
    assert probe_fails(b, clock) == 2.0, "the first real probe failure is backoff step 2"


def test_disabled_breaker_never_opens(clock: FakeClock) -> None:
    moves = Recorder()
    b = make(clock, moves, enabled=False, failure_threshold=1, failure_ratio=0.1, ratio_min_calls=1)
    for _ in range(50):
        assert b.allow_connect()
        b.record_failure(OSError())
    assert b.state is CLOSED and not b.is_open and b.retry_after() == 0.0
    assert b.consecutive_failures == 50 and moves.moves == []


def test_reset_closes_and_forgets(clock: FakeClock) -> None:
    moves = Recorder()
    b = make(clock, moves, failure_threshold=2)
    open_it(b)
    b.reset()
    assert b.state is CLOSED and b.consecutive_failures == 0 and not b.probe_in_flight
    assert moves.moves == [(CLOSED, OPEN), (OPEN, CLOSED)]
    b.reset()  # already closed: no transition reported
    assert len(moves.moves) == 2
    b.record_failure(OSError())
    assert b.state is CLOSED, "the count started over"


@pytest.mark.parametrize(
    "message",
    [
        "connect to db.internal user=app password=s3cret",
        "could not connect to postgresql://app:s3cret@db.internal/x",
    ],
)
def test_last_error_is_kept_without_secrets(clock: FakeClock, message: str) -> None:
    b = make(clock)
    b.record_failure(ConnectionRefusedError(message))
    assert b.last_error is not None
    assert b.last_error.startswith("ConnectionRefusedError: ") and "db.internal" in b.last_error
    assert "s3cret" not in b.last_error
    b.record_failure()  # no error object: keeps the last known one
    assert b.last_error.startswith("ConnectionRefusedError")


def test_transitions_say_why_and_the_breaker_itself_logs_nothing(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """It runs under the pool's lock: the core turns its transitions into records written later."""
    moves = Recorder()
    b = make(clock, moves, failure_threshold=1)
    why: list[str] = []

    def note(old: BreakerState, new: BreakerState) -> None:
        moves(old, new)
        why.append(b.moved_because)

    b._on_transition = note
    with caplog.at_level(logging.DEBUG):
        b.record_failure(ConnectionRefusedError())
        clock.now = b.next_probe_at
        b.allow_connect()
        b.record_failure(ConnectionRefusedError())
        clock.now = b.next_probe_at
        b.allow_connect()
        b.record_success()
        open_it(b)
        b.reset()
    outage = [(CLOSED, OPEN), (OPEN, HALF), (HALF, OPEN), (OPEN, HALF), (HALF, CLOSED)]
    assert moves.moves == [*outage, (CLOSED, OPEN), (OPEN, CLOSED)]
    reasons = ["failures", "probe_due", "probe_failed", "probe_due", "probe_succeeded"]
    assert why == [*reasons, "failures", "reset"]
    assert caplog.records == []


def test_state_values_are_strings() -> None:
    assert [s.value for s in BreakerState] == ["closed", "open", "half_open"]
    assert BreakerState("open") is BreakerState.OPEN and isinstance(BreakerState.OPEN, str)


def test_a_long_outage_keeps_probing_at_the_cap(clock: FakeClock) -> None:
    """Hours of failed probes (one per backoff_max) must neither crash nor stretch the delay."""
    b = make(clock, failure_threshold=1, jitter=0.2)
    b.record_failure(OSError())
    delays = [probe_fails(b, clock) for _ in range(3000)]
    assert b.state is OPEN
    assert all(0.0 < d <= b.config.backoff_max + 1e-9 for d in delays)

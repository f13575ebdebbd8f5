"""PoolEngine's live operations on the deterministic fake runtime of test_engine.py.

reconfigure / resize (validated as a whole, atomic, audit-logged, in force at
once), drain, pause / resume, retire, and the housekeeping tick hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from sqlalchemy_smartpool import stats as S
from sqlalchemy_smartpool.config import PoolConfig
from sqlalchemy_smartpool.engine import PoolEngine
from sqlalchemy_smartpool.errors import NEUTRAL, AcquireTimeout, ConfigError

from .conftest import Conn, FakeClock
from .test_engine import FakeBackend, FakeRuntime, Made, slot

AUDIT = "sqlalchemy_smartpool.audit"


@pytest.fixture
def make(clock: FakeClock) -> Callable[..., Made]:
    def build(*, start: bool = True, **settings: Any) -> Made:
        config = PoolConfig(min_size=0, max_size=4, lifetime_jitter=0.0, barge_window=0.0).replace(**settings)
        backend = FakeBackend()
        runtimes: list[FakeRuntime] = [FakeRuntime(clock)]

        def runtime(name: str, workers: int) -> FakeRuntime:
            if runtimes[-1].stopped:
                runtimes.append(FakeRuntime(clock))
            return runtimes[-1]

        engine: PoolEngine[Conn] = PoolEngine(config, backend, name="unit", errors=NEUTRAL, runtime=runtime,
                                              clock=clock)  # fmt: skip
        if start:
            engine.checkin(slot(engine.checkout()))
        return engine, backend, runtimes[-1]

    return build


def audits(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == AUDIT and getattr(r, "event", None) == event]


def test_reconfigure_returns_what_changed_logs_it_and_keeps_the_config(
    make: Callable[..., Made], caplog: pytest.LogCaptureFixture
) -> None:
    engine, _, _ = make(max_size=4)
    caplog.set_level(logging.INFO, AUDIT)
    diff = engine.reconfigure({"max_size": 8, "acquire_timeout": 2.5, "breaker_failure_threshold": 9})
    assert diff == {"max_size": (4, 8), "acquire_timeout": (30.0, 2.5), "breaker_failure_threshold": (5, 9)}
    assert engine.config.max_size == 8 and engine.core.config is engine.config
    assert engine.core.breaker.config.failure_threshold == 9 and engine._timeout == 2.5
    (record,) = audits(caplog, "config_changed")
    assert record.pool == "unit" and record.source == "reconfigure"  # type: ignore[attr-defined]
    assert record.changes == {  # type: ignore[attr-defined]
        "max_size": [4, 8], "acquire_timeout": [30.0, 2.5], "breaker_failure_threshold": [5, 9]
    }  # fmt: skip
    assert "max_size: 4 -> 8" in record.getMessage()
    assert engine.reconfigure({"max_size": 8}) == {}, "no change, no record"
    assert len(audits(caplog, "config_changed")) == 1


@pytest.mark.parametrize(
    ("changes", "field", "match"),
    [
        ({"max_size": 0}, "max_size", "must be >= 1"),
        ({"min_size": 9, "max_size": 3}, "min_size", "must be <= max_size"),
        ({"acquire_timeout": "soon"}, "acquire_timeout", "must be a number"),
        ({"max_sise": 3}, "max_sise", "did you mean max_size"),
        ({"name": "other"}, "name", "cannot change while the pool runs"),
        ({"connect_timeout": 1.0}, "connect_timeout", "cannot change while the pool runs"),
    ],
)
def test_an_invalid_change_names_field_value_and_source_and_changes_nothing(
    make: Callable[..., Made],
    caplog: pytest.LogCaptureFixture,
    changes: dict[str, Any],
    field: str,
    match: str,
) -> None:
    engine, _, _ = make(max_size=4, acquire_timeout=5.0)
    before = engine.config
    caplog.set_level(logging.INFO, AUDIT)
    with pytest.raises(ConfigError, match=match) as info:
        engine.reconfigure({"acquire_timeout": 1.0, **changes})  # a valid part is not applied either
    assert info.value.field == field and info.value.source == "reconfigure"
    assert "(from reconfigure)" in str(info.value)
    assert engine.config is before and engine._timeout == 5.0
    assert not audits(caplog, "config_changed")


def test_a_pool_nobody_used_opens_nothing_when_min_size_grows(make: Callable[..., Made]) -> None:
    engine, backend, _ = make(start=False)
    engine.reconfigure({"min_size": 3})
    assert backend.attempts == 0 and engine._rt is None


def test_a_raised_min_size_is_refilled_in_the_background(make: Callable[..., Made]) -> None:
    engine, backend, _ = make(min_size=1, max_size=4)
    engine.reconfigure({"min_size": 3})
    assert engine.stats().pool_size == 3 and backend.attempts == 3
    engine.check_invariants()


def test_a_lowered_max_size_closes_idle_now_and_the_excess_on_return(make: Callable[..., Made]) -> None:
    engine, backend, _ = make(min_size=4, max_size=4)
    held = [engine.checkout() for _ in range(3)]  # one idle
    engine.reconfigure({"max_size": 2, "min_size": 1})
    assert len(backend.closed) == 1 and engine.stats().pool_size == 3
    engine.check_invariants()
    engine.checkin(slot(held[0]))
    assert len(backend.closed) == 2 and engine.stats().pool_size == 2
    engine.checkin(slot(held[1]))
    engine.checkin(slot(held[2]))
    stats = engine.stats()
    assert len(backend.closed) == 2 and stats.pool_size == 2 and stats.pool_idle == 2
    assert stats.counters[S.CONNECTIONS_RETIRED] == 2
    engine.check_invariants()


def test_a_shorter_lifetime_retires_idle_connections_at_once(
    make: Callable[..., Made], clock: FakeClock
) -> None:
    engine, backend, _ = make(min_size=0, max_size=4, max_lifetime=None)
    clock.advance(100)
    engine.reconfigure({"max_lifetime": 10.0})
    assert len(backend.closed) == 1 and engine.stats().pool_size == 0


def test_wait_times_can_be_turned_off_and_on(make: Callable[..., Made]) -> None:
    engine, _, _ = make()
    engine.reconfigure({"track_wait_times": False})
    assert engine._waits is None
    engine.reconfigure({"track_wait_times": True})
    assert engine._waits is not None and engine.stats().wait_p99 == 0.0


def test_drain_replaces_every_connection(make: Callable[..., Made], caplog: pytest.LogCaptureFixture) -> None:
    engine, backend, _ = make(min_size=2, max_size=4)
    caplog.set_level(logging.INFO, AUDIT)
    a = engine.checkout()
    first = set(map(id, backend.opened))
    assert engine.drain() == 1  # the idle one
    stats = engine.stats()
    assert stats.pool_in_use == 1 and stats.pool_size == 2, "min_size refilled with a new connection"
    b = engine.checkout()
    assert id(b) not in first, "a new connection, never an old one"
    engine.checkin(slot(a))
    assert a in backend.closed, "the old one closes when it comes back"
    engine.checkin(slot(b))
    assert b not in backend.closed
    assert engine.stats().pool_size == 2 and not {id(c) for c in engine.connections()} & first
    (record,) = audits(caplog, "drained")
    assert record.closed_now == 1 and record.close_on_return == 1  # type: ignore[attr-defined]
    engine.check_invariants()


def test_pause_holds_checkouts_within_their_timeout_and_resume_serves_them(
    make: Callable[..., Made], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    engine, backend, _ = make(max_size=2, acquire_timeout=2.0)
    caplog.set_level(logging.INFO, AUDIT)
    engine.pause()
    assert engine.paused
    t0 = clock()
    with pytest.raises(AcquireTimeout, match="paused"):
        engine.checkout()
    assert clock() - t0 == pytest.approx(2.0) and backend.attempts == 1, "nothing opened while paused"
    engine.resume()
    conn = engine.checkout()
    assert conn is backend.opened[0]
    engine.checkin(slot(conn))
    events = [getattr(r, "event", None) for r in caplog.records if r.name == AUDIT]
    assert [e for e in events if e in ("paused", "resumed")] == ["paused", "resumed"]
    engine.check_invariants()


def test_a_retired_engine_closes_once_its_connections_are_back(
    make: Callable[..., Made], clock: FakeClock
) -> None:
    engine, backend, rt = make(min_size=2, max_size=4)
    held = engine.checkout()
    engine.retire()
    assert len(backend.closed) == 1 and not engine.stats().closed
    engine.checkin(slot(held))
    assert held in backend.closed
    rt.run_until(clock() + 1.0)  # the next housekeeping tick
    assert engine.stats().closed and engine.stats().pool_size == 0
    assert backend.attempts == 2, "nothing refilled"


def test_tick_hooks_run_each_tick_and_a_failing_one_stops_nothing(
    make: Callable[..., Made], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    engine, _, rt = make()
    seen: list[float] = []

    def boom() -> None:
        raise RuntimeError("bug")

    engine.add_tick_hook(boom)
    engine.add_tick_hook(lambda: seen.append(clock()))
    rt.run_until(clock() + 1.6)
    assert len(seen) == 3 and "tick hook failed" in caplog.text
    engine.remove_tick_hook(boom)
    assert len(engine._tick_hooks) == 1


def test_validations_skipped_holds_when_validation_is_turned_off_live(
    make: Callable[..., Made], clock: FakeClock
) -> None:
    engine, _, _ = make(validation_interval=10.0)
    for _ in range(3):
        engine.checkin(slot(engine.checkout()))
    skipped = engine.stats().counters[S.VALIDATIONS_SKIPPED]
    assert skipped >= 3
    engine.reconfigure({"validate_on_checkout": False})
    engine.checkin(slot(engine.checkout()))
    assert engine.stats().counters[S.VALIDATIONS_SKIPPED] == skipped, "frozen, not back to 0"
    engine.reconfigure({"validate_on_checkout": True})
    engine.checkin(slot(engine.checkout()))
    assert engine.stats().counters[S.VALIDATIONS_SKIPPED] == skipped + 1

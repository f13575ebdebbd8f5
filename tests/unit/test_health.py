"""Health: the engine's probe on a fake backend and runtime, the rules, the cache on a fake clock.

No sleeps: the fake runtime runs jobs inline (or holds them back, to play a
connect that hangs) and time moves only when a test moves it. The watchdog
and the single-flight tests use real threads with bounded waits.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

from sqlalchemy_smartpool import stats as S
from sqlalchemy_smartpool.config import CircuitBreakerConfig, PoolConfig
from sqlalchemy_smartpool.engine import PoolEngine
from sqlalchemy_smartpool.errors import NEUTRAL
from sqlalchemy_smartpool.health import (
    DEGRADED,
    DOWN,
    OK,
    PROBE_FAILED,
    PROBE_OK,
    PROBE_SKIPPED,
    PROBE_TIMEOUT,
    FailureTrend,
    HealthChecker,
    ProbeResult,
    assess,
    worst,
)
from sqlalchemy_smartpool.sched import Housekeeper
from sqlalchemy_smartpool.stats import PoolStats

from .conftest import Conn, FakeClock
from .test_engine import FakeBackend, FakeRuntime, Transient, slot


class HeldRuntime(FakeRuntime):
    """Jobs are held back until ``run_jobs()``: a connect that does not finish in time."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.held: list[Callable[[], None]] = []
        self.hold = False

    def submit(self, fn: Callable[[], None]) -> bool:
        if self.hold and not self.stopped:
            self.held.append(fn)
            return True
        return super().submit(fn)

    def run_jobs(self) -> None:
        jobs, self.held = self.held, []
        for job in jobs:
            job()


class Probe:
    def __init__(self, clock: FakeClock, **settings: Any) -> None:
        config = PoolConfig(min_size=0, max_size=2, lifetime_jitter=0.0, barge_window=0.0).replace(**settings)
        self.clock = clock
        self.backend = FakeBackend()
        self.runtimes: list[HeldRuntime] = []

        def runtime(name: str, workers: int) -> HeldRuntime:
            self.runtimes.append(HeldRuntime(clock))
            return self.runtimes[-1]

        self.engine: PoolEngine[Conn] = PoolEngine(
            config, self.backend, name="unit", errors=NEUTRAL, runtime=runtime, clock=clock
        )

    @property
    def rt(self) -> HeldRuntime:
        return self.runtimes[-1]

    def warm(self, n: int = 1) -> None:
        """``n`` idle connections."""
        held = [self.engine.checkout() for _ in range(n)]
        for conn in held:
            self.engine.checkin(slot(conn))


@pytest.fixture
def probe(clock: FakeClock) -> Callable[..., Probe]:
    return lambda **settings: Probe(clock, **settings)


# -- the engine's probe ---------------------------------------------------------------------


def test_a_probe_pings_an_idle_connection_without_a_checkout(probe: Callable[..., Probe]) -> None:
    p = probe()
    p.warm()
    pings: list[Conn] = []
    p.backend.ping = lambda conn: pings.append(conn) or True  # type: ignore[method-assign]
    before = p.engine.stats()
    result = p.engine.probe(1.0)
    assert result.outcome == PROBE_OK and result.method == "ping", result
    assert pings == p.backend.opened[:1]
    after = p.engine.stats()
    assert after.counters[S.CHECKOUTS] == before.counters[S.CHECKOUTS]
    assert (after.pool_size, after.pool_idle, after.pool_in_use) == (1, 1, 0)
    p.engine.check_invariants()


def test_a_probe_with_nothing_idle_opens_a_connection_that_joins_the_pool(
    probe: Callable[..., Probe],
) -> None:
    p = probe()
    result = p.engine.probe(1.0)  # never used before: the probe is the first use
    assert result.outcome == PROBE_OK and result.method == "connect", result
    st = p.engine.stats()
    assert (st.pool_size, st.pool_idle, st.counters[S.CONNECTIONS_CREATED]) == (1, 1, 1)
    assert p.engine.checkout() is p.backend.opened[0]  # a caller gets it
    p.engine.check_invariants()


def test_a_dead_idle_connection_is_replaced_and_a_fresh_connect_decides(
    probe: Callable[..., Probe],
) -> None:
    p = probe()
    p.warm()
    first = p.backend.opened[0]
    p.backend.ping = lambda conn: conn is not first  # type: ignore[method-assign]
    result = p.engine.probe(1.0)
    assert result.outcome == PROBE_OK and result.method == "connect", result
    assert first in p.backend.closed
    assert p.engine.core.suspect_before == p.clock.now  # older ones are validated before reuse
    st = p.engine.stats()
    assert st.pool_size == 1 and st.counters[S.CONNECTIONS_INVALIDATED] == 1
    p.engine.check_invariants()


def test_an_error_from_the_ping_fails_the_probe_and_drops_the_connection(
    probe: Callable[..., Probe],
) -> None:
    p = probe()
    p.warm()

    def broken(conn: Conn) -> bool:
        raise RuntimeError("permission denied for password=hunter2")

    p.backend.ping = broken  # type: ignore[method-assign]
    result = p.engine.probe(1.0)
    assert result.outcome == PROBE_FAILED and result.method == "ping"
    assert "permission denied" in result.detail and "hunter2" not in result.detail
    assert p.engine.stats().pool_size == 0
    p.engine.check_invariants()


def test_a_failed_connect_fails_the_probe_once_without_retries(probe: Callable[..., Probe]) -> None:
    p = probe(retry_attempts=3)
    p.backend.failures = [Transient("connection refused")] * 10
    result = p.engine.probe(1.0)
    assert result.outcome == PROBE_FAILED and result.method == "connect"
    assert "connection refused" in result.detail
    assert p.backend.attempts == 1
    st = p.engine.stats()
    assert st.connections_pending == 0 and st.counters[S.CONNECTIONS_FAILED] == 1
    p.engine.check_invariants()


def test_a_connect_that_does_not_finish_in_time_times_out_and_joins_later(
    probe: Callable[..., Probe],
) -> None:
    p = probe()
    p.engine.probe(1.0)  # starts the runtime, one connection
    held = p.engine.checkout()
    p.rt.hold = True
    result = p.engine.probe(0.5)
    assert result.outcome == PROBE_TIMEOUT and result.method == "connect", result
    assert p.engine.stats().connections_pending == 1
    again = p.engine.probe(0.5)  # no second connect while the first hangs
    assert again.outcome == PROBE_TIMEOUT and "has not finished" in again.detail
    assert p.engine.stats().connections_pending == 1 and len(p.rt.held) == 1
    p.rt.run_jobs()  # the connect completes after all: it is a pool connection like any
    st = p.engine.stats()
    assert (st.pool_size, st.pool_idle, st.connections_pending) == (2, 1, 0)
    p.engine.checkin(slot(held))
    p.engine.check_invariants()


def test_a_saturated_pool_is_not_probed(probe: Callable[..., Probe]) -> None:
    p = probe(max_size=1)
    p.warm()
    held = p.engine.checkout()
    opened = len(p.backend.opened)
    result = p.engine.probe(1.0)
    assert result.outcome == PROBE_SKIPPED and "no room" in result.detail
    assert len(p.backend.opened) == opened
    p.engine.checkin(slot(held))


def test_callers_that_wait_come_before_a_probe(make_core: Callable[..., Any]) -> None:
    from sqlalchemy_smartpool.core import Waiter

    core = make_core()
    core.size = 1
    s = core.new_slot(Conn(), 0.0)
    core.idle.append(s)
    core.waiters.append(Waiter(0.0))
    assert core.take_for_probe() is None
    core.waiters.clear()
    assert core.take_for_probe() is s and core.maintaining == 1
    waiter, close = core.probed(s, True, 1.0)
    assert waiter is None and not close and list(core.idle) == [s] and core.maintaining == 0


def test_an_open_breaker_holds_the_probe_back_until_its_own_probe_is_due(
    probe: Callable[..., Probe],
) -> None:
    p = probe(
        retry_attempts=0,
        breaker=CircuitBreakerConfig(failure_threshold=1, backoff_initial=10, backoff_max=10, jitter=0),
    )
    p.backend.failures = [Transient("refused")]
    assert p.engine.probe(1.0).outcome == PROBE_FAILED
    assert p.engine.stats().breaker_state == "open"
    held = p.engine.probe(1.0)
    assert held.outcome == PROBE_SKIPPED and "circuit breaker open" in held.detail
    assert p.backend.attempts == 1
    p.clock.advance(10)  # the breaker's probe is due: the health probe may be it
    result = p.engine.probe(1.0)
    assert result.outcome == PROBE_OK and p.engine.stats().breaker_state == "closed"


def test_a_closed_pool_is_not_probed(probe: Callable[..., Probe]) -> None:
    p = probe()
    p.warm()
    p.engine.close()
    result = p.engine.probe(1.0)
    assert result.outcome == PROBE_SKIPPED and result.detail == "pool closed"


def test_the_watchdog_cuts_a_hung_ping_at_the_timeout() -> None:
    """A real runtime and a socket that never answers: the probe ends at its timeout."""
    a, b = socket.socketpair()

    class Hung(FakeBackend):
        def socket_fd(self, conn: Conn) -> int | None:
            return a.fileno()

        def ping(self, conn: Conn) -> bool:
            return a.recv(1) != b""  # blocks until the watchdog shuts the socket down

    backend = Hung()
    engine: PoolEngine[Conn] = PoolEngine(
        PoolConfig(min_size=0, max_size=1),
        backend,
        name="unit",
        errors=NEUTRAL,
        runtime=lambda name, workers: Housekeeper(name, workers=workers),
    )
    try:
        engine.checkin(slot(engine.checkout()))
        result = engine.probe(0.2)
        assert result.outcome == PROBE_TIMEOUT and result.method == "ping", result
        assert 0.15 <= result.seconds < 5, result
    finally:
        engine.close()
        a.close()
        b.close()


# -- the rules -----------------------------------------------------------------------------


def stats(**over: Any) -> PoolStats:
    base: dict[str, Any] = {
        "name": "unit",
        "pool_size": 2,
        "pool_idle": 1,
        "pool_in_use": 1,
        "requests_waiting": 0,
        "connections_pending": 0,
        "pool_min": 1,
        "pool_max": 4,
        "breaker_state": "closed",
        "counters": dict.fromkeys(S.COUNTERS, 0),
        "wait_p50": 0.0,
        "wait_p95": 0.0,
        "wait_p99": 0.0,
        "wait_max": 0.0,
    }
    base.update(over)
    return PoolStats(**base)


GOOD = ProbeResult(PROBE_OK, "ping", 0.001)


@pytest.mark.parametrize(
    ("over", "probe", "leaks", "status", "reason"),
    [
        ({}, GOOD, 0, OK, None),
        ({}, None, 0, OK, None),
        ({}, ProbeResult(PROBE_SKIPPED, "none", 0, "no room"), 0, OK, None),
        ({"requests_waiting": 3}, GOOD, 0, DEGRADED, "3 request(s) waiting"),
        ({"wait_p99": 1.5}, GOOD, 0, DEGRADED, "acquire wait p99 1.5s is 50% of acquire_timeout (3s)"),
        ({"wait_p99": 1.4}, GOOD, 0, OK, None),
        ({}, GOOD, 2, DEGRADED, "2 suspected connection leak(s)"),
        ({"breaker_state": "open"}, GOOD, 0, DOWN, "circuit breaker open"),
        ({"breaker_state": "half_open"}, None, 0, DOWN, "circuit breaker half_open"),
        ({"closed": True}, None, 0, DOWN, "pool closed"),
        ({}, ProbeResult(PROBE_FAILED, "connect", 0.01, "OperationalError: refused"), 0, DOWN,
         "probe failed: OperationalError: refused"),
        ({}, ProbeResult(PROBE_TIMEOUT, "ping", 1.0, "no answer"), 0, DOWN, "probe timeout: no answer"),
    ],
)
def test_assess(
    over: dict[str, Any], probe: ProbeResult | None, leaks: int, status: str, reason: str | None
) -> None:
    got, reasons = assess(stats(**over), acquire_timeout=3.0, probe=probe, leaks=leaks)
    assert got == status, reasons
    if reason is None:
        assert reasons == []
    else:
        assert reasons[0].startswith(reason), reasons


def test_down_reasons_come_before_degraded_ones() -> None:
    status, reasons = assess(
        stats(requests_waiting=1, breaker_state="open"),
        acquire_timeout=3.0,
        probe=ProbeResult(PROBE_FAILED, "connect", 0.1, "refused"),
    )
    assert status == DOWN
    assert reasons == [
        "circuit breaker open",
        "probe failed: refused",
        "1 request(s) waiting for a connection",
    ]


def test_failures_keep_a_pool_degraded_for_a_while(clock: FakeClock) -> None:
    trend = FailureTrend(clock)
    assert trend.recent(5, 60) is False  # the baseline
    assert trend.recent(5, 60) is False
    assert trend.recent(6, 60) is True
    clock.advance(59)
    assert trend.recent(6, 60) is True
    clock.advance(1)
    assert trend.recent(6, 60) is False
    assert trend.recent(0, 60) is False  # counters restarted (dispose): a new baseline


def test_worst() -> None:
    assert worst([]) == OK
    assert worst([OK, DEGRADED, OK]) == DEGRADED
    assert worst([DEGRADED, DOWN]) == DOWN


# -- the checker: cache, single flight, async ----------------------------------------------


def test_reports_are_cached_for_the_moment_asked(probe: Callable[..., Probe], clock: FakeClock) -> None:
    p = probe()
    p.warm()
    walls = iter(range(100, 200))
    checker = HealthChecker(
        lambda: p.engine, pool_class="X", pool_kind="unit", clock=clock, wall=lambda: float(next(walls))
    )
    first = checker.check(1.0, cache_for=2.0)
    assert first["status"] == OK and first["probe"]["outcome"] == PROBE_OK and first["age"] == 0
    assert checker.probes == 1
    clock.advance(1.5)
    again = checker.check(1.0, cache_for=2.0)
    assert checker.probes == 1 and again["age"] == 1.5 and again["checked_at"] == first["checked_at"]
    assert checker.check(1.0, cache_for=1.0)["age"] == 0  # a shorter moment: probe again
    assert checker.probes == 2
    clock.advance(2.0)
    checker.check(1.0, cache_for=2.0)
    assert checker.probes == 3
    assert checker.check(1.0, cache_for=0)["age"] == 0 and checker.probes == 4


def test_the_report_has_its_keys_and_the_probe_sees_a_dead_database(
    probe: Callable[..., Probe], clock: FakeClock
) -> None:
    p = probe()
    p.warm()
    checker = HealthChecker(lambda: p.engine, pool_class="X", pool_kind="unit", clock=clock)
    report = checker.check()
    assert set(report) == {
        "status", "reasons", "pool", "pool_class", "pool_kind", "breaker_state", "probe",
        "saturation", "suspected_leaks", "stats", "checked_at", "age",
    }
    assert report["pool"] == "unit" and report["saturation"]["max_size"] == 2
    p.backend.alive = False  # pings fail...
    p.backend.failures = [Transient("connection refused")]  # ...and so does the reconnect
    clock.advance(5)
    report = checker.check()
    assert report["status"] == DOWN, report
    assert report["probe"]["method"] == "connect" and "connection refused" in report["reasons"][0]
    passive = checker.passive()
    assert passive["probe"] is None and passive["status"] == OK  # state alone cannot see it


def test_a_caller_arriving_during_a_probe_gets_the_last_report(clock: FakeClock) -> None:
    release = threading.Event()
    entered = threading.Event()

    class Slow:
        name = "slow"
        config = PoolConfig(min_size=0, max_size=1)

        def __init__(self) -> None:
            self.calls = 0

        def stats(self) -> PoolStats:
            return stats()

        def suspected_leaks(self) -> list[Any]:
            return []

        def probe(self, timeout: float) -> ProbeResult:
            self.calls += 1
            if self.calls > 1:
                entered.set()
                assert release.wait(10)
            return GOOD

    engine = Slow()
    checker = HealthChecker(lambda: engine, pool_class="X", pool_kind="unit", clock=clock)
    checker.check(1.0, cache_for=1.0)
    clock.advance(1.5)
    out: list[dict[str, Any]] = []
    t = threading.Thread(target=lambda: out.append(checker.check(1.0, cache_for=1.0)))
    t.start()
    try:
        assert entered.wait(10)
        stale = checker.check(1.0, cache_for=1.0)  # does not wait for the probe in flight
        assert stale["age"] == 1.5 and engine.calls == 2
        clock.advance(5)  # too old to stand in: this caller waits for the running probe
        late: list[dict[str, Any]] = []
        waiting = threading.Thread(target=lambda: late.append(checker.check(1.0, cache_for=1.0)))
        waiting.start()
        waiting.join(0.2)
        assert waiting.is_alive() and not late
    finally:
        release.set()
        t.join(10)
    waiting.join(10)
    assert out[0]["age"] == 0 and late and engine.calls == 2


def test_acheck_runs_the_probe_through_the_spawn(probe: Callable[..., Probe], clock: FakeClock) -> None:
    p = probe()
    p.warm()
    spawned: list[Any] = []

    async def spawn(fn: Callable[..., Any], *args: Any) -> Any:
        spawned.append(fn)
        return fn(*args)

    checker = HealthChecker(lambda: p.engine, pool_class="X", pool_kind="unit", spawn=spawn, clock=clock)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        return await checker.acheck(1.0, cache_for=5), await checker.acheck(1.0, cache_for=5)

    first, second = asyncio.run(scenario())
    assert first["probe"]["outcome"] == PROBE_OK and len(spawned) == 1 and checker.probes == 1
    assert second["checked_at"] == first["checked_at"]
    with pytest.raises(TypeError, match="check"):
        asyncio.run(HealthChecker(lambda: p.engine, pool_class="X", pool_kind="unit").acheck())

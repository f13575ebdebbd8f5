"""Pool health: ok / degraded / down, with reasons, from an active probe and the pool's state.

A report that only reads pool state says "ok" while every query hangs: it
never talks to the database. :class:`HealthChecker` adds an active probe
(:meth:`~.engine.PoolEngine.probe`: one idle connection pinged, or a fresh
connect, bounded by a timeout) and judges it together with what the pool
knows -- breaker state, saturation (waiters, wait p99 against
``acquire_timeout``), recent timeouts, suspected leaks. Reports are cached
for ``cache_for`` seconds, so a load balancer asking every second costs the
database at most one ping per second, and concurrent askers share one probe.

Engine-neutral (no SQLAlchemy, no redis), time injected: the rules are unit
tested without sleeping. Nothing here runs in the background: a pool is
probed only when someone asks for its health.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from . import stats as S
from .leaks import LeakInfo
from .stats import PoolStats

OK = "ok"
DEGRADED = "degraded"
DOWN = "down"
#: worse is higher
STATUS_RANK: dict[str, int] = {OK: 0, DEGRADED: 1, DOWN: 2}

# probe outcomes
PROBE_OK = "ok"
PROBE_FAILED = "failed"
PROBE_TIMEOUT = "timeout"
PROBE_SKIPPED = "skipped"

#: checkout failures a caller saw; an increase marks the pool degraded for ``degraded_for`` seconds
FAILURE_COUNTERS = (S.TIMEOUTS, S.REJECTED_FULL)


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """What one active probe found.

    ``outcome``: ``ok`` (the database answered), ``failed`` (an error, or the
    breaker refused to dial), ``timeout`` (no answer within the timeout) or
    ``skipped`` (nothing to probe without getting in callers' way; the reason
    is in ``detail``). ``method``: ``ping`` (an idle connection), ``connect``
    (a fresh one) or ``none``. ``detail`` is redacted (no passwords).
    """

    outcome: str
    method: str
    seconds: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == PROBE_OK

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "method": self.method,
            "seconds": round(self.seconds, 6),
            "detail": self.detail,
        }


def worst(statuses: Sequence[str]) -> str:
    """The worst of several statuses (``ok`` for none)."""
    return max(statuses, key=STATUS_RANK.__getitem__, default=OK)


class FailureTrend:
    """Remembers when a pool's failure counters last grew, to stay degraded for a while after."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures: int | None = None
        self._last_increase = float("-inf")

    def recent(self, failures: int, window: float) -> bool:
        """Feed the current count; True if it grew within the last ``window`` seconds.
        The first call only takes the baseline."""
        now = self._clock()
        if self._failures is None or failures < self._failures:  # first look, or counters reset
            self._failures = failures
        elif failures > self._failures:
            self._failures = failures
            self._last_increase = now
        return now - self._last_increase < window


def assess(
    stats: PoolStats,
    *,
    acquire_timeout: float | None,
    probe: ProbeResult | None = None,
    leaks: int = 0,
    failures_recent: bool = False,
    degraded_for: float = 60.0,
    wait_p99_ratio: float = 0.5,
) -> tuple[str, list[str]]:
    """The status and its reasons (down reasons first).

    down: the pool is closed, the circuit breaker is not closed, or the probe
    failed or timed out. degraded: callers wait for a connection, the wait p99
    reached ``wait_p99_ratio`` of ``acquire_timeout``, checkouts timed out or
    were refused within ``degraded_for`` seconds, or connections are suspected
    leaks. Otherwise ok. A skipped probe changes nothing.
    """
    down: list[str] = []
    degraded: list[str] = []
    if stats.closed:
        down.append("pool closed")
    if stats.breaker_state != "closed":
        down.append(f"circuit breaker {stats.breaker_state}")
    if probe is not None and probe.outcome in (PROBE_FAILED, PROBE_TIMEOUT):
        down.append(f"probe {probe.outcome}: {probe.detail}" if probe.detail else f"probe {probe.outcome}")
    if stats.requests_waiting:
        degraded.append(f"{stats.requests_waiting} request(s) waiting for a connection")
    if acquire_timeout and stats.wait_p99 >= wait_p99_ratio * acquire_timeout:
        degraded.append(
            f"acquire wait p99 {stats.wait_p99:.3g}s is {stats.wait_p99 / acquire_timeout:.0%} "
            f"of acquire_timeout ({acquire_timeout:g}s)"
        )
    if failures_recent:
        degraded.append(f"checkouts timed out or were rejected in the last {degraded_for:g}s")
    if leaks:
        degraded.append(f"{leaks} suspected connection leak(s)")
    status = DOWN if down else DEGRADED if degraded else OK
    return status, down + degraded


class Probed(Protocol):
    """What a checker reads: a :class:`~.engine.PoolEngine` (kept neutral as a protocol)."""

    name: str

    @property
    def config(self) -> Any: ...

    def stats(self) -> PoolStats: ...

    def suspected_leaks(self) -> list[LeakInfo]: ...

    def probe(self, timeout: float) -> ProbeResult: ...


Spawn = Callable[..., Coroutine[Any, Any, Any]]


class HealthChecker:
    """One pool's health, probed at most once per ``cache_for`` seconds.

    ``engine()`` returns the pool's current engine (a Redis pool swaps its
    engine after a fork or ``reset()``). Callers that arrive while a probe runs
    get the previous report instead of a second probe if it was fresh until
    that probe began (else they wait for it). Reports are JSON-serialisable dicts; see
    :meth:`report` for the keys.
    """

    def __init__(
        self,
        engine: Callable[[], Probed],
        *,
        pool_class: str,
        pool_kind: str,
        spawn: Spawn | None = None,
        degraded_for: float = 60.0,
        wait_p99_ratio: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self.pool_class = pool_class
        self.pool_kind = pool_kind
        self._spawn = spawn
        self.degraded_for = degraded_for
        self.wait_p99_ratio = wait_p99_ratio
        self._clock = clock
        self._wall = wall
        self._trend = FailureTrend(clock)
        self._lock = threading.Lock()
        self._alock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._last: dict[str, Any] | None = None
        self._last_at = float("-inf")
        #: probes run (for tests and the status page)
        self.probes = 0

    # -- asking ------------------------------------------------------------------------

    def cached(self, cache_for: float) -> dict[str, Any] | None:
        """The last report if younger than ``cache_for`` seconds (its ``age`` updated), else None."""
        last = self._last
        if last is None:
            return None
        age = self._clock() - self._last_at
        return self._aged(last, age) if age < cache_for else None

    def check(self, timeout: float = 1.0, *, cache_for: float = 1.0) -> dict[str, Any]:
        """Probe (unless a report younger than ``cache_for`` exists) and judge; blocking."""
        hit = self.cached(cache_for)
        if hit is not None:
            return hit
        if not self._lock.acquire(blocking=False):
            stale = self._stale(cache_for + timeout)
            if stale is not None:  # someone is probing right now: don't pile up behind them
                return stale
            self._lock.acquire()
        try:
            hit = self.cached(cache_for)
            if hit is not None:
                return hit
            return self._judge(self._engine().probe(timeout))
        finally:
            self._lock.release()

    async def acheck(self, timeout: float = 1.0, *, cache_for: float = 1.0) -> dict[str, Any]:
        """:meth:`check` for an asyncio pool: the probe runs on the loop, in a greenlet."""
        if self._spawn is None:
            raise TypeError(f"{self.pool_class}: no greenlet bridge; use check()")
        hit = self.cached(cache_for)
        if hit is not None:
            return hit
        lock = self._loop_lock()
        if lock.locked():
            stale = self._stale(cache_for + timeout)
            if stale is not None:
                return stale
        async with lock:
            hit = self.cached(cache_for)
            if hit is not None:
                return hit
            engine = self._engine()
            return self._judge(await self._spawn(engine.probe, timeout))

    def passive(self) -> dict[str, Any]:
        """A report without a probe (pool state only), e.g. for an asyncio pool read from a thread."""
        return self.report(None)

    # -- judging -----------------------------------------------------------------------

    def report(self, probe: ProbeResult | None) -> dict[str, Any]:
        """Judge the pool now, with ``probe`` (None: no probe was run).

        Keys: ``status``, ``reasons``, ``pool``, ``pool_class``, ``pool_kind``,
        ``breaker_state``, ``probe`` (or None), ``saturation``,
        ``suspected_leaks`` (a count), ``stats`` (``PoolStats.as_dict()``),
        ``checked_at`` (Unix time) and ``age`` (seconds since it was made).
        """
        engine = self._engine()
        stats = engine.stats()
        acquire_timeout = engine.config.acquire_timeout
        leaks = len(engine.suspected_leaks())
        failures = sum(stats.counters.get(k, 0) for k in FAILURE_COUNTERS)
        status, reasons = assess(
            stats,
            acquire_timeout=acquire_timeout,
            probe=probe,
            leaks=leaks,
            failures_recent=self._trend.recent(failures, self.degraded_for),
            degraded_for=self.degraded_for,
            wait_p99_ratio=self.wait_p99_ratio,
        )
        return {
            "status": status,
            "reasons": reasons,
            "pool": engine.name,
            "pool_class": self.pool_class,
            "pool_kind": self.pool_kind,
            "breaker_state": stats.breaker_state,
            "probe": probe.as_dict() if probe is not None else None,
            "saturation": {
                "in_use": stats.pool_in_use,
                "max_size": stats.pool_max,
                "waiting": stats.requests_waiting,
                "wait_p99": stats.wait_p99,
                "acquire_timeout": acquire_timeout,
            },
            "suspected_leaks": leaks,
            "stats": stats.as_dict(),
            "checked_at": self._wall(),
            "age": 0.0,
        }

    def _judge(self, probe: ProbeResult) -> dict[str, Any]:
        self.probes += 1
        report = self.report(probe)
        self._last, self._last_at = report, self._clock()
        return report

    def _stale(self, max_age: float) -> dict[str, Any] | None:
        """The last report while a probe is running, if it is not older than ``max_age``
        (it was fresh until that probe began); else None: wait for the probe."""
        last = self._last
        age = self._clock() - self._last_at
        return None if last is None or age > max_age else self._aged(last, age)

    @staticmethod
    def _aged(report: dict[str, Any], age: float) -> dict[str, Any]:
        out = dict(report)
        out["age"] = round(max(age, 0.0), 6)
        return out

    def _loop_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        held = self._alock
        if held is None or held[0] is not loop:
            held = self._alock = (loop, asyncio.Lock())
        return held[1]


_ATTR = "_smartpool_health"


def checker_for(
    owner: Any, engine: Callable[[], Probed], *, pool_kind: str, spawn: Spawn | None = None
) -> HealthChecker:
    """``owner``'s checker (a pool's), made on first use and kept on it: one cache per pool."""
    checker: HealthChecker | None = owner.__dict__.get(_ATTR)
    if checker is None:
        made = HealthChecker(engine, pool_class=type(owner).__name__, pool_kind=pool_kind, spawn=spawn)
        checker = owner.__dict__.setdefault(_ATTR, made)  # atomic: two first callers share one
    return checker

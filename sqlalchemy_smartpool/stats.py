"""Pool statistics: named keys, the snapshot type, and the wait-time sampler.

Keys are module constants (as in psycopg_pool) so metric exporters and tests
spell them once. Counters are plain ints mutated under the pool's lock; the
wait sampler is a fixed ring so recording costs no allocation on the hot path.
"""

from __future__ import annotations

import dataclasses
import math
from array import array
from bisect import bisect_left
from typing import Any

# Gauges
POOL_SIZE = "pool_size"
POOL_IDLE = "pool_idle"
POOL_IN_USE = "pool_in_use"
REQUESTS_WAITING = "requests_waiting"
CONNECTIONS_PENDING = "connections_pending"
POOL_MIN = "pool_min"
POOL_MAX = "pool_max"
# Counters
CHECKOUTS = "checkouts"
CHECKOUTS_WAITED = "checkouts_waited"
TIMEOUTS = "timeouts"
REJECTED_FULL = "rejected_queue_full"
REJECTED_BREAKER = "rejected_breaker_open"
CONNECTIONS_CREATED = "connections_created"
CONNECTIONS_CLOSED = "connections_closed"
CONNECTIONS_FAILED = "connections_failed"
CONNECTIONS_INVALIDATED = "connections_invalidated"
CONNECTIONS_EXPIRED = "connections_expired"
CONNECTIONS_IDLE_CLOSED = "connections_idle_closed"
VALIDATIONS = "validations"
VALIDATIONS_FAILED = "validations_failed"
VALIDATIONS_SKIPPED = "validations_skipped"
KEEPALIVES = "keepalives"
LEAKS_SUSPECTED = "leaks_suspected"
LEAKS_RETURNED = "leaks_returned"
LEAKS_COLLECTED = "leaks_collected"
BREAKER_OPENED = "breaker_opened"
#: breaker transitions besides ``breaker_opened`` (closed -> open)
BREAKER_HALF_OPENED = "breaker_half_opened"
BREAKER_REOPENED = "breaker_reopened"
BREAKER_CLOSED = "breaker_closed"
#: the statement guard (guard.py): statements it flagged, and those it refused (enforce mode)
GUARD_DETECTIONS = "guard_detections"
GUARD_REJECTIONS = "guard_rejections"
#: closed by drain(), rotate_credentials(), a lowered max_size or a swapped-out pool (docs/operations.md)
CONNECTIONS_RETIRED = "connections_retired"

COUNTERS: tuple[str, ...] = (
    CHECKOUTS,
    CHECKOUTS_WAITED,
    TIMEOUTS,
    REJECTED_FULL,
    REJECTED_BREAKER,
    CONNECTIONS_CREATED,
    CONNECTIONS_CLOSED,
    CONNECTIONS_FAILED,
    CONNECTIONS_INVALIDATED,
    CONNECTIONS_EXPIRED,
    CONNECTIONS_IDLE_CLOSED,
    VALIDATIONS,
    VALIDATIONS_FAILED,
    VALIDATIONS_SKIPPED,
    KEEPALIVES,
    LEAKS_SUSPECTED,
    LEAKS_RETURNED,
    LEAKS_COLLECTED,
    BREAKER_OPENED,
    BREAKER_HALF_OPENED,
    BREAKER_REOPENED,
    BREAKER_CLOSED,
    GUARD_DETECTIONS,
    GUARD_REJECTIONS,
    CONNECTIONS_RETIRED,
)

# Timings (histograms, seconds): the keys of PoolStats.timings
WAIT_TIME = "wait_time"
USE_TIME = "use_time"
CREATE_TIME = "create_time"
TIMINGS: tuple[str, ...] = (WAIT_TIME, USE_TIME, CREATE_TIME)

#: Upper bounds (seconds) of the timing histograms' buckets; one more bucket holds the rest.
#: From 100 us (a checkout that waited for a thread switch) to a minute (a held report job).
TIME_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


class WaitSampler:
    """Acquire waits (seconds) of recent checkouts, for percentiles.

    Only checkouts that had to queue are recorded, each with the checkout
    count at that moment; a checkout served at once from an idle connection
    waited zero by definition, so it costs the hot path nothing and is
    counted back in by :meth:`percentiles` (the checkouts since the oldest
    kept sample that left no sample). The samples are a ring of doubles:
    ``record`` is two stores and two adds, no allocation. Writers may race
    (the pool records outside its lock); a lost sample is harmless for a
    percentile, a lock on every checkout is not.
    """

    __slots__ = ("_buf", "_mask", "_n", "_seq", "max", "total")

    def __init__(self, capacity: int = 8192) -> None:
        if capacity <= 0 or capacity & (capacity - 1):
            raise ValueError(f"capacity must be a power of two, got {capacity!r}")
        self._buf = array("d", bytes(8 * capacity))
        self._seq = array("q", bytes(8 * capacity))
        self._mask = capacity - 1
        self._n = 0
        self.max = 0.0
        #: running sum of every wait recorded (for means and Prometheus summaries)
        self.total = 0.0

    def record(self, seconds: float, seq: int = 0) -> None:
        """Note one wait; ``seq`` is the pool's checkout count when it ended."""
        n = self._n
        i = n & self._mask
        self._buf[i] = seconds
        self._seq[i] = seq
        self._n = n + 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds

    def __len__(self) -> int:
        return min(self._n, self._mask + 1)

    def percentiles(self, *qs: float, checkouts: int | None = None) -> tuple[float, ...]:
        """Nearest-rank percentiles (0..100); zeros when nothing waited.

        With ``checkouts`` (the pool's checkout count now), the checkouts
        since the oldest kept sample that recorded nothing enter as zero waits.
        """
        count = len(self)
        if not count:
            return tuple(0.0 for _ in qs)
        data = sorted(self._buf[:count])
        zeros = 0
        if checkouts is not None:
            oldest = self._seq[self._n & self._mask] if self._n > count else self._seq[0]
            zeros = max(0, checkouts - oldest + 1 - count)
        total = zeros + count
        out = []
        for q in qs:
            rank = max(1, min(total, int(-(-q * total // 100))))
            out.append(0.0 if rank <= zeros else data[rank - zeros - 1])
        return tuple(out)

    def reset(self) -> None:
        self._n = 0
        self.max = 0.0
        self.total = 0.0


class Timing:
    """Cumulative histogram of one duration: a count and a sum per bucket of :data:`TIME_BUCKETS`.

    Bucketing happens as the duration is recorded (one ``bisect`` and two adds,
    ~80 ns; the engine inlines it under the lock it already holds), so the counts
    are exact and an exporter only copies them: Prometheus and OpenTelemetry
    histograms, and StatsD's per-push percentiles, all read the same numbers.
    Bucket ``i`` holds durations ``<= bounds[i]`` (Prometheus' ``le``).
    """

    __slots__ = ("bounds", "counts", "sums")

    def __init__(self, bounds: tuple[float, ...] = TIME_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sums = [0.0] * (len(bounds) + 1)

    def record(self, seconds: float) -> None:
        i = bisect_left(self.bounds, seconds)
        self.counts[i] += 1
        self.sums[i] += seconds

    def snapshot(self, zeros: int = 0) -> Distribution:
        """The counts now; ``zeros`` more durations of 0 s (immediate checkouts) in the first bucket."""
        counts = list(self.counts)
        counts[0] += max(0, zeros)
        return Distribution(self.bounds, tuple(counts), tuple(self.sums))


@dataclasses.dataclass(frozen=True)
class Distribution:
    """A histogram snapshot: per-bucket counts and sums (not cumulative), bucket ``i`` <= ``bounds[i]``."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sums: tuple[float, ...]

    @property
    def count(self) -> int:
        return sum(self.counts)

    @property
    def sum(self) -> float:
        return math.fsum(self.sums)

    def cumulative(self) -> list[int]:
        """Counts ``<= bounds[i]`` for each bound, then the total (Prometheus' ``le`` buckets)."""
        out, run = [], 0
        for c in self.counts:
            run += c
            out.append(run)
        return out

    def minus(self, earlier: Distribution | None) -> Distribution:
        """What was recorded since ``earlier`` (a snapshot of the same histogram), for deltas."""
        if earlier is None or earlier.bounds != self.bounds:
            return self
        counts = tuple(max(0, a - b) for a, b in zip(self.counts, earlier.counts, strict=True))
        sums = tuple(max(0.0, a - b) for a, b in zip(self.sums, earlier.sums, strict=True))
        return Distribution(self.bounds, counts, sums)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0..1), interpolated inside its bucket as PromQL's
        ``histogram_quantile`` does; the last bucket answers its lower bound. 0.0 when empty."""
        total = self.count
        if not total:
            return 0.0
        rank = q * total
        run = 0
        lower = 0.0
        for i, c in enumerate(self.counts):
            if c and run + c >= rank:
                if i >= len(self.bounds):
                    return lower
                upper = self.bounds[i]
                return lower + (upper - lower) * max(0.0, rank - run) / c
            run += c
            if i < len(self.bounds):
                lower = self.bounds[i]
        return lower


@dataclasses.dataclass(frozen=True)
class PoolStats:
    """A consistent snapshot of a pool: gauges, counters and acquire-wait percentiles.

    Wait percentiles are in seconds over recent checkouts: the last 8192 that
    had to queue, and the immediate ones (zero waits) among them.
    """

    name: str
    pool_size: int
    pool_idle: int
    pool_in_use: int
    requests_waiting: int
    connections_pending: int
    pool_min: int
    pool_max: int
    breaker_state: str
    counters: dict[str, int]
    wait_p50: float
    wait_p95: float
    wait_p99: float
    wait_max: float
    #: sum of every acquire wait since the pool started (seconds)
    wait_sum: float = 0.0
    #: closed for good by ``close()``
    closed: bool = False
    #: the server's connection limit for this client, read at the first connect (None: unknown)
    server_max_connections: int | None = None
    #: the configured ``acquire_timeout`` (seconds), for "wait p99 near the timeout" alerts
    acquire_timeout: float = 0.0
    #: connections held past ``leak_detection_threshold`` right now (reported, not yet returned)
    leaks_outstanding: int = 0
    #: histograms by :data:`TIMINGS` key (wait, use and create time); empty with
    #: ``track_wait_times=False``. Immediate checkouts enter ``wait_time`` as 0 s.
    timings: dict[str, Distribution] = dataclasses.field(default_factory=dict)

    # Short names the issue and most dashboards use.
    @property
    def size(self) -> int:
        return self.pool_size

    @property
    def idle(self) -> int:
        return self.pool_idle

    @property
    def in_use(self) -> int:
        return self.pool_in_use

    @property
    def waiting(self) -> int:
        return self.requests_waiting

    @property
    def min_size(self) -> int:
        return self.pool_min

    @property
    def max_size(self) -> int:
        return self.pool_max

    def __getattr__(self, name: str) -> int:
        # counters read as attributes too: stats.checkouts, stats.timeouts, ...
        counters = self.__dict__.get("counters")
        if counters is not None and name in counters:
            return int(counters[name])
        raise AttributeError(name)

    def as_dict(self) -> dict[str, Any]:
        """Flat mapping of every key, for JSON, logs and metric exporters."""
        out: dict[str, Any] = {
            "name": self.name,
            POOL_SIZE: self.pool_size,
            POOL_IDLE: self.pool_idle,
            POOL_IN_USE: self.pool_in_use,
            REQUESTS_WAITING: self.requests_waiting,
            CONNECTIONS_PENDING: self.connections_pending,
            POOL_MIN: self.pool_min,
            POOL_MAX: self.pool_max,
            "breaker_state": self.breaker_state,
            "wait_p50": self.wait_p50,
            "wait_p95": self.wait_p95,
            "wait_p99": self.wait_p99,
            "wait_max": self.wait_max,
            "wait_sum": self.wait_sum,
            "closed": self.closed,
            "server_max_connections": self.server_max_connections,
            "acquire_timeout": self.acquire_timeout,
            "leaks_outstanding": self.leaks_outstanding,
        }
        for key, dist in self.timings.items():
            out[f"{key}_count"] = dist.count
            out[f"{key}_sum"] = dist.sum
        out.update(self.counters)
        return out

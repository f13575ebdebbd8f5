"""Pool statistics: named keys, the snapshot type, and the wait-time sampler.

Keys are module constants (as in psycopg_pool) so metric exporters and tests
spell them once. Counters are plain ints mutated under the pool's lock; the
wait sampler is a fixed ring so recording costs no allocation on the hot path.
"""

from __future__ import annotations

import dataclasses
from array import array
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
    GUARD_DETECTIONS,
    GUARD_REJECTIONS,
    CONNECTIONS_RETIRED,
)


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
        }
        out.update(self.counters)
        return out

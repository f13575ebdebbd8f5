"""Circuit breaker: stop dialing a database that keeps failing, probe it one at a time.

Pure policy: no threads, no I/O, time comes from an injected clock. The pool
asks :meth:`CircuitBreaker.allow_connect` before it dials and reports each
outcome; the breaker answers whether to dial and when the next probe is due.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Callable

from .backoff import Backoff
from .config import CircuitBreakerConfig
from .errors import describe_error


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """closed -> open after repeated connect failures -> half-open (one probe) -> closed.

    ``on_transition(old, new)`` is called for every state change (the pool
    counts and logs them there; :attr:`moved_because` says why). The breaker
    itself writes no log line: it runs under the pool's lock.
    """

    def __init__(
        self,
        config: CircuitBreakerConfig,
        clock: Callable[[], float],
        *,
        rng: random.Random | None = None,
        name: str = "pool",
        on_transition: Callable[[BreakerState, BreakerState], None] | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._name = name
        self._on_transition = on_transition
        self._backoff = Backoff(
            config.backoff_initial,
            config.backoff_max,
            multiplier=config.backoff_multiplier,
            jitter=config.jitter,
            rng=rng,
        )
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.next_probe_at = 0.0
        self.probe_in_flight = False
        self.last_error: str | None = None
        #: why the last transition happened: "failures", "failure_ratio", "probe_due",
        #: "probe_failed", "probe_succeeded" or "reset"
        self.moved_because = ""
        # (time, ok) of recent connects, only kept when a failure ratio is configured
        self._window: deque[tuple[float, bool]] = deque()

    # -- questions -------------------------------------------------------------------

    def allow_connect(self) -> bool:
        """May the pool dial now? In half-open this grants the single probe."""
        if not self.config.enabled or self.state is BreakerState.CLOSED:
            return True
        if self.probe_in_flight:
            return False
        if self._clock() >= self.next_probe_at:
            if self.state is BreakerState.OPEN:
                self._move(BreakerState.HALF_OPEN, "probe_due")
            self.probe_in_flight = True
            return True
        return False

    def retry_after(self) -> float:
        """Seconds until the next probe may go (0 when closed)."""
        if self.state is BreakerState.CLOSED:
            return 0.0
        return max(0.0, self.next_probe_at - self._clock())

    @property
    def is_open(self) -> bool:
        """True while checkouts that need a new connection must fail fast."""
        return self.config.enabled and self.state is not BreakerState.CLOSED

    # -- outcomes --------------------------------------------------------------------

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self.probe_in_flight = False
        recovered = self.state is not BreakerState.CLOSED
        if recovered:
            # the outage's failures must not count against the recovered database
            self._window.clear()
        if self.config.failure_ratio is not None:
            self._note(True)
        if recovered:
            self._backoff.reset()
            self._move(BreakerState.CLOSED, "probe_succeeded")

    def record_failure(self, error: BaseException | None = None) -> None:
        self.consecutive_failures += 1
        self.probe_in_flight = False
        if error is not None:
            self.last_error = describe_error(error)
        if not self.config.enabled:
            return
        if self.state is BreakerState.OPEN:
            # no probe was granted: a connect started before the breaker opened
            # failed late; the current backoff already accounts for the outage
            return
        if self.state is BreakerState.HALF_OPEN:
            # a failed probe: back off further
            self.next_probe_at = self._clock() + self._backoff.next_delay()
            self._move(BreakerState.OPEN, "probe_failed")
            return
        ratio_tripped = False
        if self.config.failure_ratio is not None:
            self._note(False)
            ratio_tripped = self._ratio_exceeded()
        by_count = self.consecutive_failures >= self.config.failure_threshold
        if by_count or ratio_tripped:
            self._backoff.reset()
            self.next_probe_at = self._clock() + self._backoff.next_delay()
            self._move(BreakerState.OPEN, "failures" if by_count else "failure_ratio")

    def reset(self) -> None:
        """Forget all history (used by ``dispose()``)."""
        self.consecutive_failures = 0
        self.probe_in_flight = False
        self._window.clear()
        self._backoff.reset()
        old = self.state
        if old is not BreakerState.CLOSED:
            # not via _move: nothing was learnt about the database, "reachable again" would be a guess
            self.state = BreakerState.CLOSED
            self.moved_because = "reset"
            if self._on_transition is not None:
                self._on_transition(old, BreakerState.CLOSED)

    # -- internals -------------------------------------------------------------------

    def _note(self, ok: bool) -> None:
        now = self._clock()
        self._window.append((now, ok))
        horizon = now - self.config.ratio_window
        while self._window and self._window[0][0] < horizon:
            self._window.popleft()

    def _ratio_exceeded(self) -> bool:
        calls = len(self._window)
        if calls < self.config.ratio_min_calls or self.config.failure_ratio is None:
            return False
        failures = sum(1 for _, ok in self._window if not ok)
        return failures / calls >= self.config.failure_ratio

    def _move(self, new: BreakerState, because: str) -> None:
        old = self.state
        if old is new:
            return
        self.state = new
        self.moved_because = because
        if self._on_transition is not None:
            self._on_transition(old, new)

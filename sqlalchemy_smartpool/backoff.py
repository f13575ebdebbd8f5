"""Exponential backoff with jitter, shared by connect retries and breaker probes."""

from __future__ import annotations

import random


class Backoff:
    """Delays ``initial * multiplier**n``, capped at ``maximum``, each spread by +/- ``jitter``.

    Jitter keeps a fleet of processes that lost the same database from
    retrying in lockstep when it comes back.
    """

    __slots__ = ("_rng", "attempt", "initial", "jitter", "maximum", "multiplier")

    def __init__(
        self,
        initial: float,
        maximum: float,
        *,
        multiplier: float = 2.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self.jitter = jitter
        self._rng = rng or random.Random()
        self.attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call moves one step up."""
        try:
            base = min(self.maximum, self.initial * self.multiplier**self.attempt)
        except OverflowError:  # ~1000 steps into an outage: long past the cap
            base = self.maximum if self.initial else 0.0
        self.attempt += 1
        if self.jitter:
            base *= 1.0 + self.jitter * (2.0 * self._rng.random() - 1.0)
        return max(0.0, min(self.maximum, base))

    def reset(self) -> None:
        self.attempt = 0

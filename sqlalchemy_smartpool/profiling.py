"""Profiling hooks: per-checkout timings for user callbacks, and who holds connections longest.

Both ride on the slot's ``lease`` (the object leak detection already keeps per
checkout), so a pool with neither costs nothing extra: the checkin path looks
at ``slot.lease`` anyway.

* **Checkout listeners** (``pool.add_checkout_listener(fn)``) get a
  :class:`CheckoutTiming` at each checkin: how long the checkout queued, how
  long the connection was held, and (if asked) the caller's code location.
  Every checkout is traced while one is registered.
* **Top holders** (``pool.top_holders()``): one checkout in
  ``holder_sample_every`` records the caller's code location (one frame walk,
  ~1-2 us, so ~30 ns per checkout at 1 in 64); at checkin its hold time is
  added to that location's totals. Counts and totals are scaled back up by the
  sampling rate, so they estimate all checkouts.

Neutral like the engine: no SQLAlchemy, no redis.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from .stats import Timing

logger = logging.getLogger("sqlalchemy_smartpool.profiling")

#: a code location: (file, line, function)
Frame = tuple[str, int, str]

#: at most this many distinct locations are kept; later ones are summed as ``OTHER``
MAX_LOCATIONS = 256
OTHER = "(other locations)"


class Sample:
    """The lease of a traced checkout when leak detection is off: where from, how long it queued."""

    __slots__ = ("location", "sampled", "wait")

    def __init__(self, location: Frame | None, wait: float, sampled: bool) -> None:
        self.location = location
        self.wait = wait
        self.sampled = sampled


@dataclasses.dataclass(frozen=True)
class CheckoutTiming:
    """One checkout, as a checkout listener sees it when the connection comes back."""

    #: the pool's name
    pool: str
    #: the pool's id of the connection (as in leak reports)
    connection_id: int
    #: seconds the checkout queued for a connection (0.0 when one was idle)
    wait: float
    #: seconds from checkout to checkin (the use time of the OpenTelemetry conventions)
    held: float
    #: ``"file:line in function"`` of the caller, when the listener asked for locations
    location: str | None


@dataclasses.dataclass(frozen=True)
class Holder:
    """A code location that checks connections out, from the sampled checkouts (see :func:`top`)."""

    #: ``"file:line in function"`` of the first frame outside the pool and its libraries
    location: str
    #: estimated checkouts from here (samples x the sampling rate)
    count: int
    #: estimated total seconds held (sampled hold times x the sampling rate), returned or not
    total_s: float
    #: 99th percentile of the sampled hold times (seconds, interpolated in its histogram bucket)
    p99_s: float
    #: longest sampled hold
    max_s: float
    #: how many checkouts were sampled here
    samples: int
    #: sampled checkouts from here that hold their connection right now
    held_now: int


def format_location(frame: Frame | None) -> str | None:
    """``"file:line in function"``, the file relative to the working directory when under it."""
    if frame is None:
        return None
    filename, line, name = frame
    cwd = os.getcwd() + os.sep
    if filename.startswith(cwd):
        filename = filename[len(cwd) :]
    return f"{filename}:{line} in {name}"


class _Place:
    __slots__ = ("hist", "max", "samples", "total")

    def __init__(self) -> None:
        self.hist = Timing()
        self.samples = 0
        self.total = 0.0
        self.max = 0.0


class HolderStats:
    """Hold times of sampled checkouts, summed per code location (thread-safe, its own lock)."""

    def __init__(self, every: int) -> None:
        self.every = every
        self._places: dict[Frame | str, _Place] = {}
        self._lock = threading.Lock()

    def returned(self, where: Frame | None, held: float) -> None:
        if where is None:
            return
        with self._lock:
            place = self._places.get(where)
            if place is None:
                key: Frame | str = where if len(self._places) < MAX_LOCATIONS else OTHER
                place = self._places.get(key) or self._places.setdefault(key, _Place())
            place.hist.record(held)
            place.samples += 1
            place.total += held
            if held > place.max:
                place.max = held

    def top(self, n: int, by: str, current: Iterable[tuple[Frame | None, float]]) -> list[Holder]:
        """The ``n`` locations with the most hold time (``by="total"``) or the worst p99 (``"p99"``).

        ``current``: (location, seconds held so far) of sampled checkouts not yet returned,
        which count in the totals, so a job holding a connection for minutes shows now.
        """
        if by not in ("total", "p99", "max", "count"):
            raise ValueError(f"top_holders(by=...) must be 'total', 'p99', 'max' or 'count', got {by!r}")
        scale = max(1, self.every)
        now_by: dict[Frame | str, list[float]] = {}
        with self._lock:
            for where, held in current:
                if where is not None:
                    known = where in self._places or len(self._places) < MAX_LOCATIONS
                    key: Frame | str = where if known else OTHER
                    now_by.setdefault(key, []).append(held)
            rows = []
            for key in set(self._places) | set(now_by):
                place = self._places.get(key)
                live = now_by.get(key, [])
                samples = (place.samples if place is not None else 0) + len(live)
                total = (place.total if place is not None else 0.0) + sum(live)
                longest = max([place.max if place is not None else 0.0, *live])
                p99 = place.hist.snapshot().quantile(0.99) if place is not None else 0.0
                location = key if isinstance(key, str) else format_location(key) or "?"
                rows.append(
                    Holder(
                        location=location,
                        count=samples * scale,
                        total_s=total * scale,
                        p99_s=min(p99, longest) if place is not None else 0.0,
                        max_s=longest,
                        samples=samples,
                        held_now=len(live),
                    )
                )
        sort_key: dict[str, Callable[[Holder], Any]] = {
            "total": lambda h: h.total_s,
            "p99": lambda h: h.p99_s,
            "max": lambda h: h.max_s,
            "count": lambda h: h.count,
        }
        rows.sort(key=sort_key[by], reverse=True)
        return rows[: max(0, n)]

    def reset(self) -> None:
        with self._lock:
            self._places.clear()


Listener = Callable[[CheckoutTiming], object]


class Listeners:
    """The checkout listeners of one pool, carried over when the pool makes a new engine."""

    def __init__(self) -> None:
        self.entries: tuple[tuple[Listener, bool], ...] = ()
        self._failed: set[int] = set()
        self._lock = threading.Lock()

    @property
    def want_location(self) -> bool:
        return any(loc for _, loc in self.entries)

    def add(self, fn: Listener, location: bool) -> None:
        if not callable(fn):
            raise TypeError(f"a checkout listener must be callable, got {type(fn).__name__}")
        with self._lock:
            self.entries = (*(e for e in self.entries if e[0] != fn), (fn, bool(location)))

    def remove(self, fn: Listener) -> bool:
        with self._lock:
            kept = tuple(e for e in self.entries if e[0] != fn)
            found = len(kept) != len(self.entries)
            self.entries = kept
        return found

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (a parent thread may have held this one); listeners stay."""
        self._lock = threading.Lock()

    def call(self, timing: CheckoutTiming) -> None:
        """Run every listener; one that raises is logged once (its type only) and kept."""
        for fn, _ in self.entries:
            try:
                fn(timing)
            except Exception as err:
                if id(fn) not in self._failed:
                    self._failed.add(id(fn))
                    name = getattr(fn, "__qualname__", type(fn).__name__)
                    logger.warning("checkout listener %s failed (%s)", name, type(err).__name__)

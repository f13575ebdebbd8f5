"""OpenTelemetry metrics for pools, named per the database client semantic conventions.

Everything is read from ``pool.stats()`` when the SDK collects (nothing on the
checkout path): counts and limits through observable up-down counters, counters
and gauges; the wait, use and create time histograms through ``Histogram``
instruments fed at collection time from the bucket counts the pool keeps.

Why replayed: the OpenTelemetry API has no asynchronous histogram, and a
``Histogram.record()`` costs ~5 us in the Python SDK -- most of a checkout
(docs/benchmarks.md). The pool buckets each duration as it happens (~80 ns,
:class:`~sqlalchemy_smartpool.stats.Timing`, the same boundaries given to the
SDK as advice); each collection records what was added since the previous one,
each bucket's new durations at their mean. Counts, sums and bucket counts are
exact; a point's min / max are those means. At most ``max_replay`` values per
histogram and collection are recorded (~0.1 s of CPU at the default); the rest
is carried to the next collection, so under sustained load beyond that the
histograms lag behind ``stats()`` instead of costing more CPU.
"""

from __future__ import annotations

import importlib.metadata
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import CallbackOptions, Observation

from .. import measures as M
from ..stats import Distribution, PoolStats
from . import pool_label, read_pool, resolve_pool

__all__ = ["DEFAULT_MAX_REPLAY", "OpenTelemetryMetrics"]

#: at most this many durations per histogram are recorded into the SDK per collection
DEFAULT_MAX_REPLAY = 20_000

class _Target:
    __slots__ = ("attrs", "gen", "label", "last_pool", "replayed", "snap", "target")

    def __init__(self, label: str, target: Any) -> None:
        self.label = label
        self.target = target
        self.attrs = {M.POOL_NAME_ATTR: label}
        self.last_pool: Any = None
        #: per histogram source: what has been recorded into the SDK so far
        self.replayed: dict[str, Distribution] = {}
        self.snap: Any = None
        #: bumped at each new snapshot; an instrument that already used this one starts the next
        self.gen = 0


class OpenTelemetryMetrics:
    """Report one or more pools through an OpenTelemetry ``Meter``.

    ``pool``: a pool or an engine (an engine's current pool is read at each
    collection). ``name``: the ``db.client.connection.pool.name`` attribute, by
    default the pool's name, else ``"default"`` (``"redis"`` for an unnamed Redis
    pool) -- never built from the URL's host and database, which the conventions
    suggest for unnamed pools. ``meter_provider``: the SDK's ``MeterProvider``,
    by default the global one. Instruments are created once per object; add
    more pools with :meth:`add`. :meth:`close` stops reporting.
    """

    def __init__(
        self,
        pool: Any,
        name: str | None = None,
        *,
        meter_provider: Any = None,
        max_replay: int = DEFAULT_MAX_REPLAY,
    ) -> None:
        if isinstance(max_replay, bool) or not isinstance(max_replay, int) or max_replay < 1:
            raise ValueError(f"max_replay must be a positive integer, got {max_replay!r}")
        self.max_replay = max_replay
        self._targets: list[_Target] = []
        self._lock = threading.Lock()
        self._closed = False
        self.add(pool, name)
        meter = otel_metrics.get_meter("sqlalchemy_smartpool", _version(), meter_provider=meter_provider)
        self._histograms: dict[str, Any] = {}
        self._replay_seen: dict[str, int] = {}
        for otel_name, m in M.otel_names().items():
            description = M.OTEL_DESCRIPTIONS.get(otel_name, m.description)
            callback = self._callback(otel_name)
            if m.otel_instrument == "histogram":
                self._histograms[m.source] = meter.create_histogram(
                    otel_name,
                    unit=m.unit,
                    description=description,
                    explicit_bucket_boundaries_advisory=list(_bounds()),
                )
            elif m.otel_instrument == "counter":
                meter.create_observable_counter(otel_name, [callback], unit=m.unit, description=description)
            elif m.otel_instrument == "gauge":
                meter.create_observable_gauge(otel_name, [callback], unit=m.unit, description=description)
            else:
                meter.create_observable_up_down_counter(
                    otel_name, [callback], unit=m.unit, description=description
                )
        # the histograms are fed from a callback, run before the SDK aggregates a collection
        meter.create_observable_gauge(
            "smartpool.otel.replay_backlog",
            [self._replay],
            unit="{duration}",
            description="Durations not yet recorded into the timing histograms (see max_replay).",
        )

    def add(self, pool: Any, name: str | None = None) -> None:
        """Also report ``pool`` (a pool or an engine), named ``name``."""
        label = pool_label(resolve_pool(pool), name)
        with self._lock:
            if any(t.label == label for t in self._targets):
                raise ValueError(f"a pool named {label!r} is already reported; pass name=")
            self._targets.append(_Target(label, pool))

    def close(self) -> None:
        """Stop reporting (the SDK keeps the instruments; they observe nothing from now on)."""
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return f"<OpenTelemetryMetrics pools={[t.label for t in self._targets]}>"

    # --------------------------------------------------------------- internals

    def _snapshot(self, t: _Target, seen: dict[str, int]) -> PoolStats | None:
        """One snapshot per pool and collection, shared by every instrument of it.

        A collection runs each instrument's callback once, in an order the API does
        not promise: a callback that meets the snapshot it used before is the first of
        a new collection, and takes a fresh one (so a quiet pool reads exactly now).
        """
        if t.snap is None or seen.get(t.label) == t.gen:
            pool = resolve_pool(t.target)
            if pool is not t.last_pool:  # a new pool (engine.dispose()): it counts from zero
                t.last_pool = pool
                t.replayed = {}
            t.snap = read_pool(pool)
            t.gen += 1
        seen[t.label] = t.gen
        snap = t.snap
        return snap.stats if snap is not None else None

    def _callback(self, otel_name: str) -> Any:
        rows = [m for m in M.MEASURES if m.otel == otel_name]
        seen: dict[str, int] = {}

        def observe(options: CallbackOptions) -> Iterator[Observation]:
            if self._closed:
                return
            with self._lock:
                targets = list(self._targets)
                for t in targets:
                    st = self._snapshot(t, seen)
                    for m in rows:
                        if st is not None:
                            value = m.read(st)
                        elif m.source in t.snap.gauges:  # a pool without stats(): its gauges
                            value = t.snap.gauges[m.source]
                        else:
                            continue
                        yield Observation(value, {**t.attrs, **m.otel_attributes})

        return observe

    def _replay(self, options: CallbackOptions) -> Iterable[Observation]:
        """Record the durations added since the last collection into the SDK's histograms."""
        if self._closed:
            return []
        out = []
        with self._lock:
            for t in self._targets:
                st = self._snapshot(t, self._replay_seen)
                if st is None:
                    continue
                backlog = 0
                for source, hist in self._histograms.items():
                    dist = st.timings.get(source)
                    if dist is None:
                        continue
                    backlog += self._feed(t, source, hist, dist)
                out.append(Observation(backlog, t.attrs))
        return out

    def _feed(self, t: _Target, source: str, hist: Any, dist: Distribution) -> int:
        """Record up to ``max_replay`` of ``dist``'s new durations; returns how many wait for later."""
        done = t.replayed.get(source)
        if done is not None and any(a < b for a, b in zip(dist.counts, done.counts, strict=True)):
            done = None  # counts went back: a pool we had not seen
        new = dist.minus(done)
        total = new.count
        if not total:
            return 0
        share = min(1.0, self.max_replay / total)
        counts = list(done.counts) if done is not None else [0] * len(dist.counts)
        sums = list(done.sums) if done is not None else [0.0] * len(dist.counts)
        bounds = dist.bounds
        for i, k in enumerate(new.counts):
            if not k:
                continue
            n = k if share >= 1.0 else int(k * share)
            if not n:
                continue
            mean = new.sums[i] / k
            lo = bounds[i - 1] if i > 0 else float("-inf")
            hi = bounds[i] if i < len(bounds) else float("inf")
            value = min(max(mean, lo), hi)
            if value == lo and i > 0:  # the SDK's buckets exclude their lower bound
                value = min(hi, lo * (1 + 1e-12) + 1e-15)
            attrs = t.attrs
            record = hist.record
            for _ in range(n):
                record(value, attrs)
            counts[i] += n
            sums[i] += mean * n
        t.replayed[source] = Distribution(bounds, tuple(counts), tuple(sums))
        return total - sum(c - (done.counts[i] if done is not None else 0) for i, c in enumerate(counts))


def _version() -> str:
    try:
        return importlib.metadata.version("sqlalchemy-smartpool")
    except importlib.metadata.PackageNotFoundError:
        return ""


def _bounds() -> tuple[float, ...]:
    from ..stats import TIME_BUCKETS

    return TIME_BUCKETS

"""overhead: checkout + checkin of an idle connection, no SQL.

This is the cost a pool adds to every request. Each round times a block of
iterations for every implementation back to back (rotating the order), so
drift on a shared machine hits all of them alike; a row reports the median
round, and the ratio column is the median of the per-round ratios.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from typing import Any

from .harness import (
    Goal,
    Options,
    Row,
    Scenario,
    Trial,
    Verdict,
    find,
    median,
    progress,
    psycopg_pool,
    queue_engine,
    smart_engine,
    with_driver,
)

SMART = "SmartPool[psycopg2]"
SMART_NOSTATS = "SmartPool[psycopg2] track_wait_times=False"
SMART_NOSOCK = "SmartPool[psycopg2] check_socket=False"
#: nothing measured: no wait ring, no timing histograms, no holder sampling
SMART_OFF = "SmartPool[psycopg2] measurement off"
SMART_NOSAMPLE = "SmartPool[psycopg2] holder_sample_every=0"
SMART_SAMPLE_ALL = "SmartPool[psycopg2] holder_sample_every=1"
#: the defaults with StatsD, Prometheus and OpenTelemetry exporters attached
SMART_EXPORT = "SmartPool[psycopg2] + StatsD, Prometheus, OTel"
PROM = "PrometheusCollector"
OTEL = "OpenTelemetryMetrics"
STATSD = "StatsdMetrics"
SCRAPE = "one scrape (generate_latest)"
COLLECT = "one collection after 1,000 checkouts"
PUSH = "one push (flush)"
METRICS_GOAL = 0.05
QUEUE = "QueuePool[psycopg2]"
PSYCOPG = "psycopg_pool[psycopg]"
RAW = "checkout+checkin"
CTX = "context manager"
#: the pool subclass's own share: _do_get + _do_return_conn called directly (no fairy, no reset)
OWN = "pool's own part"
GOAL = 0.9

Loop = Callable[[int], float]


def _timed(body: Callable[[], None]) -> Loop:
    def loop(n: int) -> float:
        gc.disable()  # as timeit does: a collection landing in one block is noise
        try:
            t0 = time.perf_counter()
            for _ in range(n):
                body()
            return time.perf_counter() - t0
        finally:
            gc.enable()

    return loop


def _sa_loops(engine: Any) -> dict[str, Loop]:
    pool = engine.pool

    def raw() -> None:
        pool.connect().close()

    def ctx() -> None:
        with engine.connect():
            pass

    def own() -> None:
        pool._do_return_conn(pool._do_get())

    return {RAW: _timed(raw), CTX: _timed(ctx), OWN: _timed(own)}


def _pg_loops(pool: Any) -> dict[str, Loop]:
    def raw() -> None:
        pool.putconn(pool.getconn())

    def ctx() -> None:
        with pool.connection():
            pass

    return {RAW: _timed(raw), CTX: _timed(ctx)}


class _Exporters:
    """StatsD (to a UDP socket of our own), Prometheus (a private registry) and OpenTelemetry
    (an SDK with an in-memory reader) attached to one engine, as a service would."""

    def __init__(self, engine: Any) -> None:
        import socket

        from prometheus_client import CollectorRegistry

        from ..metrics import PrometheusCollector, StatsdMetrics

        self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sink.bind(("127.0.0.1", 0))
        self.sink.setblocking(False)
        self.registry = CollectorRegistry()
        self.prom = PrometheusCollector(engine, registry=self.registry)
        self.statsd = StatsdMetrics(engine, port=self.sink.getsockname()[1], gauge_interval=1.0)
        self.otel: Any = None
        self.reader: Any = None
        try:
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import InMemoryMetricReader

            from ..metrics import OpenTelemetryMetrics
        except ImportError:  # the otel extra and opentelemetry-sdk are not installed
            return
        self.reader = InMemoryMetricReader()
        self.otel = OpenTelemetryMetrics(engine, meter_provider=MeterProvider(metric_readers=[self.reader]))

    def drain(self) -> None:
        try:
            while self.sink.recv(65536):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.statsd.close()
        self.prom.unregister()
        if self.otel is not None:
            self.otel.close()
        self.drain()
        self.sink.close()


def _collection_rows(engine: Any, exp: _Exporters, repeats: int) -> list[Row]:
    """What a scrape, an OpenTelemetry collection and a StatsD push cost (us each)."""
    from prometheus_client import generate_latest

    pool = engine.pool
    out: list[tuple[str, str, list[float]]] = [(PROM, SCRAPE, []), (STATSD, PUSH, [])]
    if exp.reader is not None:
        out.append((OTEL, COLLECT, []))
    for _ in range(repeats):
        t0 = time.perf_counter()
        generate_latest(exp.registry)
        out[0][2].append((time.perf_counter() - t0) * 1e6)
        t0 = time.perf_counter()
        exp.statsd.flush()
        out[1][2].append((time.perf_counter() - t0) * 1e6)
        exp.drain()
        if exp.reader is not None:
            for _ in range(1000):  # new durations for the histograms to take in
                pool.connect().close()
            t0 = time.perf_counter()
            exp.reader.get_metrics_data()
            out[2][2].append((time.perf_counter() - t0) * 1e6)
    return [
        {
            "impl": impl,
            "op": op,
            "us_per_op": median(xs),
            "us_min": min(xs),
            "ops_per_s": 1e6 / median(xs),
            "x_queuepool": math.nan,
            "x_psycopg_pool": math.nan,
        }
        for impl, op, xs in out
    ]


def trial(opts: Options) -> Trial:
    iters = 500 if opts.quick else 1000
    rounds = 3 if opts.quick else 60
    smart = smart_engine(opts.url)
    smart_nostats = smart_engine(opts.url, track_wait_times=False)
    smart_nosock = smart_engine(opts.url, check_socket=False)
    smart_off = smart_engine(opts.url, track_wait_times=False, holder_sample_every=0)
    smart_nosample = smart_engine(opts.url, holder_sample_every=0)
    smart_sample_all = smart_engine(opts.url, holder_sample_every=1)
    smart_export = smart_engine(opts.url)
    exporters = _Exporters(smart_export)
    smarts = (smart, smart_nostats, smart_nosock, smart_off, smart_nosample, smart_sample_all, smart_export)
    queue = queue_engine(opts.url)
    pg = psycopg_pool(with_driver(opts.url, "psycopg"), min_size=5)
    try:
        for e in smarts:
            e.pool.wait()
        for e in (*smarts, queue):
            with e.connect():
                pass
        impls: dict[str, dict[str, Loop]] = {
            SMART: _sa_loops(smart),
            SMART_NOSTATS: _sa_loops(smart_nostats),
            SMART_NOSOCK: _sa_loops(smart_nosock),
            SMART_OFF: _sa_loops(smart_off),
            SMART_NOSAMPLE: _sa_loops(smart_nosample),
            SMART_SAMPLE_ALL: _sa_loops(smart_sample_all),
            SMART_EXPORT: _sa_loops(smart_export),
            QUEUE: _sa_loops(queue),
            PSYCOPG: _pg_loops(pg),
        }
        cells = [(impl, op) for op in (RAW, CTX, OWN) for impl in impls if op in impls[impl]]
        for impl, op in cells:  # warm up: caches, code paths, CPU frequency
            impls[impl][op](iters // 4)
        samples: dict[tuple[str, str], list[float]] = {c: [] for c in cells}
        for r in range(rounds):
            k = r % len(cells)
            gc.collect()
            for impl, op in cells[k:] + cells[:k]:
                samples[(impl, op)].append(impls[impl][op](iters) / iters * 1e6)
            if (r + 1) % 10 == 0:
                progress(f"overhead: round {r + 1}/{rounds}")
            exporters.drain()
        rows: list[Row] = []
        for impl, op in cells:
            xs = samples[(impl, op)]
            q = samples[(QUEUE, op)]
            p = samples.get((PSYCOPG, op), [math.nan] * len(xs))
            rows.append(
                {
                    "impl": impl,
                    "op": op,
                    "us_per_op": median(xs),
                    "us_min": min(xs),
                    "ops_per_s": 1e6 / median(xs),
                    "x_queuepool": median(a / b for a, b in zip(xs, q, strict=True)),
                    "x_psycopg_pool": median(a / b for a, b in zip(xs, p, strict=True)),
                }
            )
            if impl != SMART_OFF and impl.startswith("SmartPool"):
                off = samples[(SMART_OFF, op)]
                rows[-1]["x_measurement_off"] = median(a / b for a, b in zip(xs, off, strict=True))
        rows.extend(_collection_rows(smart_export, exporters, 3 if opts.quick else 20))
        notes = [
            f"{rounds} rounds x {iters} iterations per cell, order rotated each round; "
            "x_* = median of per-round ratios (same round, back to back)",
            "SmartPool: default settings (stats on, validate_on_checkout=True with 0.5 s bypass window); "
            "QueuePool: create_engine() defaults; psycopg_pool: min_size=5",
            f"op {RAW!r}: pool.connect().close() (psycopg_pool: putconn(getconn())); "
            f"op {CTX!r}: `with engine.connect(): pass` (psycopg_pool: `with pool.connection(): pass`); "
            f"op {OWN!r}: pool._do_return_conn(pool._do_get()), the subclass's share of {RAW!r}",
            f"{SMART_OFF!r}: track_wait_times=False, holder_sample_every=0 (no wait ring, no "
            f"histograms, no sampling); {SMART_EXPORT!r}: the defaults with the three exporters "
            "attached (StatsD pushing every 1 s to a local UDP socket, a Prometheus collector, "
            "OpenTelemetry with an in-memory reader); x_measurement_off = ratio to the 'off' row",
            f"{PROM}/{OTEL}/{STATSD} rows: us per scrape / collection (after 1,000 new checkouts: "
            "the histogram replay) / push, on the exporters' engine, not on the request path",
        ]
        return Trial(rows, notes=notes)
    finally:
        exporters.close()
        for e in (*smarts, queue):
            e.dispose()
        pg.close()


def judge(rows: list[Row]) -> Verdict:
    ratios: dict[str, float] = {}
    goals: list[Goal] = []
    for op in (RAW, CTX):
        s = find(rows, impl=SMART, op=op)
        ratios[f"{op}: SmartPool / QueuePool"] = s["x_queuepool"]
        ratios[f"{op}: SmartPool / psycopg_pool"] = s["x_psycopg_pool"]
        goals.append(
            Goal(
                name=f"overhead {op}: SmartPool <= {GOAL}x QueuePool",
                target=f"<= {GOAL:.2f}x",
                measured=f"{s['x_queuepool']:.3f}x ({s['us_per_op']:.2f} us vs "
                f"{find(rows, impl=QUEUE, op=op)['us_per_op']:.2f} us)",
                met=s["x_queuepool"] <= GOAL,
            )
        )
    s_raw, s_own = find(rows, impl=SMART, op=RAW)["us_per_op"], find(rows, impl=SMART, op=OWN)["us_per_op"]
    q_raw, q_own = find(rows, impl=QUEUE, op=RAW)["us_per_op"], find(rows, impl=QUEUE, op=OWN)["us_per_op"]
    for op in (RAW, CTX):
        on = find(rows, impl=SMART_EXPORT, op=op)
        goals.append(
            Goal(
                name=f"overhead {op}: metrics on (defaults + exporters) vs off <= +{METRICS_GOAL:.0%}",
                target=f"<= {1 + METRICS_GOAL:.2f}x",
                measured=f"{on['x_measurement_off']:.3f}x ({on['us_per_op']:.2f} us vs "
                f"{find(rows, impl=SMART_OFF, op=op)['us_per_op']:.2f} us)",
                met=on["x_measurement_off"] <= 1 + METRICS_GOAL,
            )
        )
        ratios[f"{op}: holder sampling 1/64 vs off"] = find(rows, impl=SMART, op=op)["us_per_op"] / find(
            rows, impl=SMART_NOSAMPLE, op=op
        )["us_per_op"]
    shared = s_raw - s_own
    ratios[f"{RAW}: floor with a zero-cost pool (SQLAlchemy's shared part / QueuePool)"] = shared / q_raw
    notes = [
        f"{RAW}: {shared:.2f} us of SmartPool's {s_raw:.2f} us is SQLAlchemy's record/fairy/reset "
        f"work shared by every Pool subclass (QueuePool: {q_raw - q_own:.2f} of {q_raw:.2f} us); "
        f"the pools' own parts are {s_own:.2f} us (SmartPool) vs {q_own:.2f} us (QueuePool). "
        f"{GOAL}x QueuePool needs SmartPool's own part <= {GOAL * q_raw - shared:.2f} us."
    ]
    return Verdict(ratios, goals, notes)


SCENARIO = Scenario(
    name="overhead",
    title="checkout+checkin of an idle connection (us per op)",
    trial=trial,
    judge=judge,
)

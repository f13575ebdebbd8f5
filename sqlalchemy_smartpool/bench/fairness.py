"""fairness: 30 threads share 10 connections, each request holds one for ``pg_sleep(0.002)``.

Per implementation: all threads start at a barrier and loop for a fixed time;
a request counts if it started before the deadline. Reported: Jain's
fairness index over per-thread completions (1.0 = perfectly even), the wait
for a connection (p50 / p99 / p99.9 / max), throughput, and starved threads
(fewer than half the mean completions). Both SQLAlchemy pools are used the
way psycopg_pool is: check out, run the statement, COMMIT, return. (Committing
matters with psycopg 3: SQLAlchemy's rollback-on-return of an open
transaction would clear psycopg's prepared-statement cache on every request,
a driver cost psycopg_pool's commit does not pay; after a COMMIT the reset is
a no-op for every pool.)
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .harness import (
    Goal,
    Options,
    Row,
    Scenario,
    Trial,
    Verdict,
    find,
    jain_index,
    median,
    percentile,
    progress,
    psycopg_pool,
    queue_engine,
    smart_engine,
    wait_for_headroom,
    with_driver,
)

THREADS = 30
CONNECTIONS = 10
SQL = "select pg_sleep(0.002)"
QUEUE = "QueuePool[psycopg2]"
SMART2 = "SmartPool[psycopg2]"
PSYCOPG = "psycopg_pool[psycopg]"
SMART3 = "SmartPool[psycopg]"
#: bounded barging (PoolConfig.barge_window; default 0 = strict FIFO) beside the default; not judged
BARGE_WINDOWS = (0.001, 0.005)


def _barge(window: float) -> str:
    return f"SmartPool[psycopg2] barge_window={window * 1000:g}ms"


QUEUE3 = "QueuePool[psycopg] (reference)"
JAIN_GOAL = 0.99
SEGMENTS = 5
SEGMENT = 1.0

_trials = itertools.count()

Request = Callable[[], float]  # runs one request, returns the wait for the connection (s)


def _sa_request(engine: Any) -> Request:
    connect = engine.pool.connect
    clock = time.perf_counter

    def request() -> float:
        t0 = clock()
        conn = connect()
        waited = clock() - t0
        try:
            cur = conn.cursor()
            cur.execute(SQL)
            cur.fetchall()
            cur.close()
            conn.commit()
        finally:
            conn.close()
        return waited

    return request


def _pg_request(pool: Any) -> Request:
    getconn, putconn = pool.getconn, pool.putconn
    clock = time.perf_counter

    def request() -> float:
        t0 = clock()
        conn = getconn()
        waited = clock() - t0
        try:
            with conn:  # what pool.connection() does: commit on exit
                conn.execute(SQL).fetchall()
        finally:
            putconn(conn)
        return waited

    return request


def _drive(request: Request, duration: float) -> dict[str, Any]:
    counts = [0] * THREADS
    waits: list[list[float]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []
    marks: dict[str, float] = {}

    def started() -> None:
        marks["cpu"] = time.process_time()
        marks["start"] = time.perf_counter()

    barrier = threading.Barrier(THREADS, action=started)

    def worker(i: int) -> None:
        mine = waits[i]
        barrier.wait()
        deadline = marks["start"] + duration
        n = 0
        try:
            while time.perf_counter() < deadline:
                mine.append(request())
                n += 1
        except BaseException as err:  # reported, never silently lost
            errors.append(err)
        counts[i] = n

    threads = [threading.Thread(target=worker, args=(i,), name=f"bench-fair-{i}") for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - marks["start"]
    cpu = time.process_time() - marks["cpu"]
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed; first: {errors[0]!r}")
    return {"counts": counts, "waits": sorted(w for ws in waits for w in ws), "elapsed": elapsed, "cpu": cpu}


def _row(impl: str, runs: list[dict[str, Any]]) -> Row:
    """Fairness per segment (median; starved: worst); waits and throughput over all segments."""
    waits = sorted(w for r in runs for w in r["waits"])
    total = sum(sum(r["counts"]) for r in runs)
    elapsed = sum(r["elapsed"] for r in runs)
    return {
        "impl": impl,
        "jain": median(jain_index(r["counts"]) for r in runs),
        "req_per_s": total / elapsed,
        "cpu_us_per_req": sum(r["cpu"] for r in runs) / total * 1e6,
        "wait_p50_ms": percentile(waits, 50) * 1e3,
        "wait_p99_ms": percentile(waits, 99) * 1e3,
        "wait_p999_ms": percentile(waits, 99.9) * 1e3,
        "wait_max_ms": waits[-1] * 1e3,
        "min_per_thread": median(min(r["counts"]) for r in runs),
        "max_per_thread": median(max(r["counts"]) for r in runs),
        "starved": max(sum(1 for c in r["counts"] if c < 0.5 * sum(r["counts"]) / THREADS) for r in runs),
    }


def trial(opts: Options) -> Trial:
    segments, seconds = (1, 1.0) if opts.quick else (SEGMENTS, SEGMENT)
    url3 = with_driver(opts.url, "psycopg")
    opened: list[tuple[str, Request, Callable[[], None]]] = []

    def sa(impl: str, engine: Any) -> None:
        if hasattr(engine.pool, "wait"):
            engine.pool.wait()
        else:  # open QueuePool's 10 connections up front too
            held = [engine.pool.connect() for _ in range(CONNECTIONS)]
            for c in held:
                c.close()
        opened.append((impl, _sa_request(engine), engine.dispose))

    # all pools stay open for the trial (5 x 10 backends), so the segments can interleave
    wait_for_headroom(opts.url, (5 + len(BARGE_WINDOWS)) * CONNECTIONS + 5)
    try:
        sa(QUEUE, queue_engine(opts.url, pool_size=CONNECTIONS, max_overflow=0))
        sa(SMART2, smart_engine(opts.url, min_size=CONNECTIONS, max_size=CONNECTIONS))
        for window in BARGE_WINDOWS:
            sa(
                _barge(window),
                smart_engine(opts.url, min_size=CONNECTIONS, max_size=CONNECTIONS, barge_window=window),
            )
        pg = psycopg_pool(url3, min_size=CONNECTIONS, max_size=CONNECTIONS)
        opened.append((PSYCOPG, _pg_request(pg), pg.close))
        sa(SMART3, smart_engine(url3, min_size=CONNECTIONS, max_size=CONNECTIONS))
        # not an anchor: separates what the psycopg 3 driver + SQLAlchemy dialect cost from the pool
        sa(QUEUE3, queue_engine(url3, pool_size=CONNECTIONS, max_overflow=0))
        runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl, _, _ in opened}
        for seg in range(segments):
            # rotate the order every segment so drift of a shared machine spreads evenly
            k = (seg + next(_trials)) % len(opened)
            for impl, request, _ in opened[k:] + opened[:k]:
                progress(f"fairness: {impl}, segment {seg + 1}/{segments} ({seconds:g}s)")
                runs[impl].append(_drive(request, seconds))
    finally:
        for _, _, close in opened:
            close()
    rows = [_row(impl, rs) for impl, rs in runs.items()]
    notes = [
        f"{THREADS} threads, {CONNECTIONS} connections, {segments} x {seconds:g} s per implementation "
        f"(segments interleaved across implementations, order rotated), request = checkout, `{SQL}`, "
        "COMMIT, return",
        "jain, min/max_per_thread: per segment (fresh threads each segment), median over segments; "
        "starved = most threads with < 50% of the segment's mean completions; waits and req/s over all "
        "segments; cpu_us_per_req = CPU time of the whole process per completed request",
    ]
    series = {
        impl: {
            "counts": rs[-1]["counts"],
            "waits": sorted(w for r in rs for w in r["waits"]),
            "seconds": seconds,
        }
        for impl, rs in runs.items()
    }
    return Trial(rows, series=series, notes=notes)


def judge(rows: list[Row]) -> Verdict:
    q, p = find(rows, impl=QUEUE), find(rows, impl=PSYCOPG)
    best = max(q["req_per_s"], p["req_per_s"])
    ratios: dict[str, float] = {}
    goals: list[Goal] = []
    for window in BARGE_WINDOWS:
        name, b = _barge(window), find(rows, impl=_barge(window))
        ratios[f"{name} req/s / {QUEUE} req/s"] = b["req_per_s"] / q["req_per_s"]
        ratios[f"{name} wait p99.9 / psycopg_pool wait p99.9"] = b["wait_p999_ms"] / p["wait_p999_ms"]
        ratios[f"{name} Jain"] = b["jain"]
    for impl, same in ((SMART2, q), (SMART3, p)):
        s = find(rows, impl=impl)
        ratios[f"{impl} req/s / {same['impl']} req/s"] = s["req_per_s"] / same["req_per_s"]
        ratios[f"{impl} req/s / best anchor req/s"] = s["req_per_s"] / best
        ratios[f"{impl} wait p99.9 / psycopg_pool wait p99.9"] = s["wait_p999_ms"] / p["wait_p999_ms"]
        jain = s["jain"]
        goals.append(
            Goal(f"{impl}: Jain >= {JAIN_GOAL}", f">= {JAIN_GOAL}", f"{jain:.4f}", jain >= JAIN_GOAL)
        )
        goals.append(
            Goal(
                f"{impl}: wait p99.9 no worse than psycopg_pool's",
                f"<= {p['wait_p999_ms']:.2f} ms",
                f"{s['wait_p999_ms']:.2f} ms",
                s["wait_p999_ms"] <= p["wait_p999_ms"],
            )
        )
        goals.append(
            Goal(
                f"{impl}: req/s >= better of QueuePool and psycopg_pool",
                f">= {best:.0f} req/s",
                f"{s['req_per_s']:.0f} req/s ({s['req_per_s'] / best:.3f}x)",
                s["req_per_s"] >= best,
            )
        )
    return Verdict(ratios, goals)


def plot(trial: Trial, directory: Path) -> list[Path]:
    from .plots import fairness_plot

    return [fairness_plot(trial.series, directory / "fairness.png")]


SCENARIO = Scenario(
    name="fairness",
    title=f"{THREADS} threads / {CONNECTIONS} connections, pg_sleep(2 ms) per request",
    trial=trial,
    judge=judge,
    plot=plot,
)

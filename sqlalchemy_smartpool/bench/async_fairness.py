"""async-fairness: 100 asyncio tasks share 10 connections, each request holds one for ``pg_sleep(0.02)``.

The load of asyncpg issue #1247 ("potential starvation with connection
pool"): many more tasks than connections, each looping check out / query /
return with no think time, a 30 s acquire timeout. A pool whose waiters can
be overtaken by the task that just returned a connection (a woken waiter of
an ``asyncio.Queue`` goes to the back of the line when the releaser takes
the connection first) starves some tasks while the pool keeps turning over.

Per implementation: all tasks start together and loop for a fixed time; a
request counts if it started before the deadline. Reported: acquire
timeouts, Jain's fairness index over per-task completions (1.0 = perfectly
even), the wait for a connection (p50 / p99 / p99.9 / max; a timed-out
acquire counts with the time it waited), throughput, and starved tasks
(fewer than half the mean completions). Every pool is used the same way:
check out, BEGIN, the statement, COMMIT, return. Both SQLAlchemy pools are
driven at pool level inside a greenlet, as AsyncEngine runs them, with the
asyncpg DBAPI adapter's cursor, so the comparison is of pools rather than of
AsyncConnection.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .harness import (
    Goal,
    Options,
    Row,
    Scenario,
    Trial,
    Verdict,
    async_queue_engine,
    async_smart_engine,
    asyncpg_pool,
    find,
    jain_index,
    median,
    percentile,
    progress,
    psycopg_async_pool,
    wait_for_headroom,
    warm_async,
    with_driver,
)

TASKS = 100
CONNECTIONS = 10
SQL = "select pg_sleep(0.02)"
TIMEOUT = 30.0
SMART = "AsyncSmartPool[asyncpg]"
QUEUE = "AsyncAdaptedQueuePool[asyncpg]"
ASYNCPG = "asyncpg.Pool"
PSYCOPG = "psycopg_pool.AsyncConnectionPool[psycopg]"
ANCHORS = (QUEUE, ASYNCPG, PSYCOPG)
JAIN_GOAL = 0.99
#: 10 s per implementation, in two interleaved halves: long enough for a starved task to show
SEGMENTS = 2
SEGMENT = 5.0
QUICK_SEGMENT = 2.0

_trials = itertools.count()

Request = Callable[[], Awaitable[float]]  # runs one request, returns the wait for the connection (s)


def _sa_request(engine: Any) -> Request:
    from sqlalchemy.util import greenlet_spawn

    connect = engine.sync_engine.pool.connect
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

    async def run() -> float:
        return await greenlet_spawn(request)

    return run


def _asyncpg_request(pool: Any) -> Request:
    clock = time.perf_counter

    async def request() -> float:
        t0 = clock()
        conn = await pool.acquire(timeout=TIMEOUT)
        waited = clock() - t0
        try:
            async with conn.transaction():
                await conn.fetch(SQL)
        finally:
            await pool.release(conn)
        return waited

    return request


def _psycopg_request(pool: Any) -> Request:
    clock = time.perf_counter

    async def request() -> float:
        t0 = clock()
        conn = await pool.getconn(timeout=TIMEOUT)
        waited = clock() - t0
        try:
            async with conn:  # what pool.connection() does: commit on exit
                await (await conn.execute(SQL)).fetchall()
        finally:
            await pool.putconn(conn)
        return waited

    return request


def _timeout_errors() -> tuple[type[BaseException], ...]:
    """What each pool raises when the acquire timeout passes."""
    from psycopg_pool import PoolTimeout
    from sqlalchemy.exc import TimeoutError as SATimeout  # QueuePool's, and SmartPool's PoolTimeout

    return (asyncio.TimeoutError, TimeoutError, SATimeout, PoolTimeout)


async def _drive(
    request: Request, duration: float, timeouts: tuple[type[BaseException], ...]
) -> dict[str, Any]:
    counts = [0] * TASKS
    waits: list[float] = []
    timed_out = [0]
    clock = time.perf_counter
    cpu = time.process_time()
    start = clock()
    deadline = start + duration

    async def worker(i: int) -> None:
        n = 0
        while clock() < deadline:
            t0 = clock()
            try:
                waits.append(await request())
                n += 1
            except timeouts:
                waits.append(clock() - t0)
                timed_out[0] += 1
        counts[i] = n

    results = await asyncio.gather(*(worker(i) for i in range(TASKS)), return_exceptions=True)
    elapsed = clock() - start
    cpu = time.process_time() - cpu
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise RuntimeError(f"{len(errors)} tasks failed; first: {errors[0]!r}")
    waits.sort()
    return {"counts": counts, "waits": waits, "timeouts": timed_out[0], "elapsed": elapsed, "cpu": cpu}


def _row(impl: str, runs: list[dict[str, Any]]) -> Row:
    """Fairness per segment (median; starved: worst); waits and throughput over all segments."""
    waits = sorted(w for r in runs for w in r["waits"])
    total = sum(sum(r["counts"]) for r in runs)
    elapsed = sum(r["elapsed"] for r in runs)
    return {
        "impl": impl,
        "timeouts": sum(r["timeouts"] for r in runs),
        "jain": median(jain_index(r["counts"]) for r in runs),
        "req_per_s": total / elapsed,
        "cpu_us_per_req": sum(r["cpu"] for r in runs) / total * 1e6,
        "wait_p50_ms": percentile(waits, 50) * 1e3,
        "wait_p99_ms": percentile(waits, 99) * 1e3,
        "wait_p999_ms": percentile(waits, 99.9) * 1e3,
        "wait_max_ms": waits[-1] * 1e3,
        "min_per_task": median(min(r["counts"]) for r in runs),
        "max_per_task": median(max(r["counts"]) for r in runs),
        "starved": max(sum(1 for c in r["counts"] if c < 0.5 * sum(r["counts"]) / TASKS) for r in runs),
    }


async def _trial(opts: Options, segments: int, seconds: float) -> dict[str, list[dict[str, Any]]]:
    url = with_driver(opts.url, "asyncpg")
    timeouts = _timeout_errors()
    opened: list[tuple[str, Request, Callable[[], Awaitable[None]]]] = []
    try:
        queue = async_queue_engine(url, pool_size=CONNECTIONS, max_overflow=0, pool_timeout=TIMEOUT)
        opened.append((QUEUE, _sa_request(queue), queue.dispose))
        smart = async_smart_engine(url, min_size=CONNECTIONS, max_size=CONNECTIONS, acquire_timeout=TIMEOUT)
        opened.append((SMART, _sa_request(smart), smart.dispose))
        for engine in (queue, smart):
            await warm_async(engine, CONNECTIONS)
        apg = await asyncpg_pool(url, min_size=CONNECTIONS, max_size=CONNECTIONS)
        opened.append((ASYNCPG, _asyncpg_request(apg), apg.close))
        pg = await psycopg_async_pool(
            with_driver(opts.url, "psycopg"),
            min_size=CONNECTIONS,
            max_size=CONNECTIONS,
            timeout=TIMEOUT,
        )
        opened.append((PSYCOPG, _psycopg_request(pg), pg.close))
        runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl, _, _ in opened}
        for seg in range(segments):
            # rotate the order every segment so drift of a shared machine spreads evenly
            k = (seg + next(_trials)) % len(opened)
            for impl, request, _ in opened[k:] + opened[:k]:
                progress(f"async-fairness: {impl}, segment {seg + 1}/{segments} ({seconds:g}s)")
                runs[impl].append(await _drive(request, seconds, timeouts))
        return runs
    finally:
        for _, _, close in opened:
            await close()


def trial(opts: Options) -> Trial:
    segments, seconds = (1, QUICK_SEGMENT) if opts.quick else (SEGMENTS, SEGMENT)
    # all pools stay open for the trial (4 x 10 backends), so the segments can interleave
    wait_for_headroom(opts.url, (len(ANCHORS) + 1) * CONNECTIONS + 5)
    runs = asyncio.run(_trial(opts, segments, seconds))
    rows = [_row(impl, rs) for impl, rs in runs.items()]
    notes = [
        f"{TASKS} asyncio tasks, {CONNECTIONS} connections, acquire timeout {TIMEOUT:g} s, "
        f"{segments} x {seconds:g} s per implementation (segments interleaved across implementations, "
        f"order rotated), request = checkout, BEGIN, `{SQL}`, COMMIT, return",
        "jain, min/max_per_task: per segment (fresh tasks each segment), median over segments; "
        "starved = most tasks with < 50% of the segment's mean completions; timeouts, waits and req/s "
        "over all segments; cpu_us_per_req = CPU time of the whole process per completed request",
        f"a segment is shorter than the {TIMEOUT:g} s timeout, so a timeout needs one acquire "
        "to wait that long (the last requests may run past the deadline); wait_max shows how close any came",
        "AsyncSmartPool / AsyncAdaptedQueuePool: engine.sync_engine.pool.connect() + DBAPI cursor in a "
        "greenlet; asyncpg.Pool: acquire(), conn.transaction(), fetch(), release() (release runs asyncpg's "
        "reset query); AsyncConnectionPool: getconn(), `async with conn`, execute(), putconn()",
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
    s = find(rows, impl=SMART)
    anchors = [find(rows, impl=a) for a in ANCHORS]
    best_rps = max(anchors, key=lambda r: r["req_per_s"])
    best_p999 = min(anchors, key=lambda r: r["wait_p999_ms"])
    ratios: dict[str, float] = {}
    for a in anchors:
        ratios[f"AsyncSmartPool req/s / {a['impl']} req/s"] = s["req_per_s"] / a["req_per_s"]
        ratios[f"AsyncSmartPool wait p99.9 / {a['impl']} wait p99.9"] = s["wait_p999_ms"] / a["wait_p999_ms"]
        ratios[f"AsyncSmartPool wait max / {a['impl']} wait max"] = s["wait_max_ms"] / a["wait_max_ms"]
    goals = [
        Goal(
            "async-fairness: AsyncSmartPool has no acquire timeouts",
            "0",
            f"{s['timeouts']:g}",
            s["timeouts"] == 0,
        ),
        Goal(
            f"async-fairness: AsyncSmartPool Jain >= {JAIN_GOAL}",
            f">= {JAIN_GOAL}",
            f"{s['jain']:.4f}",
            s["jain"] >= JAIN_GOAL,
        ),
        Goal(
            "async-fairness: AsyncSmartPool wait p99.9 no worse than the best anchor's",
            f"<= {best_p999['wait_p999_ms']:.2f} ms ({best_p999['impl']})",
            f"{s['wait_p999_ms']:.2f} ms",
            s["wait_p999_ms"] <= best_p999["wait_p999_ms"],
        ),
        Goal(
            "async-fairness: AsyncSmartPool req/s >= the best anchor's",
            f">= {best_rps['req_per_s']:.0f} req/s ({best_rps['impl']})",
            f"{s['req_per_s']:.0f} req/s ({s['req_per_s'] / best_rps['req_per_s']:.3f}x)",
            s["req_per_s"] >= best_rps["req_per_s"],
        ),
    ]
    return Verdict(ratios, goals)


def plot(trial: Trial, directory: Path) -> list[Path]:
    from .plots import fairness_plot

    return [fairness_plot(trial.series, directory / "async-fairness.png", unit="task")]


SCENARIO = Scenario(
    name="async-fairness",
    title=f"asyncio: {TASKS} tasks / {CONNECTIONS} connections, pg_sleep(20 ms) per request",
    trial=trial,
    judge=judge,
    plot=plot,
)

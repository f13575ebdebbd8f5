"""redis-fairness: many callers share 10 redis connections, each request holds one about 2 ms.

Two parts, each judged on its own:

* sync: 30 threads, SmartRedisPool against ``redis.BlockingConnectionPool``;
* asyncio: 100 tasks, AsyncSmartRedisPool against ``redis.asyncio.BlockingConnectionPool``.

A request: ``get_connection()`` (timed: the wait), a 3-command pipeline on the
caller's own keys (SET, INCR, GET, sent in one write and read back, as
redis-py's ``Pipeline`` does), then ``time.sleep(0.002)`` / ``asyncio.sleep(0.002)``
still holding the connection, then ``release()``. Every pool has 10 connections,
open before the clock starts, and a 30 s acquire timeout.

Per implementation: all callers start together and loop for a fixed time; a
request counts if it started before the deadline. Reported: acquire timeouts,
Jain's fairness index over per-caller completions (1.0 = perfectly even), the
wait for a connection (p50 / p99 / p99.9 / max), throughput, and starved
callers (fewer than half the mean completions). Segments of the two
implementations of a part are interleaved, order rotated.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .harness import (
    APP_NAME,
    Goal,
    Options,
    Row,
    Scenario,
    Trial,
    Verdict,
    delete_redis_keys,
    find,
    jain_index,
    median,
    percentile,
    progress,
    redis_key_prefix,
)

THREADS = 30
TASKS = 100
CONNECTIONS = 10
HOLD = 0.002
TIMEOUT = 30.0
SYNC = f"sync, {THREADS} threads"
ASYNC = f"asyncio, {TASKS} tasks"
SMART = "SmartRedisPool"
BCP = "redis.BlockingConnectionPool"
ASMART = "AsyncSmartRedisPool"
ABCP = "redis.asyncio.BlockingConnectionPool"
#: (part, SmartPool implementation, its anchor)
PARTS = ((SYNC, SMART, BCP), (ASYNC, ASMART, ABCP))
JAIN_GOAL = 0.99
SEGMENTS = 4
SEGMENT = 1.5
QUICK_SEGMENT = 0.75

_trials = itertools.count()


def _commands(prefix: str, i: int) -> list[tuple[str, ...]]:
    key = f"{prefix}{i}"
    return [("SET", key, "x" * 16), ("INCR", f"{key}:n"), ("GET", key)]


def _timeout_errors() -> tuple[type[BaseException], ...]:
    """What each pool raises when the acquire timeout passes (both are redis.ConnectionError)."""
    from ..redis_errors import RedisPoolTimeout

    return (RedisPoolTimeout, TimeoutError)


def _is_timeout(err: BaseException) -> bool:
    import redis

    # redis-py's BlockingConnectionPool: ConnectionError("No connection available.")
    return isinstance(err, _timeout_errors()) or (
        isinstance(err, redis.ConnectionError) and "No connection available" in str(err)
    )


# ------------------------------------------------------------------ sync part


SyncRequest = Callable[[], float]


def _sync_request(pool: Any, commands: list[tuple[str, ...]]) -> SyncRequest:
    get, release = pool.get_connection, pool.release
    clock, sleep = time.perf_counter, time.sleep

    def request() -> float:
        t0 = clock()
        conn = get()
        waited = clock() - t0
        try:
            conn.send_packed_command(conn.pack_commands(commands))
            for _ in commands:
                conn.read_response()
            sleep(HOLD)
        finally:
            release(conn)
        return waited

    return request


def _drive_threads(pool: Any, prefix: str, duration: float) -> dict[str, Any]:
    counts = [0] * THREADS
    waits: list[list[float]] = [[] for _ in range(THREADS)]
    timed_out = [0] * THREADS
    errors: list[BaseException] = []
    marks: dict[str, float] = {}

    def started() -> None:
        marks["cpu"] = time.process_time()
        marks["start"] = time.perf_counter()

    barrier = threading.Barrier(THREADS, action=started)

    def worker(i: int) -> None:
        request = _sync_request(pool, _commands(prefix, i))
        mine = waits[i]
        barrier.wait()
        deadline = marks["start"] + duration
        n = 0
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    mine.append(request())
                    n += 1
                except Exception as err:
                    if not _is_timeout(err):
                        raise
                    mine.append(time.perf_counter() - t0)
                    timed_out[i] += 1
        except BaseException as err:  # reported, never silently lost
            errors.append(err)
        counts[i] = n

    threads = [
        threading.Thread(target=worker, args=(i,), name=f"bench-redis-fair-{i}") for i in range(THREADS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - marks["start"]
    cpu = time.process_time() - marks["cpu"]
    if errors:
        raise RuntimeError(f"{len(errors)} threads failed; first: {errors[0]!r}")
    return {
        "counts": counts,
        "waits": sorted(w for ws in waits for w in ws),
        "timeouts": sum(timed_out),
        "elapsed": elapsed,
        "cpu": cpu,
    }


def _sync_part(opts: Options, prefix: str, segments: int, seconds: float) -> dict[str, list[dict[str, Any]]]:
    import redis

    from ..redis_pool import SmartRedisPool

    kw: dict[str, Any] = {"client_name": APP_NAME}
    pools: list[tuple[str, Any]] = []
    try:
        smart: Any = SmartRedisPool.from_url(
            opts.redis_url, min_size=CONNECTIONS, max_size=CONNECTIONS, acquire_timeout=TIMEOUT, **kw
        )
        pools.append((SMART, smart))
        smart.wait()
        bcp: Any = redis.BlockingConnectionPool.from_url(
            opts.redis_url, max_connections=CONNECTIONS, timeout=TIMEOUT, **kw
        )
        pools.append((BCP, bcp))
        held = [bcp.get_connection() for _ in range(CONNECTIONS)]  # open its 10 up front too
        for c in held:
            bcp.release(c)
        runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl, _ in pools}
        for seg in range(segments):
            k = (seg + next(_trials)) % len(pools)
            for impl, pool in pools[k:] + pools[:k]:
                progress(f"redis-fairness: {impl}, segment {seg + 1}/{segments} ({seconds:g}s)")
                runs[impl].append(_drive_threads(pool, f"{prefix}{impl}:", seconds))
        return runs
    finally:
        for impl, pool in pools:
            if impl == SMART:
                pool.close()
            else:
                pool.disconnect()


# ------------------------------------------------------------------ asyncio part


AsyncRequest = Callable[[], Awaitable[float]]


def _async_request(pool: Any, commands: list[tuple[str, ...]]) -> AsyncRequest:
    get, release = pool.get_connection, pool.release
    clock, sleep = time.perf_counter, asyncio.sleep

    async def request() -> float:
        t0 = clock()
        conn = await get()
        waited = clock() - t0
        try:
            await conn.send_packed_command(conn.pack_commands(commands))
            for _ in commands:
                await conn.read_response()
            await sleep(HOLD)
        finally:
            await release(conn)
        return waited

    return request


async def _drive_tasks(pool: Any, prefix: str, duration: float) -> dict[str, Any]:
    counts = [0] * TASKS
    waits: list[float] = []
    timed_out = [0]
    clock = time.perf_counter
    cpu = time.process_time()
    start = clock()
    deadline = start + duration

    async def worker(i: int) -> None:
        request = _async_request(pool, _commands(prefix, i))
        n = 0
        while clock() < deadline:
            t0 = clock()
            try:
                waits.append(await request())
                n += 1
            except Exception as err:
                if not _is_timeout(err):
                    raise
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


async def _async_part(
    opts: Options, prefix: str, segments: int, seconds: float
) -> dict[str, list[dict[str, Any]]]:
    import redis.asyncio as aredis

    from ..redis_pool import AsyncSmartRedisPool

    kw: dict[str, Any] = {"client_name": APP_NAME}
    pools: list[tuple[str, Any]] = []
    try:
        smart: Any = AsyncSmartRedisPool.from_url(
            opts.redis_url, min_size=CONNECTIONS, max_size=CONNECTIONS, acquire_timeout=TIMEOUT, **kw
        )
        pools.append((ASMART, smart))
        await smart.wait()
        bcp: Any = aredis.BlockingConnectionPool.from_url(
            opts.redis_url, max_connections=CONNECTIONS, timeout=TIMEOUT, **kw
        )
        pools.append((ABCP, bcp))
        held = await asyncio.gather(*(bcp.get_connection() for _ in range(CONNECTIONS)))
        for c in held:
            await bcp.release(c)
        runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl, _ in pools}
        for seg in range(segments):
            k = (seg + next(_trials)) % len(pools)
            for impl, pool in pools[k:] + pools[:k]:
                progress(f"redis-fairness: {impl}, segment {seg + 1}/{segments} ({seconds:g}s)")
                runs[impl].append(await _drive_tasks(pool, f"{prefix}{impl}:", seconds))
        return runs
    finally:
        for impl, pool in pools:
            await (pool.aclose() if impl == ASMART else pool.disconnect())


# ------------------------------------------------------------------ the trial


def _row(part: str, impl: str, callers: int, runs: list[dict[str, Any]]) -> Row:
    """Fairness per segment (median; starved: worst); waits and throughput over all segments."""
    waits = sorted(w for r in runs for w in r["waits"])
    total = sum(sum(r["counts"]) for r in runs)
    elapsed = sum(r["elapsed"] for r in runs)
    return {
        "part": part,
        "impl": impl,
        "timeouts": sum(r["timeouts"] for r in runs),
        "jain": median(jain_index(r["counts"]) for r in runs),
        "ops_per_s": total / elapsed,
        "cpu_us_per_op": sum(r["cpu"] for r in runs) / total * 1e6,
        "wait_p50_ms": percentile(waits, 50) * 1e3,
        "wait_p99_ms": percentile(waits, 99) * 1e3,
        "wait_p999_ms": percentile(waits, 99.9) * 1e3,
        "wait_max_ms": waits[-1] * 1e3,
        "min_per_caller": median(min(r["counts"]) for r in runs),
        "max_per_caller": median(max(r["counts"]) for r in runs),
        "starved": max(sum(1 for c in r["counts"] if c < 0.5 * sum(r["counts"]) / callers) for r in runs),
    }


def trial(opts: Options) -> Trial:
    segments, seconds = (1, QUICK_SEGMENT) if opts.quick else (SEGMENTS, SEGMENT)
    prefix = redis_key_prefix("redis-fairness")
    try:
        sync_runs = _sync_part(opts, prefix, segments, seconds)
        async_runs = asyncio.run(_async_part(opts, prefix, segments, seconds))
    finally:
        delete_redis_keys(opts.redis_url, prefix)
    rows = [_row(SYNC, impl, THREADS, rs) for impl, rs in sync_runs.items()]
    rows += [_row(ASYNC, impl, TASKS, rs) for impl, rs in async_runs.items()]
    notes = [
        f"{CONNECTIONS} connections per pool (SmartRedisPool min_size=max_size={CONNECTIONS}; "
        f"BlockingConnectionPool max_connections={CONNECTIONS}, all opened before the clock starts), "
        f"acquire timeout {TIMEOUT:g} s; {segments} x {seconds:g} s per implementation (segments "
        "interleaved with the other implementation of the same part, order rotated); the sync part "
        "runs first, then the asyncio part",
        f"request = get_connection(), SET/INCR/GET on the caller's own keys in one write (a pipeline), "
        f"read the 3 replies, sleep {HOLD * 1e3:g} ms holding the connection, release(); keys under a "
        "per-run prefix, deleted at the end",
        "jain, min/max_per_caller: per segment (fresh callers each segment), median over segments; "
        "starved = most callers with < 50% of the segment's mean completions; timeouts, waits and ops/s "
        "over all segments; cpu_us_per_op = CPU time of the whole process per completed request",
    ]
    return Trial(rows, notes=notes)


def judge(rows: list[Row]) -> Verdict:
    ratios: dict[str, float] = {}
    goals: list[Goal] = []
    for part, impl, anchor in PARTS:
        s, a = find(rows, part=part, impl=impl), find(rows, part=part, impl=anchor)
        ratios[f"{part}: {impl} ops/s / {anchor} ops/s"] = s["ops_per_s"] / a["ops_per_s"]
        ratios[f"{part}: {impl} wait p99.9 / {anchor} wait p99.9"] = s["wait_p999_ms"] / a["wait_p999_ms"]
        ratios[f"{part}: {impl} wait max / {anchor} wait max"] = s["wait_max_ms"] / a["wait_max_ms"]
        goals += [
            Goal(
                f"redis-fairness {part}: {impl} Jain >= {JAIN_GOAL}",
                f">= {JAIN_GOAL}",
                f"{s['jain']:.4f} ({anchor}: {a['jain']:.4f})",
                s["jain"] >= JAIN_GOAL,
            ),
            Goal(
                f"redis-fairness {part}: {impl} wait p99.9 no worse than {anchor}'s",
                f"<= {a['wait_p999_ms']:.2f} ms",
                f"{s['wait_p999_ms']:.2f} ms",
                s["wait_p999_ms"] <= a["wait_p999_ms"],
            ),
            Goal(
                f"redis-fairness {part}: {impl} ops/s no worse than {anchor}'s",
                f">= {a['ops_per_s']:.0f} ops/s",
                f"{s['ops_per_s']:.0f} ops/s ({s['ops_per_s'] / a['ops_per_s']:.3f}x)",
                s["ops_per_s"] >= a["ops_per_s"],
            ),
        ]
    return Verdict(ratios, goals)


SCENARIO = Scenario(
    name="redis-fairness",
    title=f"redis: {THREADS} threads / {TASKS} asyncio tasks on {CONNECTIONS} connections, "
    f"~{HOLD * 1e3:g} ms held per request",
    trial=trial,
    judge=judge,
    needs_postgres=False,
    needs_redis=True,
)

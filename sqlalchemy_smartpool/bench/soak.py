"""soak: a million checkout cycles; does the pool's memory grow?

Measured with tracemalloc (every Python allocation, whatever allocated it):
traced memory after a warm-up and after ``CYCLES`` more checkout+checkin
cycles, both after a full garbage collection. Two thirds of the cycles run in
one thread (the uncontended fast path), one third in four threads sharing two
connections (waiters, handoffs, wake-ups). QueuePool runs the same load for
comparison. Goal (issue "Resilience"): growth < 1 MB.
"""

from __future__ import annotations

import gc
import threading
import time
import tracemalloc
from typing import Any

from .harness import Goal, Options, Row, Scenario, Trial, Verdict, find, progress, queue_engine, smart_engine

CYCLES = 1_000_000
QUICK_CYCLES = 100_000
THREADS = 4
CONNECTIONS = 2
GOAL_BYTES = 1_000_000
SMART = "SmartPool"
QUEUE = "QueuePool"


def _cycles(pool: Any, n: int) -> None:
    connect = pool.connect
    for _ in range(n):
        connect().close()


def _load(pool: Any, total: int) -> float:
    t0 = time.perf_counter()
    single = total * 2 // 3
    _cycles(pool, single)
    per_thread = (total - single) // THREADS
    threads = [threading.Thread(target=_cycles, args=(pool, per_thread)) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def _measure(impl: str, url: str, cycles: int) -> dict[str, float]:
    if impl == SMART:
        engine = smart_engine(url, min_size=CONNECTIONS, max_size=CONNECTIONS)
    else:
        engine = queue_engine(url, pool_size=CONNECTIONS, max_overflow=0)
    try:
        pool = engine.pool
        _load(pool, 20_000)  # warm-up: lazily built structures, driver caches
        gc.collect()
        tracemalloc.start()
        try:
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            seconds = _load(pool, cycles)
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        return {
            "cycles": cycles,
            "growth_bytes": after - before,
            "seconds_traced": seconds,
        }
    finally:
        engine.dispose()


def trial(opts: Options) -> Trial:
    cycles = QUICK_CYCLES if opts.quick else CYCLES
    rows: list[Row] = []
    for impl in (SMART, QUEUE):
        progress(f"soak: {impl}, {cycles:,} cycles under tracemalloc")
        rows.append({"impl": impl, **_measure(impl, opts.url, cycles)})
    notes = [
        f"{cycles:,} checkout+checkin cycles: 2/3 in one thread, 1/3 in {THREADS} threads sharing "
        f"{CONNECTIONS} connections; growth = tracemalloc traced memory after minus before, each after "
        "gc.collect(); tracemalloc slows the loop, so seconds_traced is not a speed figure",
    ]
    return Trial(rows, notes=notes)


def judge(rows: list[Row]) -> Verdict:
    s, q = find(rows, impl=SMART), find(rows, impl=QUEUE)
    goals = [
        Goal(
            f"soak: SmartPool memory growth over {s['cycles']:,.0f} cycles < 1 MB",
            "< 1,000,000 bytes",
            f"{s['growth_bytes']:,.0f} bytes (QueuePool: {q['growth_bytes']:,.0f} bytes)",
            s["growth_bytes"] < GOAL_BYTES,
        )
    ]
    return Verdict({}, goals)


SCENARIO = Scenario(
    name="soak",
    title="soak: memory growth over a million checkout cycles (tracemalloc)",
    trial=trial,
    judge=judge,
)

"""async-overhead: checkout + checkin of an idle connection from asyncio, no SQL.

The asyncio counterpart of ``overhead``: AsyncSmartPool against
SQLAlchemy's AsyncAdaptedQueuePool, both under the same async engine on
asyncpg, warm and of the same size, with ``asyncpg.Pool`` and psycopg's
``AsyncConnectionPool`` as references. Three operations:

* ``checkout+checkin``: ``pool.connect().close()`` on the engine's pool,
  looped inside one greenlet (the way AsyncEngine runs pool code), so the
  number is the pool's and SQLAlchemy's fairy, not the greenlet bridge's;
  references: ``release(acquire())`` and ``putconn(getconn())``;
* ``context manager``: ``async with engine.connect(): pass`` from the event
  loop, what an application pays (greenlet switches and AsyncConnection
  included); references: ``async with pool.acquire()`` / ``pool.connection()``;
* ``pool's own part``: ``_do_return_conn(_do_get())``, the Pool subclass's share.

Each round times a block of iterations for every cell back to back
(rotating the order); a row reports the median round, and the ratio columns
are medians of the per-round ratios.
"""

from __future__ import annotations

import asyncio
import gc
import math
import time
from collections.abc import Awaitable, Callable
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
    median,
    progress,
    psycopg_async_pool,
    warm_async,
    with_driver,
)

SMART = "AsyncSmartPool[asyncpg]"
QUEUE = "AsyncAdaptedQueuePool[asyncpg]"
ASYNCPG = "asyncpg.Pool (reference)"
PSYCOPG = "psycopg_pool.AsyncConnectionPool[psycopg] (reference)"
RAW = "checkout+checkin"
CTX = "context manager"
OWN = "pool's own part"
SIZE = 5
GOAL = 0.9

Loop = Callable[[int], Awaitable[float]]


def _timed(body: Callable[[], Awaitable[object]]) -> Loop:
    async def loop(n: int) -> float:
        gc.disable()  # as timeit does: a collection landing in one block is noise
        try:
            t0 = time.perf_counter()
            for _ in range(n):
                await body()
            return time.perf_counter() - t0
        finally:
            gc.enable()

    return loop


def _in_greenlet(body: Callable[[], object]) -> Loop:
    """A loop of ``n`` sync calls run inside one greenlet, where SQLAlchemy's pool code may await."""
    from sqlalchemy.util import greenlet_spawn

    def block(n: int) -> float:
        gc.disable()
        try:
            t0 = time.perf_counter()
            for _ in range(n):
                body()
            return time.perf_counter() - t0
        finally:
            gc.enable()

    async def loop(n: int) -> float:
        return await greenlet_spawn(block, n)

    return loop


def _sa_loops(engine: Any) -> dict[str, Loop]:
    pool = engine.sync_engine.pool

    def raw() -> None:
        pool.connect().close()

    async def ctx() -> None:
        async with engine.connect():
            pass

    def own() -> None:
        pool._do_return_conn(pool._do_get())

    return {RAW: _in_greenlet(raw), CTX: _timed(ctx), OWN: _in_greenlet(own)}


def _asyncpg_loops(pool: Any) -> dict[str, Loop]:
    async def raw() -> None:
        await pool.release(await pool.acquire())

    async def ctx() -> None:
        async with pool.acquire():
            pass

    return {RAW: _timed(raw), CTX: _timed(ctx)}


def _psycopg_loops(pool: Any) -> dict[str, Loop]:
    async def raw() -> None:
        await pool.putconn(await pool.getconn())

    async def ctx() -> None:
        async with pool.connection():
            pass

    return {RAW: _timed(raw), CTX: _timed(ctx)}


async def _trial(opts: Options) -> Trial:
    iters = 500 if opts.quick else 1000
    rounds = 3 if opts.quick else 60
    url = with_driver(opts.url, "asyncpg")
    closers: list[Callable[[], Awaitable[None]]] = []
    try:
        smart = async_smart_engine(url, min_size=SIZE, max_size=SIZE)
        closers.append(smart.dispose)
        queue = async_queue_engine(url, pool_size=SIZE, max_overflow=0)
        closers.append(queue.dispose)
        apg = await asyncpg_pool(url, min_size=SIZE, max_size=SIZE)
        closers.append(apg.close)
        pg = await psycopg_async_pool(with_driver(opts.url, "psycopg"), min_size=SIZE, max_size=SIZE)
        closers.append(pg.close)
        for e in (smart, queue):
            await warm_async(e, SIZE)
        impls: dict[str, dict[str, Loop]] = {
            SMART: _sa_loops(smart),
            QUEUE: _sa_loops(queue),
            ASYNCPG: _asyncpg_loops(apg),
            PSYCOPG: _psycopg_loops(pg),
        }
        cells = [(impl, op) for op in (RAW, CTX, OWN) for impl in impls if op in impls[impl]]
        for impl, op in cells:  # warm up: caches, code paths, CPU frequency
            await impls[impl][op](iters // 4)
        samples: dict[tuple[str, str], list[float]] = {c: [] for c in cells}
        for r in range(rounds):
            k = r % len(cells)
            gc.collect()
            for impl, op in cells[k:] + cells[:k]:
                samples[(impl, op)].append(await impls[impl][op](iters) / iters * 1e6)
            if (r + 1) % 10 == 0:
                progress(f"async-overhead: round {r + 1}/{rounds}")
    finally:
        for close in reversed(closers):
            await close()
    rows: list[Row] = []
    for impl, op in cells:
        xs = samples[(impl, op)]
        nan = [math.nan] * len(xs)
        q, a, p = (samples.get((ref, op), nan) for ref in (QUEUE, ASYNCPG, PSYCOPG))
        rows.append(
            {
                "impl": impl,
                "op": op,
                "us_per_op": median(xs),
                "us_min": min(xs),
                "ops_per_s": 1e6 / median(xs),
                "x_async_queuepool": median(x / y for x, y in zip(xs, q, strict=True)),
                "x_asyncpg": median(x / y for x, y in zip(xs, a, strict=True)),
                "x_psycopg_pool": median(x / y for x, y in zip(xs, p, strict=True)),
            }
        )
    notes = [
        f"{rounds} rounds x {iters} iterations per cell, order rotated each round; "
        "x_* = median of per-round ratios (same round, back to back)",
        f"every pool warm with {SIZE} connections: AsyncSmartPool min_size=max_size={SIZE} (other settings "
        f"default), AsyncAdaptedQueuePool pool_size={SIZE} max_overflow=0, asyncpg.Pool and "
        f"AsyncConnectionPool min_size=max_size={SIZE}",
        f"op {RAW!r}: engine.sync_engine.pool.connect().close() looped in one greenlet "
        "(asyncpg: release(acquire()), which runs asyncpg's reset query on the server; "
        "psycopg: putconn(getconn())); "
        f"op {CTX!r}: `async with engine.connect(): pass` (asyncpg: `async with pool.acquire()`, "
        f"psycopg: `async with pool.connection()`); op {OWN!r}: pool._do_return_conn(pool._do_get()) "
        "in one greenlet",
    ]
    return Trial(rows, notes=notes)


def trial(opts: Options) -> Trial:
    return asyncio.run(_trial(opts))


def judge(rows: list[Row]) -> Verdict:
    ratios: dict[str, float] = {}
    goals: list[Goal] = []
    for op in (RAW, CTX):
        s, q = find(rows, impl=SMART, op=op), find(rows, impl=QUEUE, op=op)
        ratios[f"{op}: AsyncSmartPool / AsyncAdaptedQueuePool"] = s["x_async_queuepool"]
        ratios[f"{op}: AsyncSmartPool / asyncpg.Pool"] = s["x_asyncpg"]
        ratios[f"{op}: AsyncSmartPool / psycopg AsyncConnectionPool"] = s["x_psycopg_pool"]
        goals.append(
            Goal(
                name=f"async-overhead {op}: AsyncSmartPool <= {GOAL}x AsyncAdaptedQueuePool",
                target=f"<= {GOAL:.2f}x",
                measured=f"{s['x_async_queuepool']:.3f}x "
                f"({s['us_per_op']:.2f} us vs {q['us_per_op']:.2f} us)",
                met=s["x_async_queuepool"] <= GOAL,
            )
        )
    s_raw, s_own = find(rows, impl=SMART, op=RAW)["us_per_op"], find(rows, impl=SMART, op=OWN)["us_per_op"]
    q_raw, q_own = find(rows, impl=QUEUE, op=RAW)["us_per_op"], find(rows, impl=QUEUE, op=OWN)["us_per_op"]
    s_ctx, q_ctx = find(rows, impl=SMART, op=CTX)["us_per_op"], find(rows, impl=QUEUE, op=CTX)["us_per_op"]
    shared = s_raw - s_own
    for op, q_op, s_op in ((RAW, q_raw, s_raw), (CTX, q_ctx, s_ctx)):
        ratios[f"{op}: floor with a zero-cost pool (SQLAlchemy's shared part / AsyncAdaptedQueuePool)"] = (
            s_op - s_own
        ) / q_op
    notes = [
        f"{RAW}: {shared:.2f} us of AsyncSmartPool's {s_raw:.2f} us is SQLAlchemy's record/fairy/reset "
        f"work shared by every Pool subclass (AsyncAdaptedQueuePool: {q_raw - q_own:.2f} of {q_raw:.2f} us); "
        f"the pools' own parts are {s_own:.2f} us vs {q_own:.2f} us. "
        f"{GOAL}x AsyncAdaptedQueuePool needs AsyncSmartPool's own part <= {GOAL * q_raw - shared:.2f} us.",
        f"{CTX}: {s_ctx - s_own:.2f} us of AsyncSmartPool's {s_ctx:.2f} us is outside the pool subclass "
        "(AsyncConnection, greenlet switches, fairy); "
        f"{GOAL}x needs that own part <= {GOAL * q_ctx - (s_ctx - s_own):.2f} us.",
    ]
    return Verdict(ratios, goals, notes)


SCENARIO = Scenario(
    name="async-overhead",
    title="asyncio: checkout+checkin of an idle connection (us per op)",
    trial=trial,
    judge=judge,
)

"""redis-overhead: get_connection + release of an idle redis connection, sync and asyncio.

SmartRedisPool against redis-py's ``ConnectionPool`` and ``BlockingConnectionPool``,
and AsyncSmartRedisPool against ``redis.asyncio.ConnectionPool`` and
``redis.asyncio.BlockingConnectionPool``, all on the same redis server, warm.
Two operations per pool:

* ``get_connection+release``: ``pool.release(pool.get_connection())`` (asyncio:
  both awaited), the cost the pool adds to every command;
* ``PING``: ``redis.Redis(connection_pool=pool).ping()`` (asyncio:
  ``await redis.asyncio.Redis(connection_pool=pool).ping()``), a whole command
  through the client, one round trip to the server included.

Each round times a block of iterations for every cell back to back (rotating
the order, sync and asyncio cells in one rotation), so drift on a shared
machine hits all of them alike; a row reports the median round, and the ratio
columns are medians of the per-round ratios against the anchor of the same
kind (sync rows against the sync pools, asyncio rows against the asyncio ones).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .harness import APP_NAME, Goal, Options, Row, Scenario, Trial, Verdict, find, median, progress

SMART = "SmartRedisPool"
CP = "redis.ConnectionPool"
BCP = "redis.BlockingConnectionPool"
ASMART = "AsyncSmartRedisPool"
ACP = "redis.asyncio.ConnectionPool"
ABCP = "redis.asyncio.BlockingConnectionPool"
#: (implementation, its ConnectionPool anchor, its BlockingConnectionPool anchor)
FAMILIES = ((SMART, CP, BCP), (ASMART, ACP, ABCP))
RAW = "get_connection+release"
PING = "PING"
GOAL = 0.9

Loop = Callable[[int], Awaitable[float]]


def _sync_timed(body: Callable[[], object]) -> Loop:
    async def loop(n: int) -> float:
        gc.disable()  # as timeit does: a collection landing in one block is noise
        try:
            t0 = time.perf_counter()
            for _ in range(n):
                body()
            return time.perf_counter() - t0
        finally:
            gc.enable()

    return loop


def _async_timed(body: Callable[[], Awaitable[object]]) -> Loop:
    async def loop(n: int) -> float:
        gc.disable()
        try:
            t0 = time.perf_counter()
            for _ in range(n):
                await body()
            return time.perf_counter() - t0
        finally:
            gc.enable()

    return loop


def _sync_loops(pool: Any, client: Any) -> dict[str, Loop]:
    get, release = pool.get_connection, pool.release

    def raw() -> None:
        release(get())

    return {RAW: _sync_timed(raw), PING: _sync_timed(client.ping)}


def _async_loops(pool: Any, client: Any) -> dict[str, Loop]:
    get, release = pool.get_connection, pool.release

    async def raw() -> None:
        await release(await get())

    return {RAW: _async_timed(raw), PING: _async_timed(client.ping)}


async def _trial(opts: Options) -> Trial:
    import redis
    import redis.asyncio as aredis

    from ..redis_pool import AsyncSmartRedisPool, SmartRedisPool

    iters = 200 if opts.quick else 1000
    rounds = 3 if opts.quick else 40
    url = opts.redis_url
    kw: dict[str, Any] = {"client_name": APP_NAME}
    closers: list[Callable[[], Awaitable[object]]] = []

    async def call(fn: Callable[[], object]) -> None:
        fn()

    try:
        smart: Any = SmartRedisPool.from_url(url, **kw)
        closers.append(lambda: call(smart.close))
        cp: Any = redis.ConnectionPool.from_url(url, **kw)
        closers.append(lambda: call(cp.disconnect))
        bcp: Any = redis.BlockingConnectionPool.from_url(url, **kw)
        closers.append(lambda: call(bcp.disconnect))
        asmart: Any = AsyncSmartRedisPool.from_url(url, **kw)
        closers.append(asmart.aclose)
        acp: Any = aredis.ConnectionPool.from_url(url, **kw)
        closers.append(acp.disconnect)
        abcp: Any = aredis.BlockingConnectionPool.from_url(url, **kw)
        closers.append(abcp.disconnect)
        smart.wait()
        await asmart.wait()
        for p in (cp, bcp):  # redis-py's pools connect on demand: open one up front
            p.release(p.get_connection())
        for ap in (acp, abcp):
            await ap.release(await ap.get_connection())
        impls: dict[str, dict[str, Loop]] = {
            SMART: _sync_loops(smart, redis.Redis(connection_pool=smart)),
            CP: _sync_loops(cp, redis.Redis(connection_pool=cp)),
            BCP: _sync_loops(bcp, redis.Redis(connection_pool=bcp)),
            ASMART: _async_loops(asmart, aredis.Redis(connection_pool=asmart)),
            ACP: _async_loops(acp, aredis.Redis(connection_pool=acp)),
            ABCP: _async_loops(abcp, aredis.Redis(connection_pool=abcp)),
        }
        cells = [(impl, op) for op in (RAW, PING) for impl in impls if op in impls[impl]]
        for impl, op in cells:  # warm up: caches, code paths, CPU frequency
            await impls[impl][op](iters // 4)
        samples: dict[tuple[str, str], list[float]] = {c: [] for c in cells}
        for r in range(rounds):
            k = r % len(cells)
            gc.collect()
            for impl, op in cells[k:] + cells[:k]:
                samples[(impl, op)].append(await impls[impl][op](iters) / iters * 1e6)
            if (r + 1) % 10 == 0:
                progress(f"redis-overhead: round {r + 1}/{rounds}")
    finally:
        for close in reversed(closers):
            await close()
    family = {member: (fam[1], fam[2]) for fam in FAMILIES for member in fam}  # -> its kind's anchors
    rows: list[Row] = []
    for impl, op in cells:
        xs = samples[(impl, op)]
        ref_cp, ref_bcp = family[impl]
        c, b = samples[(ref_cp, op)], samples[(ref_bcp, op)]
        rows.append(
            {
                "impl": impl,
                "op": op,
                "us_per_op": median(xs),
                "us_min": min(xs),
                "ops_per_s": 1e6 / median(xs),
                "x_connectionpool": median(x / y for x, y in zip(xs, c, strict=True)),
                "x_blockingpool": median(x / y for x, y in zip(xs, b, strict=True)),
            }
        )
    notes = [
        f"{rounds} rounds x {iters} iterations per cell, order rotated each round (sync and asyncio cells "
        "in one rotation); x_* = median of per-round ratios (same round, back to back) against the "
        "ConnectionPool / BlockingConnectionPool of the same kind (sync or redis.asyncio)",
        "every pool from_url() with its defaults (SmartRedisPool: min_size=5, validate_on_checkout with "
        "0.5 s bypass window, check_socket on; redis-py: ConnectionPool unbounded, BlockingConnectionPool "
        "max_connections=50 timeout=20), client_name set, warm (SmartRedisPool prewarmed with wait(); "
        "redis-py's pools opened one connection up front; LIFO hands that one out every time)",
        f"op {RAW!r}: pool.release(pool.get_connection()) (asyncio: both awaited); "
        f"op {PING!r}: redis.Redis(connection_pool=pool).ping() (asyncio: redis.asyncio.Redis, awaited), "
        "a round trip to the server included",
        "AsyncSmartRedisPool takes an idle connection and takes it back without the greenlet bridge "
        "(engine.checkout_nowait); only a wait, a ping or a connect enters a greenlet",
    ]
    return Trial(rows, notes=notes)


def trial(opts: Options) -> Trial:
    return asyncio.run(_trial(opts))


def judge(rows: list[Row]) -> Verdict:
    ratios: dict[str, float] = {}
    goals: list[Goal] = []
    for impl, cp, bcp in FAMILIES:
        for op in (RAW, PING):
            s = find(rows, impl=impl, op=op)
            ratios[f"{op}: {impl} / {cp}"] = s["x_connectionpool"]
            ratios[f"{op}: {impl} / {bcp}"] = s["x_blockingpool"]
        s = find(rows, impl=impl, op=RAW)
        for anchor, col in ((cp, "x_connectionpool"), (bcp, "x_blockingpool")):
            a = find(rows, impl=anchor, op=RAW)
            goals.append(
                Goal(
                    name=f"redis-overhead {RAW}: {impl} <= {GOAL}x {anchor}",
                    target=f"<= {GOAL:.2f}x",
                    measured=f"{s[col]:.3f}x ({s['us_per_op']:.2f} us vs {a['us_per_op']:.2f} us)",
                    met=s[col] <= GOAL,
                )
            )
    a_raw = find(rows, impl=ASMART, op=RAW)["us_per_op"]
    best = min(find(rows, impl=ACP, op=RAW)["us_per_op"], find(rows, impl=ABCP, op=RAW)["us_per_op"])
    notes = [
        f"{RAW}: AsyncSmartRedisPool {a_raw:.2f} us; {GOAL}x the faster asyncio anchor: {GOAL * best:.2f} us"
    ]
    return Verdict(ratios, goals, notes)


SCENARIO = Scenario(
    name="redis-overhead",
    title="redis: get_connection+release of an idle connection, and a PING (us per op)",
    trial=trial,
    judge=judge,
    needs_postgres=False,
    needs_redis=True,
)

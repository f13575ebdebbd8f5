"""memory: the pool's own bookkeeping for 100 open connections, measured with tracemalloc.

Method. Warm up (imports, caches) with a throw-away engine, then start
tracemalloc and snapshot; build an engine on the pool, open 100 connections
(SmartPool: ``min_size=100`` + ``wait()``; QueuePool: check 100 out), check all
100 out and back in once, collect garbage, snapshot again. Every allocation
still alive is attributed by walking its traceback from the innermost frame
outwards; the first frame that is

* in ``DefaultDialect.connect`` or in ``sqlalchemy/dialects/`` -> *DBAPI
  connections* (the driver's objects and the dialect's per-connection hooks),
* in ``sqlalchemy/pool/`` or ``sqlalchemy_smartpool/`` -> *pool bookkeeping*
  (connection records, SmartPool's slots, core, sampler, housekeeper threads),
* elsewhere in ``sqlalchemy/engine/`` -> *engine* (dialect, compiled caches; once per engine),

decides; generic helpers (threading, events, util, logging) are skipped so
they count for whoever called them. As a cross-check the DBAPI share is also
measured directly: 100 connections opened through the same dialect with its
on-connect hook, nothing else. tracemalloc sees Python allocations only --
memory a driver takes with C ``malloc`` (SQLite's page cache, libpq buffers)
and thread stacks are invisible to it, on both sides of the comparison.
SQLite (a file in a temporary directory) is used so 100 connections do not
eat a shared server's ``max_connections``; the pool's bookkeeping does not
depend on the driver.
"""

from __future__ import annotations

import gc
import inspect
import os
import tempfile
import tracemalloc
from collections.abc import Callable
from typing import Any, cast

from .harness import Goal, Options, Row, Scenario, Trial, Verdict, find

N = 100
FRAMES = 40
GOAL_MB = 5.0
SMART = "SmartPool"
QUEUE = "QueuePool"

Classifier = Callable[[tracemalloc.Traceback], str]


def _classifier() -> Classifier:
    import sqlalchemy
    from sqlalchemy.engine.default import DefaultDialect

    sa_dir = os.path.dirname(sqlalchemy.__file__)
    sp_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    lines, first = inspect.getsourcelines(DefaultDialect.connect)
    default_py = os.path.join(sa_dir, "engine", "default.py")
    connect_lines = range(first, first + len(lines))
    dialects = os.path.join(sa_dir, "dialects") + os.sep
    pool_dirs = (os.path.join(sa_dir, "pool") + os.sep, sp_dir + os.sep)
    engine_dir = os.path.join(sa_dir, "engine") + os.sep
    bench_dir = os.path.join(sp_dir, "bench") + os.sep

    def classify(tb: tracemalloc.Traceback) -> str:
        for frame in reversed(tb):  # most recent call last -> walk innermost first
            f = frame.filename
            if (f == default_py and frame.lineno in connect_lines) or f.startswith(dialects):
                return "dbapi"
            if f.startswith(bench_dir):
                continue
            if f.startswith(pool_dirs):
                return "pool"
            if f.startswith(engine_dir):
                return "engine"
        return "other"

    return classify


def _measure(build: Callable[[], Any], classify: Classifier) -> tuple[dict[str, int], Any]:
    gc.collect()
    tracemalloc.start(FRAMES)
    try:
        before = tracemalloc.take_snapshot()
        keep = build()
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    diff = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "traceback")
    out = {"dbapi": 0, "pool": 0, "engine": 0, "other": 0}
    for stat in diff:
        out[classify(stat.traceback)] += stat.size_diff
    return out, keep


def _cycle(engine: Any) -> None:
    """Check every connection out at once and back in, so each record has been used."""
    held = [engine.pool.connect() for _ in range(N)]
    for c in held:
        c.close()


def trial(opts: Options) -> Trial:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import QueuePool

    from ..pool import SmartPool

    classify = _classifier()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="smartpool-bench-") as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        args = {"check_same_thread": False}

        def smart() -> Any:
            e = create_engine(url, poolclass=SmartPool, min_size=N, max_size=N, connect_args=args)
            pool = cast(SmartPool, e.pool)
            pool.wait(timeout=60)
            _cycle(e)
            return e

        def queue() -> Any:
            e = create_engine(url, poolclass=QueuePool, pool_size=N, max_overflow=0, connect_args=args)
            _cycle(e)
            return e

        def bare() -> Any:
            e = create_engine(url, connect_args=args)
            dialect = e.dialect
            cargs, cparams = dialect.create_connect_args(e.url)
            hook = dialect.on_connect()

            def build() -> list[Any]:
                conns = [dialect.connect(*cargs, **cparams) for _ in range(N)]
                if hook is not None:
                    for c in conns:
                        hook(c)
                return conns

            return e, build

        for warm in (smart, queue):  # imports, caches, first-connect code paths
            warm().dispose()
        e, build = bare()
        direct, conns = _measure(build, classify)
        for c in conns:
            c.close()
        e.dispose()
        dbapi_direct = sum(direct.values())
        for impl, make in ((SMART, smart), (QUEUE, queue)):
            parts, engine = _measure(make, classify)
            try:
                total = sum(parts.values())
                rows.append(
                    {
                        "impl": impl,
                        "connections": N,
                        "total_kb": total / 1024,
                        "dbapi_kb": parts["dbapi"] / 1024,
                        "engine_kb": parts["engine"] / 1024,
                        "other_kb": parts["other"] / 1024,
                        "pool_kb": parts["pool"] / 1024,
                        "pool_bytes_per_conn": parts["pool"] / N,
                        "pool_by_subtraction_kb": (total - parts["engine"] - dbapi_direct) / 1024,
                        "dbapi_direct_kb": dbapi_direct / 1024,
                    }
                )
            finally:
                engine.dispose()
    notes = [
        "pool_kb: allocations attributed to sqlalchemy/pool + sqlalchemy_smartpool by traceback; "
        "pool_by_subtraction_kb: total - engine - (100 bare DBAPI connections measured alone)",
        "SQLite file database; tracemalloc sees Python-level allocations only (see module docstring)",
    ]
    return Trial(rows, notes=notes)


def judge(rows: list[Row]) -> Verdict:
    s, q = find(rows, impl=SMART), find(rows, impl=QUEUE)
    worst = max(s["pool_kb"], s["pool_by_subtraction_kb"]) / 1024
    ratios = {"pool bookkeeping: SmartPool / QueuePool": s["pool_kb"] / q["pool_kb"]}
    goals = [
        Goal(
            f"memory: SmartPool bookkeeping for {N} connections < {GOAL_MB:g} MB",
            f"< {GOAL_MB:g} MB",
            f"{worst:.3f} MB (larger of the two methods; QueuePool {q['pool_kb'] / 1024:.3f} MB)",
            worst < GOAL_MB,
        )
    ]
    return Verdict(ratios, goals)


SCENARIO = Scenario(
    name="memory",
    title=f"pool bookkeeping for {N} connections (tracemalloc, SQLite)",
    trial=trial,
    judge=judge,
    needs_postgres=False,
)

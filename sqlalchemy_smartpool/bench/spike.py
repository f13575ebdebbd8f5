"""spike: 50 threads released at once on a pool of 5 warm connections; connecting takes 150 ms.

A :class:`~sqlalchemy_smartpool.testing.FaultProxy` in front of PostgreSQL
delays every new connection by ``connect_delay``; each request runs a 2 ms
query. QueuePool opens an overflow connection in every thread that finds the
pool empty (each one waits out the 150 ms); SmartPool queues the threads and
lets returned connections serve them while a couple of background connects
run. Counted: connections the proxy accepted from the barrier until every
connect started during the spike has finished, and the time until the last
of the 50 requests completed.
"""

from __future__ import annotations

import threading
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
    count_connects,
    find,
    median,
    percentile,
    progress,
    queue_engine,
    smart_engine,
    wait_for_headroom,
)

THREADS = 50
WARM = 5
CONNECT_DELAY = 0.15
SQL = "select pg_sleep(0.002)"
SMART = "SmartPool min 5 max 50 (prewarmed)"
QUEUE = "QueuePool 5 + overflow 45 (5 pre-opened)"
MAX_OPENED = 10
TIME_GOAL = 0.5
ATTEMPTS = 3


def _spike(engine: Any, proxy: Any, settle: Callable[[], None]) -> dict[str, float]:
    connect = engine.pool.connect
    done: list[float] = []
    waits: list[float] = []
    errors: list[BaseException] = []
    marks: dict[str, float] = {}

    def released() -> None:
        marks["accepted"] = proxy.total_accepted
        marks["start"] = time.perf_counter()

    barrier = threading.Barrier(THREADS, action=released)

    def worker() -> None:
        barrier.wait()
        try:
            t0 = time.perf_counter()
            conn = connect()
            waits.append(time.perf_counter() - t0)
            try:
                cur = conn.cursor()
                cur.execute(SQL)
                cur.fetchall()
                cur.close()
            finally:
                conn.close()
            done.append(time.perf_counter())
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=worker, name=f"bench-spike-{i}") for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} spike requests failed; first: {errors[0]!r}")
    settle()  # connects started during the spike count even if they finish after it
    waits.sort()
    return {
        "total_ms": (max(done) - marks["start"]) * 1e3,
        "opened": proxy.total_accepted - marks["accepted"],
        "wait_p50_ms": percentile(waits, 50) * 1e3,
        "wait_max_ms": waits[-1] * 1e3,
    }


def _smart(url: str, proxy: Any) -> dict[str, float]:
    engine = smart_engine(url, min_size=WARM, max_size=THREADS)
    try:
        engine.pool.wait(timeout=30)
        with engine.connect():
            pass
        created = engine.pool.stats().connections_created

        def settle() -> None:
            deadline = time.monotonic() + 5
            while engine.pool.stats().connections_pending and time.monotonic() < deadline:
                time.sleep(0.01)

        out = _spike(engine, proxy, settle)
        out["pool_opened"] = engine.pool.stats().connections_created - created
        return out
    finally:
        engine.dispose()


def _queue(url: str, proxy: Any) -> dict[str, float]:
    engine = queue_engine(url, pool_size=WARM, max_overflow=THREADS - WARM)
    try:
        opened = count_connects(engine)
        held: list[Any] = []
        openers = [threading.Thread(target=lambda: held.append(engine.pool.connect())) for _ in range(WARM)]
        for t in openers:
            t.start()
        for t in openers:
            t.join()
        for c in held:
            c.close()
        before = opened()
        out = _spike(engine, proxy, lambda: None)
        out["pool_opened"] = opened() - before
        return out
    finally:
        engine.dispose()


def trial(opts: Options) -> Trial:
    from sqlalchemy.engine import make_url

    from ..testing import FaultProxy

    spikes = 1 if opts.quick else 5
    u = make_url(opts.url)
    runs: dict[str, list[dict[str, float]]] = {SMART: [], QUEUE: []}
    retried = 0
    with FaultProxy(u.host or "127.0.0.1", u.port or 5432) as proxy:
        proxy.connect_delay = CONNECT_DELAY
        url = proxy.url_for(opts.url)
        for i in range(spikes):
            order = [(SMART, _smart), (QUEUE, _queue)]
            if i % 2:
                order.reverse()
            for impl, fn in order:
                progress(f"spike: {impl} #{i + 1}/{spikes}")
                for attempt in range(ATTEMPTS):
                    # the server is shared: QueuePool needs 50 backends at once
                    wait_for_headroom(opts.url, THREADS + 5)
                    try:
                        runs[impl].append(fn(url, proxy))
                        break
                    except RuntimeError as err:
                        if "too many clients" not in str(err) or attempt == ATTEMPTS - 1:
                            raise
                        retried += 1
                        progress(f"spike: server full (other sessions), retrying: {err}")
    rows: list[Row] = []
    for impl, rs in runs.items():
        row: Row = {"impl": impl}
        for key in rs[0]:
            row[key] = median(r[key] for r in rs)
        rows.append(row)
    notes = [
        f"{THREADS} threads at a barrier, one request each (`{SQL}`), connect_delay={CONNECT_DELAY:g}s via "
        f"FaultProxy; median of {spikes} spikes per trial, implementations alternated",
        "opened = connections the proxy accepted during the spike (incl. connects still in flight at "
        "its end); pool_opened = the pool's own count",
    ]
    if retried:
        notes.append(f"{retried} spike(s) re-run because other sessions had filled max_connections")
    return Trial(rows, notes=notes)


def judge(rows: list[Row]) -> Verdict:
    s, q = find(rows, impl=SMART), find(rows, impl=QUEUE)
    time_ratio = s["total_ms"] / q["total_ms"]
    ratios = {
        "spike total time: SmartPool / QueuePool": time_ratio,
        "connections opened: SmartPool / QueuePool": s["opened"] / q["opened"],
    }
    goals = [
        Goal(
            f"spike: SmartPool opens <= {MAX_OPENED} connections",
            f"<= {MAX_OPENED}",
            f"{s['opened']:g} (QueuePool: {q['opened']:g})",
            s["opened"] <= MAX_OPENED,
        ),
        Goal(
            f"spike: SmartPool total time <= {TIME_GOAL}x QueuePool's",
            f"<= {TIME_GOAL:.2f}x",
            f"{time_ratio:.3f}x ({s['total_ms']:.0f} ms vs {q['total_ms']:.0f} ms)",
            time_ratio <= TIME_GOAL,
        ),
    ]
    return Verdict(ratios, goals)


SCENARIO = Scenario(
    name="spike",
    title=f"{THREADS} simultaneous requests, {WARM} warm connections, {CONNECT_DELAY * 1e3:.0f} ms connects",
    trial=trial,
    judge=judge,
)

"""ramp: clients step 1 -> 30 -> 1; the pool must follow demand up, then shrink back.

Each client loops: check out, ``pg_sleep(5 ms)``, return, think 1 ms. A
sampler records every 50 ms the number of active clients (demand), the
pool's open connections (``stats().pool_size``; QueuePool: checked in +
checked out) and the connections in use. SmartPool runs with a short
``idle_timeout`` so the return to ``min_size`` is visible; QueuePool, with the
same floor and ceiling, closes every overflow connection as it comes back, so
it "follows" demand by reconnecting -- the connections-opened column shows
that churn.
"""

from __future__ import annotations

import math
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
    count_connects,
    find,
    median,
    progress,
    queue_engine,
    smart_engine,
    wait_for_headroom,
)

LEVELS = (1, 5, 15, 30, 15, 5, 1)
MIN_SIZE = 2
MAX_SIZE = 40
IDLE_TIMEOUT = 2.0
HOUSEKEEPING = 0.25
SAMPLE_EVERY = 0.05
SQL = "select pg_sleep(0.005)"
THINK = 0.001
SMART = "SmartPool"
QUEUE = "QueuePool"


def _run(
    engine: Any, size: Callable[[], tuple[int, int]], opened: Callable[[], int], step: float, tail: float
) -> dict[str, Any]:
    clients = max(LEVELS)
    state = {"level": 0, "stop": False}
    errors: list[BaseException] = []
    connect = engine.pool.connect

    def client(i: int) -> None:
        try:
            while not state["stop"]:
                if i >= state["level"]:
                    time.sleep(0.005)
                    continue
                conn = connect()
                try:
                    cur = conn.cursor()
                    cur.execute(SQL)
                    cur.fetchall()
                    cur.close()
                finally:
                    conn.close()
                time.sleep(THINK)
        except BaseException as err:
            errors.append(err)

    t: list[float] = []
    demand: list[int] = []
    sizes: list[int] = []
    in_use: list[int] = []
    t0 = time.perf_counter()

    def sampler() -> None:
        nxt = t0
        while not state["stop"]:
            now = time.perf_counter()
            n, used = size()
            t.append(now - t0)
            demand.append(int(state["level"]))
            sizes.append(n)
            in_use.append(used)
            nxt += SAMPLE_EVERY
            time.sleep(max(0.0, nxt - time.perf_counter()))

    opened0 = opened()
    threads = [threading.Thread(target=client, args=(i,), name=f"bench-ramp-{i}") for i in range(clients)]
    threads.append(threading.Thread(target=sampler, name="bench-ramp-sampler"))
    for th in threads:
        th.start()
    steps: list[float] = []
    try:
        for k, level in enumerate(LEVELS):
            steps.append(time.perf_counter() - t0)
            state["level"] = level
            time.sleep(tail if k == len(LEVELS) - 1 else step)
    finally:
        state["stop"] = True
        for th in threads:
            th.join()
    if errors:
        raise RuntimeError(f"{len(errors)} ramp clients failed; first: {errors[0]!r}")
    return {
        "t": t,
        "demand": demand,
        "size": sizes,
        "in_use": in_use,
        "steps": steps,
        "opened": opened() - opened0,
        "min_size": MIN_SIZE,
    }


def _metrics(impl: str, s: dict[str, Any], step: float) -> Row:
    t, sizes, in_use = s["t"], s["size"], s["in_use"]
    steps = s["steps"]
    peak = LEVELS.index(max(LEVELS))
    p0, p1 = steps[peak], steps[peak + 1]
    plateau = [n for ti, n in zip(t, sizes, strict=True) if p0 + step / 2 <= ti < p1]
    used = [u for ti, u in zip(t, in_use, strict=True) if p0 + step / 2 <= ti < p1]
    top = max(sizes[i] for i, ti in enumerate(t) if p0 <= ti < p1)
    grow = next((ti - p0 for ti, n in zip(t, sizes, strict=True) if ti >= p0 and n >= 0.9 * top), math.nan)
    last = steps[-1]
    above = [i for i, n in enumerate(sizes) if n > MIN_SIZE]  # the pool stays at the floor after the last
    settle = t[above[-1] + 1] if above and above[-1] + 1 < len(t) else math.nan
    back = max(0.0, settle - last) if above else 0.0
    run_s = t[-1] if t else math.nan
    return {
        "impl": impl,
        "peak_size": max(sizes),
        "size_at_30_clients": median(plateau),
        "in_use_at_30_clients": median(used),
        "grow_to_90pct_s": grow,
        "back_to_min_s": back,
        "final_size": sizes[-1],
        "connections_opened": s["opened"],
        "opened_per_min": s["opened"] / run_s * 60,
    }


def trial(opts: Options) -> Trial:
    step = 1.0 if opts.quick else 3.0
    tail = IDLE_TIMEOUT + (1.5 if opts.quick else 3.0)
    rows: list[Row] = []
    series: dict[str, Any] = {}

    wait_for_headroom(opts.url, MAX_SIZE + 5)  # the server is shared with other sessions
    smart = smart_engine(
        opts.url,
        min_size=MIN_SIZE,
        max_size=MAX_SIZE,
        idle_timeout=IDLE_TIMEOUT,
        housekeeping_interval=HOUSEKEEPING,
    )
    try:
        smart.pool.wait()
        stats = smart.pool.stats
        created0 = stats().connections_created

        def smart_size() -> tuple[int, int]:
            st = stats()
            return st.pool_size, st.pool_in_use

        progress(f"ramp: {SMART} ({len(LEVELS)} steps of {step:g}s)")
        series[SMART] = _run(smart, smart_size, lambda: stats().connections_created - created0, step, tail)
    finally:
        smart.dispose()

    wait_for_headroom(opts.url, MAX_SIZE + 5)
    queue = queue_engine(opts.url, pool_size=MIN_SIZE, max_overflow=MAX_SIZE - MIN_SIZE)
    try:
        opened = count_connects(queue)
        held = [queue.pool.connect() for _ in range(MIN_SIZE)]
        for c in held:
            c.close()
        qp = queue.pool

        def queue_size() -> tuple[int, int]:
            out = qp.checkedout()
            return qp.checkedin() + out, out

        progress(f"ramp: {QUEUE} ({len(LEVELS)} steps of {step:g}s)")
        series[QUEUE] = _run(queue, queue_size, opened, step, tail)
    finally:
        queue.dispose()

    for impl, s in series.items():
        rows.append(_metrics(impl, s, step))
    notes = [
        f"levels {LEVELS} clients, {step:g} s per step (last step {tail:g} s); client = checkout, `{SQL}`, "
        f"return, sleep {THINK * 1e3:g} ms; sampled every {SAMPLE_EVERY * 1e3:g} ms",
        f"SmartPool min_size={MIN_SIZE} max_size={MAX_SIZE} idle_timeout={IDLE_TIMEOUT:g}s "
        f"housekeeping_interval={HOUSEKEEPING:g}s; QueuePool pool_size={MIN_SIZE} "
        f"max_overflow={MAX_SIZE - MIN_SIZE}",
        "back_to_min_s = time after the last step down (to 1 client) until the pool stays at <= min_size",
    ]
    return Trial(rows, series=series, notes=notes)


def judge(rows: list[Row]) -> Verdict:
    s, q = find(rows, impl=SMART), find(rows, impl=QUEUE)
    limit = IDLE_TIMEOUT + 2 * HOUSEKEEPING + 0.5
    ratios = {"connections opened: SmartPool / QueuePool": s["connections_opened"] / q["connections_opened"]}
    goals = [
        Goal(
            "ramp: SmartPool follows demand up (size at 30 clients >= in use)",
            ">= in_use",
            f"size {s['size_at_30_clients']:g}, in use {s['in_use_at_30_clients']:g}, "
            f"90% of peak after {s['grow_to_90pct_s']:.2f}s",
            s["size_at_30_clients"] >= s["in_use_at_30_clients"],
        ),
        Goal(
            "ramp: SmartPool returns to min_size after idle_timeout",
            f"<= {limit:g} s (idle_timeout {IDLE_TIMEOUT:g} + 2 ticks + 0.5)",
            f"{s['back_to_min_s']:.2f} s",
            s["back_to_min_s"] <= limit,
        ),
    ]
    return Verdict(ratios, goals)


def plot(trial: Trial, directory: Path) -> list[Path]:
    from .plots import ramp_plot

    return [ramp_plot(trial.series, directory / "ramp.png")]


SCENARIO = Scenario(
    name="ramp",
    title=f"clients {' -> '.join(map(str, LEVELS))}: pool size follows demand",
    trial=trial,
    judge=judge,
    plot=plot,
)

"""prepping: a *validated* checkout, SmartPool's bypass window against QueuePool's pre-ping.

``pool_pre_ping=True`` pays a round trip on every checkout. SmartPool
validates only connections that sat idle longer than ``validation_interval``
(0.5 s by default), so a busy pool skips the ping. For honesty the scenario
also runs SmartPool with ``validation_interval=0`` (ping every checkout).
Timing is the same interleaved-rounds method as ``overhead``.
"""

from __future__ import annotations

import gc
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
    queue_engine,
    smart_engine,
)
from .overhead import Loop, _timed

SMART = "SmartPool (validation, 0.5 s bypass window)"
SMART_ALWAYS = "SmartPool validation_interval=0"
QUEUE_PING = "QueuePool pool_pre_ping=True"
QUEUE = "QueuePool (no pre-ping, reference)"
GOAL = 0.25


def _loop(engine: Any) -> Loop:
    pool = engine.pool

    def body() -> None:
        pool.connect().close()

    return _timed(body)


def trial(opts: Options) -> Trial:
    iters = 300 if opts.quick else 2000
    rounds = 3 if opts.quick else 11
    engines = {
        SMART: smart_engine(opts.url),
        SMART_ALWAYS: smart_engine(opts.url, validation_interval=0),
        QUEUE_PING: queue_engine(opts.url, pool_pre_ping=True),
        QUEUE: queue_engine(opts.url),
    }
    try:
        for name, e in engines.items():
            if name in (SMART, SMART_ALWAYS):
                e.pool.wait()
            with e.connect():
                pass
        loops = {name: _loop(e) for name, e in engines.items()}
        names = list(loops)
        validations0 = {n: engines[n].pool.stats().validations for n in (SMART, SMART_ALWAYS)}
        for n in names:
            loops[n](iters // 4)
        samples: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):
            gc.collect()
            k = r % len(names)
            for n in names[k:] + names[:k]:
                samples[n].append(loops[n](iters) / iters * 1e6)
            progress(f"prepping: round {r + 1}/{rounds}")
        rows: list[Row] = []
        for n in names:
            xs = samples[n]
            row: Row = {
                "impl": n,
                "us_per_checkout": median(xs),
                "us_min": min(xs),
                "x_queuepool_pre_ping": median(a / b for a, b in zip(xs, samples[QUEUE_PING], strict=True)),
            }
            if n in validations0:
                done = engines[n].pool.stats().validations - validations0[n]
                row["pings_per_checkout"] = done / (rounds * iters + iters // 4)
            rows.append(row)
        notes = [
            f"{rounds} rounds x {iters} checkouts per implementation, order rotated; "
            "op: pool.connect().close() on an idle pool (psycopg2)",
            "pings_per_checkout counts SmartPool's validations (stats().validations) during the run",
        ]
        return Trial(rows, notes=notes)
    finally:
        for e in engines.values():
            e.dispose()


def judge(rows: list[Row]) -> Verdict:
    s = find(rows, impl=SMART)
    a = find(rows, impl=SMART_ALWAYS)
    q = find(rows, impl=QUEUE_PING)
    ratios = {
        "SmartPool (bypass window) / QueuePool pre_ping": s["x_queuepool_pre_ping"],
        "SmartPool validation_interval=0 / QueuePool pre_ping": a["x_queuepool_pre_ping"],
    }
    goals = [
        Goal(
            name=f"validated checkout: SmartPool <= {GOAL}x QueuePool(pool_pre_ping=True)",
            target=f"<= {GOAL:.2f}x",
            measured=f"{s['x_queuepool_pre_ping']:.3f}x ({s['us_per_checkout']:.2f} us vs "
            f"{q['us_per_checkout']:.2f} us)",
            met=s["x_queuepool_pre_ping"] <= GOAL,
        )
    ]
    return Verdict(ratios, goals)


SCENARIO = Scenario(
    name="prepping",
    title="validated checkout (us per checkout)",
    trial=trial,
    judge=judge,
)

"""fleet: N processes share one fleet budget of server connections (issue #10 item 5).

For each N (default 2, 4, 8) the same load runs three ways, one after the other
(order rotated every trial, so drift of a shared machine spreads evenly):

* ``budget``: every process has a SmartPool with ``budget=B`` (leases in Redis,
  a key prefix of this run's own);
* ``no budget``: the same pools without a budget (each opens what its threads need);
* ``PgBouncer``: a throw-away PgBouncer in transaction mode with
  ``max_db_connections=B``; the processes' SmartPools (no budget) point at it.

Each process (``multiprocessing`` spawn: a fresh interpreter, as separate
services would be) runs a SmartPool with ``max_size=50`` and T threads looping:
checkout, ``select pg_sleep(0.002)``, COMMIT, return. After a warm-up (the
budget's shares settle) it measures D seconds. The parent samples
``pg_stat_activity`` (and the leases in Redis) every ``SAMPLE`` s for the peak.

What it reports, and why: the peak of server connections against the budget
(the budget's promise), req/s and the latencies (its price in throughput), Jain
over the processes (is the budget shared fairly), and the budget's own cost in
Redis round trips -- per physical connect (acquires, denied asks, renewals and
releases) and per checkout in the measured window (checkouts never call Redis;
what remains are the timed renewals and the connects' own calls).
"""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import threading
import time
from typing import Any

from .harness import (
    APP_NAME,
    Goal,
    Options,
    Row,
    Scenario,
    Trial,
    Verdict,
    find,
    jain_index,
    percentile,
    progress,
    ratio,
    wait_for_headroom,
)

SQL = "select pg_sleep(0.002)"
PROCS = (2, 4, 8)
#: 20, not 40: the shared test server allows 100 connections, and the no-budget variant of
#: N=8 opens N x THREADS of them; --budget / --threads scale it up on a bigger server
BUDGET = 20
THREADS = 8
MAX_SIZE = 50
MIN_SIZE = 1
SECONDS = 10.0
WARMUP = 2.0
SAMPLE = 0.05
BUDGET_KEY = "bench-fleet"

BUDGETED = "SmartPool budget"
FREE = "SmartPool no budget"
BOUNCER = "SmartPool -> PgBouncer"
VARIANTS = (BUDGETED, FREE, BOUNCER)

_trials = itertools.count()


@dataclasses.dataclass(frozen=True)
class Cell:
    """One (N, variant) run, as its worker processes see it (picklable)."""

    variant: str
    procs: int
    threads: int
    budget: int
    seconds: float
    warmup: float
    url: str
    app_name: str | None  # None: the client sets none (PgBouncer tags its backends itself)
    redis_url: str
    prefix: str


# ------------------------------------------------------------------ the worker process


def _engine(cell: Cell) -> Any:
    from sqlalchemy import create_engine

    from ..pool import SmartPool

    kw: dict[str, Any] = {"min_size": MIN_SIZE, "max_size": MAX_SIZE}
    if cell.variant == BUDGETED:
        kw.update(
            budget=cell.budget,
            budget_redis=cell.redis_url,
            budget_prefix=cell.prefix,
            budget_key=BUDGET_KEY,
        )
    args = {"application_name": cell.app_name} if cell.app_name else {}
    return create_engine(cell.url, poolclass=SmartPool, connect_args=args, **kw)


def _snapshot(pool: Any) -> dict[str, int]:
    from .. import stats as S

    counters = pool.stats().counters
    out = {
        "checkouts": int(counters.get(S.CHECKOUTS, 0)),
        "connects": int(counters.get(S.CONNECTIONS_CREATED, 0)),
    }
    status = pool.fleet_status()
    if status is not None:
        out.update({k: int(status[k]) for k in ("store_calls", "acquires", "denied", "syncs")})
    return out


def worker(cell: Cell, index: int, pipe: Any) -> None:
    """One process of the fleet: prewarm, wait for the common start, loop, report."""
    try:
        engine = _engine(cell)
        pool = engine.pool
        pool.wait(timeout=60)
        pipe.send("ready")
        start = float(pipe.recv())
        measure_from = start + cell.warmup
        end = measure_from + cell.seconds
        counts = [0] * cell.threads
        waits: list[list[float]] = [[] for _ in range(cell.threads)]
        lats: list[list[float]] = [[] for _ in range(cell.threads)]
        errors: list[str] = []
        connect = pool.connect
        clock = time.monotonic

        def loop(i: int) -> None:
            my_waits, my_lats = waits[i], lats[i]
            n = 0
            try:
                while (t0 := clock()) < end:
                    conn = connect()
                    t1 = clock()
                    try:
                        cur = conn.cursor()
                        cur.execute(SQL)
                        cur.fetchall()
                        cur.close()
                        conn.commit()
                    finally:
                        conn.close()
                    if t0 >= measure_from:
                        my_waits.append(t1 - t0)
                        my_lats.append(clock() - t0)
                        n += 1
            except Exception as err:  # reported to the parent, never lost
                errors.append(f"{type(err).__name__}: {err}")
            counts[i] = n

        threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(cell.threads)]
        time.sleep(max(0.0, start - clock()))
        for t in threads:
            t.start()
        time.sleep(max(0.0, measure_from - clock()))
        before = _snapshot(pool)
        for t in threads:
            t.join()
        after = _snapshot(pool)
        pipe.send(
            {
                "count": sum(counts),
                "waits": [w for ws in waits for w in ws],
                "lats": [x for xs in lats for x in xs],
                "errors": errors,
                "before": before,
                "after": after,
            }
        )
        engine.dispose()  # gives the leases back (one round trip)
    except BaseException as err:
        pipe.send({"fatal": f"{type(err).__name__}: {err}"})
    finally:
        pipe.close()


# ------------------------------------------------------------------ the parent


class _Sampler:
    """Peaks of server connections (pg_stat_activity by application_name) and of leases in Redis."""

    def __init__(self, url: str, app_name: str, redis_url: str | None, base: str | None) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        self._engine = create_engine(
            url, poolclass=NullPool, connect_args={"application_name": f"{APP_NAME}-sampler"}
        )
        self._app = app_name
        self._redis: Any = None
        self._base = base
        if redis_url is not None and base is not None:
            import redis

            self._redis = redis.Redis.from_url(redis_url, socket_timeout=2)
        self.peak_server = 0
        self.peak_leased = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-fleet-sampler", daemon=True)

    def _leased(self) -> int:
        holders = self._redis.zrange(f"{self._base}:h", 0, -1)
        if not holders:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for h in holders:
            pipe.scard(f"{self._base}:l:{h.decode()}")
        return int(sum(pipe.execute()))

    def _run(self) -> None:
        from sqlalchemy import text

        query = text("select count(*) from pg_stat_activity where application_name = :app")
        with self._engine.connect() as conn:
            while not self._stop.is_set():
                n = int(conn.execute(query, {"app": self._app}).scalar_one())
                conn.rollback()  # a fresh snapshot of pg_stat_activity each time
                self.peak_server = max(self.peak_server, n)
                if self._redis is not None:
                    self.peak_leased = max(self.peak_leased, self._leased())
                self.samples += 1
                self._stop.wait(SAMPLE)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._engine.dispose()
        if self._redis is not None:
            self._redis.close()


def _run_cell(cell: Cell, direct_url: str, count_as: str, base: str | None) -> dict[str, Any]:
    """Start the processes, release them at one instant, collect what each measured."""
    ctx = multiprocessing.get_context("spawn")
    pipes, procs = [], []
    for i in range(cell.procs):
        mine, theirs = ctx.Pipe()
        p = ctx.Process(target=worker, args=(cell, i, theirs), name=f"bench-fleet-{i}", daemon=True)
        p.start()
        theirs.close()
        pipes.append(mine)
        procs.append(p)
    try:
        for pipe in pipes:
            if not pipe.poll(120):
                raise TimeoutError("a fleet worker did not prewarm within 120 s")
            msg = pipe.recv()
            if msg != "ready":
                raise RuntimeError(f"fleet worker failed: {msg}")
        redis_url = cell.redis_url if base is not None else None
        with _Sampler(direct_url, count_as, redis_url, base) as s:
            start = time.monotonic() + 0.2
            for pipe in pipes:
                pipe.send(start)
            results = []
            for pipe in pipes:
                if not pipe.poll(cell.warmup + cell.seconds + 120):
                    raise TimeoutError("a fleet worker did not report")
                results.append(pipe.recv())
        for p in procs:
            p.join(30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(10)
    fatal = [r["fatal"] for r in results if "fatal" in r]
    if fatal:
        raise RuntimeError(f"fleet worker failed: {fatal[0]}")
    errors = [e for r in results for e in r["errors"]]
    if errors:
        raise RuntimeError(f"{len(errors)} fleet threads failed; first: {errors[0]}")
    return {"results": results, "peak_server": s.peak_server, "peak_leased": s.peak_leased}


def _row(cell: Cell, out: dict[str, Any]) -> Row:
    results = out["results"]
    waits = sorted(w for r in results for w in r["waits"])
    lats = sorted(x for r in results for x in r["lats"])
    counts = [r["count"] for r in results]

    def total(when: str, key: str) -> int:
        return sum(r[when].get(key, 0) for r in results)

    def steady(key: str) -> int:
        return total("after", key) - total("before", key)

    connects = total("after", "connects")
    row: Row = {
        "impl": f"N={cell.procs} {cell.variant}",
        "procs": cell.procs,
        "budget": cell.budget,
        "peak_server": out["peak_server"],
        "peak_leased": out["peak_leased"] if cell.variant == BUDGETED else float("nan"),
        "req_per_s": sum(counts) / cell.seconds,
        "wait_p99_ms": percentile(waits, 99) * 1e3,
        "lat_p50_ms": percentile(lats, 50) * 1e3,
        "lat_p99_ms": percentile(lats, 99) * 1e3,
        "jain": jain_index(counts),
        "connects": connects,
    }
    if cell.variant == BUDGETED:
        calls, acq, den, syn = (total("after", k) for k in ("store_calls", "acquires", "denied", "syncs"))
        checkouts = steady("checkouts")
        row.update(
            {
                "rt_per_connect": ratio(calls, connects),
                "acq_per_connect": ratio(acq, connects),
                "denied_per_connect": ratio(den, connects),
                "sync_per_connect": ratio(syn, connects),
                "release_per_connect": ratio(calls - acq - den - syn, connects),
                "steady_checkouts": checkouts,
                "steady_calls": steady("store_calls"),
                "steady_syncs": steady("syncs"),
                "steady_denied": steady("denied"),
                "steady_connects": steady("connects"),
                "steady_calls_per_kcheckout": ratio(steady("store_calls"), checkouts) * 1e3,
            }
        )
    return row


def trial(opts: Options) -> Trial:
    from .. import fleet_redis
    from ..testing.pgbouncer import PgBouncer
    from .harness import delete_redis_keys, redis_key_prefix

    budget = opts.fleet_budget or BUDGET
    threads = opts.fleet_threads or THREADS
    procs_list = opts.fleet_procs or ((2,) if opts.quick else PROCS)
    seconds = opts.fleet_seconds or (1.0 if opts.quick else SECONDS)
    warmup = 0.5 if opts.quick else WARMUP
    rows: list[Row] = []
    k = next(_trials)
    for n in procs_list:
        wait_for_headroom(opts.url, n * min(threads, MAX_SIZE) + 5)
        done: dict[str, Row] = {}
        order = VARIANTS[k % 3 :] + VARIANTS[: k % 3]
        k += 1
        for variant in order:
            tag = f"{APP_NAME}-fleet-{time.monotonic_ns() % 10**9}"
            prefix = redis_key_prefix("fleet").rstrip(":")
            base = fleet_redis.base_key(prefix, BUDGET_KEY)
            progress(f"fleet: N={n} {variant} ({warmup:g} s warm-up + {seconds:g} s)")
            cell = Cell(variant, n, threads, budget, seconds, warmup, opts.url, tag, opts.redis_url, prefix)
            if variant == BOUNCER:
                with PgBouncer(
                    max_db_connections=budget,
                    default_pool_size=budget,
                    max_client_conn=n * (threads + MIN_SIZE) + 20,
                ) as pgb:
                    # no application_name from the clients: PgBouncer would forward it over its own tag
                    cell = dataclasses.replace(cell, url=pgb.url("psycopg2"), app_name=None)
                    out = _run_cell(cell, opts.url, pgb.application_name, None)
            else:
                try:
                    out = _run_cell(cell, opts.url, tag, base if variant == BUDGETED else None)
                finally:
                    if variant == BUDGETED:
                        delete_redis_keys(opts.redis_url, prefix)
            done[variant] = _row(cell, out)
        rows.extend(done[v] for v in VARIANTS)
    notes = [
        f"per process: SmartPool min_size={MIN_SIZE} max_size={MAX_SIZE}, {threads} threads looping "
        "checkout, "
        f"`{SQL}`, COMMIT, return; {warmup:g} s warm-up, then {seconds:g} s measured; processes are "
        "spawned interpreters released at one instant; the three variants of an N run one after the other "
        "(order rotated per trial)",
        f"budget={budget} in Redis (own key prefix, deleted after); PgBouncer: transaction mode, "
        f"max_db_connections={budget}, default_pool_size={budget}; the SmartPools in front of it have "
        "no budget",
        f"peak_server: most backends seen in pg_stat_activity (application_name of the variant; "
        f"PgBouncer's own tag), sampled every {SAMPLE * 1e3:g} ms over warm-up + run; peak_leased: most "
        "leases in Redis at one sample",
        "wait_p99_ms: client-side time to get a connection from the process's SmartPool (for PgBouncer "
        "the queueing happens inside PgBouncer, so compare lat_*: checkout + query + COMMIT + return); "
        "jain over the processes' completions; req/s over the measured window",
        "Redis round trips (budget only): *_per_connect over the whole run (warm-up included) per physical "
        "connect; release = store calls - acquires - denied - syncs (batched releases); steady_*: in the "
        "measured window only, steady_calls_per_kcheckout = Redis calls per 1000 checkouts there",
    ]
    return Trial(rows, notes=notes)


def judge(rows: list[Row]) -> Verdict:
    ratios: dict[str, float] = {}
    goals: list[Goal] = []
    for n in sorted({int(r["procs"]) for r in rows}):
        b = find(rows, impl=f"N={n} {BUDGETED}")
        f = find(rows, impl=f"N={n} {FREE}")
        p = find(rows, impl=f"N={n} {BOUNCER}")
        ratios[f"N={n}: budget req/s / no-budget req/s"] = ratio(b["req_per_s"], f["req_per_s"])
        ratios[f"N={n}: budget req/s / PgBouncer req/s"] = ratio(b["req_per_s"], p["req_per_s"])
        ratios[f"N={n}: budget latency p99 / no-budget latency p99"] = ratio(b["lat_p99_ms"], f["lat_p99_ms"])
        ratios[f"N={n}: budget latency p99 / PgBouncer latency p99"] = ratio(b["lat_p99_ms"], p["lat_p99_ms"])
        ratios[f"N={n}: budget peak server conns / no-budget peak"] = ratio(
            b["peak_server"], f["peak_server"]
        )
        goals.append(
            Goal(
                f"N={n}: server connections never above the budget",
                f"<= {b['budget']:g}",
                f"peak {b['peak_server']:g} (leases {b['peak_leased']:g}; no budget {f['peak_server']:g}, "
                f"PgBouncer {p['peak_server']:g})",
                b["peak_server"] <= b["budget"] and b["peak_leased"] <= b["budget"],
            )
        )
        goals.append(
            Goal(
                f"N={n}: checkouts do not call Redis (steady state)",
                "<= 1 round trip per 1000 checkouts",
                f"{b['steady_calls_per_kcheckout']:.3f} per 1000 ({b['steady_calls']:g} calls, "
                f"{b['steady_syncs']:g} renewals, {b['steady_denied']:g} denied connect asks, "
                f"{b['steady_checkouts']:g} checkouts)",
                b["steady_calls_per_kcheckout"] <= 1.0,
            )
        )
    return Verdict(ratios, goals)


SCENARIO = Scenario(
    name="fleet",
    title="N processes, one fleet budget: SmartPool budget vs no budget vs PgBouncer",
    trial=trial,
    judge=judge,
    needs_redis=True,
)

__all__ = ["SCENARIO", "worker"]

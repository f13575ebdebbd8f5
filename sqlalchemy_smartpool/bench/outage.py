"""outage: the database host dies for 5 s under 16 busy threads, then comes back.

A :class:`~sqlalchemy_smartpool.testing.FaultProxy` in front of PostgreSQL
plays the dead host: every open connection is reset, and for ``OUTAGE``
seconds new connections are black-holed (accepted, never answered -- the
packets are dropped, as when a host vanishes). Then it passes traffic again.

Each thread loops: check out, ``select 1``, return, 5 ms of think time.
Measured per implementation:

* during the outage: requests finished, how many failed fast (an error in
  under ``HUNG`` seconds) and how many hung (took longer, or were still
  blocked when the database came back), and the latency of the requests
  that ended during the outage (p50, p99);
* after it: time from the database's return to the first successful
  request, and until every thread had succeeded again (for SmartPool also
  until the pool was back at ``min_size``).

QueuePool runs twice: with its defaults (no connect timeout, the way most
apps run it) and tuned with the same timeouts SmartPool gets.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .harness import (
    Goal,
    Options,
    Row,
    Scenario,
    Trial,
    Verdict,
    connect_args,
    find,
    percentile,
    progress,
    queue_engine,
    smart_engine,
    wait_for_headroom,
)

THREADS = 16
OUTAGE = 5.0
WARMUP = 1.5
AFTER = 5.0
THINK = 0.005
HUNG = 1.0
SQL = "select 1"
SMART = "SmartPool (connect_timeout=1, acquire_timeout=1)"
QUEUE_DEFAULT = "QueuePool defaults (pool_size=5, overflow=10)"
QUEUE_TUNED = "QueuePool tuned (connect_timeout=1, pool_timeout=1, pre_ping)"


def _make(impl: str, url: str) -> Any:
    if impl == SMART:
        return smart_engine(url, min_size=5, max_size=15, connect_timeout=1, acquire_timeout=1)
    if impl == QUEUE_DEFAULT:
        return queue_engine(url)
    from sqlalchemy import create_engine
    from sqlalchemy.pool import QueuePool

    return create_engine(
        url,
        poolclass=QueuePool,
        pool_size=5,
        max_overflow=10,
        pool_timeout=1,
        pool_pre_ping=True,
        connect_args={**connect_args(url), "connect_timeout": 1},
    )


def _run(impl: str, url: str, proxy: Any, scale: float = 1.0) -> dict[str, float]:
    from sqlalchemy import text

    from ..testing import FaultMode

    engine = _make(impl, url)
    records: list[tuple[float, float, bool]] = []  # (start, end, ok)
    stop = threading.Event()
    lock = threading.Lock()

    def worker() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            ok = True
            try:
                with engine.connect() as conn:
                    conn.execute(text(SQL))
            except Exception:
                ok = False
            t1 = time.monotonic()
            with lock:
                records.append((t0, t1, ok))
            time.sleep(THINK if ok else THINK * 4)

    try:
        pool = engine.pool
        if hasattr(pool, "wait"):
            pool.wait(timeout=30)
        threads = [
            threading.Thread(target=worker, name=f"bench-outage-{i}", daemon=True) for i in range(THREADS)
        ]
        for t in threads:
            t.start()
        time.sleep(WARMUP * scale)
        down = time.monotonic()
        proxy.mode = FaultMode.BLACKHOLE
        proxy.reset_all()
        opened_at: float | None = None
        while time.monotonic() < down + OUTAGE * scale:
            if opened_at is None and hasattr(pool, "stats") and pool.stats().breaker_state != "closed":
                opened_at = time.monotonic()
            time.sleep(0.01)
        proxy.mode = FaultMode.PASS
        up = time.monotonic()
        full_pool_at: float | None = None
        deadline = up + AFTER * scale
        while time.monotonic() < deadline:
            if full_pool_at is None and hasattr(pool, "stats") and pool.stats().pool_size >= 5:
                full_pool_at = time.monotonic()
            time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        hung_threads = sum(t.is_alive() for t in threads)
    finally:
        proxy.mode = FaultMode.PASS
        engine.dispose()

    during = [r for r in records if down <= r[1] < up]
    slow = [(s, e) for s, e, _ in records if e >= down and s < up and e - s >= HUNG]
    # share of the threads' outage time spent inside requests that took >= HUNG
    blocked = sum(min(e, up) - max(s, down) for s, e in slow) / (THREADS * (up - down))
    failed_fast = sum(1 for s, e, ok in during if not ok and e - s < HUNG)
    lat = sorted(e - s for s, e, _ in during)
    ok_after = sorted(e for s, e, ok in records if ok and s >= up)
    first_ok = (ok_after[0] - up) if ok_after else float("nan")
    # every thread succeeded again: the THREADS-th successful request that started after recovery
    all_ok = (ok_after[THREADS - 1] - up) if len(ok_after) >= THREADS else float("nan")
    return {
        "outage_requests": len(during),
        "failed_fast": failed_fast,
        "slow_requests": len(slow),
        "blocked_share": blocked,
        "breaker_open_s": (opened_at - down) if opened_at is not None else float("nan"),
        "outage_p50_ms": percentile(lat, 50) * 1e3 if lat else float("nan"),
        "outage_p99_ms": percentile(lat, 99) * 1e3 if lat else float("nan"),
        "recovery_first_ok_s": first_ok,
        "recovery_16_ok_s": all_ok,
        "pool_refilled_s": (full_pool_at - up) if full_pool_at is not None else float("nan"),
        "threads_stuck_at_end": hung_threads,
    }


def trial(opts: Options) -> Trial:
    from sqlalchemy.engine import make_url

    from ..testing import FaultProxy

    u = make_url(opts.url)
    rows: list[Row] = []
    with FaultProxy(u.host or "127.0.0.1", u.port or 5432) as proxy:
        url = proxy.url_for(opts.url)
        for impl in (SMART, QUEUE_TUNED, QUEUE_DEFAULT):
            wait_for_headroom(opts.url, THREADS + 5)
            progress(f"outage: {impl}")
            rows.append({"impl": impl, **_run(impl, url, proxy, 0.3 if opts.quick else 1.0)})
    notes = [
        f"{THREADS} threads, `{SQL}` + {THINK * 1e3:g} ms think time; at t={WARMUP:g}s every open "
        f"connection is reset and new ones black-holed for {OUTAGE:g}s (FaultProxy), then traffic passes",
        f"slow_requests took >= {HUNG:g}s; blocked_share = share of the threads' outage time spent in "
        f"them (1.0 = every thread hung the whole outage); failed_fast = an error in < {HUNG:g}s; "
        "latencies are of requests that ended during the outage; breaker_open_s = from the outage "
        "to SmartPool's breaker opening (libpq rounds connect_timeout=1 up to 2 s per attempt)",
        "recovery_16_ok_s = until 16 requests started after the return had succeeded; pool_refilled_s = "
        "until SmartPool was back at min_size (nan for QueuePool: it refills on demand)",
    ]
    return Trial(rows, notes=notes)


def judge(rows: list[Row]) -> Verdict:
    s = find(rows, impl=SMART)
    qt = find(rows, impl=QUEUE_TUNED)
    qd = find(rows, impl=QUEUE_DEFAULT)
    ratios = {
        "outage p99 latency: SmartPool / QueuePool tuned": s["outage_p99_ms"] / qt["outage_p99_ms"],
        "outage p99 latency: SmartPool / QueuePool defaults": s["outage_p99_ms"] / qd["outage_p99_ms"],
    }
    goals = [
        Goal(
            "outage: first success within 1 s of the database's return (default probe ceiling)",
            "<= 1 s",
            f"{s['recovery_first_ok_s']:.2f} s (QueuePool tuned {qt['recovery_first_ok_s']:.2f} s, "
            f"defaults {qd['recovery_first_ok_s']:.2f} s)",
            s["recovery_first_ok_s"] <= 1.0,
        ),
    ]
    ratios["outage thread-time blocked: SmartPool / QueuePool tuned"] = (
        s["blocked_share"] / qt["blocked_share"] if qt["blocked_share"] else float("nan")
    )
    ratios["outage thread-time blocked: SmartPool / QueuePool defaults"] = (
        s["blocked_share"] / qd["blocked_share"] if qd["blocked_share"] else float("nan")
    )
    return Verdict(ratios, goals)


SCENARIO = Scenario(
    name="outage",
    title=f"outage: {OUTAGE:g} s dead database host under {THREADS} threads, then recovery",
    trial=trial,
    judge=judge,
)

__all__ = ["SCENARIO"]

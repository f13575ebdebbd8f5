"""redis-outage: the redis host dies for 5 s under 16 busy threads, then comes back.

The redis counterpart of ``outage``. The scenario starts a redis-server of its
own on a free port (never the shared one) and puts a
:class:`~sqlalchemy_smartpool.testing.FaultProxy` in front of it to play the
dead host: every open connection is reset, and for ``OUTAGE`` seconds new
connections are black-holed (accepted, never answered -- the packets are
dropped, as when a host vanishes). Then it passes traffic again. The server is
killed when the scenario ends, whatever happens.

Each thread loops: ``SET`` then ``GET`` of its own key through
``redis.Redis(connection_pool=pool)``, 5 ms of think time. Measured per
implementation:

* during the outage: requests finished, how many failed fast (an error in
  under ``HUNG`` seconds) and how many were slow (took longer, or were still
  blocked when the host came back), the share of the threads' outage time
  spent blocked in those, and the latency of the requests that ended during
  the outage (p50, p99);
* after it: time from the host's return to the first successful request, and
  until 16 requests started after the return had succeeded (for SmartRedisPool
  also until the pool was back at ``min_size``).

SmartRedisPool and ``redis.BlockingConnectionPool`` get the same timeouts:
``socket_connect_timeout=1`` and a 1 s wait for a connection
(``acquire_timeout`` / ``timeout``), no ``socket_timeout`` (redis-py's default:
none). A second BlockingConnectionPool row adds ``socket_timeout=1`` as a
reference: what redis-py needs to bound a black-holed handshake or command.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

from .harness import APP_NAME, Goal, Options, Row, Scenario, Trial, Verdict, find, percentile, progress

THREADS = 16
OUTAGE = 5.0
WARMUP = 1.5
AFTER = 5.0
THINK = 0.005
#: a request slower than this is "slow": longer than the 1 s timeouts, with slack for scheduling
HUNG = 1.5
TIMEOUT = 1.0
HOST = "127.0.0.1"
SMART = "SmartRedisPool (socket_connect_timeout=1, acquire_timeout=1)"
BCP = "redis.BlockingConnectionPool (socket_connect_timeout=1, timeout=1)"
BCP_ST = "redis.BlockingConnectionPool + socket_timeout=1 (reference)"
IMPLS = (SMART, BCP, BCP_ST)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def own_redis_server() -> Iterator[int]:
    """A throw-away redis-server on a free port (no persistence); yields the port, kills it after."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-outage needs the redis-server binary on PATH")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client = redis.Redis(host=HOST, port=port, socket_timeout=0.5)
                try:
                    client.ping()
                finally:
                    client.close()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {port} did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.kill()
        proc.wait(10)


def _make(impl: str, port: int) -> Any:
    import redis

    from ..redis_pool import SmartRedisPool

    kw: dict[str, Any] = {
        "host": HOST,
        "port": port,
        "client_name": APP_NAME,
        "socket_connect_timeout": TIMEOUT,
    }
    if impl == SMART:
        return SmartRedisPool(min_size=5, max_size=15, acquire_timeout=TIMEOUT, **kw)
    if impl == BCP_ST:
        kw["socket_timeout"] = TIMEOUT
    pool: Any = redis.BlockingConnectionPool
    return pool(max_connections=15, timeout=TIMEOUT, **kw)


def _run(impl: str, port: int, proxy: Any, scale: float = 1.0) -> dict[str, float]:
    import redis

    from ..testing import FaultMode

    pool = _make(impl, port)
    client = redis.Redis(connection_pool=pool)
    records: list[tuple[float, float, bool]] = []  # (start, end, ok)
    stop = threading.Event()
    lock = threading.Lock()

    def worker(i: int) -> None:
        key = f"{APP_NAME}:redis-outage:{i}"
        while not stop.is_set():
            t0 = time.monotonic()
            ok = True
            try:
                client.set(key, t0)
                client.get(key)
            except Exception:
                ok = False
            t1 = time.monotonic()
            with lock:
                records.append((t0, t1, ok))
            time.sleep(THINK if ok else THINK * 4)

    threads = [
        threading.Thread(target=worker, args=(i,), name=f"bench-redis-outage-{i}", daemon=True)
        for i in range(THREADS)
    ]
    try:
        if hasattr(pool, "wait"):
            pool.wait(timeout=30)
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
        stuck = sum(t.is_alive() for t in threads)
    finally:
        stop.set()
        proxy.mode = FaultMode.PASS
        if hasattr(pool, "stats"):
            pool.close()
        else:
            pool.disconnect()

    during = [r for r in records if down <= r[1] < up]
    slow = [(s, e) for s, e, _ in records if e >= down and s < up and e - s >= HUNG]
    # share of the threads' outage time spent inside requests that took >= HUNG
    blocked = sum(min(e, up) - max(s, down) for s, e in slow) / (THREADS * (up - down))
    failed_fast = sum(1 for s, e, ok in during if not ok and e - s < HUNG)
    lat = sorted(e - s for s, e, _ in during)
    ok_after = sorted(e for s, e, ok in records if ok and s >= up)
    first_ok = (ok_after[0] - up) if ok_after else float("nan")
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
        "threads_stuck_at_end": stuck,
    }


def trial(opts: Options) -> Trial:
    from ..testing import FaultProxy

    rows: list[Row] = []
    with own_redis_server() as port, FaultProxy(HOST, port) as proxy:
        for impl in IMPLS:
            progress(f"redis-outage: {impl}")
            rows.append({"impl": impl, **_run(impl, proxy.port, proxy, 0.2 if opts.quick else 1.0)})
    notes = [
        f"a redis-server of the scenario's own (free port, killed at the end; --redis-url is not used); "
        f"{THREADS} threads, SET + GET of the thread's own key + {THINK * 1e3:g} ms think time; at "
        f"t={WARMUP:g}s every open connection is reset and new ones black-holed for {OUTAGE:g}s "
        "(FaultProxy), then traffic passes (bytes held during the outage are delivered then)",
        "pools: SmartRedisPool min_size=5 max_size=15; BlockingConnectionPool max_connections=15; "
        "redis.Redis(connection_pool=pool) with redis-py's defaults (a pool's connections retry nothing)",
        f"slow_requests took >= {HUNG:g}s (longer than the {TIMEOUT:g} s timeouts allow, with slack); "
        "blocked_share = share of the threads' outage time spent in them (1.0 = every thread hung the "
        f"whole outage); failed_fast = an error in < {HUNG:g}s; latencies are of requests that ended "
        "during the outage; breaker_open_s = from the outage to SmartRedisPool's breaker opening "
        "(nan: it never opened); against a black hole the TCP connect succeeds and redis-py's handshake "
        "waits on socket_timeout (unset here): SmartRedisPool bounds it by socket_connect_timeout, "
        "redis-py's pools do not",
        "recovery_16_ok_s = until 16 requests started after the return had succeeded; pool_refilled_s = "
        "until SmartRedisPool was back at min_size (nan for BlockingConnectionPool: it connects on demand)",
    ]
    return Trial(rows, notes=notes)


def judge(rows: list[Row]) -> Verdict:
    s, b, r = (find(rows, impl=i) for i in IMPLS)
    ratios = {
        "outage p99 latency: SmartRedisPool / BlockingConnectionPool": s["outage_p99_ms"]
        / b["outage_p99_ms"],
        "outage p99 latency: SmartRedisPool / BlockingConnectionPool + socket_timeout": (
            s["outage_p99_ms"] / r["outage_p99_ms"]
        ),
    }
    for name, a in (("BlockingConnectionPool", b), ("BlockingConnectionPool + socket_timeout", r)):
        ratios[f"outage thread-time blocked: SmartRedisPool / {name}"] = (
            s["blocked_share"] / a["blocked_share"] if a["blocked_share"] else float("nan")
        )
    goals = [
        Goal(
            "redis-outage: first success within 1 s of the host's return",
            "<= 1 s",
            f"{s['recovery_first_ok_s']:.2f} s (BlockingConnectionPool {b['recovery_first_ok_s']:.2f} s, "
            f"+ socket_timeout {r['recovery_first_ok_s']:.2f} s)",
            s["recovery_first_ok_s"] <= 1.0,
        ),
    ]
    return Verdict(ratios, goals)


SCENARIO = Scenario(
    name="redis-outage",
    title=f"redis-outage: {OUTAGE:g} s dead redis host under {THREADS} threads, then recovery",
    trial=trial,
    judge=judge,
    needs_postgres=False,
)

__all__ = ["SCENARIO", "own_redis_server"]

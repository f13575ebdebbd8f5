"""Chaos: steady traffic from 16 threads while a killer terminates ~1% of our backends.

Real PostgreSQL over TCP; the killer only touches backends whose
``application_name`` is this test's own.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from sqlalchemy_smartpool import SmartPool

from ._services import HOST, POSTGRES_PORT, POSTGRES_URL, require_postgres
from .test_resilience import check_invariants, measured, pool_matches_server, terminate_ours

pytestmark = [pytest.mark.integration, pytest.mark.slow]

psycopg2 = pytest.importorskip("psycopg2")

THREADS = 16
REQUESTS_PER_THREAD = 500
KILL_EVERY = 100  # one backend killed per this many finished requests: ~1 %


@pytest.fixture
def app_name() -> Iterator[str]:
    require_postgres()
    name = f"sp-chaos-{uuid.uuid4().hex[:10]}"
    yield name
    with contextlib.suppress(Exception):
        terminate_ours(name)


@pytest.fixture
def engine(app_name: str) -> Iterator[Engine]:
    engine = create_engine(
        POSTGRES_URL,
        poolclass=SmartPool,
        connect_args={"application_name": app_name},
        min_size=4,
        max_size=10,
        acquire_timeout=10,
        # dead idle connections are found by keepalive pings, not only at checkout,
        # so the pool's size can be compared with the server's count afterwards
        keepalive_interval=0.5,
        housekeeping_interval=0.1,
        leak_detection_threshold=5.0,
    )
    yield engine
    engine.pool.close()  # type: ignore[attr-defined]


def test_random_backend_kills_under_load(engine: Engine, app_name: str) -> None:
    """>= 99.9 % of requests succeed while ~1 % of backends are killed at random.

    Retry policy (what an application's retry-on-disconnect does): a request
    that fails with a disconnect -- ``DBAPIError`` with
    ``connection_invalidated=True`` -- is retried once. It counts as failed if
    the retry fails too, or if it fails any other way (a pool timeout, any other
    error). Afterwards the pool's size equals our backends on the server, its
    invariants hold and no connection is left checked out.
    """
    pool: Any = engine.pool
    pool.wait(10)
    seed = int(os.environ.get("SMARTPOOL_CHAOS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    lock = threading.Lock()
    done = 0
    retried = 0
    failures: list[tuple[int, BaseException]] = []  # (attempt that failed last, error)
    stop_killer = threading.Event()
    kills: list[int] = []

    def request(i: int) -> None:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT pg_sleep(0.001), count(*) FROM generate_series(1, :n)"), {"n": i % 50 + 1}
            ).one()
            assert row[1] == i % 50 + 1

    def client() -> None:
        nonlocal done, retried
        for i in range(REQUESTS_PER_THREAD):
            error: BaseException | None = None
            for attempt in (1, 2):
                try:
                    request(i)
                    error = None
                    break
                except sa_exc.DBAPIError as err:
                    error = err
                    if not (err.connection_invalidated and attempt == 1):
                        break
                    with lock:
                        retried += 1
                except Exception as err:
                    error = err
                    break
            with lock:
                done += 1
                if error is not None:
                    failures.append((attempt, error))

    def killer() -> None:
        admin = psycopg2.connect(host=HOST, port=POSTGRES_PORT, user="postgres", dbname="test")
        admin.autocommit = True
        try:
            next_kill = KILL_EVERY
            while not stop_killer.is_set():
                if done < next_kill:
                    time.sleep(0.001)
                    continue
                next_kill += KILL_EVERY
                with admin.cursor() as cur:
                    cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app_name,))
                    pids = sorted(row[0] for row in cur.fetchall())
                    if not pids:
                        continue
                    pid = rng.choice(pids)
                    cur.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE pid = %s AND application_name = %s",
                        (pid, app_name),
                    )
                    if cur.fetchone():
                        kills.append(pid)
        finally:
            admin.close()

    t0 = time.monotonic()
    killer_thread = threading.Thread(target=killer, name="chaos-killer", daemon=True)
    killer_thread.start()
    clients = [threading.Thread(target=client, name=f"chaos-{i}", daemon=True) for i in range(THREADS)]
    for t in clients:
        t.start()
    for t in clients:
        t.join(120)
    stop_killer.set()
    killer_thread.join(10)
    elapsed = time.monotonic() - t0

    total = THREADS * REQUESTS_PER_THREAD
    assert done == total, f"only {done} of {total} requests finished"
    success = 1 - len(failures) / total
    measured(
        "chaos",
        f"seed={seed} {total} requests in {elapsed:.1f}s, {len(kills)} backends killed, "
        f"{retried} retried once, {len(failures)} failed -> success {success:.4%}",
    )
    for attempt, err in failures[:5]:
        invalidated = getattr(err, "connection_invalidated", None)
        measured("chaos failure", f"attempt {attempt}, invalidated={invalidated}: {err!r:.200}")
    assert len(kills) >= total // KILL_EVERY // 2, f"killer only managed {len(kills)} kills"
    assert success >= 0.999, [repr(e) for _, e in failures[:5]]

    ok, last = pool_matches_server(pool, app_name, timeout=8)
    assert ok, last
    check_invariants(pool)
    stats = pool.stats()
    assert stats.in_use == 0 and stats.waiting == 0, pool.status()
    assert stats.counters["leaks_suspected"] == 0
    assert stats.counters["connections_invalidated"] >= 1

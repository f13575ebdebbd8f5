"""Server-side exhaustion ("too many clients") without touching global server settings.

A dedicated account limited to 3 connections (PostgreSQL ``CONNECTION LIMIT 3``,
MariaDB ``MAX_USER_CONNECTIONS 3``) stands in for a server that is out of
connection slots, while SmartPool believes it may open 10. The account is
created here if missing and used by this file only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from sqlalchemy_smartpool import CircuitBreakerConfig, CircuitOpenError, PoolTimeout, SmartPool

from ._services import HOST, MYSQL_PORT, POSTGRES_PORT, require_mysql, require_postgres
from .test_resilience import admin_query, check_invariants, measured, wait_until

pytestmark = pytest.mark.integration

#: this run's own account (another `make test` beside this one must not share its limit)
ROLE = f"smartpool_limited_{os.getpid()}"
LIMIT = 3
MAX_SIZE = 10
THREADS = 10
HOLD = 2.0  # each request in the burst holds its connection this long
ACQUIRE_TIMEOUT = 1.2  # < HOLD: a request not served by a new connection times out


@dataclasses.dataclass
class Server:
    name: str
    url: str
    sleep_sql: str
    count_ours: Callable[[], int]
    connect_args: dict[str, Any]


def _mysql_admin(sql: str, *params: Any) -> list[tuple[Any, ...]]:
    import pymysql

    conn = pymysql.connect(host=HOST, port=MYSQL_PORT, user="root", password="", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params or None)
            return list(cur.fetchall())
    finally:
        conn.close()


def _postgres() -> Server:
    require_postgres()
    psycopg2 = pytest.importorskip("psycopg2")
    # made by an earlier run (or a concurrent one) is fine
    with contextlib.suppress(psycopg2.errors.DuplicateObject, psycopg2.errors.UniqueViolation):
        admin_query(f"CREATE ROLE {ROLE} LOGIN CONNECTION LIMIT {LIMIT}")
    admin_query(f"ALTER ROLE {ROLE} LOGIN NOSUPERUSER CONNECTION LIMIT {LIMIT}")
    # trust auth on 127.0.0.1 must hold for this role too, or nothing below means anything
    psycopg2.connect(host=HOST, port=POSTGRES_PORT, user=ROLE, dbname="test").close()
    app = f"sp-exh-{uuid.uuid4().hex[:8]}"
    return Server(
        name="postgresql",
        url=f"postgresql+psycopg2://{ROLE}@{HOST}:{POSTGRES_PORT}/test",
        sleep_sql=f"SELECT pg_sleep({HOLD})",
        count_ours=lambda: int(
            admin_query("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", ROLE)[0][0]
        ),
        connect_args={"application_name": app},
    )


def _mariadb() -> Server:
    require_mysql()
    pytest.importorskip("pymysql")
    _mysql_admin(f"CREATE USER IF NOT EXISTS '{ROLE}'@'{HOST}' WITH MAX_USER_CONNECTIONS {LIMIT}")
    _mysql_admin(f"ALTER USER '{ROLE}'@'{HOST}' WITH MAX_USER_CONNECTIONS {LIMIT}")
    _mysql_admin(f"GRANT SELECT ON test.* TO '{ROLE}'@'{HOST}'")
    return Server(
        name="mariadb",
        url=f"mysql+pymysql://{ROLE}@{HOST}:{MYSQL_PORT}/test",
        sleep_sql=f"SELECT SLEEP({HOLD})",
        count_ours=lambda: int(
            _mysql_admin("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s", ROLE)[0][0]
        ),
        connect_args={},
    )


@pytest.fixture(scope="module", autouse=True)
def _drop_accounts() -> Iterator[None]:
    """The accounts are this run's: dropped (their sessions ended) when the module is done."""
    yield
    with contextlib.suppress(Exception):
        admin_query(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{ROLE}'")
        admin_query(f"DROP ROLE IF EXISTS {ROLE}")
    with contextlib.suppress(Exception):
        _mysql_admin(f"DROP USER IF EXISTS '{ROLE}'@'{HOST}'")


@pytest.fixture(params=["postgresql", "mariadb"])
def server(request: pytest.FixtureRequest) -> Server:
    srv = _postgres() if request.param == "postgresql" else _mariadb()
    # the account is this file's own: earlier runs' connections must be gone first
    assert wait_until(lambda: srv.count_ours() == 0, 10, 0.1), f"{ROLE} still has connections open"
    return srv


@pytest.fixture
def engine(server: Server) -> Iterator[Engine]:
    engine = create_engine(
        server.url,
        poolclass=SmartPool,
        connect_args=server.connect_args,
        min_size=0,
        max_size=MAX_SIZE,
        acquire_timeout=ACQUIRE_TIMEOUT,
        breaker=CircuitBreakerConfig(failure_threshold=3),
    )
    yield engine
    engine.pool.close()  # type: ignore[attr-defined]


def _burst(
    engine: Engine, sql: str, threads: int, repeat: int = 1
) -> list[tuple[float, BaseException | None]]:
    """``threads`` threads start together, each running ``sql`` ``repeat`` times; (duration, error) each."""
    results: list[tuple[float, BaseException | None]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads, timeout=10)

    def run() -> None:
        barrier.wait()
        for _ in range(repeat):
            t0 = time.monotonic()
            err: BaseException | None = None
            try:
                with engine.connect() as conn:
                    conn.execute(text(sql))
            except Exception as e:
                err = e
            with lock:
                results.append((time.monotonic() - t0, err))

    group = [threading.Thread(target=run, name=f"exh-{i}") for i in range(threads)]
    for t in group:
        t.start()
    for t in group:
        t.join(30)
    return results


def test_server_out_of_connections(server: Server, engine: Engine) -> None:
    """10 threads want a connection each; the server grants 3.

    * the 3 are used; every other request fails after ``acquire_timeout`` with a
      clear error (PoolTimeout, or CircuitOpenError) that carries the pool's state;
    * the breaker opens on the refused connects, but does not fail requests that
      a connection in use can still serve -- they wait (and time out here only
      because each holder keeps its connection longer than ``acquire_timeout``);
    * nothing leaks: the pool never counts more than 3, nothing stays pending,
      the invariants hold, and afterwards all requests succeed on the 3.
    """
    pool: Any = engine.pool
    max_size_seen = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal max_size_seen
        while not stop.is_set():
            max_size_seen = max(max_size_seen, pool._core.size)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        results = _burst(engine, server.sleep_sql, THREADS)
        stats_after_burst = pool.stats()
    finally:
        stop.set()
        sampler.join(5)

    errors = [err for _, err in results if err is not None]
    ok = [d for d, err in results if err is None]
    kinds: dict[str, int] = {}
    for err in errors:
        kinds[type(err).__name__] = kinds.get(type(err).__name__, 0) + 1
    measured(
        f"{server.name} exhaustion",
        f"{len(ok)} served, errors {kinds}, breaker={stats_after_burst.breaker_state} "
        f"opened={stats_after_burst.counters['breaker_opened']} "
        f"failed connects={stats_after_burst.counters['connections_failed']}, "
        f"slowest error after {max((d for d, e in results if e is not None), default=0):.2f}s",
    )
    assert len(results) == THREADS
    assert len(ok) == LIMIT, [repr(e) for e in errors]
    for err in errors:
        assert isinstance(err, (PoolTimeout, CircuitOpenError)), repr(err)
        message = str(err)
        for part in ("size=", "in_use=", "waiting=", f"max_size={MAX_SIZE}", "breaker="):
            assert part in message, message
        assert "password" not in message.lower()
    assert max(d for d, e in results if e is not None) < ACQUIRE_TIMEOUT + 1.5
    assert stats_after_burst.counters["breaker_opened"] >= 1
    assert stats_after_burst.counters["connections_failed"] >= 3
    assert max_size_seen <= LIMIT

    # no slot leaked: nothing pending, the pool's count is the server's
    assert wait_until(lambda: pool.stats().connections_pending == 0, 5), pool.status()
    check_invariants(pool)
    assert pool.stats().size <= LIMIT
    assert wait_until(lambda: server.count_ours() == pool.stats().size, 5, 0.05), (
        f"server has {server.count_ours()}, pool counts {pool.stats().size}"
    )

    # the 3 connections serve everyone once nobody hogs them
    later = _burst(engine, "SELECT 1", THREADS, repeat=5)
    assert [e for _, e in later if e is not None] == []
    check_invariants(pool)
    assert pool.stats().size <= LIMIT

    # (a connect still in flight at close() is test_resilience's
    # test_close_with_connects_in_flight_leaves_nothing_open; not this test's subject)
    assert wait_until(lambda: pool.stats().connections_pending == 0, 5), pool.status()
    pool.close()
    assert wait_until(lambda: server.count_ours() == 0, 5, 0.05), "connections left open on the server"

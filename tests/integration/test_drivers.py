"""SmartPool with every supported driver, against the real servers.

Each test runs for sqlite (file database), psycopg2, psycopg 3, mysqlclient
and PyMySQL. Server-side effects (a backend gone after dispose, a killed
session replaced) are checked on the server, not only in the pool's counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from sqlalchemy_smartpool import SmartPool

from .conftest import Backend, EngineFactory, PgAdmin, wait_until

pytestmark = pytest.mark.integration


def _create_table(engine: sa.Engine, name: str) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, note VARCHAR(20))")


def _drop_table(engine: sa.Engine, name: str) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")


def test_round_trip_and_prewarm(backend: Backend, make_engine: EngineFactory, request: Any) -> None:
    engine = make_engine(backend.url, poolclass=SmartPool, min_size=2, max_size=5)
    assert type(engine.pool) is SmartPool
    engine.pool.wait(timeout=15)
    assert engine.pool.stats().size == 2
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
        assert conn.execute(sa.select(sa.literal("smartpool"))).scalar_one() == "smartpool"
    if backend.kind == "postgresql":
        admin: PgAdmin = request.getfixturevalue("pg_admin")
        assert wait_until(lambda: admin.count(backend.app) == 2, timeout=5), admin.pids(backend.app)


def test_reset_on_return_rolls_back(backend: Backend, make_engine: EngineFactory, table_name: str) -> None:
    """A connection returned mid-transaction is rolled back by the pool before anyone reuses it."""
    engine = make_engine(backend.url, poolclass=SmartPool, min_size=1, max_size=1)
    _create_table(engine, table_name)
    try:
        raw = engine.raw_connection()  # DBAPI level: no Connection to roll back for us
        dbapi_conn = raw.dbapi_connection
        cur = raw.cursor()
        cur.execute(f"INSERT INTO {table_name} (id, note) VALUES (1, 'uncommitted')")
        cur.execute(f"SELECT COUNT(*) FROM {table_name}")
        assert cur.fetchone()[0] == 1  # visible inside its own transaction
        cur.close()
        raw.close()  # back to the pool without commit

        with engine.connect() as conn:
            # max_size=1: the very same DBAPI connection, so a missing reset would show here
            assert conn.connection.dbapi_connection is dbapi_conn
            assert conn.exec_driver_sql(f"SELECT COUNT(*) FROM {table_name}").scalar_one() == 0
    finally:
        _drop_table(engine, table_name)


def test_invalidate_replaces_connection(
    backend: Backend, make_engine: EngineFactory, server_alive: Callable[[set[int]], set[int]]
) -> None:
    engine = make_engine(backend.url, poolclass=SmartPool, min_size=2, max_size=5)
    pool = engine.pool
    pool.wait(timeout=15)
    with engine.connect() as conn:
        session = backend.session_id(conn)
        dead = conn.connection.dbapi_connection  # kept referenced: its id() cannot be reused
        conn.invalidate()
    stats = pool.stats()
    assert stats.counters["connections_invalidated"] == 1
    assert wait_until(lambda: pool.stats().size == 2 and pool.stats().connections_pending == 0), pool.status()
    assert pool.stats().counters["connections_created"] == 3
    assert wait_until(lambda: not server_alive({session})), "invalidated session still open on the server"
    for _ in range(3):
        with engine.connect() as conn:
            assert conn.connection.dbapi_connection is not dead
            assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
    pool._core.check_invariants()


def _kill(backend: Backend, session: int, request: Any) -> None:
    if backend.kind == "postgresql":
        admin: Any = request.getfixturevalue("pg_admin")
        admin.query("SELECT pg_terminate_backend(%s)", session)
    else:
        admin = request.getfixturevalue("my_admin")
        admin.kill({session})
    assert wait_until(lambda: not admin.alive({session})), "kill did not take"


def test_validation_after_idle(backend: Backend, make_engine: EngineFactory, request: Any) -> None:
    """An idle connection is pinged on checkout; inside the bypass window it is not;
    a connection the server dropped is replaced transparently."""
    engine = make_engine(backend.url, poolclass=SmartPool, min_size=2, max_size=5, validation_interval=0.4)
    pool = engine.pool
    pool.wait(timeout=15)
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    time.sleep(0.6)
    before = pool.stats().counters["validations"]
    with engine.connect() as conn:
        session = backend.session_id(conn)
    assert pool.stats().counters["validations"] == before + 1
    with engine.connect() as conn:  # used a moment ago: no ping
        assert backend.session_id(conn) == session
    assert pool.stats().counters["validations"] == before + 1

    if not backend.has_server:
        return
    _kill(backend, session, request)
    time.sleep(0.6)
    with engine.connect() as conn:  # LIFO hands out the killed one first; validation must catch it
        assert backend.session_id(conn) != session
        assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
    counters = pool.stats().counters
    assert counters["validations_failed"] == 1, counters
    assert wait_until(lambda: pool.stats().size == 2), pool.status()
    pool._core.check_invariants()


def test_plugin_url(backend: Backend, make_engine: EngineFactory, request: Any) -> None:
    """``?plugin=smartpool`` alone selects SmartPool; its keys never reach the driver."""
    sep = "&" if "?" in backend.url else "?"
    url = (
        f"{backend.url}{sep}plugin=smartpool&smartpool_min_size=2&smartpool_max_size=5"
        "&smartpool_validation_interval=0.25"
    )
    engine = make_engine(url)
    seen: list[tuple[Any, dict[str, Any]]] = []
    sa.event.listen(engine, "do_connect", lambda d, rec, cargs, cparams: seen.append((cargs, dict(cparams))))
    assert type(engine.pool) is SmartPool
    cfg = engine.pool.config
    assert (cfg.min_size, cfg.max_size, cfg.validation_interval) == (2, 5, 0.25)
    assert not [k for k in engine.url.query if k.startswith("smartpool") or k == "plugin"], engine.url
    engine.pool.wait(timeout=15)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
    assert seen, "do_connect never ran"
    for cargs, cparams in seen:
        assert "smartpool_" not in repr(cargs) + repr(cparams), (cargs, cparams)
    if backend.kind == "postgresql":
        admin: PgAdmin = request.getfixturevalue("pg_admin")
        assert wait_until(lambda: admin.count(backend.app) == 2, timeout=5)


def _sessions(backend: Backend, engine: sa.Engine, n: int) -> set[int]:
    """Session ids of ``n`` connections checked out at once (so they are distinct)."""
    conns = [engine.connect() for _ in range(n)]
    try:
        ids = {backend.session_id(c) for c in conns}
    finally:
        for c in conns:
            c.close()
    assert len(ids) == n
    return ids


def test_dispose_closes_idle_connections(
    backend: Backend, make_engine: EngineFactory, server_alive: Callable[[set[int]], set[int]], request: Any
) -> None:
    engine = make_engine(backend.url, poolclass=SmartPool, min_size=2, max_size=5)
    pool = engine.pool
    pool.wait(timeout=15)
    sessions = _sessions(backend, engine, 2)
    assert pool.stats().size == 2
    if backend.kind == "postgresql":
        admin: PgAdmin = request.getfixturevalue("pg_admin")
        assert admin.pids(backend.app) == sessions
    closed_before = pool.stats().counters["connections_closed"]

    pool.dispose()

    stats = pool.stats()
    assert (stats.size, stats.idle, stats.in_use) == (0, 0, 0)
    assert stats.counters["connections_closed"] == closed_before + 2
    assert wait_until(lambda: not server_alive(sessions)), "disposed connections still open on the server"
    # the pool stays usable and restarts its background work (prewarm) at the next checkout
    with engine.connect() as conn:
        assert backend.session_id(conn) not in sessions
    assert wait_until(lambda: pool.stats().size == 2), pool.status()
    pool._core.check_invariants()


def test_engine_dispose_and_continue(
    backend: Backend, make_engine: EngineFactory, server_alive: Callable[[set[int]], set[int]]
) -> None:
    engine = make_engine(backend.url, poolclass=SmartPool, min_size=2, max_size=5, validation_interval=1.5)
    old_pool = engine.pool
    old_pool.wait(timeout=15)
    sessions = _sessions(backend, engine, 2)
    held = engine.connect()  # checked out across the dispose
    held_session = backend.session_id(held)

    engine.dispose()

    new_pool = engine.pool
    assert type(new_pool) is SmartPool and new_pool is not old_pool
    assert new_pool.config == old_pool.config
    assert wait_until(lambda: not server_alive(sessions - {held_session}))
    assert held.exec_driver_sql("SELECT 1").scalar_one() == 1  # a checked-out connection keeps working
    held.close()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
        assert backend.session_id(conn) not in sessions
    new_pool.wait(timeout=15)
    assert new_pool.stats().size == 2
    old_pool._core.check_invariants()
    new_pool._core.check_invariants()


def test_stats_are_consistent(backend: Backend, make_engine: EngineFactory) -> None:
    engine = make_engine(backend.url, poolclass=SmartPool, min_size=2, max_size=5)
    pool = engine.pool
    pool.wait(timeout=15)
    n = 25
    for _ in range(n):
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    held = [engine.connect() for _ in range(3)]
    try:
        stats = pool.stats()
        assert stats.in_use == 3 == pool.checkedout()
        assert stats.size == stats.idle + stats.in_use == pool.size()
        assert 3 <= stats.size <= 5
    finally:
        for c in held:
            c.close()
    stats = pool.stats()
    c = stats.counters
    assert c["checkouts"] == n + 3
    assert stats.checkouts == c["checkouts"]  # counters read as attributes too
    assert c["timeouts"] == 0 and c["connections_failed"] == 0
    assert stats.in_use == 0 and stats.waiting == 0
    assert stats.idle == stats.size
    assert (stats.min_size, stats.max_size) == (2, 5)
    assert c["connections_created"] == stats.size + c["connections_closed"]
    assert 0 <= stats.wait_p50 <= stats.wait_p95 <= stats.wait_p99 <= stats.wait_max < 15
    flat = stats.as_dict()
    assert flat["pool_size"] == stats.size and flat["checkouts"] == n + 3
    assert f"size={stats.size}" in pool.status()
    pool._core.check_invariants()

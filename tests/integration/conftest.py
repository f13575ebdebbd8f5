"""Fixtures for the SmartPool integration tests against the real servers on 127.0.0.1.

Every test gets its own ``application_name`` (PostgreSQL) so counts taken
from ``pg_stat_activity`` see only that test's backends, even while other
suites use the same server. MariaDB has no such tag, so its tests track the
``CONNECTION_ID()`` of the connections they made and look those ids up in
``information_schema.processlist``.

Engines made through :func:`make_engine` are always disposed and their pools
closed at teardown, and any backend left behind under the test's
application_name is terminated, so one failing test cannot leak connections
into the next.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sqlalchemy_smartpool import SmartPool
from sqlalchemy_smartpool.testing import FaultProxy

from ._services import HOST, MYSQL_PORT, POSTGRES_PORT, require_mysql, require_postgres

ADMIN_APP = "smartpool-it-admin"


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; return its last value.

    Backend start/exit and background connects are asynchronous: tests poll for
    the state they expect instead of sleeping a guessed amount.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


# -- server-side views ---------------------------------------------------------------


class PgAdmin:
    """One autocommit psycopg2 connection for looking at ``pg_stat_activity``."""

    def __init__(self) -> None:
        import psycopg2

        self.conn = psycopg2.connect(
            host=HOST, port=POSTGRES_PORT, user="postgres", dbname="test", application_name=ADMIN_APP
        )
        self.conn.autocommit = True

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall()) if cur.description else []

    def pids(self, app: str) -> set[int]:
        """Backend pids of client connections tagged with ``app``."""
        return {
            r[0]
            for r in self.query(
                "SELECT pid FROM pg_stat_activity"
                " WHERE application_name = %s AND backend_type = 'client backend'",
                app,
            )
        }

    def count(self, app: str) -> int:
        return len(self.pids(app))

    def states(self, app: str) -> dict[int, str]:
        return dict(self.query("SELECT pid, state FROM pg_stat_activity WHERE application_name = %s", app))

    def alive(self, pids: set[int]) -> set[int]:
        if not pids:
            return set()
        rows = self.query("SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", list(pids))
        return {r[0] for r in rows}

    def terminate(self, app: str) -> None:
        """Kill the backends of one test (never anybody else's)."""
        self.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", app)

    def close(self) -> None:
        self.conn.close()


class MyAdmin:
    """One autocommit PyMySQL connection for looking at the MariaDB process list."""

    def __init__(self) -> None:
        import pymysql

        self.conn = pymysql.connect(host=HOST, port=MYSQL_PORT, user="root", password="", database="test")
        self.conn.autocommit(True)

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql, args or None)
            return list(cur.fetchall())

    def alive(self, ids: set[int]) -> set[int]:
        if not ids:
            return set()
        marks = ",".join(["%s"] * len(ids))
        rows = self.query(f"SELECT id FROM information_schema.processlist WHERE id IN ({marks})", *ids)
        return {int(r[0]) for r in rows}

    def kill(self, ids: set[int]) -> None:
        for i in ids:
            with contextlib.suppress(Exception):
                self.query("KILL %s", i)

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[PgAdmin]:
    require_postgres()
    admin = PgAdmin()
    yield admin
    admin.close()


@pytest.fixture(scope="session")
def my_admin() -> Iterator[MyAdmin]:
    require_mysql()
    admin = MyAdmin()
    yield admin
    admin.close()


# -- per-test identity and engines ---------------------------------------------------------


@pytest.fixture
def app_name() -> str:
    """A PostgreSQL application_name unique to this test (scopes pg_stat_activity counts)."""
    return f"smartpool-it-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def table_name() -> str:
    """A table name unique to this test, so parallel suites on the same database never collide."""
    return f"sp_it_{uuid.uuid4().hex[:10]}"


def pg_url(app: str, driver: str = "psycopg2") -> str:
    return f"postgresql+{driver}://postgres@{HOST}:{POSTGRES_PORT}/test?application_name={app}"


def mysql_url(driver: str = "pymysql") -> str:
    return f"mysql+{driver}://root@{HOST}:{MYSQL_PORT}/test"


EngineFactory = Callable[..., Engine]


@pytest.fixture
def make_engine(app_name: str) -> Iterator[EngineFactory]:
    """``create_engine`` whose engines are disposed and pools closed at teardown.

    ``Engine.dispose()`` replaces the pool, so every pool an engine ever had is
    remembered and closed for good; then the test's stray PostgreSQL backends, if
    any, are terminated.
    """
    engines: list[Engine] = []
    pools: list[Any] = []

    def factory(url: str, **kw: Any) -> Engine:
        engine = sa.create_engine(url, **kw)
        engines.append(engine)
        dispose = engine.dispose

        def remember_then_dispose(close: bool = True) -> None:
            pools.append(engine.pool)  # Engine.dispose() swaps in a new pool
            dispose(close=close)

        engine.dispose = remember_then_dispose  # type: ignore[method-assign]
        return engine

    yield factory
    for engine in engines:
        pools.append(engine.pool)
        engine.dispose()
    for pool in pools:
        if isinstance(pool, SmartPool):
            pool.close()
        else:
            pool.dispose()
    if any(str(e.url).startswith("postgresql") for e in engines):
        import psycopg2

        with contextlib.suppress(psycopg2.Error):
            admin = PgAdmin()
            try:
                if not wait_until(lambda: admin.count(app_name) == 0, timeout=3.0):
                    admin.terminate(app_name)
            finally:
                admin.close()


# -- drivers ---------------------------------------------------------------------------------


@dataclass
class Backend:
    """One driver: how to reach it and how to name a connection's server session."""

    driver: str
    url: str
    kind: str  # "sqlite" | "postgresql" | "mysql"
    app: str
    #: sqlite's "session id" is id() of the DBAPI connection: keep each one alive so no id is reused
    seen: list[Any] = field(default_factory=list)

    @property
    def has_server(self) -> bool:
        return self.kind != "sqlite"

    def session_id(self, conn: Connection) -> int:
        """The server's id for the session behind ``conn`` (sqlite: the DBAPI object's id)."""
        if self.kind == "postgresql":
            return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
        if self.kind == "mysql":
            return int(conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one())
        dbapi_conn = conn.connection.dbapi_connection
        self.seen.append(dbapi_conn)
        return id(dbapi_conn)


DRIVERS = ["sqlite", "psycopg2", "psycopg", "mysqldb", "pymysql"]


@pytest.fixture(params=DRIVERS)
def backend(request: pytest.FixtureRequest, tmp_path: Path, app_name: str) -> Backend:
    driver: str = request.param
    if driver == "sqlite":
        return Backend(driver, f"sqlite:///{tmp_path / 'smartpool.db'}", "sqlite", app_name)
    if driver in ("psycopg2", "psycopg"):
        pytest.importorskip(driver)
        require_postgres()
        return Backend(driver, pg_url(app_name, driver), "postgresql", app_name)
    pytest.importorskip("MySQLdb" if driver == "mysqldb" else "pymysql")
    require_mysql()
    return Backend(driver, mysql_url(driver), "mysql", app_name)


@pytest.fixture
def server_alive(backend: Backend, request: pytest.FixtureRequest) -> Callable[[set[int]], set[int]]:
    """Which of the given session ids still exist on the server (sqlite: none to check)."""
    if backend.kind == "postgresql":
        admin: Any = request.getfixturevalue("pg_admin")
    elif backend.kind == "mysql":
        admin = request.getfixturevalue("my_admin")
    else:
        return lambda ids: set()
    return admin.alive  # type: ignore[no-any-return]


@pytest.fixture
def pg_proxy() -> Iterator[FaultProxy]:
    """A fault-injection proxy in front of the local PostgreSQL (the proxy and resilience suites)."""
    require_postgres()
    with FaultProxy(HOST, POSTGRES_PORT) as proxy:
        yield proxy


@pytest.fixture
def own_redis() -> Iterator[Any]:
    """A redis-server of the test's own (``_ownredis.OwnRedis``), started; stopped after the test."""
    from ._ownredis import OwnRedis

    server = OwnRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()

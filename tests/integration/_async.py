"""Shared pieces of the AsyncSmartPool integration tests (real servers, asyncio drivers).

Each test runs its scenario with a plain ``asyncio.run(...)`` (no pytest
plugin). Engines come from :func:`make_async_engine`, which tags every
PostgreSQL connection with the test's unique ``application_name`` (through
``connect_args``, as each driver spells it) so ``pg_stat_activity`` counts
see only that test's backends. Scenarios dispose their engines on their own
loop; the fixture's teardown is the safety net: it closes what is left and
terminates any backend still tagged with the test's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from sqlalchemy_smartpool import AsyncSmartPool

from ._services import HOST, MYSQL_PORT, POSTGRES_PORT, require_mysql, require_postgres
from .conftest import PgAdmin, wait_until

ASYNC_DRIVERS = ["asyncpg", "psycopg", "aiomysql", "aiosqlite"]
PG_DRIVERS = ["asyncpg", "psycopg"]
SERVER_DRIVERS = ["asyncpg", "psycopg", "aiomysql"]


def pg_async_url(driver: str, host: str = HOST, port: int = POSTGRES_PORT) -> str:
    return f"postgresql+{driver}://postgres@{host}:{port}/test"


def app_connect_args(driver: str, app: str) -> dict[str, Any]:
    """``connect_args`` that put ``app`` in pg_stat_activity.application_name."""
    if driver == "asyncpg":
        return {"server_settings": {"application_name": app}}
    if driver == "psycopg":
        return {"application_name": app}
    return {}


@dataclass
class AsyncBackend:
    """One asyncio driver: its URL, its server kind and how to tag its connections."""

    driver: str
    url: str
    kind: str  # "postgresql" | "mysql" | "sqlite"
    app: str

    @property
    def connect_args(self) -> dict[str, Any]:
        return app_connect_args(self.driver, self.app)

    @property
    def has_server(self) -> bool:
        return self.kind != "sqlite"


def async_backend(driver: str, tmp_path: Path, app: str) -> AsyncBackend:
    if driver == "aiosqlite":
        pytest.importorskip("aiosqlite")
        return AsyncBackend(driver, f"sqlite+aiosqlite:///{tmp_path / 'smartpool.db'}", "sqlite", app)
    if driver in PG_DRIVERS:
        pytest.importorskip(driver)
        require_postgres()
        return AsyncBackend(driver, pg_async_url(driver), "postgresql", app)
    pytest.importorskip("aiomysql")
    require_mysql()
    return AsyncBackend(driver, f"mysql+aiomysql://root@{HOST}:{MYSQL_PORT}/test", "mysql", app)


AsyncEngineFactory = Callable[..., AsyncEngine]


@contextlib.contextmanager
def async_engines(app: str) -> Iterator[AsyncEngineFactory]:
    """``create_async_engine`` with AsyncSmartPool; leftovers closed and terminated at exit."""
    engines: list[AsyncEngine] = []

    def factory(url: str, *, driver: str | None = None, **kw: Any) -> AsyncEngine:
        if driver is not None:
            args = dict(app_connect_args(driver, app))
            args.update(kw.pop("connect_args", {}))
            kw["connect_args"] = args
        kw.setdefault("poolclass", AsyncSmartPool)
        engine = create_async_engine(url, **kw)
        engines.append(engine)
        return engine

    try:
        yield factory
    finally:
        for engine in engines:
            pool: Any = engine.sync_engine.pool
            # a scenario that failed half-way left connections on a finished loop:
            # closing them may complain, the server-side sweep below is what counts
            with contextlib.suppress(Exception):
                pool.close()
        if any(e.url.get_backend_name() == "postgresql" for e in engines):
            with contextlib.suppress(Exception):
                admin = PgAdmin()
                try:
                    if not wait_until(lambda: admin.count(app) == 0, timeout=3.0):
                        admin.terminate(app)
                finally:
                    admin.close()


async def until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` on the loop (the pool's background tasks keep running) until it is
    true or ``timeout`` passes; return its last value. Never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        await asyncio.sleep(interval)


async def session_id(backend: AsyncBackend, conn: AsyncConnection, keep: list[Any]) -> int:
    """The server's id for ``conn``'s session (sqlite: id() of the DBAPI connection, kept alive)."""
    if backend.kind == "postgresql":
        return int((await conn.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one())
    if backend.kind == "mysql":
        return int((await conn.exec_driver_sql("SELECT CONNECTION_ID()")).scalar_one())
    raw = await conn.get_raw_connection()
    keep.append(raw.dbapi_connection)
    return id(raw.dbapi_connection)


def pool_of(engine: AsyncEngine) -> Any:
    """The AsyncSmartPool behind an AsyncEngine (typed Any: its test-only attributes)."""
    pool = engine.sync_engine.pool
    assert isinstance(pool, AsyncSmartPool), type(pool)
    return pool

"""Templated and encrypted URLs against the real PostgreSQL and a password-protected redis-server.

PostgreSQL: two roles made for each test (``CREATE ROLE ... PASSWORD``, the
password changed with ``ALTER ROLE`` during the test, both dropped after; the
``postgres`` role is never touched). The user name and password come from
files the test rewrites between connects; the next physical connect must log
in as the role the file now names. The shared server trusts 127.0.0.1, so it
does not check passwords: what the driver was called with is read back from
the live connection (libpq's ``PQpass``, psycopg2's ``info.password``). The
Redis tests check the password for real: a redis-server of the test's own,
with ``requirepass``, whose password the test rotates (``CONFIG SET`` on that
server only).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
import redis.asyncio
import sqlalchemy as sa

from sqlalchemy_smartpool import AsyncSmartRedisPool, SmartPool, SmartRedisPool
from sqlalchemy_smartpool.errors import SecretError
from sqlalchemy_smartpool.plugin import smartpool_url
from sqlalchemy_smartpool.urlcrypt import encrypt_url, generate_key

from ._secrets import LockedRedis, Role, login_roles
from ._services import HOST, POSTGRES_PORT, require_postgres
from .conftest import EngineFactory, PgAdmin

pytestmark = pytest.mark.integration


@pytest.fixture
def roles(pg_admin: PgAdmin) -> Iterator[tuple[Role, Role]]:
    with login_roles(pg_admin, "sp_tpl", 2) as made:
        yield made[0], made[1]


@pytest.fixture
def files(tmp_path: Path) -> Callable[[Role], tuple[Path, Path]]:
    """Write a role's name and password into the two secret files (with the newline `echo` adds)."""
    user_file, pw_file = tmp_path / "db-user", tmp_path / "db-password"

    def write(role: Role) -> tuple[Path, Path]:
        user_file.write_text(role.name + "\n")
        pw_file.write_text(role.password + "\n")
        return user_file, pw_file

    return write


def who(engine: sa.Engine) -> tuple[str, str]:
    """(current_user on the server, the password the driver connected with)."""
    with engine.connect() as conn:
        user = conn.exec_driver_sql("SELECT current_user").scalar_one()
        password = conn.connection.dbapi_connection.info.password  # type: ignore[union-attr]
        return str(user), str(password)


def test_smartpool_url_reads_rotated_files_at_the_next_connect(
    make_engine: EngineFactory,
    roles: tuple[Role, Role],
    files: Callable[[Role], tuple[Path, Path]],
    app_name: str,
    pg_admin: PgAdmin,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = roles
    user_file, pw_file = files(a)
    monkeypatch.setenv("SP_IT_APP", app_name)
    template = (
        f"postgresql+psycopg2://{{file:{user_file}}}:{{file:{pw_file}}}@{HOST}:{POSTGRES_PORT}/test"
        "?application_name={env:SP_IT_APP}"
    )
    engine = make_engine(smartpool_url(template), poolclass=SmartPool, min_size=0, max_size=2)
    assert who(engine) == (a.name, a.password)
    assert pg_admin.count(app_name) == 1  # the application_name placeholder reached the server
    assert engine.url.password == f"{{file:{pw_file}}}"  # the engine holds the template only
    # rotate: a's password changes on the server, and the files now name b
    pg_admin.query(f"ALTER ROLE {a.name} PASSWORD 'changed-{uuid.uuid4().hex[:6]}'")
    files(b)
    assert who(engine) == (a.name, a.password)  # an open connection is kept
    engine.dispose()
    assert who(engine) == (b.name, b.password)  # the next connect reads the files again
    # a secret that disappears fails the connect, naming the placeholder; back, it works again
    pw_file.unlink()
    engine.dispose()
    with pytest.raises(
        SecretError, match=r"\{file:.*db-password\} in connect argument password: file .* cannot"
    ):
        engine.connect()
    files(b)
    assert who(engine) == (b.name, b.password)


def test_plugin_with_a_percent_encoded_user_placeholder(
    make_engine: EngineFactory,
    roles: tuple[Role, Role],
    files: Callable[[Role], tuple[Path, Path]],
    app_name: str,
) -> None:
    """Zero code: the URL string as an app reads it from its environment, ?plugin=smartpool added."""
    a, b = roles
    user_file, pw_file = files(a)
    user = quote(f"{{file:{user_file}}}", safe="")
    url = (
        f"postgresql+psycopg2://{user}:{{file:{pw_file}}}@{HOST}:{POSTGRES_PORT}/test"
        f"?plugin=smartpool&application_name={app_name}&smartpool_min_size=0"
    )
    engine = make_engine(url)
    assert isinstance(engine.pool, SmartPool)
    assert who(engine) == (a.name, a.password)
    files(b)
    engine.dispose()
    assert who(engine) == (b.name, b.password)


def test_plugin_with_an_encrypted_url(
    make_engine: EngineFactory, roles: tuple[Role, Role], app_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = roles
    monkeypatch.setenv("SMARTPOOL_URL_KEY", generate_key())
    real = (
        f"postgresql+psycopg2://{a.name}:{a.password}@{HOST}:{POSTGRES_PORT}/test?application_name={app_name}"
    )
    monkeypatch.setenv("SMARTPOOL_URL_ENCRYPTED", encrypt_url(real))
    engine = make_engine("smartpool://?plugin=smartpool&smartpool_max_size=2&smartpool_min_size=0")
    assert isinstance(engine.pool, SmartPool) and engine.pool.config.max_size == 2
    assert who(engine) == (a.name, a.password)
    assert a.password not in repr(engine) and a.password not in engine.pool.status()


def test_async_plugin_reads_the_rotated_user_file(
    roles: tuple[Role, Role], files: Callable[[Role], tuple[Path, Path]]
) -> None:
    pytest.importorskip("asyncpg")
    from sqlalchemy.ext.asyncio import create_async_engine

    from sqlalchemy_smartpool import AsyncSmartPool

    a, b = roles
    user_file, pw_file = files(a)
    user = quote(f"{{file:{user_file}}}", safe="")
    url = f"postgresql+asyncpg://{user}:{{file:{pw_file}}}@{HOST}:{POSTGRES_PORT}/test?plugin=smartpool"

    async def scenario() -> list[str]:
        engine = create_async_engine(url, min_size=0)
        assert isinstance(engine.sync_engine.pool, AsyncSmartPool)
        seen = []
        try:
            for _ in range(2):
                async with engine.connect() as conn:
                    seen.append(str((await conn.exec_driver_sql("SELECT current_user")).scalar_one()))
                files(b)
                await engine.dispose()
        finally:
            await engine.dispose()
        return seen

    assert asyncio.run(scenario()) == [a.name, b.name]


def test_a_missing_secret_fails_create_engine(tmp_path: Path) -> None:
    require_postgres()
    with pytest.raises(SecretError) as info:
        sa.create_engine(f"postgresql+psycopg2://app:{{file:{tmp_path}/none}}@{HOST}/test?plugin=smartpool")
    assert str(info.value).startswith(f"{{file:{tmp_path}/none}} in the URL's password: file")


# ---------------------------------------------------------------- Redis, password checked


@pytest.fixture
def locked_redis() -> Iterator[LockedRedis]:
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not on PATH")
    server = LockedRedis(f"pw1-{uuid.uuid4().hex[:8]}")
    try:
        yield server
    finally:
        server.stop()


def test_redis_password_file_rotation(
    locked_redis: LockedRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pw_file = tmp_path / "redis-password"
    pw_file.write_text(locked_redis.password + "\n")
    monkeypatch.setenv("SP_IT_RHOST", HOST)
    pool = SmartRedisPool.from_url(
        f"redis://:{{file:{pw_file}}}@{{env:SP_IT_RHOST}}:{locked_redis.port}/0", min_size=0, max_size=2
    )
    r = redis.Redis(connection_pool=pool)
    try:
        assert r.set("k", "v") and r.get("k") == b"v"
        new = f"pw2-{uuid.uuid4().hex[:8]}"
        locked_redis.rotate(new)
        assert r.get("k") == b"v"  # an authenticated connection stays so
        pool.disconnect()
        with pytest.raises(redis.AuthenticationError):  # the server really checks: the file is stale
            r.get("k")
        pw_file.write_text(new + "\n")
        assert r.get("k") == b"v"  # the next connect reads the file again
        assert new not in repr(pool) and str(pw_file) not in repr(pool)
    finally:
        pool.close()


def test_async_redis_password_file_rotation(locked_redis: LockedRedis, tmp_path: Path) -> None:
    pw_file = tmp_path / "redis-password"
    pw_file.write_text(locked_redis.password)

    async def scenario() -> list[Any]:
        pool = AsyncSmartRedisPool.from_url(
            f"redis://:{{file:{pw_file}}}@{HOST}:{locked_redis.port}/0", min_size=0, max_size=2
        )
        r = redis.asyncio.Redis(connection_pool=pool)
        try:
            first = await r.ping()
            new = f"pw3-{uuid.uuid4().hex[:8]}"
            locked_redis.rotate(new)
            pw_file.write_text(new)
            await pool.disconnect()
            return [first, await r.ping()]
        finally:
            await pool.aclose()

    assert asyncio.run(scenario()) == [True, True]


def test_redis_missing_secret_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match=r"in redis connection argument password: file .* cannot be read"):
        SmartRedisPool.from_url(f"redis://:{{file:{tmp_path}/none}}@{HOST}:6379/0")

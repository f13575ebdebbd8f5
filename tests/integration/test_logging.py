"""Logging against the real servers: an outage through the fault proxy, names and correlation
IDs in every pool, and one run-time password that no log line may show.

Lines are counted by event and level from a handler on the package's loggers;
the outage is a real one (the fault proxy refuses PostgreSQL connections for
about 3 s). Measured numbers are printed with a ``[measured]`` prefix.
"""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from sqlalchemy_smartpool import AsyncSmartPool, AsyncSmartRedisPool, SmartPool, SmartRedisPool, logs
from sqlalchemy_smartpool.errors import ConfigError
from sqlalchemy_smartpool.logs import AUDIT_LOGGER, JsonFormatter, correlation_id
from sqlalchemy_smartpool.metrics import pool_name
from sqlalchemy_smartpool.testing import FaultMode, FaultProxy

from ._secrets import LockedRedis, Role, login_roles
from ._services import HOST, POSTGRES_PORT, REDIS_PORT, require_postgres, require_redis
from .conftest import PgAdmin, wait_until

pytestmark = pytest.mark.integration

SECRET = f"Logpw-{uuid.uuid4().hex}"
WRONG = f"Wrongpw-{uuid.uuid4().hex}"


def measured(label: str, value: Any) -> None:
    print(f"[measured] {label}: {value}")


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._lock_ = __import__("threading").Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock_:
            self.records.append(record)

    def events(
        self, name: str, logger: str | None = None, pool: str | None = None
    ) -> list[logging.LogRecord]:
        with self._lock_:
            return [
                r
                for r in self.records
                if getattr(r, "event", None) == name
                and (logger is None or r.name == logger)
                and (pool is None or getattr(r, "pool", None) == pool)
            ]


@pytest.fixture
def captured() -> Iterator[Capture]:
    root = logging.getLogger("sqlalchemy_smartpool")
    handler = Capture()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


# ------------------------------------------------------------------ the outage policy


def test_a_3s_outage_through_the_proxy_is_a_warning_a_few_infos_and_an_end(
    pg_proxy: FaultProxy, app_name: str, captured: Capture
) -> None:
    url = pg_proxy.url_for(f"postgresql+psycopg2://postgres@{HOST}:{POSTGRES_PORT}/test")
    engine = sa.create_engine(
        f"{url}?application_name={app_name}",
        poolclass=SmartPool,
        min_size=2,
        acquire_timeout=0.5,
        connect_timeout=1,
        name="outage",
    )
    pool: Any = engine.pool
    try:
        pool.wait(10)
        captured.records.clear()
        pg_proxy.mode = FaultMode.REFUSE
        pg_proxy.reset_all()
        start = time.monotonic()
        while time.monotonic() - start < 3.0:  # a caller every 50 ms, as a service would
            try:
                with engine.connect() as conn:
                    conn.exec_driver_sql("SELECT 1")
            except sa.exc.DBAPIError:
                pass
            time.sleep(0.05)
        failed_in_outage = pool.stats().counters["connections_failed"]
        pg_proxy.mode = FaultMode.PASS
        assert wait_until(lambda: bool(captured.events(logs.OUTAGE_ENDED, logs.ENGINE_LOGGER)), 10)
        assert wait_until(lambda: pool.stats().pool_size >= 2, 10)
        # the pool's own lines (SQLAlchemy's pool logger, a child of ours, logs its invalidations)
        main = [
            r
            for r in captured.records
            if r.name != AUDIT_LOGGER and r.levelno >= logging.INFO and hasattr(r, "event")
        ]
    finally:
        engine.dispose()
        pool.close()
    warnings = [r for r in main if r.levelno >= logging.WARNING]
    probes = len(captured.events(logs.BREAKER_HALF_OPEN, AUDIT_LOGGER))
    steps = captured.events(logs.OUTAGE_CONTINUES, logs.ENGINE_LOGGER)
    measured(
        "3 s PostgreSQL outage, lines at INFO+ on the pool's loggers",
        f"{len(main)} ({len(warnings)} WARNING); {probes} probes, {len(steps)} step lines "
        f"({sum(r.levelno == logging.INFO for r in steps)} INFO); {failed_in_outage} failed connects",
    )
    assert [r.event for r in warnings] == [logs.OUTAGE_STARTED], [r.getMessage() for r in warnings]  # type: ignore[attr-defined]
    assert "connect failed" in warnings[0].getMessage() and warnings[0].cause  # type: ignore[attr-defined]
    assert len(captured.events(logs.OUTAGE_ENDED, logs.ENGINE_LOGGER)) == 1
    assert len(captured.events(logs.OUTAGE_STARTED, logs.ENGINE_LOGGER)) == 1
    assert len(steps) <= probes + 1  # at most one line per backoff step
    assert len(main) <= 5, [r.getMessage() for r in main]  # was two INFO lines a probe
    (ended,) = captured.events(logs.OUTAGE_ENDED, logs.ENGINE_LOGGER)
    assert ended.failures >= failed_in_outage and 2.5 <= ended.duration_s <= 10  # type: ignore[attr-defined]
    assert captured.events(logs.OUTAGE_STARTED, AUDIT_LOGGER) and captured.events(
        logs.OUTAGE_ENDED, AUDIT_LOGGER
    )
    assert all(r.pool == "outage" for r in captured.records if hasattr(r, "pool"))  # type: ignore[attr-defined]


# ------------------------------------------------------------------ names and correlation IDs


def test_every_pool_names_itself_and_tags_its_lines_with_the_request(
    app_name: str, captured: Capture
) -> None:
    require_postgres()
    require_redis()
    pg = f"postgresql+psycopg2://postgres@{HOST}:{POSTGRES_PORT}/test?application_name={app_name}"
    engine = sa.create_engine(pg, poolclass=SmartPool)  # no plugin: learnt at the first connect
    rpool = SmartRedisPool(host=HOST, port=REDIS_PORT, db=15)
    try:
        with correlation_id("req-sync"):
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            redis.Redis(connection_pool=rpool).ping()
        assert engine.pool.name == pool_name(engine.pool) == "test"  # type: ignore[attr-defined]
        assert rpool.name == pool_name(rpool) == f"redis-{HOST}:{REDIS_PORT}/15"
    finally:
        engine.dispose()
        rpool.close()

    async def scenario() -> tuple[str, str]:
        aengine = create_async_engine(
            f"postgresql+asyncpg://postgres@{HOST}:{POSTGRES_PORT}/test?plugin=smartpool",
            connect_args={"server_settings": {"application_name": app_name}},
        )
        apool = AsyncSmartRedisPool(host=HOST, port=REDIS_PORT, db=15)
        try:
            assert isinstance(aengine.pool, AsyncSmartPool)
            with correlation_id("req-async"):
                async with aengine.connect() as conn:
                    await conn.exec_driver_sql("SELECT 1")
                await redis.asyncio.Redis(connection_pool=apool).ping()
            return aengine.pool.name, apool.name
        finally:
            await aengine.dispose()
            await apool.aclose()

    async_pg, async_redis = asyncio.run(scenario())
    assert async_pg == "test" and async_redis == f"redis-{HOST}:{REDIS_PORT}/15"
    connects = captured.events(logs.CONNECT, AUDIT_LOGGER)
    tagged = {(r.pool, r.correlation_id) for r in connects}  # type: ignore[attr-defined]
    assert ("test", "req-sync") in tagged and ("test", "req-async") in tagged, tagged
    assert (rpool.name, "req-sync") in tagged and (async_redis, "req-async") in tagged, tagged
    closes = captured.events(logs.CLOSE, AUDIT_LOGGER)
    assert {r.reason for r in closes} <= {logs.CLOSE_DISPOSED, logs.CLOSE_POOL_CLOSED}  # type: ignore[attr-defined]
    assert closes and all(r.pool in ("test", rpool.name) for r in closes)  # type: ignore[attr-defined]


# ------------------------------------------------------------------ no secret anywhere


@pytest.fixture
def role(pg_admin: PgAdmin) -> Iterator[Role]:
    with login_roles(pg_admin, "sp_log", 1, password=SECRET) as made:
        yield made[0]


@pytest.fixture
def locked_redis() -> Iterator[LockedRedis]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not on PATH (make sysdeps)")
    server = LockedRedis(SECRET)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def everything_at_debug() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Every logger at DEBUG (SQLAlchemy's too), written through the JSON and the plain formatter."""
    json_out, plain_out = io.StringIO(), io.StringIO()
    handlers = [logging.StreamHandler(json_out), logging.StreamHandler(plain_out)]
    handlers[0].setFormatter(JsonFormatter())
    handlers[1].setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    old = root.level
    for h in handlers:
        root.addHandler(h)
    root.setLevel(logging.DEBUG)
    try:
        yield json_out, plain_out
    finally:
        for h in handlers:
            root.removeHandler(h)
        root.setLevel(old)


def test_the_password_is_in_no_log_line(
    role: Role,
    locked_redis: LockedRedis,
    pg_proxy: FaultProxy,
    app_name: str,
    everything_at_debug: tuple[io.StringIO, io.StringIO],
    captured: Capture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [k for k in __import__("os").environ if k.startswith("SMARTPOOL_")]:
        monkeypatch.delenv(name)
    json_out, plain_out = everything_at_debug
    direct = (
        f"postgresql+psycopg2://{role.name}:{SECRET}@{HOST}:{POSTGRES_PORT}/test?application_name={app_name}"
    )
    proxied = pg_proxy.url_for(direct)
    app_log = logging.getLogger("app")

    # 1. connects, a query, a leak report, invalidation, dispose
    engine = sa.create_engine(
        direct, poolclass=SmartPool, min_size=1, leak_detection_threshold=0.2, housekeeping_interval=0.05
    )
    try:
        with correlation_id("req-secret"), engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
            assert wait_until(lambda: bool(captured.events(logs.LEAK_SUSPECTED)), 10)
            conn.invalidate()
        engine.dispose()
    finally:
        engine.dispose()
        engine.pool.close()  # type: ignore[attr-defined]

    # 2. bad credentials (the local server trusts every password: a user that does not exist,
    # with a password in the URL): the connect fails (an outage starts), the caller gets the error
    nobody = f"nobody_{uuid.uuid4().hex[:8]}:{WRONG}"
    wrong = sa.create_engine(
        direct.replace(f"{role.name}:{SECRET}", nobody), poolclass=SmartPool, acquire_timeout=2
    )
    try:
        with pytest.raises(sa.exc.OperationalError) as info:
            wrong.connect()
        app_log.error("checkout failed: %s", info.value, exc_info=info.value)  # as an app would log it
    finally:
        wrong.dispose()

    # 3. an outage through the proxy, with the password in the URL, and the recovery
    down = sa.create_engine(
        proxied, poolclass=SmartPool, min_size=1, acquire_timeout=0.3, connect_timeout=1, name="down"
    )
    pool: Any = down.pool
    try:
        pool.wait(10)
        pg_proxy.mode = FaultMode.REFUSE
        pg_proxy.reset_all()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                down.connect().close()
            except sa.exc.SQLAlchemyError as err:
                app_log.warning("during the outage: %s", err, exc_info=err)
            time.sleep(0.05)
        pg_proxy.mode = FaultMode.PASS
        assert wait_until(lambda: bool(captured.events(logs.OUTAGE_ENDED, pool=pool.name)), 10)
    finally:
        down.dispose()
        pool.close()

    # 4. configuration errors next to the password, and a settings change
    for bad in (
        direct + "&plugin=smartpool&smartpool_max_size=x",
        direct + "&plugin=smartpool&smartpool_max_siz=3",
    ):
        with pytest.raises(ConfigError) as cfg:
            sa.create_engine(bad)
        app_log.error("bad settings: %s", cfg.value, exc_info=cfg.value)
    logs.config_changed("orders", {"validation_query": ("SELECT 1", f"SELECT 1 -- password={SECRET}")})
    logs.credentials_rotated("orders", credential="password", source="file /run/secrets/pw")

    # 5. Redis with requirepass: a connect, a wrong password, then the server dies
    good = SmartRedisPool.from_url(f"redis://:{SECRET}@{HOST}:{locked_redis.port}/0", min_size=0)
    bad_redis = SmartRedisPool.from_url(f"redis://:{WRONG}@{HOST}:{locked_redis.port}/0", acquire_timeout=1)
    try:
        client = redis.Redis(connection_pool=good)
        with correlation_id("req-redis"):
            assert client.ping()
        with pytest.raises(redis.AuthenticationError) as auth:
            redis.Redis(connection_pool=bad_redis).ping()
        app_log.error("redis: %s", auth.value, exc_info=auth.value)
        good.disconnect()
        locked_redis.stop()
        with pytest.raises(redis.ConnectionError):
            client.ping()
        assert wait_until(lambda: bool(captured.events(logs.OUTAGE_STARTED, pool=good.name)), 10)
    finally:
        good.close()
        bad_redis.close()

    lines = json_out.getvalue()
    plain = plain_out.getvalue()
    # not vacuous: the scan saw every kind of line this test is about
    for event in (
        logs.CONNECT,
        logs.CLOSE,
        logs.INVALIDATE,
        logs.LEAK_SUSPECTED,
        logs.OUTAGE_STARTED,
        logs.OUTAGE_ENDED,
        logs.BREAKER_OPENED,
        logs.CONFIG_CHANGED,
        logs.CREDENTIALS_ROTATED,
    ):
        assert f'"event": "{event}"' in lines, event
    assert "does not exist" in plain and ("WRONGPASS" in plain or "invalid username-password" in plain)
    assert "req-secret" in lines and "req-redis" in lines and role.name in plain
    measured(
        "log text scanned for the password",
        f"{len(lines) + len(plain)} characters, {len(captured.records)} records",
    )
    for secret, what in ((SECRET, "password"), (WRONG, "wrong password")):
        for text, where in ((lines, "JSON lines"), (plain, "plain lines")):
            at = text.find(secret)
            assert at < 0, f"the {what} shows in the {where}: {text[max(0, at - 200) : at + 50]!r}"
        for record in captured.records:
            assert secret not in repr(record.__dict__), (what, record.getMessage()[:200])

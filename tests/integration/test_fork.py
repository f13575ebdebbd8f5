"""Fork safety on the real servers: ``os.fork()`` with live pools, for every kind of pool.

Each test forks while the parent holds pooled sessions -- idle ones, one
checked out inside an open transaction, the housekeeper running, and another
thread holding the pool's lock (so a child that inherited that lock would
hang). The child uses the pool from several threads (asyncio: on a new event
loop), returns the connection it inherited checked out, reports the server
sessions it used and stays alive while the parent counts: server-side sessions
== parent pool + child pool, none shared. After the child exits the parent
goes on in the *same* sessions: the open transaction still holds its
uncommitted row (the child sent no rollback), every idle session answers
(nothing was closed, no protocol out of sync), no validation failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy.engine import Connection, Engine

from sqlalchemy_smartpool import AsyncSmartPool, SmartPool, SmartRedisPool

from ._fork import ForkedChild
from ._services import HOST, POSTGRES_PORT, REDIS_PORT, require_mysql, require_postgres, require_redis
from .conftest import EngineFactory, MyAdmin, PgAdmin, mysql_url, pg_url, wait_until

pytestmark = pytest.mark.integration

SYNC_DRIVERS = ["psycopg2", "pymysql", "mysqldb"]


def _session_id(conn: Connection) -> int:
    sql = "SELECT pg_backend_pid()" if conn.dialect.name == "postgresql" else "SELECT CONNECTION_ID()"
    return int(conn.exec_driver_sql(sql).scalar_one())


def all_session_ids(engine: Engine) -> set[int]:
    """The server session of every connection the pool holds (all checked out at once)."""
    pool = engine.pool
    size = pool.size()
    conns = [engine.connect() for _ in range(size)]
    try:
        ids = {_session_id(c) for c in conns}
    finally:
        for c in conns:
            c.close()
    assert pool.size() == size == len(ids), (pool.size(), size, ids)
    return ids


@contextlib.contextmanager
def lock_held_by_another_thread(lock: Any) -> Iterator[None]:
    """Another thread holds ``lock`` across the fork (released afterwards, in the parent)."""
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            taken.set()
            release.wait(30)

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    assert taken.wait(10)
    try:
        yield
    finally:
        release.set()
        t.join(10)


class Sessions:
    """What the server sees: by application_name (PostgreSQL) or by session id (MariaDB)."""

    def __init__(self, kind: str, app: str, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.app = app
        fixture = "pg_admin" if kind == "postgresql" else "my_admin"
        self.admin: PgAdmin | MyAdmin = request.getfixturevalue(fixture)

    def alive(self, ids: set[int]) -> set[int]:
        return self.admin.alive(ids)

    def count(self) -> int | None:
        """Every session tagged with the test's application_name (None: MariaDB has no tag)."""
        return self.admin.count(self.app) if isinstance(self.admin, PgAdmin) else None


def sync_url(driver: str, app: str) -> str:
    return pg_url(app, driver) if driver == "psycopg2" else mysql_url(driver)



def _connecting(pool: Any) -> int:
    return int(pool.stats().connections_pending)


def settled(pool: Any) -> None:
    """Let the connects a burst started finish: a size read while one is in flight is one
    short of what the server already sees (the comparisons below are of one instant)."""
    assert wait_until(lambda: not _connecting(pool), 10), pool.stats()


@pytest.mark.parametrize("driver", SYNC_DRIVERS)
def test_fork_smartpool(
    driver: str, make_engine: EngineFactory, app_name: str, table_name: str, request: pytest.FixtureRequest
) -> None:
    kind = "postgresql" if driver == "psycopg2" else "mysql"
    pytest.importorskip({"psycopg2": "psycopg2", "pymysql": "pymysql", "mysqldb": "MySQLdb"}[driver])
    (require_postgres if kind == "postgresql" else require_mysql)()
    engine = make_engine(sync_url(driver, app_name), poolclass=SmartPool, min_size=3, max_size=6)
    server = Sessions(kind, app_name, request)
    with engine.begin() as c:
        c.exec_driver_sql(f"CREATE TABLE {table_name} (v INTEGER)")
    held: Connection | None = None
    try:
        engine.pool.wait(10)
        parent_ids = all_session_ids(engine)
        held = engine.connect()  # checked out across the fork, inside an open transaction
        held.exec_driver_sql(f"INSERT INTO {table_name} VALUES (1)")
        held_id = _session_id(held)

        def child() -> dict[str, Any]:
            pool = engine.pool
            assert pool.size() == 0 and pool.checkedout() == 0, pool.status()  # starts clean
            with ThreadPoolExecutor(8) as ex:  # several threads, the pool grows past min_size
                seen = set(ex.map(lambda _: _one_session(engine), range(40)))
            held.close()  # inherited checked out: dropped, no reset / rollback sent
            assert pool.checkedout() == 0, pool.status()
            with engine.connect() as c:  # the parent's uncommitted row is invisible here
                assert c.exec_driver_sql(f"SELECT count(*) FROM {table_name}").scalar_one() == 0
            settled(pool)
            return {"size": pool.size(), "seen": sorted(seen), "ids": sorted(all_session_ids(engine))}

        with lock_held_by_another_thread(engine.pool._lock):
            proc = ForkedChild(child)
        got = proc.result(30)
        child_ids = set(got["ids"])
        assert set(got["seen"]) <= child_ids
        assert not child_ids & (parent_ids | {held_id}), "the child used a parent's session"
        # both pools live: the server holds exactly their sessions
        assert server.alive(parent_ids | child_ids) == parent_ids | child_ids
        if server.count() is not None:
            assert server.count() == engine.pool.size() + got["size"]
        assert proc.finish() == 0
        assert wait_until(lambda: not server.alive(child_ids), 10), "the child's sessions outlived it"
        # the parent goes on in the same sessions: the transaction still holds its row
        assert _session_id(held) == held_id
        held.exec_driver_sql(f"INSERT INTO {table_name} VALUES (2)")
        assert held.exec_driver_sql(f"SELECT count(*) FROM {table_name}").scalar_one() == 2
        held.commit()
        held.close()
        for _ in range(20):  # every idle session answers in sync
            with engine.connect() as c:
                assert c.exec_driver_sql("SELECT 41 + 1").scalar_one() == 42
        assert held_id in parent_ids
        assert all_session_ids(engine) == parent_ids  # the same sessions, none replaced
        assert server.alive(parent_ids) == parent_ids
        assert engine.pool.stats().counters["validations_failed"] == 0
        assert engine.pool.stats().counters["connections_invalidated"] == 0
        if server.count() is not None:
            assert server.count() == engine.pool.size()
    finally:
        if held is not None:  # its open transaction would block the DROP
            with contextlib.suppress(Exception):
                held.invalidate()
        with engine.begin() as c:
            c.exec_driver_sql(f"DROP TABLE IF EXISTS {table_name}")


def _one_session(engine: Engine) -> int:
    with engine.connect() as c:
        return _session_id(c)


# ------------------------------------------------------------------ a normal exit of the child

#: the child leaves through the interpreter's normal shutdown (as a gunicorn worker does), where
#: module globals -- the kept orphans -- are collected and drivers' finalizers run
EXIT_SCRIPT = r"""
import json, os, sys
import sqlalchemy as sa
from sqlalchemy_smartpool import SmartPool

url, poolkind = sys.argv[1], sys.argv[2]
kw = {"poolclass": SmartPool, "min_size": 2} if poolkind == "smartpool" else {"pool_size": 2}
engine = sa.create_engine(url, **kw)
sid = "SELECT pg_backend_pid()" if url.startswith("postgresql") else "SELECT CONNECTION_ID()"
conns = [engine.connect() for _ in range(2)]
ids = [c.exec_driver_sql(sid).scalar_one() for c in conns]
for c in conns:
    c.close()
pid = os.fork()
if pid == 0:
    if poolkind == "queuepool":
        engine.dispose(close=False)  # what SQLAlchemy's docs advise for QueuePool in a child
    with engine.connect() as c:
        c.exec_driver_sql("SELECT 1")
    del conns, c
    sys.exit(0)  # a normal interpreter shutdown
_, status = os.waitpid(pid, 0)
after = []
conns = []
for _ in range(2):  # both at once: each of the parent's two sessions
    try:
        conns.append(engine.connect())
        after.append(conns[-1].exec_driver_sql(sid).scalar_one())
    except Exception as err:
        after.append(type(err).__name__)
print(json.dumps({"child": os.waitstatus_to_exitcode(status), "before": ids, "after": after}))
"""


def _run_exit_script(url: str, poolkind: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, url, poolkind], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["child"] == 0, out.stderr
    return result


@pytest.mark.parametrize("driver", ["psycopg2", "mysqldb"])
def test_child_exiting_normally_leaves_the_parents_sessions(driver: str, app_name: str) -> None:
    """mysqlclient sends ``COM_QUIT`` when a connection object is collected (no pid check):
    the child's shutdown would end the parent's sessions, were its sockets not quarantined."""
    pytest.importorskip("psycopg2" if driver == "psycopg2" else "MySQLdb")
    (require_postgres if driver == "psycopg2" else require_mysql)()
    result = _run_exit_script(sync_url(driver, app_name), "smartpool")
    assert sorted(result["after"]) == sorted(result["before"]), result


def test_the_exit_check_sees_a_killed_session(app_name: str) -> None:
    """The check above can fail: QueuePool with SQLAlchemy's advice (``dispose(close=False)``
    in the child) loses the parent's mysqlclient sessions when the child exits."""
    pytest.importorskip("MySQLdb")
    require_mysql()
    result = _run_exit_script(sync_url("mysqldb", app_name), "queuepool")
    assert sorted(map(str, result["after"])) != sorted(map(str, result["before"])), result


# ------------------------------------------------------------------------------ asyncpg


def test_fork_async_smartpool_asyncpg(app_name: str, table_name: str, pg_admin: PgAdmin) -> None:
    pytest.importorskip("asyncpg")
    from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

    url = f"postgresql+asyncpg://postgres@{HOST}:{POSTGRES_PORT}/test"
    connect_args = {"server_settings": {"application_name": app_name}}
    loop = asyncio.new_event_loop()  # the parent's loop lives on across the fork
    engine: AsyncEngine = create_async_engine(
        url, poolclass=AsyncSmartPool, min_size=3, max_size=6, connect_args=connect_args
    )
    pool = engine.sync_engine.pool
    assert isinstance(pool, AsyncSmartPool)

    async def sid(c: Any) -> int:
        return int((await c.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one())

    async def all_ids() -> set[int]:
        size = pool.size()
        conns = [await engine.connect() for _ in range(size)]
        try:
            return {await sid(c) for c in conns}
        finally:
            for c in conns:
                await c.close()

    async def setup() -> tuple[set[int], Any, int]:
        async with engine.begin() as c:
            await c.exec_driver_sql(f"CREATE TABLE {table_name} (v INTEGER)")
        await pool.wait(10)
        ids = await all_ids()
        held = await engine.connect()
        await held.exec_driver_sql(f"INSERT INTO {table_name} VALUES (1)")
        return ids, held, await sid(held)

    held: Any = None
    try:
        parent_ids, held, held_id = loop.run_until_complete(setup())

        def child() -> dict[str, Any]:
            async def main() -> dict[str, Any]:  # a new event loop: the parent's is not running here
                assert pool.size() == 0, pool.status()

                async def one() -> int:
                    async with engine.connect() as c:
                        return await sid(c)

                seen = set(await asyncio.gather(*(one() for _ in range(30))))
                await held.close()  # inherited checked out: dropped without I/O
                assert pool.checkedout() == 0, pool.status()
                deadline = asyncio.get_running_loop().time() + 10
                while _connecting(pool) and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.01)  # the loop must run for those connects to finish
                ids = await all_ids()
                return {"size": pool.size(), "seen": sorted(seen), "ids": sorted(ids)}

            return asyncio.run(main())

        with lock_held_by_another_thread(pool._lock):
            proc = ForkedChild(child)
        got = proc.result()
        child_ids = set(got["ids"])
        assert set(got["seen"]) <= child_ids
        assert not child_ids & (parent_ids | {held_id})
        assert pg_admin.count(app_name) == pool.size() + got["size"]
        assert proc.finish() == 0
        assert wait_until(lambda: not pg_admin.alive(child_ids), 10)

        async def after() -> set[int]:
            assert await sid(held) == held_id
            await held.exec_driver_sql(f"INSERT INTO {table_name} VALUES (2)")
            n = (await held.exec_driver_sql(f"SELECT count(*) FROM {table_name}")).scalar_one()
            assert n == 2
            await held.commit()
            await held.close()
            for _ in range(20):
                async with engine.connect() as c:
                    assert (await c.exec_driver_sql("SELECT 41 + 1")).scalar_one() == 42
            return await all_ids()

        assert held_id in parent_ids
        assert loop.run_until_complete(after()) == parent_ids
        assert pg_admin.alive(parent_ids) == parent_ids
        assert pool.stats().counters["validations_failed"] == 0
        assert pg_admin.count(app_name) == pool.size()
    finally:

        async def teardown() -> None:
            if held is not None and not held.closed:  # its open transaction would block the DROP
                with contextlib.suppress(Exception):
                    await held.invalidate()
            async with engine.begin() as c:
                await c.exec_driver_sql(f"DROP TABLE IF EXISTS {table_name}")
            await engine.dispose()
            pool.close()

        loop.run_until_complete(teardown())
        loop.close()
        if not wait_until(lambda: pg_admin.count(app_name) == 0, 3):
            pg_admin.terminate(app_name)


# -------------------------------------------------------------------------------- Redis


def _client_ids(name: str) -> set[int]:
    import redis

    r = redis.Redis(host=HOST, port=REDIS_PORT)
    try:
        return {int(c["id"]) for c in r.client_list() if c.get("name") == name}
    finally:
        r.close()


@pytest.fixture
def redis_pool() -> Iterator[Callable[..., SmartRedisPool]]:
    require_redis()
    pools: list[SmartRedisPool] = []

    def make(**kw: Any) -> SmartRedisPool:
        pool = SmartRedisPool(host=HOST, port=REDIS_PORT, db=15, acquire_timeout=5.0, **kw)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


def test_fork_smart_redis_pool(redis_pool: Callable[..., SmartRedisPool]) -> None:
    import redis

    name = f"sp-fork-{uuid.uuid4().hex[:10]}"
    key = f"{name}:k"
    pool = redis_pool(client_name=name, min_size=3, max_size=6)
    r = redis.Redis(connection_pool=pool)
    pool.wait(10)
    r.set(key, "parent")
    parent_ids = _client_ids(name)
    assert len(parent_ids) == pool.size() == 3
    held = pool.get_connection()  # checked out across the fork
    held.send_command("CLIENT", "ID")
    held_id = int(held.read_response())
    assert held_id in parent_ids

    def child() -> dict[str, Any]:
        assert pool.size() == 0
        rc = redis.Redis(connection_pool=pool)

        def work(i: int) -> int:
            rc.incr(f"{name}:n")
            return int(rc.client_id())

        with ThreadPoolExecutor(8) as ex:
            seen = set(ex.map(work, range(40)))
        pool.release(held)  # a parent's connection: ignored, never pooled
        assert pool._engine.core.in_use == 0
        settled(pool)
        return {"size": pool.size(), "seen": sorted(seen), "parent_value": rc.get(key).decode()}

    with lock_held_by_another_thread(pool._engine._lock), lock_held_by_another_thread(pool._fork_lock):
        proc = ForkedChild(child)
    got = proc.result()
    child_ids = set(got["seen"])
    assert got["parent_value"] == "parent"
    assert not child_ids & parent_ids
    # CLIENT LIST: the parent's connections plus the child's, nothing more
    assert len(_client_ids(name)) == pool.size() + got["size"]
    assert proc.finish() == 0
    assert wait_until(lambda: _client_ids(name) == parent_ids, 10), (_client_ids(name), parent_ids)
    held.send_command("PING")
    assert held.read_response() in (b"PONG", "PONG", True)
    pool.release(held)
    for _ in range(20):
        assert r.get(key) == b"parent"
    assert int(r.get(f"{name}:n")) == 40
    assert _client_ids(name) == parent_ids
    assert pool.stats().counters["validations_failed"] == 0
    r.delete(key, f"{name}:n")

"""Live operations under load on the real servers: zero failed requests, bounds kept, server agrees.

* 100 random reconfigure / resize changes while 16 threads query PostgreSQL:
  no request fails, a monitor thread finds every sample within the bounds in
  force (the documented transition after a lowered ``max_size``: the excess
  over it never grows and no connection idles while it lasts;
  ``check_invariants`` holds), counters never go back, and at the quiet
  points the pool's size is the number of backends ``pg_stat_activity``
  shows under the test's application_name.
* drain, swap_pool and a pause shorter than the timeout under the same load.
* credential rotation: a role's password changed (``ALTER ROLE`` on a
  PostgreSQL cluster of the test's own that checks passwords, ``ALTER USER``
  on the shared MariaDB, which does) under 16 threads, then
  ``rotate_credentials()``: no request fails, and afterwards no session opened
  before the change is left on the server.
* one asyncio variant (asyncpg, async credentials callable) and one Redis
  variant, smaller.

A random seed is printed (and taken from SMARTPOOL_LIVE_SEED) so a failing
sequence can be replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from sqlalchemy_smartpool import AsyncSmartPool, SmartPool, live
from sqlalchemy_smartpool import stats as S

from ._pgcluster import PgCluster, pg_cluster
from ._services import HOST, MYSQL_PORT, require_mysql, require_redis
from .conftest import EngineFactory, MyAdmin, PgAdmin, pg_url, wait_until

pytestmark = [pytest.mark.integration]

THREADS = 16


def seed() -> int:
    value = int(os.environ.get("SMARTPOOL_LIVE_SEED") or random.randrange(2**32))
    print(f"SMARTPOOL_LIVE_SEED={value}")
    return value


# -- load and sampling -------------------------------------------------------------------


@dataclass
class Load:
    """``THREADS`` threads running ``request()`` in a loop until stopped; every failure is kept."""

    request: Callable[[], Any]
    threads: int = THREADS
    errors: list[BaseException] = field(default_factory=list)
    done: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.request()
            except BaseException as err:
                with self._lock:
                    self.errors.append(err)
                return
            with self._lock:
                self.done += 1

    @contextlib.contextmanager
    def running(self) -> Iterator[Load]:
        workers = [threading.Thread(target=self._run, name=f"load-{i}") for i in range(self.threads)]
        for w in workers:
            w.start()
        try:
            assert wait_until(lambda: self.done >= self.threads or bool(self.errors), 30)
            yield self
        finally:
            self._stop.set()
            for w in workers:
                w.join(60)
        assert not self.errors, f"{len(self.errors)} failed requests, first: {self.errors[0]!r}"


@dataclass
class Sampler:
    """A monitor thread: samples stats() between changes and checks the bounds in force."""

    pool: Callable[[], Any]
    changes: threading.Lock = field(default_factory=threading.Lock)
    seq: int = 0  # bumped (under ``changes``) by every change
    samples: int = 0
    over: int = 0  # samples taken while above a lowered max_size
    violations: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        last: tuple[int, int, int] | None = None  # (seq, pool id, excess)
        counters: dict[int, dict[str, int]] = {}
        while not self._stop.is_set():
            with self.changes:
                pool = self.pool()
                stats = pool.stats()
                try:
                    pool._engine.check_invariants()
                except AssertionError as err:
                    self.violations.append(f"invariants: {err}")
                seq = self.seq
            self.samples += 1
            size, pending, top = stats.pool_size, stats.connections_pending, stats.pool_max
            excess = size + pending - top
            if excess > 0:
                self.over += 1
                if stats.pool_idle:
                    self.violations.append(f"{stats.pool_idle} idle while {excess} above max_size={top}")
            if last is not None and last[:2] == (seq, id(pool)) and max(excess, 0) > max(last[2], 0):
                self.violations.append(f"the excess over max_size={top} grew: {last[2]} -> {excess}")
            last = (seq, id(pool), excess)
            if stats.pool_idle + stats.pool_in_use > size:
                self.violations.append(f"idle + in use > size: {stats}")
            before = counters.get(id(pool), {})
            for key, value in stats.counters.items():
                if key == S.VALIDATIONS_SKIPPED:
                    continue  # an estimate: checkouts in flight count as skipped until validated
                if value < before.get(key, 0):
                    self.violations.append(f"counter {key} went down: {before[key]} -> {value}")
            counters[id(pool)] = dict(stats.counters)
            time.sleep(0.001)

    @contextlib.contextmanager
    def running(self) -> Iterator[Sampler]:
        t = threading.Thread(target=self._run, name="sampler")
        t.start()
        try:
            yield self
        finally:
            self._stop.set()
            t.join(30)
        assert not self.violations, f"{len(self.violations)} violations, first: {self.violations[:3]}"

    @contextlib.contextmanager
    def change(self) -> Iterator[None]:
        with self.changes:
            yield
            self.seq += 1


def quiet_and_counted(pool: Any, count: Callable[[], int]) -> None:
    """Nothing out, within max_size, and the server sees exactly the pool's connections."""
    assert wait_until(lambda: pool.stats().pool_in_use == 0 and pool.stats().connections_pending == 0, 15)
    assert wait_until(lambda: count() == pool.stats().pool_size, 15), (count(), pool.stats())
    stats = pool.stats()
    assert stats.pool_size <= stats.pool_max
    pool._engine.check_invariants()


def random_change(rng: random.Random, current: Any) -> dict[str, Any]:
    """One random live change (sizes most often), valid as a whole."""
    kind = rng.choice(["resize", "resize", "resize", "timeouts", "lifetime", "validation", "breaker", "misc"])
    if kind == "resize":
        top = rng.randint(1, 20)
        return {"max_size": top, "min_size": rng.randint(0, top)}
    if kind == "timeouts":
        return {"acquire_timeout": rng.uniform(20, 40), "idle_timeout": rng.choice([0.2, 1.0, 600.0])}
    if kind == "lifetime":
        return {"max_lifetime": rng.choice([None, 0.3, 1.0, 1800.0]), "lifetime_jitter": rng.uniform(0, 0.5)}
    if kind == "validation":
        return {
            "validation_interval": rng.choice([0.0, 0.01, 0.5]),
            "validate_on_checkout": rng.random() < 0.8,
            "keepalive_interval": rng.choice([None, 0.2]),
        }
    if kind == "breaker":
        return {"breaker_failure_threshold": rng.randint(1, 10), "retry_attempts": rng.randint(0, 3),
                "breaker_backoff_max": rng.uniform(1, 3)}  # fmt: skip
    return {
        "reuse": rng.choice(["lifo", "fifo"]),
        "leak_detection_threshold": rng.choice([None, 5.0]),
        "track_wait_times": rng.random() < 0.5,
        "max_concurrent_connects": rng.randint(1, 4),
        "housekeeping_interval": rng.choice([0.05, 0.2, 0.5]),
    }


def pg_query(engine: sa.Engine) -> Callable[[], Any]:
    def request() -> Any:
        with engine.connect() as conn:
            return conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()

    return request


# -- 100 random changes ------------------------------------------------------------------


def test_100_random_changes_under_16_threads(
    make_engine: EngineFactory, pg_admin: PgAdmin, app_name: str
) -> None:
    rng = random.Random(seed())
    engine = make_engine(pg_url(app_name), poolclass=SmartPool, min_size=2, max_size=12, environ={},
                         housekeeping_interval=0.05)  # fmt: skip
    pool = engine.pool
    assert isinstance(pool, SmartPool)
    sampler = Sampler(lambda: engine.pool)
    load = Load(pg_query(engine))
    changes = 0
    with load.running(), sampler.running():
        for i in range(100):
            change = random_change(rng, pool.config)
            with sampler.change():
                if i % 3:
                    pool.reconfigure(**change)
                else:
                    pool.resize(change.get("min_size"), change.get("max_size"))
            changes += 1
            time.sleep(rng.uniform(0.0, 0.06))
        with sampler.change():
            pool.reconfigure(min_size=3, max_size=6, max_lifetime=None, idle_timeout=600.0)
        time.sleep(0.3)
    assert changes == 100 and load.done > 1000, load.done
    assert sampler.samples > 100, "the monitor saw the run"
    quiet_and_counted(pool, lambda: pg_admin.count(app_name))
    stats = pool.stats()
    assert stats.pool_size == 6 and stats.pool_min == 3 and stats.counters[S.TIMEOUTS] == 0
    print(f"requests={load.done} samples={sampler.samples} over_max_samples={sampler.over} "
          f"retired={stats.counters[S.CONNECTIONS_RETIRED]} created={stats.counters[S.CONNECTIONS_CREATED]}")


# -- drain, swap, pause --------------------------------------------------------------------


def test_drain_swap_and_a_short_pause_under_16_threads(
    make_engine: EngineFactory, pg_admin: PgAdmin, app_name: str
) -> None:
    engine = make_engine(pg_url(app_name), poolclass=SmartPool, min_size=4, max_size=8, acquire_timeout=5.0,
                         environ={}, housekeeping_interval=0.05)  # fmt: skip
    load = Load(pg_query(engine))
    sampler = Sampler(lambda: engine.pool)
    with load.running(), sampler.running():
        pool = engine.pool
        assert isinstance(pool, SmartPool)
        before = pg_admin.pids(app_name)
        assert before
        with sampler.change():
            pool.drain()
        # every backend opened before the drain goes, while the load goes on
        assert wait_until(lambda: not pg_admin.alive(before), 15), pg_admin.alive(before)
        with sampler.change():
            old = live.swap_pool(engine, {"max_size": 6, "min_size": 2})
        new = engine.pool
        assert new is not old and isinstance(new, SmartPool)
        assert wait_until(lambda: old.stats().closed, 15), old.stats()
        assert old.stats().pool_size == 0
        done = load.done
        with sampler.change():
            new.pause()
        assert wait_until(lambda: new.stats().requests_waiting >= 1, 5), "callers wait while paused"
        held = pg_admin.count(app_name)
        time.sleep(0.5)  # the maintenance window, well under acquire_timeout=5
        assert pg_admin.count(app_name) <= held, "nothing opened while paused"
        paused_done = load.done - done
        with sampler.change():
            new.resume()
        assert wait_until(lambda: load.done > done + paused_done + 100, 10)
    quiet_and_counted(new, lambda: pg_admin.count(app_name))
    assert new.stats().counters[S.TIMEOUTS] == 0
    print(f"requests={load.done} during the 0.5 s pause: {paused_done}")


# -- credential rotation -------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    with pg_cluster() as made:
        yield made


@contextlib.contextmanager
def pg_role(cluster: PgCluster, password: str) -> Iterator[str]:
    name = f"sp_rot_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    cluster.query(f"CREATE ROLE {name} LOGIN PASSWORD %s", password)
    try:
        yield name
    finally:
        sessions = "SELECT pid FROM pg_stat_activity WHERE usename = %s"
        cluster.query(f"SELECT pg_terminate_backend(pid) FROM ({sessions}) s", name)
        wait_until(lambda: not cluster.query(sessions, name), 5)
        cluster.query(f"DROP ROLE IF EXISTS {name}")


def test_the_own_cluster_checks_passwords(cluster: PgCluster) -> None:
    import psycopg2

    with pg_role(cluster, "right") as role:
        cluster.connect(role, "right").close()
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            cluster.connect(role, "wrong")


def test_rotate_credentials_on_postgresql_under_16_threads(
    make_engine: EngineFactory, cluster: PgCluster
) -> None:
    import psycopg2

    secret = {"password": f"p1-{uuid.uuid4().hex}"}
    with pg_role(cluster, secret["password"]) as role:
        url = f"postgresql+psycopg2://{role}@{HOST}:{cluster.port}/postgres?application_name=sp-rot"
        engine = make_engine(url, poolclass=SmartPool, min_size=6, max_size=6, environ={},
                             credentials=lambda: {"user": role, "password": secret["password"]},
                             credentials_ttl=300)  # fmt: skip
        pool = engine.pool
        assert isinstance(pool, SmartPool)
        pool.wait(10)
        source = pool._credentials
        assert source is not None

        def sessions(before: Any = None) -> int:
            sql = "SELECT count(*) FROM pg_stat_activity WHERE usename = %s"
            if before is None:
                return int(cluster.query(sql, role)[0][0])
            return int(cluster.query(sql + " AND backend_start < %s", role, before)[0][0])

        with Load(pg_query(engine)).running() as load:
            old_password = secret["password"]
            secret["password"] = f"p2-{uuid.uuid4().hex}"
            cluster.query(f"ALTER ROLE {role} PASSWORD %s", secret["password"])
            changed_at = cluster.query("SELECT now()")[0][0]
            assert sessions(changed_at) == 6, "the old sessions still work: nothing has failed yet"
            pool.rotate_credentials()
            done = load.done
            assert wait_until(lambda: sessions(changed_at) == 0, 15), "sessions of the old password remain"
            assert wait_until(lambda: load.done > done + 200, 10)
            # a cached password the server refuses: the pool fetches a fresh one and retries once
            calls = source.calls
            secret["password"] = f"p3-{uuid.uuid4().hex}"
            cluster.query(f"ALTER ROLE {role} PASSWORD %s", secret["password"])
            pool.resize(min_size=8, max_size=8)
            assert wait_until(lambda: pool.stats().pool_size == 8, 15)
            assert source.calls == calls + 1
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            cluster.connect(role, old_password)
        quiet_and_counted(pool, lambda: sessions())
        print(f"requests={load.done} callable calls={source.calls}")


MYSQL_DRIVERS = ["pymysql", "mysqldb"]


@pytest.mark.parametrize("driver", MYSQL_DRIVERS)
def test_rotate_credentials_on_mariadb_under_16_threads(
    make_engine: EngineFactory, my_admin: MyAdmin, driver: str
) -> None:
    pytest.importorskip("MySQLdb" if driver == "mysqldb" else "pymysql")
    require_mysql()
    user = f"sp_rot_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    secret = {"password": f"p1-{uuid.uuid4().hex}"}
    my_admin.query(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", secret["password"])
    try:
        my_admin.query(f"GRANT SELECT ON test.* TO '{user}'@'%'")
        url = f"mysql+{driver}://{user}@{HOST}:{MYSQL_PORT}/test"
        engine = make_engine(url, poolclass=SmartPool, min_size=6, max_size=6, environ={},
                             credentials=lambda: secret["password"], credentials_ttl=300)  # fmt: skip
        pool = engine.pool
        assert isinstance(pool, SmartPool)
        pool.wait(10)

        def ids_below(threshold: int | None = None) -> set[int]:
            sql = "SELECT id FROM information_schema.processlist WHERE user = %s"
            if threshold is None:
                return {int(r[0]) for r in my_admin.query(sql, user)}
            return {int(r[0]) for r in my_admin.query(sql + " AND id < %s", user, threshold)}

        def request() -> Any:
            with engine.connect() as conn:
                return conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one()

        with Load(request).running() as load:
            old_password = secret["password"]
            secret["password"] = f"p2-{uuid.uuid4().hex}"
            my_admin.query(f"ALTER USER '{user}'@'%%' IDENTIFIED BY %s", secret["password"])
            # thread ids only grow: every session opened before the change has a smaller one
            threshold = fresh_connection_id()
            assert len(ids_below(threshold)) == 6
            pool.rotate_credentials()
            done = load.done
            assert wait_until(lambda: not ids_below(threshold), 15), "sessions of the old password remain"
            assert wait_until(lambda: load.done > done + 200, 10)
        import pymysql

        with pytest.raises(pymysql.err.OperationalError, match="Access denied"):
            pymysql.connect(host=HOST, port=MYSQL_PORT, user=user, password=old_password, database="test")
        quiet_and_counted(pool, lambda: len(ids_below()))
        print(f"{driver}: requests={load.done}")
    finally:
        for sid in ids_of(my_admin, user):
            with contextlib.suppress(Exception):
                my_admin.query("KILL %s", sid)
        my_admin.query(f"DROP USER IF EXISTS '{user}'@'%'")


def fresh_connection_id() -> int:
    """The thread id of a connection opened now (the admin's own is as old as the session)."""
    import pymysql

    conn = pymysql.connect(host=HOST, port=MYSQL_PORT, user="root", password="", database="test")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def ids_of(admin: MyAdmin, user: str) -> set[int]:
    rows = admin.query("SELECT id FROM information_schema.processlist WHERE user = %s", user)
    return {int(r[0]) for r in rows}


# -- asyncio (asyncpg) ---------------------------------------------------------------------


def test_asyncpg_changes_drain_pause_and_async_rotation(cluster: PgCluster) -> None:
    pytest.importorskip("asyncpg")
    rng = random.Random(seed())
    secret = {"password": f"p1-{uuid.uuid4().hex}"}

    async def credentials() -> dict[str, str]:
        await asyncio.sleep(0)  # as a token service's client would
        return {"password": secret["password"]}

    with pg_role(cluster, secret["password"]) as role:

        async def scenario() -> tuple[int, int]:
            engine = create_async_engine(
                f"postgresql+asyncpg://{role}@{HOST}:{cluster.port}/postgres",
                poolclass=AsyncSmartPool, min_size=2, max_size=6, environ={}, credentials=credentials,
                housekeeping_interval=0.05,
            )  # fmt: skip
            pool = engine.sync_engine.pool
            assert isinstance(pool, AsyncSmartPool)
            errors: list[BaseException] = []
            done = [0]
            stop = asyncio.Event()

            async def worker() -> None:
                while not stop.is_set():
                    try:
                        async with engine.connect() as conn:
                            await conn.exec_driver_sql("SELECT 1")
                        done[0] += 1
                    except BaseException as err:
                        errors.append(err)
                        return

            tasks = [asyncio.create_task(worker()) for _ in range(8)]
            try:
                for _ in range(30):
                    top = rng.randint(1, 8)
                    await pool.reconfigure(max_size=top, min_size=rng.randint(0, top),
                                           max_lifetime=rng.choice([None, 0.3, 60.0]))  # fmt: skip
                    pool._engine.check_invariants()
                    await asyncio.sleep(rng.uniform(0, 0.04))
                await pool.drain()
                pool.pause()
                await asyncio.sleep(0.3)
                pool.resume()
                secret["password"] = f"p2-{uuid.uuid4().hex}"
                cluster.query(f"ALTER ROLE {role} PASSWORD %s", secret["password"])
                changed_at = cluster.query("SELECT now()")[0][0]
                await pool.rotate_credentials()
                old = "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND backend_start < %s"
                for _ in range(1500):
                    if not cluster.query(old, role, changed_at)[0][0]:
                        break
                    await asyncio.sleep(0.01)
                remaining = int(cluster.query(old, role, changed_at)[0][0])
                await asyncio.sleep(0.2)
            finally:
                stop.set()
                await asyncio.gather(*tasks)
                await engine.dispose()
            assert not errors, f"{len(errors)} failed requests, first: {errors[0]!r}"
            return done[0], remaining

        done, remaining = asyncio.run(scenario())
        assert remaining == 0, "sessions of the old password remain"
        assert done > 200
        print(f"asyncpg requests={done}")


# -- Redis --------------------------------------------------------------------------------


def test_redis_changes_drain_swap_and_pause_under_16_threads() -> None:
    redis = pytest.importorskip("redis")
    require_redis()
    from sqlalchemy_smartpool.redis_pool import SmartRedisPool

    rng = random.Random(seed())
    name = f"sp-live-{uuid.uuid4().hex[:8]}"
    pool = SmartRedisPool(host=HOST, port=6379, client_name=name, min_size=2, max_size=8, environ={},
                          housekeeping_interval=0.05, acquire_timeout=10.0)  # fmt: skip
    client = redis.Redis(connection_pool=pool)
    admin = redis.Redis(host=HOST, port=6379)

    def ours() -> int:
        return sum(1 for c in admin.client_list() if c.get("name") == name)

    key = f"{name}:n"
    sampler = Sampler(lambda: client.connection_pool)
    try:
        with Load(lambda: client.incr(key)).running() as load, sampler.running():
            for _ in range(30):
                top = rng.randint(1, 10)
                with sampler.change():
                    client.connection_pool.reconfigure(max_size=top, min_size=rng.randint(0, top))
                time.sleep(rng.uniform(0, 0.04))
            with sampler.change():
                client.connection_pool.drain()
            with sampler.change():
                old = live.swap_pool(client, {"max_size": 6, "min_size": 2})
            assert wait_until(lambda: old.stats().closed, 15)
            with sampler.change():
                client.connection_pool.pause()
            time.sleep(0.3)
            with sampler.change():
                client.connection_pool.resume()
            time.sleep(0.2)
        new = client.connection_pool
        quiet_and_counted(new, ours)
        assert int(admin.get(key) or 0) == load.done, "every request ran exactly once"
        print(f"redis requests={load.done}")
    finally:
        admin.delete(key)
        client.connection_pool.close()
        pool.close()


def test_redis_credentials_rotate_on_a_server_of_our_own() -> None:
    redis = pytest.importorskip("redis")
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not on PATH")
    from sqlalchemy_smartpool.redis_pool import SmartRedisPool

    from ._secrets import LockedRedis

    secret = {"password": f"p1-{uuid.uuid4().hex}"}
    server = LockedRedis(secret["password"])
    name = "sp-rot"
    pool = SmartRedisPool(host=HOST, port=server.port, client_name=name, min_size=4, max_size=4, environ={},
                          credentials=lambda: secret["password"])  # fmt: skip
    client = redis.Redis(connection_pool=pool)
    try:
        pool.wait(10)

        def ids_below(threshold: int) -> set[int]:
            return {int(c["id"]) for c in server.admin().client_list() if c.get("name") == name
                    and int(c["id"]) < threshold}  # fmt: skip

        with Load(lambda: client.ping()).running() as load:
            old_password = secret["password"]
            secret["password"] = f"p2-{uuid.uuid4().hex}"
            server.rotate(secret["password"])
            threshold = int(server.admin().client_id())  # client ids only grow
            assert len(ids_below(threshold)) == 4
            pool.rotate_credentials()
            assert wait_until(lambda: not ids_below(threshold), 15), "connections of the old password remain"
            done = load.done
            assert wait_until(lambda: load.done > done + 200, 10)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=HOST, port=server.port, password=old_password).ping()
    finally:
        pool.close()
        server.stop()


# -- secrets -------------------------------------------------------------------------------


def test_credentials_never_show_in_logs_reprs_errors_stats_or_health(
    make_engine: EngineFactory, cluster: PgCluster, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    secret = {"password": f"first-{uuid.uuid4().hex}"}
    seen: list[str] = [secret["password"]]
    with pg_role(cluster, secret["password"]) as role:
        url = f"postgresql+psycopg2://{role}@{HOST}:{cluster.port}/postgres"
        engine = make_engine(url, poolclass=SmartPool, min_size=1, max_size=2, environ={}, echo="debug",
                             echo_pool="debug", credentials=lambda: secret["password"])  # fmt: skip
        pool = engine.pool
        assert isinstance(pool, SmartPool) and pool._credentials is not None
        assert pool._credentials.calls == 0, "a pool nobody used asked for no credentials"
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        # refused: the server has a password the callable does not know
        cluster.query(f"ALTER ROLE {role} PASSWORD %s", f"server-{uuid.uuid4().hex}")
        secret["password"] = f"wrong-{uuid.uuid4().hex}"
        seen.append(secret["password"])
        pool.rotate_credentials()
        pool.reconfigure(acquire_timeout=2.0)
        with pytest.raises(sa.exc.OperationalError) as info, engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        health = str(pool.health_check(timeout=1.0, cache_for=0))
        texts = [caplog.text, repr(pool), pool.status(), str(pool.stats()), repr(pool._credentials),
                 str(info.value), repr(info.value), health]  # fmt: skip
        for text in texts:
            for value in seen:
                assert value not in text
        assert "password authentication failed" in str(info.value)

"""Regression tests for gaps users hit when swapping SmartPool in for QueuePool.

Each test pins one reported behaviour of the engine (``engine.py``):

1. a pool whose first connect failed with a permanent error, and that nobody
   uses again, opens and probes nothing; before its first successful connect
   a pool never refills ``min_size`` on its own;
2. ``pool.wait()`` fails at once with a permanent error, and a timed-out
   ``wait()`` names the last connect error;
3. one deadline bounds a checkout, including the replacement of a connection
   that failed validation;
4. with ``pool_pre_ping=True`` a checkout right after every backend was killed
   server-side gets a working connection (the socket liveness look);
5. the server's connection limit is read at the first connect, reported in
   ``stats()`` and warned about when ``max_size`` exceeds it.

Real servers on 127.0.0.1; PostgreSQL backends are scoped by a per-test
``application_name``, MariaDB sessions by their ``CONNECTION_ID()``. "Nothing
happens" properties are asserted after a short window in which the
housekeeper demonstrably ticked (counted by wrapping its tick).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from sqlalchemy_smartpool import CircuitBreakerConfig, PoolTimeout, SmartPool
from sqlalchemy_smartpool import stats as S
from sqlalchemy_smartpool.testing import FaultMode, FaultProxy

from ._services import HOST, POSTGRES_PORT, require_mysql, require_postgres
from .conftest import EngineFactory, MyAdmin, PgAdmin, mysql_url, pg_url, wait_until

pytestmark = pytest.mark.integration

#: the housekeeper ticks this often in the "nothing happens" tests, so a short window sees many ticks
TICK = 0.05
#: ticks that must have run before "nothing was dialled" is believed
TICKS_SEEN = 8
WINDOW = 2.0  # real seconds those ticks may take at most


def measured(label: str, value: Any) -> None:
    print(f"[measured] {label}: {value}")


class Watch:
    """Counts a pool's connect attempts (the dialect's ``do_connect``) and housekeeping ticks."""

    def __init__(self, engine: Engine) -> None:
        self.pool: SmartPool = engine.pool  # type: ignore[assignment]
        self._lock = threading.Lock()
        self._attempts = 0
        self._ticks = 0
        event.listen(engine, "do_connect", self._on_connect)
        eng = self.pool._engine
        tick = eng._housekeep

        def counted() -> None:
            with self._lock:
                self._ticks += 1
            tick()

        eng._housekeep = counted  # type: ignore[method-assign]

    def _on_connect(self, *args: Any) -> None:
        with self._lock:
            self._attempts += 1

    @property
    def attempts(self) -> int:
        with self._lock:
            return self._attempts

    @property
    def ticks(self) -> int:
        with self._lock:
            return self._ticks

    def failed(self) -> int:
        return self.pool.stats().counters[S.CONNECTIONS_FAILED]

    def quiet_window(self) -> tuple[int, int]:
        """Let the housekeeper tick ``TICKS_SEEN`` times (bounded); returns (attempts, failed) before."""
        before = (self.attempts, self.failed())
        start = self.ticks
        assert wait_until(lambda: self.ticks - start >= TICKS_SEEN, WINDOW), (
            f"the housekeeper ticked {self.ticks - start} times in {WINDOW}s: is it running?"
        )
        return before


def settle(pool: SmartPool) -> None:
    """Wait (bounded) until no connect of the pool is in flight or scheduled as a retry."""
    assert wait_until(lambda: pool.stats().connections_pending == 0, 10.0), pool.status()


def check_invariants(pool: Any) -> None:
    with pool._lock:
        pool._core.check_invariants()


def free_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


NOLOGIN_ROLE = "smartpool_gap_nologin"


def _pg_nologin_role() -> None:
    import psycopg2

    admin = PgAdmin()
    try:
        with contextlib.suppress(psycopg2.errors.DuplicateObject, psycopg2.errors.UniqueViolation):
            admin.query(f"CREATE ROLE {NOLOGIN_ROLE} NOLOGIN")
        admin.query(f"ALTER ROLE {NOLOGIN_ROLE} NOLOGIN")
    finally:
        admin.close()


def permanent_url(case: str, app: str) -> str:
    """A URL whose every connect fails the same way (``case``: which permanent error)."""
    if case.startswith("pg"):
        require_postgres()
        pytest.importorskip("psycopg2")
        if case == "pg-no-database":
            return pg_url(app).replace("/test?", f"/sp_gap_missing_{uuid.uuid4().hex[:8]}?")
        _pg_nologin_role()
        return pg_url(app).replace("postgres@", f"{NOLOGIN_ROLE}@")
    require_mysql()
    pytest.importorskip("pymysql")
    if case == "mysql-no-database":
        return mysql_url().replace("/test", f"/sp_gap_missing_{uuid.uuid4().hex[:8]}")
    return mysql_url().replace("root@", "root:not-the-password@")  # root has no password here


# ------------------------------------------------------------------ 1. nobody asked


PERMANENT_CASES = ["pg-no-database", "pg-role-cannot-login", "mysql-no-database", "mysql-bad-password"]


@pytest.mark.parametrize("case", PERMANENT_CASES)
def test_permanent_first_connect_failure_then_nothing_is_dialled(
    case: str, app_name: str, make_engine: EngineFactory
) -> None:
    engine = make_engine(
        permanent_url(case, app_name),
        poolclass=SmartPool,
        min_size=3,
        max_size=5,
        acquire_timeout=5.0,
        retry_attempts=2,
        housekeeping_interval=TICK,
        breaker=CircuitBreakerConfig(failure_threshold=2, backoff_initial=0.05, backoff_max=0.1),
    )
    watch = Watch(engine)
    t0 = time.monotonic()
    with pytest.raises(sa_exc.OperationalError):
        engine.connect()
    elapsed = time.monotonic() - t0
    measured(f"{case}: first checkout failed after", f"{elapsed:.3f}s, attempts={watch.attempts}")
    assert elapsed < 2.0, "a permanent error must reach the caller at once, not after acquire_timeout"
    assert watch.attempts == 1, "a permanent connect error is not retried"
    settle(watch.pool)
    attempts, failed = watch.quiet_window()
    assert watch.attempts == attempts, f"{watch.attempts - attempts} connect attempts nobody asked for"
    assert watch.failed() == failed
    st = watch.pool.stats()
    assert (st.pool_size, st.connections_pending, st.pool_idle) == (0, 0, 0)
    check_invariants(watch.pool)


def test_database_created_after_the_failure_gets_no_idle_connections_nobody_asked_for(
    app_name: str, make_engine: EngineFactory, pg_admin: PgAdmin
) -> None:
    """The database appears later: the pool must not park ``min_size`` idle connections
    in it on its own; only a caller that asks again connects (and then it refills)."""
    pytest.importorskip("psycopg2")
    db = f"sp_gap_late_{uuid.uuid4().hex[:8]}"
    engine = make_engine(
        pg_url(app_name).replace("/test?", f"/{db}?"),
        poolclass=SmartPool,
        min_size=3,
        max_size=5,
        acquire_timeout=5.0,
        housekeeping_interval=TICK,
        breaker=CircuitBreakerConfig(failure_threshold=2, backoff_initial=0.05, backoff_max=0.1),
    )
    watch = Watch(engine)
    try:
        with pytest.raises(sa_exc.OperationalError, match="does not exist"):
            engine.connect()
        settle(watch.pool)
        pg_admin.query(f"CREATE DATABASE {db}")
        attempts, _ = watch.quiet_window()
        assert watch.attempts == attempts, "the pool dialled the new database on its own"
        assert pg_admin.count(app_name) == 0, "idle connections were parked that nobody asked for"
        assert watch.pool.stats().pool_size == 0
        # a caller asks again: it is served, and from then on min_size is kept
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_database()")).scalar_one() == db
        assert wait_until(lambda: watch.pool.stats().pool_size == 3, 10.0), watch.pool.status()
        check_invariants(watch.pool)
    finally:
        engine.dispose()
        watch.pool.close()
        pg_admin.query(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def test_before_its_first_successful_connect_a_pool_never_refills_on_its_own(
    pg_proxy: FaultProxy, app_name: str, make_engine: EngineFactory, pg_admin: PgAdmin
) -> None:
    """A transient outage at the first checkout: once the caller gave up and the
    server is back, an unused pool that never connected opens nothing."""
    pg_proxy.mode = FaultMode.REFUSE
    engine = make_engine(
        pg_proxy.url_for(pg_url(app_name)),
        poolclass=SmartPool,
        min_size=3,
        max_size=5,
        acquire_timeout=0.5,
        retry_attempts=1,
        retry_backoff_initial=0.05,
        housekeeping_interval=TICK,
        breaker=CircuitBreakerConfig(failure_threshold=2, backoff_initial=0.05, backoff_max=0.1),
    )
    watch = Watch(engine)
    with pytest.raises((PoolTimeout, sa_exc.OperationalError)):
        engine.connect()
    settle(watch.pool)
    pg_proxy.mode = FaultMode.PASS
    accepted = pg_proxy.total_accepted
    attempts, _ = watch.quiet_window()
    assert watch.attempts == attempts, "a pool that never connected refilled min_size on its own"
    assert pg_proxy.total_accepted == accepted
    assert pg_admin.count(app_name) == 0
    # the first caller after the outage is served
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1


# ------------------------------------------------------------------ 2. wait()


@pytest.mark.parametrize("case", ["pg-no-database", "mysql-no-database"])
def test_wait_fails_at_once_with_the_drivers_permanent_error(
    case: str, app_name: str, make_engine: EngineFactory
) -> None:
    engine = make_engine(permanent_url(case, app_name), poolclass=SmartPool, min_size=2, max_size=4)
    pool: SmartPool = engine.pool  # type: ignore[assignment]
    if case.startswith("pg"):
        import psycopg2

        driver_error: type[BaseException] = psycopg2.OperationalError
    else:
        import pymysql

        driver_error = pymysql.err.OperationalError
    t0 = time.monotonic()
    with pytest.raises(driver_error) as info:
        pool.wait(timeout=10.0)
    elapsed = time.monotonic() - t0
    measured(f"{case}: wait() failed after", f"{elapsed:.3f}s")
    assert not isinstance(info.value, PoolTimeout)
    assert elapsed < 2.0, "wait() sat out its timeout on an error no retry can fix"


def test_wait_timeout_on_a_closed_port_names_the_last_connect_error(
    app_name: str, make_engine: EngineFactory
) -> None:
    require_postgres()
    psycopg2 = pytest.importorskip("psycopg2")
    url = pg_url(app_name).replace(f":{POSTGRES_PORT}/", f":{free_port()}/")
    engine = make_engine(url, poolclass=SmartPool, min_size=1, max_size=2)
    pool: SmartPool = engine.pool  # type: ignore[assignment]
    t0 = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        pool.wait(timeout=1.0)
    elapsed = time.monotonic() - t0
    msg = str(info.value)
    measured("closed port: wait() timed out after", f"{elapsed:.3f}s: {msg}")
    assert 0.9 <= elapsed < 4.0
    assert "last connect error: OperationalError" in msg
    assert "refused" in msg.lower()
    assert isinstance(info.value.__cause__, psycopg2.OperationalError)


def test_wait_timeout_on_a_black_hole_names_the_last_connect_error(
    pg_proxy: FaultProxy, app_name: str, make_engine: EngineFactory
) -> None:
    psycopg2 = pytest.importorskip("psycopg2")
    pg_proxy.mode = FaultMode.BLACKHOLE  # accepts, never answers: only the connect timeout ends it
    engine = make_engine(
        pg_proxy.url_for(pg_url(app_name)),
        poolclass=SmartPool,
        min_size=1,
        max_size=2,
        connect_timeout=1.0,  # libpq waits at least 2 s
        retry_attempts=0,
    )
    pool: SmartPool = engine.pool  # type: ignore[assignment]
    t0 = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        pool.wait(timeout=3.5)
    elapsed = time.monotonic() - t0
    msg = str(info.value)
    measured("black hole: wait() timed out after", f"{elapsed:.3f}s: {msg}")
    assert 3.4 <= elapsed < 6.0
    assert "last connect error: OperationalError" in msg
    assert "timeout" in msg.lower()
    assert isinstance(info.value.__cause__, psycopg2.OperationalError)


# ------------------------------------------------------------------ 3. one deadline


def test_dead_connection_handed_to_a_waiter_is_validated_within_the_same_deadline(
    pg_proxy: FaultProxy, app_name: str, make_engine: EngineFactory, pg_admin: PgAdmin
) -> None:
    """The checkout first waits for the pool's only connection, which comes back
    dead (its backend was killed meanwhile); its replacement is slow. The whole
    checkout -- the wait, the failed validation, the wait for the replacement --
    is bounded by one acquire_timeout, not one per wait."""
    pytest.importorskip("psycopg2")
    timeout, held_for = 1.0, 0.6
    engine = make_engine(
        pg_proxy.url_for(pg_url(app_name)),
        poolclass=SmartPool,
        min_size=0,
        max_size=1,
        acquire_timeout=timeout,
        validation_interval=0.0,
        connect_timeout=10.0,
        retry_attempts=0,
    )
    pool: SmartPool = engine.pool  # type: ignore[assignment]
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    holder = engine.connect()  # the only connection; no statement, so no transaction to roll back
    pg_admin.query("SELECT pg_terminate_backend(%s)", pid)
    assert wait_until(lambda: not pg_admin.alive({pid}), 5.0)
    pg_proxy.connect_delay = 5.0  # every new connect now takes 5 s (> acquire_timeout)
    giver = threading.Timer(held_for, holder.close)  # returned (dead) while the checkout waits
    t0 = time.monotonic()
    giver.start()
    try:
        with pytest.raises(PoolTimeout) as info:
            engine.connect()
    finally:
        giver.join(5)
    elapsed = time.monotonic() - t0
    measured("wait + failed validation + slow replacement: checkout gave up after", f"{elapsed:.3f}s")
    assert pool.stats().counters[S.VALIDATIONS_FAILED] == 1, "the dead connection was not validated"
    assert elapsed <= timeout + 0.35, f"checkout took {elapsed:.2f}s: more than one acquire_timeout"
    assert elapsed >= timeout * 0.8, "it should have waited for the replacement until the deadline"
    assert "timeout=1s" in str(info.value)
    check_invariants(pool)


def test_hung_validation_and_a_black_holed_replacement_share_one_deadline(
    pg_proxy: FaultProxy, app_name: str, make_engine: EngineFactory
) -> None:
    """The network goes dark: the idle connection's ping hangs until
    ``validation_timeout`` cuts it off, and the replacement's connect hangs too.
    The checkout still gives up after one acquire_timeout in total, not the
    ping's time plus another full timeout."""
    pytest.importorskip("psycopg2")
    timeout, ping_cutoff = 1.0, 0.6
    engine = make_engine(
        pg_proxy.url_for(pg_url(app_name)),
        poolclass=SmartPool,
        min_size=0,
        max_size=1,
        acquire_timeout=timeout,
        validation_interval=0.0,
        validation_timeout=ping_cutoff,
        connect_timeout=10.0,
        retry_attempts=0,
    )
    pool: SmartPool = engine.pool  # type: ignore[assignment]
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    pg_proxy.mode = FaultMode.BLACKHOLE
    t0 = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        engine.connect()
    elapsed = time.monotonic() - t0
    measured("hung ping + black-holed replacement: checkout gave up after", f"{elapsed:.3f}s")
    assert pool.stats().counters[S.VALIDATIONS_FAILED] == 1, "the hung ping was not cut off"
    assert elapsed <= timeout + 0.35, f"checkout took {elapsed:.2f}s: more than one acquire_timeout"
    assert elapsed >= timeout * 0.8, "it should have waited for the replacement until the deadline"
    assert "timeout=1s" in str(info.value)
    check_invariants(pool)


# ------------------------------------------------------------------ 4. killed backends


def _session_id(conn: sa.Connection, kind: str) -> int:
    sql = "SELECT pg_backend_pid()" if kind == "postgresql" else "SELECT CONNECTION_ID()"
    return int(conn.execute(text(sql)).scalar_one())


@pytest.fixture(params=["psycopg2", "psycopg", "mysqldb", "pymysql"])
def driver(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    pytest.importorskip({"mysqldb": "MySQLdb"}.get(name, name))
    if name.startswith("psycopg"):
        require_postgres()
    else:
        require_mysql()
    return name


@pytest.mark.parametrize("interval", [None, 60.0], ids=["default-interval", "interval-60s"])
def test_checkout_right_after_every_backend_was_killed_gets_a_working_connection(
    driver: str,
    interval: float | None,
    app_name: str,
    make_engine: EngineFactory,
    request: pytest.FixtureRequest,
) -> None:
    """A server restart as the client sees it: every pooled session ends at once.
    Requests made at once afterwards (well within the validation bypass window)
    must all succeed: the liveness look sees the closed sockets and the ping
    replaces them. ``interval-60s`` makes sure the bypass window cannot be what
    saved them."""
    kind = "postgresql" if driver.startswith("psycopg") else "mysql"
    url = pg_url(app_name, driver) if kind == "postgresql" else mysql_url(driver)
    extra: dict[str, Any] = {} if interval is None else {"validation_interval": interval}
    engine = make_engine(url, poolclass=SmartPool, pool_pre_ping=True, pool_size=4, max_overflow=0, **extra)
    pool: SmartPool = engine.pool  # type: ignore[assignment]
    assert pool.config.validate_on_checkout
    pool.wait(timeout=10.0)
    held = [engine.connect() for _ in range(4)]
    ids = {_session_id(c, kind) for c in held}
    for c in held:
        c.close()
    last_use = time.monotonic()
    assert len(ids) == 4
    if kind == "postgresql":
        pg: PgAdmin = request.getfixturevalue("pg_admin")
        pg.query("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", list(ids))
        alive: Callable[[set[int]], set[int]] = pg.alive
    else:
        my: MyAdmin = request.getfixturevalue("my_admin")
        my.kill(ids)
        alive = my.alive
    assert wait_until(lambda: not alive(ids), 5.0, interval=0.005), "the server kept the sessions"
    start = time.monotonic()
    measured(f"{driver}: requests start after last use", f"{start - last_use:.3f}s")

    errors: list[BaseException] = []
    served: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4, timeout=10)

    def requests() -> None:
        barrier.wait()
        for _ in range(5):
            try:
                with engine.connect() as conn:
                    sid = _session_id(conn, kind)
                with lock:
                    served.append(sid)
            except Exception as err:
                with lock:
                    errors.append(err)

    threads = [threading.Thread(target=requests) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, f"{len(errors)} of 20 requests failed; first: {errors[0]!r}"
    assert len(served) == 20
    assert not set(served) & ids, "a killed session was handed out"
    assert pool.stats().counters[S.VALIDATIONS_FAILED] >= 1
    check_invariants(pool)


# ------------------------------------------------------------------ 5. server limit


def _pg_expected_limit(admin: PgAdmin) -> int:
    (row,) = admin.query(
        "SELECT current_setting('max_connections')::int"
        " - current_setting('superuser_reserved_connections')::int,"
        " coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0)"
    )
    return int(row[0]) - int(row[1])


LIMITED_ROLE = "smartpool_limited"  # made (CONNECTION LIMIT 3) as in test_exhaustion.py
ROLE_LIMIT = 3


def _limited_role_pg() -> None:
    import psycopg2

    admin = PgAdmin()
    try:
        with contextlib.suppress(psycopg2.errors.DuplicateObject, psycopg2.errors.UniqueViolation):
            admin.query(f"CREATE ROLE {LIMITED_ROLE} LOGIN CONNECTION LIMIT {ROLE_LIMIT}")
        admin.query(f"ALTER ROLE {LIMITED_ROLE} LOGIN NOSUPERUSER CONNECTION LIMIT {ROLE_LIMIT}")
    finally:
        admin.close()


def _limited_role_mysql(admin: MyAdmin) -> None:
    admin.query(f"CREATE USER IF NOT EXISTS '{LIMITED_ROLE}'@'{HOST}' WITH MAX_USER_CONNECTIONS {ROLE_LIMIT}")
    admin.query(f"ALTER USER '{LIMITED_ROLE}'@'{HOST}' WITH MAX_USER_CONNECTIONS {ROLE_LIMIT}")
    admin.query(f"GRANT SELECT ON test.* TO '{LIMITED_ROLE}'@'{HOST}'")


@pytest.fixture
def engine_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger="sqlalchemy_smartpool.engine"):
        yield caplog


def _limit_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "exceeds the server's connection limit" in r.getMessage()
    ]


def _first_connect(engine: Engine) -> SmartPool:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    pool: SmartPool = engine.pool  # type: ignore[assignment]
    return pool


@pytest.mark.parametrize("account", ["superuser", "limited-role"])
def test_postgresql_connection_limit_is_read_reported_and_warned_about(
    account: str,
    app_name: str,
    make_engine: EngineFactory,
    pg_admin: PgAdmin,
    engine_log: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("psycopg2")
    url = pg_url(app_name)
    if account == "superuser":
        expected, max_size = _pg_expected_limit(pg_admin), 1000
    else:
        _limited_role_pg()
        url = url.replace("postgres@", f"{LIMITED_ROLE}@")
        expected, max_size = ROLE_LIMIT, 10
    engine = make_engine(url, poolclass=SmartPool, min_size=0, max_size=max_size)
    assert engine.pool.stats().server_max_connections is None  # type: ignore[attr-defined]
    pool = _first_connect(engine)
    measured(f"postgresql {account}: server_max_connections", pool.stats().server_max_connections)
    assert pool.stats().server_max_connections == expected
    warnings = _limit_warnings(engine_log)
    assert len(warnings) == 1, warnings
    assert f"max_size={max_size}" in warnings[0] and f"({expected})" in warnings[0]
    # read once: more connects add no more warnings
    with engine.connect(), engine.connect():
        pass
    assert len(_limit_warnings(engine_log)) == 1


def test_postgresql_limit_is_reported_without_a_warning_when_max_size_fits(
    app_name: str, make_engine: EngineFactory, pg_admin: PgAdmin, engine_log: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("psycopg2")
    engine = make_engine(pg_url(app_name), poolclass=SmartPool, min_size=0, max_size=5)
    pool = _first_connect(engine)
    assert pool.stats().server_max_connections == _pg_expected_limit(pg_admin)
    assert not _limit_warnings(engine_log)


@pytest.mark.parametrize("driver_name", ["pymysql", "mysqldb"])
@pytest.mark.parametrize("account", ["root", "limited-user"])
def test_mariadb_connection_limit_is_read_reported_and_warned_about(
    driver_name: str,
    account: str,
    make_engine: EngineFactory,
    my_admin: MyAdmin,
    engine_log: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip({"mysqldb": "MySQLdb"}.get(driver_name, driver_name))
    url = mysql_url(driver_name)
    (row,) = my_admin.query("SELECT @@max_connections, @@max_user_connections")
    if account == "root":
        limits = [int(v) for v in row if int(v) > 0]
        expected, max_size = min(limits), 1000
    else:
        _limited_role_mysql(my_admin)
        url = url.replace("root@", f"{LIMITED_ROLE}@")
        expected, max_size = ROLE_LIMIT, 10
    engine = make_engine(url, poolclass=SmartPool, min_size=0, max_size=max_size)
    pool = _first_connect(engine)
    measured(f"mariadb {driver_name} {account}: server_max_connections", pool.stats().server_max_connections)
    assert pool.stats().server_max_connections == expected
    warnings = _limit_warnings(engine_log)
    assert len(warnings) == 1, warnings
    assert f"max_size={max_size}" in warnings[0] and f"({expected})" in warnings[0]


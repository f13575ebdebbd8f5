"""SmartPool behind a real PgBouncer (transaction mode unless a test says otherwise).

Each test starts its own PgBouncer (:class:`sqlalchemy_smartpool.testing.PgBouncer`,
a subprocess on a free port in front of the shared PostgreSQL) and stops only
that one. PgBouncer tags its server connections with its own
``application_name``; the clients here set none, so ``pg_stat_activity`` rows
with that tag are exactly this PgBouncer's backends. The claims in
docs/pgbouncer.md are tested here.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sqlalchemy_smartpool import AsyncSmartPool, SmartPool
from sqlalchemy_smartpool.testing.pgbouncer import PgBouncer, PgBouncerError

from ._fork import ForkedChild
from ._services import require_postgres
from .conftest import PgAdmin, wait_until

pytestmark = pytest.mark.integration

# psycopg 3 prepares a statement server-side after it ran prepare_threshold (5) times on a connection;
# in transaction mode the next transaction may run on another backend (or another client may run on
# this one), so the prepared name is missing or already taken. None = never prepare.
PSYCOPG_ARGS: dict[str, Any] = {"prepare_threshold": None}

# asyncpg: statement_cache_size=0 turns off asyncpg's own statement cache (it also stops asyncpg
# relying on a statement surviving between messages); SQLAlchemy's dialect still prepares every
# statement by name, so the names must be unique (prepared_statement_name_func), and its own cache of
# prepared statements must be off (prepared_statement_cache_size=0): a cached statement lives on the
# backend it was prepared on, not on the one the next transaction gets.
ASYNCPG_ARGS: dict[str, Any] = {
    "statement_cache_size": 0,
    "prepared_statement_cache_size": 0,
    "prepared_statement_name_func": lambda: f"__asyncpg_{uuid.uuid4()}__",
}


def _require_pgbouncer() -> None:
    require_postgres()
    if not os.access("/usr/sbin/pgbouncer", os.X_OK):
        reason = "/usr/sbin/pgbouncer missing (make sysdeps installs Debian's pgbouncer)"
        if os.environ.get("SMARTPOOL_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} and SMARTPOOL_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip(reason)


Starter = Callable[..., PgBouncer]


@pytest.fixture
def start_pgbouncer() -> Iterator[Starter]:
    """Start PgBouncers for one test; each is stopped and its directory removed at teardown."""
    _require_pgbouncer()
    started: list[PgBouncer] = []

    def start(**kw: Any) -> PgBouncer:
        pgb = PgBouncer(**kw)
        started.append(pgb)
        return pgb.start()

    yield start
    for pgb in started:
        pgb.close()


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    made: list[Engine] = []
    yield made
    for engine in made:
        engine.dispose()
        if isinstance(engine.pool, SmartPool):
            engine.pool.close()


def _engine(made: list[Engine], url: str, **kw: Any) -> Engine:
    kw.setdefault("min_size", 0)  # no background connects: the tests control which backend is used
    engine = sa.create_engine(url, poolclass=SmartPool, **kw)
    made.append(engine)
    return engine


def _servers(admin: PgAdmin, pgb: PgBouncer) -> int:
    return admin.count(pgb.application_name)


# -- drivers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_sync_drivers_query_through_transaction_mode(
    start_pgbouncer: Starter, engines: list[Engine], driver: str
) -> None:
    pytest.importorskip(driver)
    pgb = start_pgbouncer(max_db_connections=2)
    args = PSYCOPG_ARGS if driver == "psycopg" else {}
    engine = _engine(engines, pgb.url(driver), max_size=4, connect_args=args)
    # two client connections alternate over two backends, the same statement many times
    # (past psycopg's prepare_threshold): the case that breaks server-side prepared statements
    conns = [engine.connect(), engine.connect()]
    try:
        for i in range(12):
            conn = conns[i % 2]
            assert conn.execute(sa.text("SELECT CAST(:x AS int) + 1"), {"x": i}).scalar_one() == i + 1
            conn.commit()
    finally:
        for conn in conns:
            conn.close()
    pools = {row["database"]: row for row in pgb.show("POOLS")}
    assert pools["test"]["pool_mode"] == "transaction"


def test_psycopg_default_prepare_breaks_in_transaction_mode(start_pgbouncer: Starter) -> None:
    """The control for PSYCOPG_ARGS: without prepare_threshold=None two clients on one backend collide."""
    psycopg = pytest.importorskip("psycopg")
    pgb = start_pgbouncer(max_db_connections=1)
    dsn = f"host=127.0.0.1 port={pgb.port} user=postgres dbname=test"
    with (
        psycopg.connect(dsn) as a,
        psycopg.connect(dsn) as b,
        pytest.raises(psycopg.errors.DuplicatePreparedStatement),
    ):
        for _ in range(8):  # both prepare "_pg3_0" on the one shared backend
            for conn in (a, b):
                conn.execute("SELECT 1").fetchone()
                conn.commit()


def test_asyncpg_through_transaction_mode(start_pgbouncer: Starter) -> None:
    pytest.importorskip("asyncpg")
    from sqlalchemy.ext.asyncio import create_async_engine

    pgb = start_pgbouncer(max_db_connections=2)

    async def scenario() -> list[int]:
        engine = create_async_engine(
            pgb.url("asyncpg"), poolclass=AsyncSmartPool, min_size=0, max_size=4, connect_args=ASYNCPG_ARGS
        )
        try:

            async def worker(n: int) -> int:
                total = 0
                for i in range(10):
                    async with engine.connect() as conn:
                        r = await conn.execute(sa.text("SELECT CAST(:x AS int) * 2"), {"x": n * 100 + i})
                        total += r.scalar_one()
                        await conn.commit()
                return total

            return list(await asyncio.gather(*(worker(n) for n in range(4))))
        finally:
            await engine.dispose()
            engine.pool.close()  # type: ignore[attr-defined]

    totals = asyncio.run(scenario())
    assert totals == [sum(2 * (n * 100 + i) for i in range(10)) for n in range(4)]


def test_asyncpg_default_prepared_statements_break_in_transaction_mode(start_pgbouncer: Starter) -> None:
    """The control for ASYNCPG_ARGS: SQLAlchemy's cached statement is missing on the next backend."""
    asyncpg = pytest.importorskip("asyncpg")
    from sqlalchemy.ext.asyncio import create_async_engine

    pgb = start_pgbouncer(max_db_connections=2, default_pool_size=2)

    async def scenario() -> None:
        engine = create_async_engine(pgb.url("asyncpg"), poolclass=AsyncSmartPool, min_size=0, max_size=2)
        try:
            async with engine.connect() as a, engine.connect() as b:
                query = sa.text("SELECT CAST(:x AS int)")
                await a.execute(query, {"x": 1})  # prepared (and cached by SQLAlchemy) on backend 1
                await a.commit()
                await b.execute(sa.text("SELECT 2"))  # b's transaction now holds backend 1
                await a.execute(query, {"x": 3})  # a's next transaction runs on backend 2
        finally:
            await engine.dispose()
            engine.pool.close()  # type: ignore[attr-defined]

    with pytest.raises(sa.exc.DBAPIError) as info:
        asyncio.run(scenario())
    driver_error = info.value.driver_exception
    assert isinstance(driver_error, asyncpg.exceptions.InvalidSQLStatementNameError), repr(driver_error)


@pytest.mark.parametrize("safe", [False, True], ids=["default-args", "pgbouncer-args"])
def test_asyncpg_two_processes_share_a_backend(start_pgbouncer: Starter, safe: bool) -> None:
    """Two app processes, one backend: asyncpg's numbered statement names collide unless made unique.

    Forked children start from the same asyncpg name counter, as two copies of one app
    would. The first keeps its connection (and, by default, its cached statements) open.
    """
    pytest.importorskip("asyncpg")
    from sqlalchemy.ext.asyncio import create_async_engine

    pgb = start_pgbouncer(max_db_connections=1)
    args = ASYNCPG_ARGS if safe else {}

    def app() -> str:
        async def main() -> str:
            engine = create_async_engine(
                pgb.url("asyncpg"), poolclass=AsyncSmartPool, min_size=0, max_size=1, connect_args=args
            )
            try:
                async with engine.connect() as conn:
                    await conn.execute(sa.text("SELECT CAST(:x AS int)"), {"x": 1})
                    await conn.commit()
            except sa.exc.DBAPIError as exc:
                return type(exc.driver_exception).__name__
            return "ok"  # the engine stays open: its connection and statements live on

        return asyncio.new_event_loop().run_until_complete(main())

    first = ForkedChild(app)
    try:
        assert first.result(timeout=20) == "ok"
        second = ForkedChild(app)
        try:
            outcome = second.result(timeout=20)
        finally:
            second.finish()
    finally:
        first.finish()
    assert outcome == ("ok" if safe else "DuplicatePreparedStatementError")


# -- the proxy caps server connections -------------------------------------------------------------


def test_many_threads_share_a_budget_of_four_server_connections(
    start_pgbouncer: Starter, engines: list[Engine], pg_admin: PgAdmin
) -> None:
    pgb = start_pgbouncer(max_db_connections=4, default_pool_size=20, max_client_conn=50)
    engine = _engine(engines, pgb.url(), max_size=20, acquire_timeout=20)
    threads_n, per_thread = 32, 8
    peak = 0
    done = threading.Event()
    errors: list[BaseException] = []
    results: list[int] = []
    lock = threading.Lock()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _servers(pg_admin, pgb))
            done.wait(0.005)

    def work(n: int) -> None:
        try:
            for i in range(per_thread):
                with engine.connect() as conn:
                    value = conn.execute(sa.text("SELECT CAST(:x AS int) FROM pg_sleep(0.01)"), {"x": i})
                    got = value.scalar_one()
                    conn.commit()
                with lock:
                    results.append(got)
        except BaseException as exc:
            errors.append(exc)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(30)
    done.set()
    watcher.join(5)
    peak = max(peak, _servers(pg_admin, pgb))

    assert not errors, errors[:3]
    assert sorted(results) == sorted(list(range(per_thread)) * threads_n)
    stats = engine.pool.stats()  # type: ignore[attr-defined]
    # SmartPool opened more client connections than PgBouncer had backends: the proxy multiplexed them
    assert stats.connections_created > 4, stats.as_dict()
    assert stats.connections_created <= 20
    assert peak == 4, f"peak server connections {peak}, budget 4"
    pools = {row["database"]: row for row in pgb.show("POOLS")}
    assert pools["test"]["sv_active"] + pools["test"]["sv_idle"] + pools["test"]["sv_used"] <= 4
    # what SmartPool reads as "the server's limit" behind a proxy is PostgreSQL's, not PgBouncer's
    (pg_limit,) = pg_admin.query(
        "SELECT current_setting('max_connections')::int"
        " - current_setting('superuser_reserved_connections')::int"
        " - coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0)"
    )[0]
    assert stats.server_max_connections == pg_limit


# -- validation and outages ---------------------------------------------------------------------------


def test_pre_ping_replaces_connections_after_a_pgbouncer_restart(
    start_pgbouncer: Starter, engines: list[Engine]
) -> None:
    pgb = start_pgbouncer()
    engine = _engine(
        engines, pgb.url(), max_size=4, validation_interval=0, connect_timeout=2, acquire_timeout=3
    )
    held = [engine.connect() for _ in range(3)]
    for conn in held:
        assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
        conn.close()  # three idle client connections to the old PgBouncer

    pgb.restart()  # same port; every client connection in the pool is now dead
    for _ in range(3):
        with engine.connect() as conn:  # validation sees the dead ones, the pool reconnects
            assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
    stats = engine.pool.stats()  # type: ignore[attr-defined]
    assert stats.validations_failed + stats.connections_invalidated >= 1, stats.as_dict()


def test_smartpool_notices_pgbouncer_down_and_recovers(
    start_pgbouncer: Starter, engines: list[Engine]
) -> None:
    pgb = start_pgbouncer()
    engine = _engine(
        engines, pgb.url(), max_size=4, validation_interval=0, connect_timeout=1, acquire_timeout=2
    )
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1

    pgb.stop()
    with pytest.raises(sa.exc.SQLAlchemyError), engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    assert engine.pool.stats().connections_failed >= 1  # type: ignore[attr-defined]

    pgb.start()  # same port again

    def answers() -> bool:
        try:
            with engine.connect() as conn:
                return bool(conn.exec_driver_sql("SELECT 1").scalar_one() == 1)
        except sa.exc.SQLAlchemyError:
            return False

    assert wait_until(answers, timeout=10.0, interval=0.1)


def test_pgbouncer_helper_errors_are_clear(start_pgbouncer: Starter) -> None:
    with pytest.raises(PgBouncerError, match="start"):
        _ = PgBouncer().port
    first = start_pgbouncer()
    with pytest.raises(ValueError):
        first.show("POOLS; SHUTDOWN")
    with pytest.raises(PgBouncerError, match="admin console"):
        first.show("NOSUCHLIST")
    clash = PgBouncer(port=first.port, start_timeout=5)
    try:
        with pytest.raises(PgBouncerError, match=r"(?s)exited with .*[Aa]ddress"):
            clash.start()
    finally:
        clash.close()


# -- transaction mode: session state belongs to the backend, not to the client connection ---------------


_LEFT = {"setting": "4321ms", "temp_table": True, "lock_on_first_backend": True}


def _leave_state(conn: sa.Connection, lock_key: int) -> int:
    """SET, a temp table and a session advisory lock, in one committed transaction; the backend pid."""
    conn.exec_driver_sql("SET statement_timeout = '4321ms'")
    conn.exec_driver_sql("CREATE TEMP TABLE sp_pgb_state (x int)")
    conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": lock_key})
    pid = int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
    conn.commit()
    return pid


def _state(conn: sa.Connection, admin: PgAdmin, lock_key: int, pid: int) -> dict[str, Any]:
    lock_holders = admin.query(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = %s AND granted", lock_key
    )
    return {
        "pid": int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()),
        "setting": conn.exec_driver_sql("SELECT current_setting('statement_timeout')").scalar_one(),
        "temp_table": conn.exec_driver_sql(
            "SELECT to_regclass('pg_temp.sp_pgb_state') IS NOT NULL"
        ).scalar_one(),
        "lock_on_first_backend": [r[0] for r in lock_holders] == [pid],
    }


@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
def test_session_state_survives_only_in_session_mode(
    start_pgbouncer: Starter, engines: list[Engine], pg_admin: PgAdmin, pool_mode: str
) -> None:
    pgb = start_pgbouncer(pool_mode=pool_mode, max_db_connections=2, default_pool_size=2)
    engine = _engine(engines, pgb.url(), max_size=2, validate_on_checkout=False)
    lock_key = uuid.uuid4().int % 2**31
    a, b = engine.connect(), engine.connect()
    try:
        first = _leave_state(a, lock_key)
        # b opens a transaction; in transaction mode it gets the idle backend a just used, and holds it
        b_state = _state(b, pg_admin, lock_key, first)
        # a's next transaction: in transaction mode the only free backend is another one
        a_state = _state(a, pg_admin, lock_key, first)
        b.rollback()
        a.rollback()
    finally:
        a.close()
        b.close()

    if pool_mode == "transaction":
        # a's state stayed on the backend, which another client connection is now using ...
        assert b_state == {"pid": first, **_LEFT}
        # ... and a itself runs on a backend without it
        assert a_state["pid"] != first
        assert a_state["setting"] != "4321ms"
        assert a_state["temp_table"] is False
    else:
        # session mode: a keeps its backend and its state; b has a backend of its own
        assert a_state == {"pid": first, **_LEFT}
        assert b_state["pid"] != first
        assert b_state["setting"] != "4321ms"
        assert b_state["temp_table"] is False


@pytest.mark.parametrize("reset", ["rollback", None])
def test_reset_on_return_releases_the_backend(
    start_pgbouncer: Starter, engines: list[Engine], reset: str | None
) -> None:
    """A connection returned inside a transaction keeps its backend unless the pool rolls it back."""
    pgb = start_pgbouncer(max_db_connections=1, settings={"query_wait_timeout": 1})
    returner = _engine(engines, pgb.url(), max_size=1, pool_reset_on_return=reset)
    other = _engine(engines, pgb.url(), max_size=1, validate_on_checkout=False)
    with other.connect() as conn:  # connected (and the dialect initialised) while the backend is free
        conn.exec_driver_sql("SELECT 1")
    raw = returner.raw_connection()
    cursor = raw.cursor()
    cursor.execute("SELECT 1")  # psycopg2 opened a transaction: the one backend is this client's
    cursor.close()
    raw.close()  # back to SmartPool; reset_on_return decides whether the transaction ends
    if reset is None:
        with pytest.raises(sa.exc.OperationalError), other.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        # psycopg2 only says "server closed the connection"; PgBouncer's log says why
        assert "query_wait_timeout" in pgb.log_tail(50)
    else:
        with other.connect() as conn:
            assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1

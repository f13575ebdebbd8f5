"""Leak detection against real PostgreSQL connections.

With ``leak_detection_threshold`` set, every checkout remembers its thread,
its call stack and the last SQL it ran; the housekeeper reports a checkout
held past the threshold once (WARNING on ``sqlalchemy_smartpool.leaks``),
its return (INFO, "came back"), and a connection the garbage collector
reclaimed without a return. These tests hold connections from distinct,
named functions and threads and check every report names the right ones.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine

from sqlalchemy_smartpool import SmartPool

from ._services import POSTGRES_URL, require_postgres
from .test_resilience import check_invariants, terminate_ours, wait_until

pytestmark = pytest.mark.integration

pytest.importorskip("psycopg2")

LOGGER = "sqlalchemy_smartpool.leaks"
THRESHOLD = 0.3


@pytest.fixture
def app_name() -> Iterator[str]:
    require_postgres()
    name = f"sp-leaks-{uuid.uuid4().hex[:10]}"
    yield name
    with contextlib.suppress(Exception):
        terminate_ours(name)


def make_engine(app: str, **kw: Any) -> Engine:
    return create_engine(
        POSTGRES_URL,
        poolclass=SmartPool,
        connect_args={"application_name": app},
        min_size=1,
        max_size=10,
        leak_detection_threshold=THRESHOLD,
        housekeeping_interval=0.05,
        **kw,
    )


@pytest.fixture
def engine(app_name: str) -> Iterator[Engine]:
    engine = make_engine(app_name)
    yield engine
    engine.pool.close()  # type: ignore[attr-defined]


@pytest.fixture
def leak_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=LOGGER)
    return caplog


def leak_records(caplog: pytest.LogCaptureFixture, level: int, needle: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == level and needle in r.getMessage()]


# Distinct, recognisable call sites: each report must name the one that checked out.


def checkout_in_alpha(engine: Engine) -> Connection:
    conn = engine.connect()
    conn.execute(text("SELECT 'alpha-marker-7f3'"))
    return conn


def checkout_in_bravo(engine: Engine) -> Connection:
    return engine.connect()  # no statement: the report must not invent one


def checkout_in_charlie(engine: Engine) -> Connection:
    conn = engine.connect()
    conn.execute(text("SELECT 'charlie-first'"))
    conn.execute(text("SELECT 'charlie-marker-2c9'"))
    return conn


HOLDERS: dict[str, tuple[Callable[[Engine], Connection], str | None]] = {
    "holder-alpha": (checkout_in_alpha, "alpha-marker-7f3"),
    "holder-bravo": (checkout_in_bravo, None),
    "holder-charlie": (checkout_in_charlie, "charlie-marker-2c9"),
}


def test_held_connections_are_reported_once_each_with_their_stack(
    engine: Engine, leak_log: pytest.LogCaptureFixture
) -> None:
    """K connections held past the threshold -> exactly K warnings, each naming the
    holder's thread, the function that checked it out and its last statement;
    ``suspected_leaks()`` lists them; returning them logs "came back"."""
    pool: Any = engine.pool
    k = len(HOLDERS)
    release = threading.Event()
    checked_out = threading.Barrier(k + 1, timeout=10)
    errors: list[BaseException] = []

    def hold(fn: Callable[[Engine], Connection]) -> None:
        try:
            conn = fn(engine)
            checked_out.wait()
            release.wait(20)
            conn.close()
        except Exception as err:
            errors.append(err)

    threads = [
        threading.Thread(target=hold, args=(fn,), name=name, daemon=True) for name, (fn, _) in HOLDERS.items()
    ]
    for t in threads:
        t.start()
    try:
        checked_out.wait()
        assert wait_until(lambda: len(leak_records(leak_log, logging.WARNING, "possible leak")) >= k, 5), (
            leak_log.text
        )
        time.sleep(5 * 0.05)  # several more housekeeping ticks: still one report each
        warnings = leak_records(leak_log, logging.WARNING, "possible leak")
        assert len(warnings) == k, [r.getMessage() for r in warnings]
        for name, (fn, marker) in HOLDERS.items():
            mine = [r.getMessage() for r in warnings if repr(name) in r.getMessage()]
            assert len(mine) == 1, (name, [r.getMessage() for r in warnings])
            message = mine[0]
            assert f"in {fn.__name__}" in message, message
            assert "test_leaks.py" in message
            others = [f.__name__ for n, (f, _) in HOLDERS.items() if n != name]
            assert not any(f"in {o}" in message for o in others), message
            if marker is None:
                assert "last statement" not in message, message
            else:
                assert f"last statement: SELECT '{marker}'" in message, message
            assert "sqlalchemy/engine" not in message and "sqlalchemy_smartpool/pool.py" not in message

        suspects = pool.suspected_leaks()
        assert sorted(s.thread for s in suspects) == sorted(HOLDERS)
        for info in suspects:
            fn, marker = HOLDERS[info.thread]
            assert fn.__name__ in info.stack
            assert info.held_for >= THRESHOLD
            assert info.last_statement == (None if marker is None else f"SELECT '{marker}'")
        assert pool.stats().counters["leaks_suspected"] == k
        assert pool.stats().counters["leaks_returned"] == 0
    finally:
        release.set()
        for t in threads:
            t.join(10)
    assert not errors, errors

    assert wait_until(lambda: len(leak_records(leak_log, logging.INFO, "came back")) == k, 5), leak_log.text
    stats = pool.stats()
    assert stats.counters["leaks_returned"] == k
    assert stats.counters["leaks_suspected"] == k
    assert stats.in_use == 0
    assert pool.suspected_leaks() == []
    check_invariants(pool)


def briefly_held(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 'short-marker'"))
        time.sleep(THRESHOLD / 3)


def test_checkouts_below_the_threshold_are_never_reported(
    engine: Engine, leak_log: pytest.LogCaptureFixture
) -> None:
    threads = [threading.Thread(target=briefly_held, args=(engine,), name=f"brief-{i}") for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    for _ in range(20):  # plus a stream of ordinary short checkouts
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    time.sleep(THRESHOLD + 10 * 0.05)  # long enough for any late report
    assert [r.getMessage() for r in leak_log.records if r.name == LOGGER] == []
    assert engine.pool.suspected_leaks() == []  # type: ignore[attr-defined]
    counters = engine.pool.stats().counters  # type: ignore[attr-defined]
    assert counters["leaks_suspected"] == 0 and counters["leaks_collected"] == 0


def drop_without_close(engine: Engine) -> None:
    conn = engine.connect()
    conn.execute(text("SELECT 'dropped-marker-91d'"))
    # returns without close(): the Connection is garbage once this frame ends


def test_connection_reclaimed_by_the_garbage_collector_is_reported(
    engine: Engine, leak_log: pytest.LogCaptureFixture
) -> None:
    """A checkout dropped without close() is reported with its checkout stack and
    statement when the garbage collector reclaims it, counted in leaks_collected,
    and its slot is not lost."""
    pool: Any = engine.pool
    pool.wait(10)
    drop_without_close(engine)
    gc.collect()
    assert wait_until(lambda: bool(leak_records(leak_log, logging.WARNING, "garbage collector")), 5), (
        leak_log.text
    )
    records = leak_records(leak_log, logging.WARNING, "garbage collector")
    assert len(records) == 1
    message = records[0].getMessage()
    assert "in drop_without_close" in message, message
    assert "last statement: SELECT 'dropped-marker-91d'" in message, message
    assert repr(threading.current_thread().name) in message
    stats = pool.stats()
    assert stats.counters["leaks_collected"] == 1
    assert stats.counters["leaks_suspected"] == 0
    assert stats.in_use == 0
    check_invariants(pool)
    with engine.connect() as conn:  # the pool still serves
        assert conn.execute(text("SELECT 1")).scalar() == 1


def test_gc_checkin_while_the_pool_lock_is_held_does_not_deadlock(app_name: str) -> None:
    """The garbage collector can run at any allocation, including inside SmartPool's
    locked sections (seen in the wild: the housekeeper's ``core.housekeep`` under the
    lock triggered a collection). SQLAlchemy's finalizer then checks the dropped
    connection in from that same thread: ``_do_return_conn`` -> ``self._acquire()``
    on a non-reentrant Lock the thread already holds, and the pool freezes for good.
    (SQLAlchemy's QueuePool uses an RLock for exactly this.) Holding the lock around
    ``gc.collect()`` makes that timing deterministic."""
    engine = make_engine(app_name)
    pool: Any = engine.pool
    pool.wait(10)

    def leak_in_a_cycle() -> None:
        conn = engine.connect()
        conn.execute(text("SELECT 1"))
        cycle: list[Any] = [conn]
        cycle.append(cycle)  # only the cyclic collector can free it

    gc.disable()
    try:
        leak_in_a_cycle()

        def collect_inside_locked_section() -> None:
            with pool._lock:
                gc.collect()

        t = threading.Thread(target=collect_inside_locked_section, daemon=True)
        t.start()
        t.join(2)
    finally:
        gc.enable()
    if t.is_alive():
        # the pool is wedged (its lock held forever by that thread): leave it, don't close it
        pytest.fail("deadlock: GC-time checkin blocked on the pool lock held by its own thread")
    engine.pool.close()  # type: ignore[attr-defined]

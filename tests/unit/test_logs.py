"""logs: structured records, correlation IDs, the JSON formatter, the outage policy, close reasons.

The engine runs on the fake runtime of test_engine (inline jobs, timers on a
fake clock), so an outage of a minute takes milliseconds and every line it
writes can be counted.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import logging.config
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sqlalchemy_smartpool import SmartPool, logs
from sqlalchemy_smartpool import stats as S
from sqlalchemy_smartpool.config import PoolConfig
from sqlalchemy_smartpool.engine import PoolEngine
from sqlalchemy_smartpool.errors import NEUTRAL, CircuitOpen
from sqlalchemy_smartpool.logs import (
    AUDIT_LOGGER,
    CorrelationIdFilter,
    JsonFormatter,
    OutageTracker,
    correlation_id,
    current_correlation_id,
)
from sqlalchemy_smartpool.metrics import pool_name
from sqlalchemy_smartpool.sched import Housekeeper

from .conftest import Conn, FakeClock
from .test_engine import FakeBackend, Made, Transient, slot

DOCS = Path(__file__).resolve().parents[2] / "docs" / "logging.md"


class Capture(logging.Handler):
    """Every record of the package's loggers, at DEBUG."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(
        self, name: str, logger: str | None = None, level: int | None = None
    ) -> list[logging.LogRecord]:
        return [
            r
            for r in self.records
            if getattr(r, "event", None) == name
            and (logger is None or r.name == logger)
            and (level is None or r.levelno == level)
        ]

    def main(self, min_level: int = logging.DEBUG) -> list[logging.LogRecord]:
        """Records of the operational loggers (not the audit trail) at ``min_level`` or above."""
        return [r for r in self.records if r.name != AUDIT_LOGGER and r.levelno >= min_level]


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




# ------------------------------------------------------------------ records


def test_an_event_carries_pool_event_fields_and_the_correlation_id(captured: Capture) -> None:
    log = logging.getLogger("sqlalchemy_smartpool.test")
    with correlation_id("req-42"):
        logs.event(log, logging.INFO, "orders", "demo", "connection #%d: %s", 7, "ok", conn_id=7, cause=None)
    (rec,) = captured.records
    assert rec.getMessage() == "pool orders: connection #7: ok"
    assert (rec.pool, rec.event, rec.conn_id, rec.correlation_id) == ("orders", "demo", 7, "req-42")  # type: ignore[attr-defined]
    assert not hasattr(rec, "cause")  # None fields are left out
    assert rec.funcName == "test_an_event_carries_pool_event_fields_and_the_correlation_id"  # the call site


def test_nothing_is_built_when_the_logger_is_off(captured: Capture) -> None:
    logging.getLogger("sqlalchemy_smartpool").setLevel(logging.WARNING)

    class Loud:
        def __str__(self) -> str:
            raise AssertionError("formatted although nobody listens")

    logs.event(logging.getLogger("sqlalchemy_smartpool.x"), logging.INFO, "p", "e", "%s", Loud())
    logs.audit("p", "e", "%s", Loud())
    assert captured.records == []


def test_correlation_ids_nest_are_cleaned_and_reset() -> None:
    assert current_correlation_id() is None
    with correlation_id("outer") as outer:
        with correlation_id("in\nner\x1b[31m") as inner:
            assert inner == current_correlation_id() == "in?ner?[31m"
        assert current_correlation_id() == outer == "outer"
    assert current_correlation_id() is None
    with correlation_id() as fresh:
        assert re.fullmatch(r"[0-9a-f]{32}", fresh)
    with correlation_id("x" * 500) as long:
        assert len(long) == logs.MAX_CORRELATION_ID
    with pytest.raises(TypeError, match="must be a string"), correlation_id(42):  # type: ignore[arg-type]
        pass


def test_the_opentelemetry_trace_id_is_the_correlation_id_unless_one_is_set() -> None:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    trace_id = 0x0AF7651916CD43DD8448EB211C80319C
    span = NonRecordingSpan(
        SpanContext(trace_id, 0x00F067AA0BA902B7, is_remote=False, trace_flags=TraceFlags(1))
    )
    assert current_correlation_id() is None  # no span: nothing
    with trace.use_span(span):
        assert current_correlation_id() == "0af7651916cd43dd8448eb211c80319c"
        with correlation_id("req-1"):
            assert current_correlation_id() == "req-1"
    assert current_correlation_id() is None


def test_the_filter_tags_the_applications_own_records() -> None:
    record = logging.makeLogRecord({"msg": "app line"})
    with correlation_id("req-9"):
        assert CorrelationIdFilter().filter(record)
    assert record.correlation_id == "req-9"  # type: ignore[attr-defined]
    kept = logging.makeLogRecord({"msg": "x", "correlation_id": "mine"})
    with correlation_id("other"):
        CorrelationIdFilter().filter(kept)
    assert kept.correlation_id == "mine"  # type: ignore[attr-defined]


def test_json_lines_hold_every_field_and_no_password() -> None:
    fmt = JsonFormatter(static={"service": "orders"})
    try:
        raise ValueError("connect to postgresql://app:hunter2@db/x failed")
    except ValueError:
        record = logging.getLogger("sqlalchemy_smartpool.engine").makeRecord(
            "sqlalchemy_smartpool.engine",
            logging.WARNING,
            __file__,
            1,
            "pool %s: dsn password=hunter2 host=db",
            ("orders",),
            exc_info=__import__("sys").exc_info(),
            extra={
                "pool": "orders",
                "event": "demo",
                "conn_id": 3,
                "obj": object(),
                "nested": {"a": [1, "pwd=hunter2"]},
            },
        )
    line = fmt.format(record)
    assert "\n" not in line and "hunter2" not in line
    out = json.loads(line)
    assert out["level"] == "WARNING" and out["logger"] == "sqlalchemy_smartpool.engine"
    assert out["message"] == "pool orders: dsn password=*** host=db"
    assert (out["pool"], out["event"], out["conn_id"], out["service"]) == ("orders", "demo", 3, "orders")
    assert out["nested"] == {"a": [1, "pwd=***"]} and out["obj"].startswith("<object object")
    assert "ValueError" in out["exc_info"] and "app:***@db" in out["exc_info"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", out["time"])


def test_the_documented_dict_config_writes_json_lines_and_a_separate_audit_trail() -> None:
    """The dictConfig example of docs/logging.md, run as it is written."""
    text = DOCS.read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "dictConfig" in b)
    names = ["sqlalchemy_smartpool", AUDIT_LOGGER]
    saved = {n: (lg.handlers[:], lg.level, lg.propagate) for n in names if (lg := logging.getLogger(n))}
    try:
        exec(compile(block, str(DOCS), "exec"), {})
        streams = {}
        for n in names:
            (handler,) = logging.getLogger(n).handlers
            assert isinstance(handler, logging.StreamHandler) and isinstance(handler.formatter, JsonFormatter)
            streams[n] = handler.stream = io.StringIO()  # type: ignore[assignment]
        with correlation_id("req-7"):
            logs.audit("orders", logs.CONNECT, "connection #%d opened", 1, conn_id=1)
            logs.event(logging.getLogger(logs.ENGINE_LOGGER), logging.WARNING, "orders", "x", "careful")
        (audit_line,) = streams[AUDIT_LOGGER].getvalue().splitlines()
        assert json.loads(audit_line)["correlation_id"] == "req-7"
        (main_line,) = streams["sqlalchemy_smartpool"].getvalue().splitlines()  # the audit line not twice
        assert json.loads(main_line)["message"] == "pool orders: careful"
    finally:
        for n, (handlers, level, propagate) in saved.items():
            lg = logging.getLogger(n)
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate = propagate


def test_config_changes_and_rotation_are_audited_without_secrets(captured: Capture) -> None:
    logs.config_changed(
        "orders",
        {"max_size": (10, 20), "validation_query": ("SELECT 1", "SELECT 'password=s3cret'")},
        source="reconfigure()",
    )
    logs.credentials_rotated("orders", credential="password", source="file /run/secrets/db")
    changed, rotated = captured.records
    assert changed.name == AUDIT_LOGGER and changed.event == logs.CONFIG_CHANGED  # type: ignore[attr-defined]
    assert changed.changes["max_size"] == [10, 20]  # type: ignore[attr-defined]
    assert "s3cret" not in changed.getMessage() and "s3cret" not in repr(changed.__dict__)
    assert "max_size: 10 -> 20" in changed.getMessage()
    assert rotated.event == logs.CREDENTIALS_ROTATED and rotated.credential == "password"  # type: ignore[attr-defined]
    assert rotated.getMessage() == "pool orders: new password in use (from file /run/secrets/db)"


# ------------------------------------------------------------------ the outage policy


def test_the_tracker_logs_the_start_once_a_line_per_step_and_the_end_once() -> None:
    t = OutageTracker()
    notes = [t.started(0.0, "refused"), t.failed(0.0, "refused", probe=False, retry_in=None)]
    assert notes[0] is not None and notes[0].level == logging.WARNING and notes[0].audit
    assert notes[1] is None  # the first failure was the start
    assert t.started(0.1, "refused") is None  # still the same outage
    assert t.failed(0.2, "refused", probe=False, retry_in=None) is None  # not a step, no report due
    step = t.failed(0.5, "refused", probe=True, retry_in=0.5)
    assert step is not None and step.level == logging.DEBUG and step.fields["retry_in_s"] == 0.5
    infos = []
    now = 0.5
    while now < 600:  # a probe a second for ten minutes
        now += 1.0
        note = t.failed(now, "refused", probe=True, retry_in=1.0)
        assert note is not None  # one line per backoff step
        if note.level == logging.INFO:
            infos.append(now)
    gaps = [b - a for a, b in itertools.pairwise(infos)]
    assert infos[0] <= 2.0 and gaps == sorted(gaps) and max(gaps) <= logs.OUTAGE_REPORT_MAX + 1
    assert len(infos) <= 16, infos  # 1, 2, 4, ... 60 s apart: not 600 lines
    end = t.succeeded(now + 0.5)
    assert end is not None and end.level == logging.INFO and end.audit
    assert end.fields["failures"] == end.args[1] == 3 + 600 and t.failures == 0
    assert end.fields["duration_s"] == pytest.approx(now + 0.5)
    assert t.succeeded(now + 1) is None


def test_a_minute_long_outage_writes_a_handful_of_lines(make: Callable[..., Made], captured: Capture) -> None:
    engine, backend, rt = make(
        min_size=1,
        retry_attempts=0,
        housekeeping_interval=0.1,
        breaker_failure_threshold=3,
        breaker_backoff_initial=0.25,
        breaker_backoff_max=1.0,
        breaker_jitter=0.0,
    )
    under_lock: list[bool] = []
    probe = logging.Handler()
    probe.emit = lambda r: under_lock.append(engine._owned())  # type: ignore[method-assign]
    logging.getLogger("sqlalchemy_smartpool").addHandler(probe)
    try:
        captured.records.clear()
        backend.failures = [Transient("connection refused")] * 10_000
        held = engine.checkout()
        engine.checkin(slot(held), usable=False)  # the connection died: refills start failing
        start = rt.clock()
        rt.run_until(start + 60.0)
        with pytest.raises(CircuitOpen):
            engine.checkout()
        failed_so_far = engine.stats().counters[S.CONNECTIONS_FAILED]
        backend.failures = []
        rt.run_until(rt.clock() + 2.0, lambda: engine.stats().pool_size >= 1)
    finally:
        logging.getLogger("sqlalchemy_smartpool").removeHandler(probe)
    assert engine.stats().pool_size == 1 and engine.stats().breaker_state == "closed"
    probes = len(captured.events(logs.BREAKER_HALF_OPEN, AUDIT_LOGGER))
    assert 55 <= probes <= 63  # a probe a second once the backoff reached its 1 s cap (+ the last)
    (started,) = captured.events(logs.OUTAGE_STARTED, logs.ENGINE_LOGGER, logging.WARNING)
    assert started.cause == "Transient: connection refused"  # type: ignore[attr-defined]
    (_opened,) = captured.events(logs.BREAKER_OPENED, logs.BREAKER_LOGGER, logging.INFO)
    steps = captured.events(logs.OUTAGE_CONTINUES, logs.ENGINE_LOGGER)
    assert len(steps) <= probes  # at most one line per backoff step ...
    assert len([r for r in steps if r.levelno == logging.INFO]) <= 7  # ... and INFO only at 1, 2, 4, ... s
    (ended,) = captured.events(logs.OUTAGE_ENDED, logs.ENGINE_LOGGER, logging.INFO)
    assert ended.failures == failed_so_far + 0 == engine.stats().counters[S.CONNECTIONS_FAILED]  # type: ignore[attr-defined]
    assert 60.0 <= ended.duration_s <= 62.0  # type: ignore[attr-defined]
    visible = captured.main(logging.INFO)
    assert {r.event for r in visible} <= {  # type: ignore[attr-defined]
        logs.OUTAGE_STARTED,
        logs.BREAKER_OPENED,
        logs.OUTAGE_CONTINUES,
        logs.OUTAGE_ENDED,
    }
    print(
        f"[measured] a 60 s outage on the fake clock: {len(visible)} lines at INFO+ "
        f"({sum(r.levelno == logging.WARNING for r in visible)} WARNING), {probes} probes"
    )
    assert len(visible) <= 10, [r.getMessage() for r in visible]
    assert captured.events(logs.OUTAGE_STARTED, AUDIT_LOGGER) and captured.events(
        logs.OUTAGE_ENDED, AUDIT_LOGGER
    )
    transitions = [
        (r.from_state, r.to_state)
        for r in captured.records
        if r.name == AUDIT_LOGGER and r.event.startswith("breaker_")
    ]  # type: ignore[attr-defined]
    assert transitions[0] == ("closed", "open") and transitions[-1] == ("half_open", "closed")
    assert under_lock and not any(under_lock)  # written after the pool's lock was released
    engine.check_invariants()


def test_a_blip_is_one_warning_and_one_info(make: Callable[..., Made], captured: Capture) -> None:
    engine, backend, _ = make(retry_attempts=2, retry_backoff_initial=0.05, retry_backoff_max=0.1)
    held = engine.checkout()
    backend.failures = [Transient("reset by peer")]
    captured.records.clear()
    second = engine.checkout()  # the first attempt fails, the retry works
    assert [(r.event, r.levelno) for r in captured.main(logging.INFO)] == [  # type: ignore[attr-defined]
        (logs.OUTAGE_STARTED, logging.WARNING),
        (logs.OUTAGE_ENDED, logging.INFO),
    ]
    engine.checkin(slot(held))
    engine.checkin(slot(second))


def test_the_hot_path_logs_nothing(make: Callable[..., Made], captured: Capture) -> None:
    engine, _, _ = make(validation_interval=1e6)
    captured.records.clear()
    for _ in range(100):
        engine.checkin(slot(engine.checkout()))
    assert captured.records == []


# ------------------------------------------------------------------ audit records


def close_reasons(captured: Capture) -> list[str]:
    return [r.reason for r in captured.events(logs.CLOSE, AUDIT_LOGGER)]  # type: ignore[attr-defined]


def test_every_close_says_why(make: Callable[..., Made], captured: Capture, clock: FakeClock) -> None:
    engine, _backend, rt = make(max_size=3, idle_timeout=5.0, housekeeping_interval=0.5)
    captured.records.clear()
    a, b = engine.checkout(), engine.checkout()
    engine.checkin(slot(a))
    engine.checkin(slot(b), usable=False)
    assert close_reasons(captured) == [logs.CLOSE_INVALIDATED]
    (inv,) = captured.events(logs.INVALIDATE, AUDIT_LOGGER)
    assert inv.conn_id == slot(b).id  # type: ignore[attr-defined]
    rt.run_until(clock() + 6.0)  # idle above min_size=0 for longer than idle_timeout
    assert close_reasons(captured)[-1] == logs.CLOSE_IDLE_TIMEOUT

    _engine2, _backend2, rt2 = make(max_lifetime=3.0, idle_timeout=1e5, housekeeping_interval=0.5)
    captured.records.clear()
    rt2.run_until(clock() + 4.0)
    assert close_reasons(captured) == [logs.CLOSE_MAX_LIFETIME]

    engine3, backend3, _rt3 = make(validate_on_checkout=True, validation_interval=0.1)
    captured.records.clear()
    clock.advance(1.0)
    backend3.alive = False
    c = engine3.checkout()  # the idle one fails its ping; a fresh one is opened
    failed = captured.events(logs.VALIDATION_FAILED, AUDIT_LOGGER)
    assert failed and close_reasons(captured) == [logs.CLOSE_VALIDATION_FAILED]
    backend3.alive = True
    engine3.checkin(slot(c))
    engine3.dispose()
    assert close_reasons(captured)[-1] == logs.CLOSE_DISPOSED
    assert captured.events(logs.POOL_DISPOSED, AUDIT_LOGGER)
    engine3.checkin(slot(engine3.checkout()))
    engine3.close()
    assert close_reasons(captured)[-1] == logs.CLOSE_POOL_CLOSED
    assert captured.events(logs.POOL_CLOSED, AUDIT_LOGGER)

    _engine4, backend4, rt4 = make(keepalive_interval=1.0, housekeeping_interval=0.5)
    captured.records.clear()
    backend4.alive = False
    rt4.run_until(clock() + 2.0)
    assert logs.CLOSE_KEEPALIVE_FAILED in close_reasons(captured)
    for rec in captured.events(logs.CLOSE, AUDIT_LOGGER):
        assert rec.conn_id >= 1 and rec.age_s >= 0  # type: ignore[attr-defined]


def test_connects_are_audited_with_their_id_and_time(make: Callable[..., Made], captured: Capture) -> None:
    engine, _, _ = make(max_size=2)
    captured.records.clear()
    a = engine.checkout()
    b = engine.checkout()  # a second connection is opened
    (rec,) = captured.events(logs.CONNECT, AUDIT_LOGGER)
    assert rec.conn_id == slot(b).id and rec.connect_s >= 0  # type: ignore[attr-defined]
    engine.checkin(slot(a))
    engine.checkin(slot(b))


# ------------------------------------------------------------------ correlation across threads


def test_background_work_carries_the_callers_id_and_housekeeping_none(clock: FakeClock) -> None:
    seen_connects: list[str | None] = []
    seen_ticks: list[str | None] = []

    class Backend(FakeBackend):
        def open(self) -> Conn:
            seen_connects.append(current_correlation_id())
            return super().open()

    config = PoolConfig(min_size=0, max_size=2, housekeeping_interval=0.01)
    engine: PoolEngine[Conn] = PoolEngine(
        config, Backend(), name="ctx", errors=NEUTRAL, runtime=lambda n, w: Housekeeper(n, workers=w)
    )
    ticked = threading.Event()
    original = engine._housekeep

    def housekeep() -> None:
        seen_ticks.append(current_correlation_id())
        ticked.set()
        original()

    engine._housekeep = housekeep  # type: ignore[method-assign]
    try:
        with correlation_id("req-42"):
            conn = engine.checkout()  # started here: the connect job runs on a worker thread
            engine.checkin(slot(conn))
        assert ticked.wait(5) and seen_ticks
        assert seen_connects == ["req-42"]
        assert set(seen_ticks) == {None}  # the pool's own work is nobody's request
    finally:
        engine.close()


# ------------------------------------------------------------------ names


def test_smartpool_is_named_after_the_database_at_the_first_connect(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'orders.db'}", poolclass=SmartPool)
    pool = engine.pool
    assert isinstance(pool, SmartPool)
    try:
        assert pool.name.startswith("0x") and pool_name(pool) is None  # nothing known yet
        with engine.connect():
            pass
        assert pool.name == pool.stats().name == pool_name(pool) == "orders.db"
        engine.dispose()  # the new pool knows it at once
        assert isinstance(engine.pool, SmartPool) and engine.pool.name == "orders.db"
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("kw", "query", "expected"),
    [
        ({"pool_logging_name": "orders"}, "", "orders"),
        ({"pool_logging_name": "orders", "name": "billing"}, "", "billing"),
        ({}, "?plugin=smartpool", "app.db"),  # the plugin sees the URL: named before any connect
    ],
)
def test_the_name_follows_name_then_logging_name_then_the_url(
    tmp_path: Path, kw: dict[str, Any], query: str, expected: str
) -> None:
    if not query:
        kw["poolclass"] = SmartPool
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}{query}", **kw)
    try:
        assert engine.pool.name == expected == pool_name(engine.pool)  # type: ignore[attr-defined]
        assert engine.pool._engine.name == expected  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def test_an_in_memory_database_keeps_the_id() -> None:
    engine = sa.create_engine("sqlite://", poolclass=SmartPool)
    try:
        with engine.connect():
            pass
        assert engine.pool.name.startswith("0x") and pool_name(engine.pool) is None  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def test_redis_pools_are_named_where_they_connect_without_credentials() -> None:
    from sqlalchemy_smartpool import SmartRedisPool

    pools = [
        SmartRedisPool(host="cache.internal", port=6380, db=3),
        SmartRedisPool.from_url("redis://alice:s3cret@cache.internal:6381/2"),
        SmartRedisPool.from_url("unix:///run/redis.sock?db=1"),
        SmartRedisPool.from_url("redis://cache.internal/0", name="sessions"),
    ]
    try:
        names = [p.name for p in pools]
        assert names == [
            "redis-cache.internal:6380/3",
            "redis-cache.internal:6381/2",
            "redis-unix:/run/redis.sock/1",
            "sessions",
        ]
        assert [pool_name(p) for p in pools] == names and [p.stats().name for p in pools] == names
        assert not any("s3cret" in n or "alice" in n for n in names)
    finally:
        for p in pools:
            p.close()


def test_on_an_event_loop_too_connects_carry_the_id_and_housekeeping_none() -> None:
    import asyncio

    from sqlalchemy_smartpool import greenlets

    seen_connects: list[str | None] = []
    seen_ticks: list[str | None] = []

    class Backend(FakeBackend):
        def open(self) -> Conn:
            seen_connects.append(current_correlation_id())
            return super().open()

    async def scenario() -> None:
        config = PoolConfig(min_size=0, max_size=2, housekeeping_interval=0.01)
        engine: PoolEngine[Conn] = PoolEngine(
            config,
            Backend(),
            name="aio",
            errors=NEUTRAL,
            runtime=lambda n, w: greenlets.loop_runtime(n, clock=__import__("time").monotonic),
        )
        original = engine._housekeep

        def housekeep() -> None:
            seen_ticks.append(current_correlation_id())
            original()

        engine._housekeep = housekeep  # type: ignore[method-assign]
        with correlation_id("req-aio"):
            conn = await greenlets.spawn(engine.checkout)
            engine.checkin(slot(conn))
        for _ in range(200):
            if len(seen_ticks) >= 3:
                break
            await asyncio.sleep(0.01)
        await greenlets.spawn(engine.close)

    asyncio.run(scenario())
    assert seen_connects == ["req-aio"]
    assert len(seen_ticks) >= 3 and set(seen_ticks) == {None}


def test_a_pool_nobody_uses_writes_no_line(tmp_path: Path, captured: Capture) -> None:
    from sqlalchemy_smartpool import SmartRedisPool

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'idle.db'}?plugin=smartpool", min_size=2)
    rpool = SmartRedisPool(host="127.0.0.1", port=1, min_size=2)  # nothing listens there: never dialed
    del engine, rpool
    import gc

    gc.collect()
    assert captured.records == []

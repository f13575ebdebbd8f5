"""Profiling hooks: checkout listeners, sampled top holders, and the engine's timing histograms."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sqlalchemy_smartpool import SmartPool
from sqlalchemy_smartpool import stats as S
from sqlalchemy_smartpool.config import PoolConfig
from sqlalchemy_smartpool.profiling import MAX_LOCATIONS, OTHER, CheckoutTiming, HolderStats, format_location

HERE = Path(__file__).name


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    made: list[sa.Engine] = []

    def factory(**kw: Any) -> sa.Engine:
        e = sa.create_engine(f"sqlite:///{tmp_path / 'p.db'}", poolclass=SmartPool, **{"max_size": 2, **kw})
        made.append(e)
        return e

    yield factory
    for e in made:
        e.dispose()
        e.pool.close()  # type: ignore[attr-defined]


def held_here(engine: sa.Engine, n: int) -> None:
    for _ in range(n):
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")


def test_listener_gets_each_checkout_with_wait_hold_and_location(make: Any) -> None:
    engine = make(holder_sample_every=0)
    pool: Any = engine.pool
    got: list[CheckoutTiming] = []
    plain: list[CheckoutTiming] = []
    pool.add_checkout_listener(got.append, location=True)
    pool.add_checkout_listener(plain.append)
    held_here(engine, 5)
    assert len(got) == 5 and len(plain) == 5
    first = got[0]
    assert first.pool == pool.stats().name and first.held >= 0
    assert first.wait > 0 and got[1].wait == 0.0, "the first waited for the first connect, the next did not"
    assert first.location is not None and HERE in first.location and "held_here" in first.location
    assert sum(t.held for t in got) == pytest.approx(pool.stats().timings[S.USE_TIME].sum, abs=1e-6)
    assert pool.remove_checkout_listener(got.append)
    assert not pool.remove_checkout_listener(got.append)
    pool.remove_checkout_listener(plain.append)
    held_here(engine, 2)
    assert len(got) == 5, "removed: not called again"
    assert pool._engine._trace_every == 0, "no listener, no sampling: nothing is traced"


def test_listener_sees_the_queue_wait(make: Any) -> None:
    engine = make(max_size=1, holder_sample_every=0)
    pool: Any = engine.pool
    got: list[CheckoutTiming] = []
    pool.add_checkout_listener(got.append)
    first = pool.connect()
    waiting = threading.Thread(target=lambda: pool.connect().close())
    waiting.start()
    assert _until(lambda: pool.stats().requests_waiting == 1)
    threading.Event().wait(0.05)  # let it queue for a measurable while
    first.close()
    waiting.join(5)
    assert len(got) == 2 and got[1].wait >= 0.04
    assert pool.stats().timings[S.WAIT_TIME].count == pool.stats().checkouts


def test_a_failing_listener_is_logged_once_and_never_breaks_a_checkin(
    make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make()
    pool: Any = engine.pool

    def broken(t: CheckoutTiming) -> None:
        raise RuntimeError("password=hunter2")

    pool.add_checkout_listener(broken)
    with caplog.at_level(logging.WARNING, logger="sqlalchemy_smartpool.profiling"):
        held_here(engine, 3)
    failures = [r for r in caplog.records if "checkout listener" in r.getMessage()]
    assert len(failures) == 1 and "RuntimeError" in failures[0].getMessage()
    assert "hunter2" not in caplog.text
    assert pool.stats().pool_in_use == 0


def test_top_holders_estimates_from_sampled_checkouts(make: Any) -> None:
    engine = make(holder_sample_every=4)
    pool: Any = engine.pool
    held_here(engine, 40)
    top = pool.top_holders()
    assert len(top) == 1
    h = top[0]
    assert "held_here" in h.location and HERE in h.location
    assert h.samples == 10 and h.count == 40, "one in four sampled, scaled back up"
    assert h.total_s > 0 and 0 < h.p99_s <= h.max_s + 1e-12 and h.held_now == 0
    assert pool.top_holders(0) == []
    with pytest.raises(ValueError, match="by="):
        pool.top_holders(by="nonsense")


def test_top_holders_counts_a_connection_held_right_now(make: Any) -> None:
    engine = make(holder_sample_every=1)
    pool: Any = engine.pool
    conn = engine.connect()  # held: a job that has not returned yet
    try:
        threading.Event().wait(0.02)
        top = pool.top_holders(by="max")
        assert top[0].held_now == 1 and top[0].max_s >= 0.02
    finally:
        conn.close()
    assert pool.top_holders()[0].held_now == 0


def test_top_holders_off_and_leak_detection_on(make: Any) -> None:
    engine = make(holder_sample_every=0)
    held_here(engine, 5)
    assert engine.pool.top_holders() == []  # type: ignore[attr-defined]
    leaky = make(holder_sample_every=1, leak_detection_threshold=60.0)
    held_here(leaky, 3)
    h = leaky.pool.top_holders()[0]  # type: ignore[attr-defined]
    assert h.samples == 3 and "held_here" in h.location, "the leak stack's innermost frame is the location"


def test_listeners_survive_engine_dispose(make: Any) -> None:
    engine = make()
    got: list[CheckoutTiming] = []
    engine.pool.add_checkout_listener(got.append)  # type: ignore[attr-defined]
    engine.dispose()  # SQLAlchemy swaps in pool.recreate()
    held_here(engine, 2)
    assert len(got) == 2


def test_holder_stats_caps_locations_and_formats_paths() -> None:
    stats = HolderStats(every=1)
    for i in range(MAX_LOCATIONS + 5):
        stats.returned(("/x/app.py", i, "f"), 0.001)
    stats.returned(None, 1.0)  # no location: ignored
    rows = stats.top(MAX_LOCATIONS + 10, "count", [(("/x/app.py", 99999, "g"), 0.5)])
    other = [r for r in rows if r.location == OTHER]
    assert len(other) == 1 and other[0].samples == 5 + 1
    assert len(rows) == MAX_LOCATIONS + 1
    stats.reset()
    assert stats.top(5, "total", []) == []
    assert format_location(None) is None
    assert format_location(("/elsewhere/a.py", 3, "f")) == "/elsewhere/a.py:3 in f"


def test_timings_off_with_track_wait_times_false(make: Any) -> None:
    engine = make(track_wait_times=False)
    held_here(engine, 3)
    st = engine.pool.stats()  # type: ignore[attr-defined]
    assert st.timings == {} and "use_time_count" not in st.as_dict()


def test_engine_records_create_and_use_times_and_skipped_validations(make: Any) -> None:
    engine = make(validation_interval=60.0)
    held_here(engine, 4)
    st = engine.pool.stats()  # type: ignore[attr-defined]
    assert st.timings[S.CREATE_TIME].count == st.connections_created >= 1
    assert st.timings[S.USE_TIME].count == st.checkouts == 4
    assert st.validations_skipped == st.checkouts - (st.validations - st.validations_failed)
    assert st.acquire_timeout == engine.pool.config.acquire_timeout  # type: ignore[attr-defined]


def test_holder_sample_every_is_a_validated_setting() -> None:
    assert PoolConfig().holder_sample_every == 64
    assert PoolConfig.from_strings({"holder_sample_every": "8"}).holder_sample_every == 8
    with pytest.raises(Exception, match="holder_sample_every"):
        PoolConfig(holder_sample_every=-1)


def _until(pred: Any, timeout: float = 5.0) -> bool:
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if pred():
            return True
        done.wait(0.01)
    return bool(pred())


def test_asyncio_pool_holders_name_the_awaiting_coroutine(tmp_path: Path) -> None:
    pytest.importorskip("aiosqlite")
    import asyncio

    from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

    from sqlalchemy_smartpool import AsyncSmartPool

    async def query_from_a_coroutine(e: AsyncEngine) -> None:
        async with e.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")

    async def main() -> list[Any]:
        e = create_async_engine(
            f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", poolclass=AsyncSmartPool, holder_sample_every=1
        )
        try:
            for _ in range(3):
                await query_from_a_coroutine(e)
            return e.pool.top_holders()  # type: ignore[attr-defined,no-any-return]
        finally:
            await e.dispose()

    top = asyncio.run(main())
    assert top[0].samples == 3 and "query_from_a_coroutine" in top[0].location

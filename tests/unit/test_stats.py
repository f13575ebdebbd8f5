"""WaitSampler percentiles (nearest rank) and the PoolStats snapshot."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import random

import pytest

from sqlalchemy_smartpool import stats as S
from sqlalchemy_smartpool.stats import PoolStats, WaitSampler


@pytest.mark.parametrize("capacity", [0, -8, 3, 6, 1000])
def test_capacity_must_be_a_power_of_two(capacity: int) -> None:
    with pytest.raises(ValueError, match=repr(capacity)):
        WaitSampler(capacity)


def test_empty_sampler_reports_zeros() -> None:
    w = WaitSampler(8)
    assert len(w) == 0
    assert w.percentiles(50, 99) == (0.0, 0.0)
    assert w.max == 0.0


def test_nearest_rank_percentiles_on_1_to_100() -> None:
    w = WaitSampler(128)
    values = list(range(1, 101))
    random.Random(3).shuffle(values)
    for v in values:
        w.record(float(v))
    assert w.percentiles(0, 1, 50, 95, 99, 99.5, 100) == (1.0, 1.0, 50.0, 95.0, 99.0, 100.0, 100.0)
    assert w.max == 100.0 and len(w) == 100


@pytest.mark.parametrize(
    ("q", "expected"),
    [(10, 1), (10.1, 2), (50, 5), (90, 9), (90.5, 10), (91, 10), (95, 10), (99, 10), (100, 10)],
)
def test_nearest_rank_rounds_up(q: float, expected: int) -> None:
    w = WaitSampler(16)
    for v in range(10, 0, -1):
        w.record(float(v))
    (got,) = w.percentiles(q)
    assert got == float(expected)


def test_single_sample() -> None:
    w = WaitSampler(4)
    w.record(0.25)
    assert w.percentiles(0, 50, 100) == (0.25, 0.25, 0.25)


def test_ring_wraps_keeping_the_latest_samples() -> None:
    w = WaitSampler(4)
    for v in (100.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0):
        w.record(v)
    assert len(w) == 4
    assert w.percentiles(0, 50, 100) == (3.0, 4.0, 6.0), "holds 3, 4, 5, 6"
    assert w.max == 100.0, "max is since the last reset, not over the ring"


def test_reset_forgets() -> None:
    w = WaitSampler(4)
    for v in (1.0, 2.0, 3.0):
        w.record(v)
    w.reset()
    assert len(w) == 0 and w.max == 0.0 and w.percentiles(50) == (0.0,)
    w.record(7.0)
    assert w.percentiles(0, 100) == (7.0, 7.0)


def _stats(**counters: int) -> PoolStats:
    full = dict.fromkeys(S.COUNTERS, 0)
    full.update(counters)
    return PoolStats(
        name="p",
        pool_size=4,
        pool_idle=1,
        pool_in_use=3,
        requests_waiting=2,
        connections_pending=1,
        pool_min=2,
        pool_max=9,
        breaker_state="closed",
        counters=full,
        wait_p50=0.001,
        wait_p95=0.01,
        wait_p99=0.1,
        wait_max=0.5,
    )


def test_counters_read_as_attributes() -> None:
    st = _stats(checkouts=12, timeouts=3, rejected_queue_full=1)
    assert st.checkouts == 12 and st.timeouts == 3 and st.rejected_queue_full == 1
    assert st.connections_created == 0
    with pytest.raises(AttributeError):
        _ = st.no_such_counter


def test_short_gauge_names() -> None:
    st = _stats()
    assert (st.size, st.idle, st.in_use, st.waiting, st.min_size, st.max_size) == (4, 1, 3, 2, 2, 9)


def test_as_dict_has_every_key() -> None:
    st = _stats(checkouts=5)
    d = st.as_dict()
    gauges = {
        S.POOL_SIZE: 4,
        S.POOL_IDLE: 1,
        S.POOL_IN_USE: 3,
        S.REQUESTS_WAITING: 2,
        S.CONNECTIONS_PENDING: 1,
        S.POOL_MIN: 2,
        S.POOL_MAX: 9,
    }
    for key, value in gauges.items():
        assert d[key] == value
    assert set(S.COUNTERS) <= set(d)
    assert d[S.CHECKOUTS] == 5
    fields = {f.name for f in dataclasses.fields(PoolStats)} - {"counters", "timings"}
    assert set(d) == fields | set(S.COUNTERS), "every field flattened, counters inlined"
    for name in fields:
        assert d[name] == getattr(st, name)


def test_as_dict_flattens_timings_to_count_and_sum() -> None:
    t = S.Timing()
    t.record(0.002)
    t.record(0.5)
    st = dataclasses.replace(_stats(), timings={S.USE_TIME: t.snapshot()})
    d = st.as_dict()
    assert d["use_time_count"] == 2 and d["use_time_sum"] == pytest.approx(0.502)
    assert "timings" not in d


def test_counter_names_are_unique() -> None:
    assert len(set(S.COUNTERS)) == len(S.COUNTERS)


def test_snapshot_is_frozen_and_copies_cleanly() -> None:
    st = _stats(checkouts=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.pool_size = 1  # type: ignore[misc]
    for clone in (copy.copy(st), copy.deepcopy(st), pickle.loads(pickle.dumps(st))):
        assert clone == st and clone.checkouts == 2


def test_immediate_checkouts_count_as_zero_waits() -> None:
    """Only queued checkouts are timed; the ones served at once enter the
    percentiles as zeros, counted from the pool's checkout sequence."""
    w = S.WaitSampler(8)
    w.record(0.5, seq=10)  # checkout #10 waited 0.5 s
    w.record(1.0, seq=20)  # checkout #20 waited 1.0 s
    # 11 checkouts (10..20) in the window, 2 of them timed: 9 zeros
    assert w.percentiles(50, checkouts=20) == (0.0,)
    assert w.percentiles(90, checkouts=20) == (0.5,)
    assert w.percentiles(100, checkouts=20) == (1.0,)
    # without the checkout count only the timed samples are ranked
    assert w.percentiles(50) == (0.5,)


def test_zero_waits_are_counted_from_the_oldest_sample_still_held() -> None:
    w = S.WaitSampler(2)
    for seq in (1, 2, 100, 101):  # the ring keeps the last two: seq 100 and 101
        w.record(0.25, seq=seq)
    assert len(w) == 2
    assert w.percentiles(50, 100, checkouts=101) == (0.25, 0.25), "no zeros between 100 and 101"
    assert w.percentiles(50, checkouts=103) == (0.0,), "checkouts 102 and 103 were immediate"

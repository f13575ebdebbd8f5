"""The Redis script (fleet_redis.SCRIPT) against its Python model (testing.fleet_model), on the real Redis.

Random operation sequences run on both side by side; every answer must match,
so the shares Redis hands out are exactly :func:`fleet.fair_shares`'. Keys live
under a test-only prefix and are deleted after each test.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sqlalchemy_smartpool.fleet import StoreDown
from sqlalchemy_smartpool.fleet_redis import RedisLeaseStore, base_key
from sqlalchemy_smartpool.testing.fleet_model import ModelStore

from ._services import HOST, REDIS_PORT, require_redis

redis = pytest.importorskip("redis")
URL = f"redis://{HOST}:{REDIS_PORT}/0"


@pytest.fixture
def prefix() -> Iterator[str]:
    require_redis()
    name = f"smartpool-test:{uuid.uuid4().hex}"
    yield name
    client = redis.Redis(host=HOST, port=REDIS_PORT)
    keys = list(client.scan_iter(f"{name}:*"))
    if keys:
        client.delete(*keys)
    client.close()


HOLDERS = ["h1", "h2", "h3", "h4"]
op_st = st.one_of(
    st.tuples(st.just("acquire"), st.sampled_from(HOLDERS), st.integers(0, 3), st.integers(0, 12)),
    st.tuples(st.just("sync"), st.sampled_from(HOLDERS), st.integers(0, 3), st.integers(0, 12)),
    st.tuples(st.just("release"), st.sampled_from(HOLDERS), st.integers(0, 3), st.integers(0, 0)),
    st.tuples(st.just("leave"), st.sampled_from(HOLDERS), st.integers(0, 0), st.integers(0, 0)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(budget=st.integers(1, 12), ops=st.lists(op_st, min_size=1, max_size=40))
def test_the_script_answers_exactly_as_the_model(
    prefix: str, budget: int, ops: list[tuple[str, str, int, int]]
) -> None:
    target = uuid.uuid4().hex  # a fresh target per example
    real = RedisLeaseStore(URL, prefix=prefix, target=target, budget=budget, ttl=120.0, timeout=2.0)
    model = ModelStore(budget=budget, ttl=120.0, clock_ms=lambda: int(time.time() * 1000))
    held: dict[str, list[int]] = {h: [] for h in HOLDERS}
    try:
        for op, holder, floor, extra in ops:
            if op == "acquire":
                demand = floor + extra
                got = real.acquire(holder, held=len(held[holder]), floor=floor, demand=demand)
                want = model.acquire(holder, held=len(held[holder]), floor=floor, demand=demand)
                assert got == want, (op, holder)
                if got.token:
                    held[holder].append(got.token)
            elif op == "sync":
                unleased = extra % 3
                tokens = list(held[holder])
                got = real.sync(holder, tokens=tokens, unleased=unleased, floor=floor, demand=floor + extra)
                want = model.sync(holder, tokens=tokens, unleased=unleased, floor=floor, demand=floor + extra)
                assert got.__class__ is want.__class__
                assert (got.share, got.keep, got.total, sorted(got.lost), got.alive) == (
                    want.share,
                    want.keep,
                    want.total,
                    sorted(want.lost),
                    want.alive,
                ), (op, holder)
                assert len(got.granted) == len(want.granted)
                kept = [t for t in tokens if t not in got.lost]
                held[holder] = kept + list(got.granted)
            elif op == "release":
                gone, held[holder] = held[holder][:floor], held[holder][floor:]
                real.release(holder, gone)
                model.release(holder, gone)
            else:
                real.leave(holder)
                model.leave(holder)
                held[holder] = []
            assert sum(len(v) for v in held.values()) <= budget  # never more leases than the budget
    finally:
        real.close()


def test_a_holder_that_stops_renewing_loses_its_leases_after_one_ttl_by_redis_time(prefix: str) -> None:
    store = RedisLeaseStore(URL, prefix=prefix, target="t", budget=2, ttl=0.3, timeout=1.0)
    try:
        a = [store.acquire("dead", held=i, floor=0, demand=2).token for i in range(2)]
        assert all(a)
        assert store.acquire("alive", held=0, floor=0, demand=1).token == 0  # full
        start = time.monotonic()
        while store.acquire("alive", held=0, floor=0, demand=1).token == 0:
            assert time.monotonic() - start < 3.0, "the dead holder's leases were never reclaimed"
            time.sleep(0.02)
        assert time.monotonic() - start >= 0.2  # not before its TTL (0.3 s from its last call)
        # the dead one comes back: its acquire is refused as stale (it must sync and fence first)
        assert store.acquire("dead", held=2, floor=0, demand=2).stale
        back = store.sync("dead", tokens=a, unleased=0, floor=0, demand=2)
        assert not back.alive and sorted(back.lost) == sorted(a) and len(back.granted) == 1
        assert max(back.granted) > max(a)  # a fencing token is never reused
    finally:
        store.close()


def test_every_key_of_a_target_but_the_token_counter_carries_an_expiry(prefix: str) -> None:
    store = RedisLeaseStore(URL, prefix=prefix, target="t", budget=3, ttl=5.0, timeout=1.0)
    try:
        store.acquire("h", held=0, floor=1, demand=1)
        client = redis.Redis(host=HOST, port=REDIS_PORT)
        keys = list(client.scan_iter(f"{base_key(prefix, 't')}:*"))
        assert len(keys) == 4
        expiring = [k for k in keys if not k.endswith(b":seq")]
        assert len(expiring) == 3 and all(0 < client.pttl(k) <= 15_000 for k in expiring)
        assert client.pttl(f"{base_key(prefix, 't')}:seq") == -1  # tokens are never reused
        client.close()
    finally:
        store.close()


def test_an_unreachable_redis_is_store_down_within_the_timeout() -> None:
    store = RedisLeaseStore(f"redis://{HOST}:1/0", prefix="x", target="t", budget=3, ttl=5.0, timeout=0.2)
    start = time.monotonic()
    with pytest.raises(StoreDown):
        store.acquire("h", held=0, floor=0, demand=1)
    assert time.monotonic() - start < 2.0
    store.close()

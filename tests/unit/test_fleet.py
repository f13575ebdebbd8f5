"""The fleet budget's policy (fleet.py) and the engine's use of it, on the model store and a fake clock."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sqlalchemy_smartpool import fleet
from sqlalchemy_smartpool.config import PoolConfig
from sqlalchemy_smartpool.engine import PoolEngine
from sqlalchemy_smartpool.errors import NEUTRAL, ConfigError
from sqlalchemy_smartpool.testing.fleet_model import ModelStore

from .conftest import Conn, FakeClock
from .test_engine import FakeBackend, FakeRuntime, slot

pytestmark = pytest.mark.usefixtures("clean_smartpool_env")

REDIS = "redis://127.0.0.1:1/0"  # never dialled: the tests give each pool the model store


# -- the pure policy ---------------------------------------------------------------------

wants_st = st.dictionaries(
    st.text("abcdefgh", min_size=1, max_size=3),
    st.tuples(st.integers(0, 20), st.integers(0, 80)).map(lambda fd: (fd[0], max(fd))),
    min_size=1,
    max_size=10,
)


@given(budget=st.integers(0, 200), wants=wants_st)
@settings(max_examples=300, deadline=None)
def test_fair_shares_never_exceed_the_budget_and_are_max_min_fair(
    budget: int, wants: dict[str, tuple[int, int]]
) -> None:
    shares = fleet.fair_shares(budget, wants)
    assert set(shares) == set(wants)
    assert sum(shares.values()) <= budget
    for h, (_, d) in wants.items():
        assert 0 <= shares[h] <= d
    if sum(d for _, d in wants.values()) <= budget:
        assert all(shares[h] == d for h, (_, d) in wants.items())  # enough for everyone: all they ask
    else:
        assert sum(shares.values()) == budget  # tight: nothing is left on the table
    floors_fit = sum(f for f, _ in wants.values()) <= budget
    if floors_fit:
        assert all(shares[h] >= f for h, (f, _) in wants.items())  # each keeps its min_size
    # max-min fairness above the floors: one below its demand has no less extra than anyone else
    for h, (f, d) in wants.items():
        if floors_fit and shares[h] < d:
            extra = shares[h] - f
            assert all(shares[o] - min(fo, do) <= extra + 1 for o, (fo, do) in wants.items())


def test_eight_equal_processes_split_sixty_seven_or_eight_each() -> None:
    shares = fleet.fair_shares(60, {f"p{i}": (2, 50) for i in range(8)})
    assert sorted(shares.values()) == [7, 7, 7, 7, 8, 8, 8, 8]


def test_a_quiet_holder_keeps_its_floor_and_the_busy_ones_share_the_rest() -> None:
    shares = fleet.fair_shares(20, {"quiet": (5, 5), "a": (5, 50), "b": (5, 50)})
    assert shares == {"quiet": 5, "a": 7, "b": 8}


def test_a_lease_beyond_the_share_is_granted_only_from_room_nobody_else_lacks() -> None:
    assert fleet.may_grant(10, total=5, held=3, share=3, unmet_others=1)  # 5 + 1 < 10: room
    assert not fleet.may_grant(10, total=9, held=6, share=5, unmet_others=1)  # the last one is owed
    assert fleet.may_grant(10, total=9, held=4, share=5, unmet_others=1)  # under its own share
    assert not fleet.may_grant(10, total=10, held=0, share=5, unmet_others=0)  # never past the budget


def test_a_holder_above_its_share_gives_back_only_what_others_lack_beyond_free_room() -> None:
    assert fleet.keep_limit(held=20, share=8, unmet_others=5, free=0) == 15
    assert fleet.keep_limit(held=20, share=8, unmet_others=30, free=0) == 8
    assert fleet.keep_limit(held=20, share=8, unmet_others=5, free=5) == -1
    assert fleet.keep_limit(held=5, share=8, unmet_others=5, free=0) == -1


# -- settings --------------------------------------------------------------------------


def test_a_budget_without_its_redis_url_fails_at_construction_naming_both() -> None:
    with pytest.raises(ConfigError, match=r"budget.*needs budget_redis"):
        PoolConfig(budget=10)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("budget", 0, "must be >= 1"),
        ("budget", "10", "must be an integer"),
        ("budget_ttl", 0.01, "must be >= 0.1"),
        ("budget_ttl", 1e300, "must be <= 86400"),
        ("budget_timeout", 0.0, "must be >= 0.001"),
        ("budget_on_redis_down", "ignore", "must be one of share, held, max"),
        ("budget_prefix", "a{b}", "without braces"),
    ],
)
def test_every_budget_setting_is_checked(field: str, value: Any, reason: str) -> None:
    base: dict[str, Any] = {"budget": 5, "budget_redis": REDIS, "budget_ttl": 10.0}
    base[field] = value
    with pytest.raises(ConfigError, match=reason):
        PoolConfig(**base)


def test_the_redis_url_of_a_budget_never_shows_its_password() -> None:
    with pytest.raises(ConfigError) as err:
        PoolConfig(budget=5, budget_redis="http://user:s3cret@host/0")
    assert "s3cret" not in str(err.value)
    config = PoolConfig(budget=5, budget_redis="redis://user:s3cret@host/0")
    assert "s3cret" not in repr(config)


def test_budget_settings_come_from_the_environment_too() -> None:
    config = PoolConfig.from_env(
        {"SMARTPOOL_BUDGET": "40", "SMARTPOOL_BUDGET_REDIS": REDIS, "SMARTPOOL_BUDGET_ON_REDIS_DOWN": "held"}
    )
    assert (config.budget, config.budget_on_redis_down) == (40, "held")
    with pytest.raises(ConfigError, match="SMARTPOOL_BUDGET_TTL"):
        PoolConfig.from_env({"SMARTPOOL_BUDGET_TTL": "soon"})


# -- the engine on the model store ------------------------------------------------------


class Fleet:
    """Several pools ("processes") over one model store, on one fake clock."""

    def __init__(self, clock: FakeClock, *, budget: int, ttl: float = 4.0) -> None:
        self.clock = clock
        self.store = ModelStore(budget=budget, ttl=ttl, clock_ms=lambda: int(clock() * 1000))
        self.budget = budget
        self.ttl = ttl

    def pool(
        self, *, start: bool = True, **settings: Any
    ) -> tuple[PoolEngine[Conn], FakeBackend, FakeRuntime]:
        """A pool on the shared store; ``start``: one checkout and return first (starts its runtime)."""
        config = PoolConfig(
            min_size=0,
            max_size=10,
            lifetime_jitter=0.0,
            acquire_timeout=1.0,
            budget=self.budget,
            budget_redis=REDIS,
            budget_ttl=self.ttl,
        ).replace(**settings)
        backend = FakeBackend()
        runtimes: list[FakeRuntime] = []

        def runtime(name: str, workers: int) -> FakeRuntime:
            runtimes.append(FakeRuntime(self.clock))
            return runtimes[-1]

        engine: PoolEngine[Conn] = PoolEngine(
            config, backend, name="unit", errors=NEUTRAL, runtime=runtime, clock=self.clock
        )
        assert engine.fleet is not None
        engine.fleet._store = self.store.view()
        if start:
            engine.checkin(slot(engine.checkout()))
        else:
            engine._ensure_started()
        return engine, backend, runtimes[-1]


@pytest.fixture
def fleet_of(clock: FakeClock) -> Any:
    return lambda **kw: Fleet(clock, **kw)


def open_backends(backend: FakeBackend) -> int:
    return len(backend.opened) - len(backend.closed)


def test_every_physical_connect_takes_one_lease_and_every_close_gives_it_back(fleet_of: Any) -> None:
    f = fleet_of(budget=5)
    engine, backend, _ = f.pool()
    conns = [engine.checkout() for _ in range(3)]
    assert f.store.total() == open_backends(backend) == 3
    status = engine.fleet_status()
    assert status is not None and status["leases"] == 3 and status["acquires"] == 3
    for c in conns:
        engine.checkin(slot(c))
    engine.close()
    assert f.store.total() == 0 and open_backends(backend) == 0


def test_checkouts_of_open_connections_never_call_the_store(fleet_of: Any) -> None:
    f = fleet_of(budget=5)
    engine, _, _ = f.pool()
    before = f.store.calls
    for _ in range(1000):
        engine.checkin(slot(engine.checkout()))
    assert f.store.calls == before


def test_a_full_budget_makes_callers_wait_for_a_return_not_fail(fleet_of: Any) -> None:
    f = fleet_of(budget=2)
    a, _backend_a, _ = f.pool()
    b, _, rt_b = f.pool()
    held_a = a.checkout()  # a holds its one, b holds its one: the budget is full
    held_b = b.checkout()
    assert f.store.total() == 2
    rt_b.call_later(0.3, lambda: b.checkin(slot(held_b)))
    got = b.checkout()  # denied a lease: waits, and takes b's own return
    assert got is held_b and f.store.total() == 2
    status = b.fleet_status()
    assert status is not None and status["denied"] >= 1
    a.checkin(slot(held_a))
    b.checkin(slot(got))


def test_a_denied_caller_times_out_naming_no_secret_and_the_budget_is_never_exceeded(fleet_of: Any) -> None:
    f = fleet_of(budget=1)
    a, _, _ = f.pool()
    b, _, _ = f.pool(start=False)
    a.checkout()
    with pytest.raises(Exception, match="fleet budget 1 for unit: 1 leased fleet-wide") as err:
        b.checkout()
    assert "redis" not in str(err.value).lower()
    assert f.store.total() == 1


def test_a_hoarder_gives_back_what_others_lack_when_its_connections_come_back(fleet_of: Any) -> None:
    f = fleet_of(budget=8)
    a, _backend_a, rt_a = f.pool(max_size=8)
    held = [a.checkout() for _ in range(8)]  # alone: it may take the whole budget
    assert f.store.total() == 8
    b, _, _rt_b = f.pool(start=False, max_size=8)
    assert b.fleet is not None
    # b asks (its callers wait); a learns at its next sync that b lacks its share
    got_b: list[Conn] = []

    def b_wants() -> None:
        with contextlib.suppress(Exception):
            got_b.append(b.checkout())

    b.fleet.sample(4)  # b's demand: 4 callers
    b._fleet_sync()
    a.fleet.sample(8)  # type: ignore[union-attr]
    a._fleet_sync()
    status = a.fleet_status()
    assert status is not None and 0 <= status["keep"] < 8
    for c in held:
        a.checkin(slot(c))
    assert a.core.size == status["keep"]
    rt_a.run_until(f.clock() + fleet.RELEASE_GRACE)  # leases go back a moment after the close
    assert f.store.total() == a.core.size + b.core.size <= 8
    b_wants()
    assert got_b and f.store.total() <= 8


def test_a_pool_frozen_past_its_ttl_fences_the_leases_it_lost_before_using_them(fleet_of: Any) -> None:
    f = fleet_of(budget=3, ttl=4.0)
    a, backend_a, _ = f.pool(max_size=3)
    conns = [a.checkout() for _ in range(3)]
    for c in conns:
        a.checkin(slot(c))
    f.clock.advance(5.0)  # a froze past its TTL: nobody renewed its leases
    b, _, _ = f.pool(start=False, max_size=3)  # b's first call reclaims a's leases and takes them
    taken = [b.checkout() for _ in range(3)]
    assert f.store.total() == 3
    # a resumes: its checkout sees the leases unconfirmed for a TTL and syncs before using one
    with pytest.raises(Exception, match="fleet budget"):
        a.checkout()
    status = a.fleet_status()
    assert status is not None and status["lost"] == 3 and status["fenced"] == 3
    assert a.core.size == 0 and open_backends(backend_a) == 0  # every fenced connection closed
    assert f.store.total() == 3
    for c in taken:
        b.checkin(slot(c))


def test_a_frozen_pool_keeps_its_connections_when_the_budget_has_room_again(fleet_of: Any) -> None:
    f = fleet_of(budget=6, ttl=4.0)
    a, backend_a, _ = f.pool(max_size=3)
    a.checkin(slot(a.checkout()))
    f.clock.advance(5.0)
    a.checkin(slot(a.checkout()))  # re-synced: re-leased under new fencing tokens, nothing closed
    status = a.fleet_status()
    assert status is not None and status["lost"] == 1 and status["fenced"] == 0 and status["leases"] == 1
    assert open_backends(backend_a) == 1 and f.store.total() == 1


def test_a_killed_pool_s_leases_are_reclaimed_after_one_ttl(fleet_of: Any) -> None:
    f = fleet_of(budget=2, ttl=4.0)
    a, _, _ = f.pool(max_size=2)
    a.checkout()
    a.checkout()  # "killed": never returns, never renews
    b, _, _ = f.pool(start=False, max_size=2, acquire_timeout=0.1)
    with pytest.raises(Exception, match="fleet budget"):
        b.checkout()
    f.clock.advance(4.1)
    b.checkout()
    assert f.store.total() == 1


@pytest.mark.parametrize(("policy", "extra"), [("share", 1), ("held", 0), ("max", 4)])
def test_while_the_store_is_down_the_pool_keeps_serving_within_its_policy_cap(
    fleet_of: Any, policy: str, extra: int
) -> None:
    f = fleet_of(budget=6)
    a, backend_a, rt_a = f.pool(max_size=6, min_size=0, budget_on_redis_down=policy)
    b, _, _ = f.pool(max_size=6, min_size=0)
    assert a.fleet is not None
    held = [a.checkout(), a.checkout()]
    a.fleet.sample(6)  # both busy (demand is the peak since the last report)
    b.fleet.sample(6)  # type: ignore[union-attr]
    b._fleet_sync()
    a._fleet_sync()
    assert a.fleet.share == 3
    f.store.down = True
    got = []
    for _ in range(6):
        try:
            got.append(a.checkout())
        except Exception:  # the cap: no connection within acquire_timeout
            break
    assert len(got) == extra  # "share": up to its last share (3); "held": none; "max": up to max_size
    status = a.fleet_status()
    assert status is not None and not status["store_up"] and status["unleased"] == extra
    f.store.down = False
    f.clock.advance(1.1)
    a._housekeep()  # the store is back: one sync leases what was opened meanwhile
    status = a.fleet_status()
    assert status is not None and status["store_up"] and f.store.total() <= f.budget
    for c in held + got:
        a.checkin(slot(c))  # one opened past the budget ("max") was fenced: closed on its return
    rt_a.run_until(f.clock() + fleet.RELEASE_GRACE)
    assert f.store.total() == a.core.size + b.core.size == open_backends(backend_a) + b.core.size


def test_an_unused_budgeted_pool_does_nothing(clock: FakeClock) -> None:
    config = PoolConfig(budget=5, budget_redis=REDIS, min_size=0)
    engine: PoolEngine[Conn] = PoolEngine(
        config,
        FakeBackend(),
        name="idle",
        errors=NEUTRAL,
        runtime=lambda n, w: FakeRuntime(clock),
        clock=clock,
    )
    assert engine.fleet is not None and engine.fleet._store is None  # no client, no Redis connection
    engine.close()
    assert engine.fleet._store is None


def test_a_forked_child_is_a_new_holder_that_holds_nothing(fleet_of: Any) -> None:
    f = fleet_of(budget=3)
    a, _, _ = f.pool()
    a.checkout()
    assert a.fleet is not None
    parent = a.fleet.holder
    a._after_fork_in_child()
    assert a.fleet.holder != parent and a.fleet._store is None
    status = a.fleet_status()
    assert status is not None and status["leases"] == 0

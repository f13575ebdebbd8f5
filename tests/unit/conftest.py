"""Shared fakes for the unit tests of the pure policy code (no threads, no I/O, no sleeping)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

import pytest

from sqlalchemy_smartpool.config import ENV_PREFIX, PoolConfig
from sqlalchemy_smartpool.core import PoolCore


class FakeClock:
    """A monotonic clock that only moves when a test says so; ``sleep`` advances it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        assert seconds >= 0, "a monotonic clock never goes back"
        self.now += seconds
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)


class Conn:
    """Stands in for a DBAPI connection: the core never looks inside it."""

    _n = 0

    def __init__(self) -> None:
        Conn._n += 1
        self.n = Conn._n

    def __repr__(self) -> str:
        return f"<Conn {self.n}>"


#: settings that make a core deterministic unless a test asks otherwise
#: strict FIFO (barge_window=0): the fake clock does not move by itself, so every waiter
#: would stay inside a barge window; barging has tests of its own
CORE_DEFAULTS: dict[str, Any] = {"min_size": 0, "max_size": 4, "lifetime_jitter": 0.0, "barge_window": 0.0}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_core(clock: FakeClock) -> Callable[..., PoolCore[Conn]]:
    """Build a PoolCore on the fake clock; keywords are PoolConfig fields (breaker ones as breaker_<x>)."""

    def make(*, refill: bool = True, **settings: Any) -> PoolCore[Conn]:
        """``refill``: a pool that has connected before (refills min_size on its own)."""
        config = PoolConfig(**CORE_DEFAULTS).replace(**settings)
        core: PoolCore[Conn] = PoolCore(config, clock, name="unit", rng=random.Random(1234))
        core.refill = refill
        return core

    return make


@pytest.fixture
def clean_smartpool_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own SMARTPOOL_* settings must not leak into tests of the config layers
    (every pool reads them); a module opts in with ``pytestmark``."""
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)


@pytest.fixture
def make(clock: FakeClock) -> Callable[..., Any]:
    """``make(**settings)``: a started engine over the fakes of test_engine (``build_engine``)."""
    from .test_engine import build_engine  # the fakes live beside the engine's own tests

    return lambda **settings: build_engine(clock, **settings)

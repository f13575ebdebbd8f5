"""Fixtures for the pytest-benchmark suite (not part of ``make test``: ``testpaths`` is ``tests``).

Run: ``python -m pytest benchmarks --benchmark-only``. The server comes from
``SMARTPOOL_BENCH_URL`` (default: the local test PostgreSQL); the suite
skips with a one-line reason when it is unreachable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from sqlalchemy_smartpool.bench.harness import (
    DEFAULT_URL,
    check_postgres,
    psycopg_pool,
    queue_engine,
    smart_engine,
    with_driver,
)


@pytest.fixture(scope="session")
def pg_url() -> str:
    url = os.environ.get("SMARTPOOL_BENCH_URL", DEFAULT_URL)
    problem = check_postgres(url)
    if problem is not None:
        pytest.skip(problem)
    return url


def _warm(engine: Any) -> Any:
    if hasattr(engine.pool, "wait"):
        engine.pool.wait()
    with engine.connect():
        pass
    return engine


@pytest.fixture(scope="session")
def smartpool_engine(pg_url: str) -> Iterator[Any]:
    engine = _warm(smart_engine(pg_url))
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def smartpool_always_validate(pg_url: str) -> Iterator[Any]:
    engine = _warm(smart_engine(pg_url, validation_interval=0))
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def queuepool_engine(pg_url: str) -> Iterator[Any]:
    engine = _warm(queue_engine(pg_url))
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def queuepool_pre_ping(pg_url: str) -> Iterator[Any]:
    engine = _warm(queue_engine(pg_url, pool_pre_ping=True))
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pg_pool(pg_url: str) -> Iterator[Any]:
    pool = psycopg_pool(with_driver(pg_url, "psycopg"), min_size=5)
    yield pool
    pool.close()

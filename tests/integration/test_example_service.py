"""docs/examples/service.py against the real PostgreSQL and Redis: one settings source
reaches both pools, both serve, one health report and one Prometheus collector cover both."""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa

from sqlalchemy_smartpool.errors import ConfigError

from ._services import HOST, POSTGRES_URL, REDIS_PORT, require_postgres, require_redis

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "service.py"
REDIS_URL = f"redis://{HOST}:{REDIS_PORT}/15"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("smartpool_example_service", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def service(example: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    require_postgres()
    require_redis()
    for key in [k for k in os.environ if k.startswith("SMARTPOOL_")]:
        if key != "SMARTPOOL_REQUIRE_SERVICES":
            monkeypatch.delenv(key)
    monkeypatch.setenv("SMARTPOOL_MAX_SIZE", "7")
    monkeypatch.setenv("SMARTPOOL_ACQUIRE_TIMEOUT", "3")
    svc = example.build_service(POSTGRES_URL, REDIS_URL)
    yield svc
    svc.close()


def test_one_settings_source_two_pools_one_health_one_collector(service: Any) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    engine_cfg, redis_cfg = service.engine.pool.config, service.redis_pool.config
    assert engine_cfg.max_size == redis_cfg.max_size == 7  # from SMARTPOOL_MAX_SIZE
    assert engine_cfg.acquire_timeout == redis_cfg.acquire_timeout == 3.0  # from SMARTPOOL_ACQUIRE_TIMEOUT
    assert engine_cfg.idle_timeout == redis_cfg.idle_timeout == 60.0  # the service's DEFAULTS
    assert (engine_cfg.name, redis_cfg.name) == ("db", "cache")

    prefix = f"sp-example-{uuid.uuid4().hex[:8]}"

    def request(i: int) -> int:
        with service.engine.connect() as conn:
            value = conn.execute(sa.text("SELECT :i"), {"i": i}).scalar_one()
        service.redis.set(f"{prefix}:{i}", value)
        return int(service.redis.get(f"{prefix}:{i}"))

    try:
        with ThreadPoolExecutor(12) as ex:
            assert sorted(ex.map(request, range(40))) == list(range(40))
    finally:
        keys = list(service.redis.scan_iter(f"{prefix}:*"))
        if keys:
            service.redis.delete(*keys)

    report = service.health()
    assert report["status"] == "ok"
    assert set(report["pools"]) == {"db", "cache"}
    db, cache = report["pools"]["db"], report["pools"]["cache"]
    assert db["status"] == cache["status"] == "ok"
    assert (db["pool_kind"], cache["pool_kind"]) == ("sqlalchemy", "redis")
    assert db["stats"]["checkouts"] >= 40 and cache["stats"]["checkouts"] >= 80
    assert db["stats"]["pool_max"] == cache["stats"]["pool_max"] == 7
    assert db["stats"]["pool_size"] <= 7 and cache["stats"]["pool_size"] <= 7

    registry = CollectorRegistry()
    collector = service.prometheus(registry)
    got = {
        (s.name, s.labels.get("pool")): s.value for metric in registry.collect() for s in metric.samples
    }
    for pool in ("db", "cache"):
        assert got[("smartpool_pool_max", pool)] == 7
        assert got[("smartpool_checkouts_total", pool)] > 0
        assert got[("smartpool_breaker_state", pool)] == 0
    text = generate_latest(registry).decode()
    assert 'pool="db"' in text and 'pool="cache"' in text and "postgres@" not in text
    collector.unregister()


def test_a_dict_source_and_env_errors(example: ModuleType) -> None:
    cfg = example.load_settings(settings={"max_size": "4", "leak_detection_threshold": "off"})
    assert cfg.max_size == 4 and cfg.min_size == 1 and cfg.acquire_timeout == 5.0
    assert cfg.leak_detection_threshold is None
    with pytest.raises(ConfigError, match="SMARTPOOL_MAX_SIZE"):
        example.load_settings({"SMARTPOOL_MAX_SIZ": "7"})

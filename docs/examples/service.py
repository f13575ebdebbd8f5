"""An example service: one SQLAlchemy engine and one Redis pool, tuned from ONE settings source.

    from service import build_service
    svc = build_service("postgresql+psycopg2://app@db/app", "redis://cache:6379/0")
    with svc.engine.connect() as conn: ...
    svc.redis.set("k", "v")
    svc.health()                   # {"status": "ok", "pools": {"db": {...}, "cache": {...}}}
    svc.prometheus(registry)       # one collector, samples labelled pool="db" / pool="cache"
    svc.close()

Settings: ``DEFAULTS`` below (the service's own), overlaid by ``SMARTPOOL_*``
environment variables (``SMARTPOOL_MAX_SIZE=7`` sizes both pools) or by a dict
of text values (a config file's section, say). Both pools get the same
settings; only their names differ (``db`` and ``cache``), so that metrics and
health tell them apart.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import redis
import sqlalchemy as sa

from sqlalchemy_smartpool import PoolConfig, SmartPool, SmartRedisPool
from sqlalchemy_smartpool.config import ENV_NON_SETTINGS, ENV_PREFIX
from sqlalchemy_smartpool.metrics import health

#: the service's defaults; every field can be overridden by SMARTPOOL_<FIELD> or the settings dict
DEFAULTS = PoolConfig(min_size=1, max_size=10, acquire_timeout=5.0, idle_timeout=60.0)

_STATUS_ORDER = {"ok": 0, "degraded": 1, "down": 2}


def load_settings(
    environ: Mapping[str, str] | None = None, *, settings: Mapping[str, str] | None = None
) -> PoolConfig:
    """``DEFAULTS`` overlaid by ``settings`` (text values, as from a file) if given, else by
    the ``SMARTPOOL_*`` environment variables."""
    if settings is not None:
        return PoolConfig.from_strings(settings, base=DEFAULTS)
    environ = os.environ if environ is None else environ
    PoolConfig.from_env(environ)  # a typo or a bad value fails here, naming the variable
    given = {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in environ.items()
        if key.startswith(ENV_PREFIX) and key not in ENV_NON_SETTINGS
    }
    return PoolConfig.from_strings(given, base=DEFAULTS)


@dataclasses.dataclass
class Service:
    engine: sa.Engine
    redis_pool: SmartRedisPool
    redis: redis.Redis

    def health(self) -> dict[str, Any]:
        """Both pools' reports, keyed by pool name; ``status`` is the worse of the two."""
        pools = {report["pool"]: report for report in (health(self.engine), health(self.redis_pool))}
        worst = max((r["status"] for r in pools.values()), key=_STATUS_ORDER.__getitem__)
        return {"status": worst, "pools": pools}

    def prometheus(self, registry: Any = None) -> Any:
        """One ``PrometheusCollector`` over both pools (``pool="db"`` and ``pool="cache"``),
        registered with ``registry`` (the global registry if None)."""
        from prometheus_client import REGISTRY

        from sqlalchemy_smartpool.metrics import PrometheusCollector

        collector = PrometheusCollector(self.engine, registry=registry if registry is not None else REGISTRY)
        collector.add(self.redis_pool)
        return collector

    def close(self) -> None:
        self.redis.close()
        self.redis_pool.close()
        self.engine.dispose()


def build_service(
    database_url: str,
    redis_url: str,
    *,
    environ: Mapping[str, str] | None = None,
    settings: Mapping[str, str] | None = None,
) -> Service:
    """The engine and the Redis pool, both from :func:`load_settings`."""
    shared = load_settings(environ, settings=settings)
    engine = sa.create_engine(database_url, poolclass=SmartPool, pool_config=shared.replace(name="db"))
    redis_pool = SmartRedisPool.from_url(redis_url, pool_config=shared.replace(name="cache"))
    return Service(engine, redis_pool, redis.Redis(connection_pool=redis_pool))

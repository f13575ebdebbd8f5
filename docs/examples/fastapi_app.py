"""A FastAPI app with smartpool's endpoints mounted under /pool (ASGI), on an asyncio engine.

    from fastapi_app import create_app
    app = create_app("postgresql+asyncpg://app@db/app", "redis://cache:6379/0")
    # uvicorn fastapi_app:app -> /orders/count is the app's; /pool/, /pool/health, /pool/metrics smartpool's

The ASGI app runs on the server's event loop, so the asyncio pools
(``AsyncSmartPool``, ``AsyncSmartRedisPool``) are probed right there, in the
loop their connections belong to. The lifespan closes the pools at shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import create_async_engine

from sqlalchemy_smartpool import AsyncSmartPool, AsyncSmartRedisPool
from sqlalchemy_smartpool.web import asgi_app


def create_app(db_url: str, redis_url: str, **engine_kw: Any) -> FastAPI:
    engine = create_async_engine(
        db_url, poolclass=AsyncSmartPool, min_size=1, max_size=10, name="db", **engine_kw
    )
    cache_pool = AsyncSmartRedisPool.from_url(redis_url, max_size=10, name="cache")
    cache = redis.asyncio.Redis(connection_pool=cache_pool)
    pool_endpoints = asgi_app({"db": engine, "cache": cache_pool}, probe_timeout=1.0, cache_for=1.0)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        pool_endpoints.close()
        await cache_pool.aclose()
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/orders/count")
    async def orders_count() -> dict[str, Any]:
        async with engine.connect() as conn:
            result = await conn.execute(sa.text("SELECT count(*) FROM (VALUES (1), (2), (3)) AS orders(id)"))
        return {"orders": result.scalar_one(), "cache": bool(await cache.ping())}

    app.mount("/pool", pool_endpoints)
    return app

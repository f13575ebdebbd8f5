"""A Flask app with smartpool's endpoints mounted under /pool (WSGI).

    from flask_app import create_app
    app = create_app("postgresql+psycopg2://app@db/app", "redis://cache:6379/0")
    app.run()          # /orders/count is the app's; /pool/, /pool/health, /pool/metrics are smartpool's

``DispatcherMiddleware`` (from Werkzeug, which Flask uses) sends every path
under ``/pool`` to the WSGI app with ``SCRIPT_NAME=/pool``, so the status
page's links and its ``status.json`` polling work under the prefix. A load
balancer checks ``/pool/health`` (200, or 503 when a pool is down); Prometheus
scrapes ``/pool/metrics``.
"""

from __future__ import annotations

import redis
import sqlalchemy as sa
from flask import Flask, jsonify
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from sqlalchemy_smartpool import SmartPool, SmartRedisPool
from sqlalchemy_smartpool.web import wsgi_app


def create_app(db_url: str, redis_url: str) -> Flask:
    engine = sa.create_engine(db_url, poolclass=SmartPool, min_size=1, max_size=10, name="db")
    cache_pool = SmartRedisPool.from_url(redis_url, max_size=10, name="cache")
    cache = redis.Redis(connection_pool=cache_pool)

    app = Flask(__name__)

    @app.get("/orders/count")
    def orders_count() -> object:
        with engine.connect() as conn:
            query = sa.text("SELECT count(*) FROM (VALUES (1), (2), (3)) AS orders(id)")
            n = conn.execute(query).scalar_one()
        return jsonify(orders=n, cache=bool(cache.ping()))

    pool_endpoints = wsgi_app({"db": engine, "cache": cache_pool}, probe_timeout=1.0, cache_for=1.0)
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/pool": pool_endpoints})  # type: ignore[method-assign]

    def close() -> None:
        pool_endpoints.close()
        cache_pool.close()
        engine.dispose()

    app.extensions["smartpool_close"] = close
    return app

"""HTTP endpoints for pools: ``/health``, ``/metrics`` and a live status page.

Plain WSGI and ASGI callables (no web framework at run time) over a
:class:`PoolMonitor` of one or several named pools::

    from sqlalchemy_smartpool.web import wsgi_app, asgi_app
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/pool": wsgi_app({"db": engine})})  # Flask
    app.mount("/pool", asgi_app({"db": async_engine}))                                      # FastAPI

``smartpool serve --url URL`` runs them standalone. See docs/observability.md.
"""

from __future__ import annotations

from .apps import ASGIApp, WSGIApp, asgi_app, wsgi_app
from .events import AUDIT_LOGGER, RecentEvents
from .monitor import PoolMonitor
from .schema import HEALTH_SCHEMA, STATUS_SCHEMA
from .server import make_http_server, serve_in_thread

__all__ = [
    "AUDIT_LOGGER",
    "HEALTH_SCHEMA",
    "STATUS_SCHEMA",
    "ASGIApp",
    "PoolMonitor",
    "RecentEvents",
    "WSGIApp",
    "asgi_app",
    "make_http_server",
    "serve_in_thread",
    "wsgi_app",
]

"""The endpoints as plain WSGI and ASGI callables: no web framework needed at run time.

Routes, relative to where the app is mounted (``SCRIPT_NAME`` / ``root_path``):

* ``GET /health`` -- every pool's health as JSON: 200, or 503 if one is down
  (``/health/<name>``: one pool's; 404 for an unknown name);
* ``GET /metrics`` -- Prometheus text (501 naming the extra without prometheus_client);
* ``GET /`` -- the status page (the mount point without its slash redirects to it,
  so the page's relative links work);
* ``GET /status.json`` -- the page's data.

``HEAD`` is answered like ``GET`` without a body; other methods get 405.
The WSGI app probes threaded pools in the request's thread; the ASGI app
probes asyncio pools on its event loop and threaded ones in worker threads.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from .monitor import PoolMonitor
from .page import CSP, render_page

Headers = list[tuple[str, str]]

_REASONS = {
    200: "OK",
    307: "Temporary Redirect",
    404: "Not Found",
    405: "Method Not Allowed",
    501: "Not Implemented",
    503: "Service Unavailable",
}
_JSON = "application/json"
_COMMON: Headers = [("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")]


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, content_type: str, body: bytes, headers: Headers | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), *_COMMON]
        if headers:
            self.headers.extend(headers)


def json_response(status: int, data: Any) -> Response:
    return Response(status, _JSON, json.dumps(data, separators=(",", ":"), default=str).encode("utf-8"))


def _text(status: int, text: str, headers: Headers | None = None) -> Response:
    return Response(status, "text/plain; charset=utf-8", (text + "\n").encode("utf-8"), headers)


class _Route:
    """What a request asks for: an endpoint (and its pool name) or an immediate response."""

    __slots__ = ("arg", "endpoint", "response")

    def __init__(self, endpoint: str = "", arg: str | None = None, response: Response | None = None) -> None:
        self.endpoint = endpoint
        self.arg = arg
        self.response = response


def route(method: str, path: str, root: str) -> _Route:
    """Match ``path`` (below the mount point ``root``)."""
    if method not in ("GET", "HEAD"):
        return _Route(response=_text(405, f"{method} not allowed", [("Allow", "GET, HEAD")]))
    if path == "":
        return _Route(response=_text(307, "see the status page", [("Location", root + "/")]))
    if path == "/":
        return _Route("page")
    if path in ("/health", "/health/"):
        return _Route("health")
    if path.startswith("/health/"):
        return _Route("health", path[len("/health/") :])
    if path == "/status.json":
        return _Route("status")
    if path == "/metrics":
        return _Route("metrics")
    return _Route(response=_text(404, "not found: try /, /health, /status.json or /metrics"))


class _App:
    def __init__(self, monitor: PoolMonitor | Mapping[str, Any] | Any, **options: Any) -> None:
        if isinstance(monitor, PoolMonitor):
            if options:
                raise TypeError("pass options to PoolMonitor(...) when you give a monitor")
            self.monitor = monitor
        else:
            self.monitor = PoolMonitor(monitor, **options)

    def close(self) -> None:
        """Detach the monitor from the audit logger (the pools stay open: they are yours)."""
        self.monitor.close()


class WSGIApp(_App):
    """A WSGI application serving the endpoints for the monitor's pools (see the module docstring).

    ``WSGIApp({"db": engine, "cache": redis_pool})`` or ``WSGIApp(PoolMonitor(...))``;
    keyword options go to :class:`PoolMonitor`.
    """

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        found = route(method, environ.get("PATH_INFO", ""), environ.get("SCRIPT_NAME", ""))
        response = found.response or self._serve(found)
        start_response(f"{response.status} {_REASONS.get(response.status, '')}".rstrip(), response.headers)
        return [] if method == "HEAD" else [response.body]

    def _serve(self, found: _Route) -> Response:
        m = self.monitor
        if found.endpoint == "health":
            return json_response(*m.health(found.arg))
        if found.endpoint == "status":
            return json_response(200, m.status())
        if found.endpoint == "metrics":
            status, content_type, body = m.metrics()
            return Response(status, content_type, body)
        return _page(m, m.status())


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ASGIApp(_App):
    """An ASGI application serving the endpoints (see the module docstring).

    Mount it anywhere: ``app.mount("/pool", ASGIApp({"db": async_engine}))`` in
    FastAPI / Starlette. It answers ``lifespan`` events (nothing to start) and
    refuses websockets.
    """

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind != "http":
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1003})
            return
        root = scope.get("root_path", "") or ""
        path = scope.get("path", "")
        if root and (path == root or path.startswith(root + "/")):
            path = path[len(root) :]  # Starlette's Mount passes the full path with the prefix in root_path
        method = scope.get("method", "GET")
        found = route(method, path, root)
        response = found.response or await self._serve(found)
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers],
            }
        )
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else response.body})

    async def _serve(self, found: _Route) -> Response:
        m = self.monitor
        if found.endpoint == "health":
            return json_response(*await m.ahealth(found.arg))
        if found.endpoint == "status":
            return json_response(200, await m.astatus())
        if found.endpoint == "metrics":
            status, content_type, body = m.metrics()
            return Response(status, content_type, body)
        return _page(m, await m.astatus())


def _page(monitor: PoolMonitor, status: dict[str, Any]) -> Response:
    return Response(
        200,
        "text/html; charset=utf-8",
        render_page(status, title=monitor.title),
        [("Content-Security-Policy", CSP), ("Referrer-Policy", "no-referrer")],
    )


def wsgi_app(pools: PoolMonitor | Mapping[str, Any] | Any, **options: Any) -> WSGIApp:
    """``WSGIApp(pools, **options)``; in Flask:
    ``DispatcherMiddleware(app.wsgi_app, {"/pool": wsgi_app({"db": engine})})``."""
    return WSGIApp(pools, **options)


def asgi_app(pools: PoolMonitor | Mapping[str, Any] | Any, **options: Any) -> ASGIApp:
    """``ASGIApp(pools, **options)``: e.g. ``app.mount("/pool", asgi_app({"db": engine}))``."""
    return ASGIApp(pools, **options)

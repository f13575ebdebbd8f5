"""A small threaded HTTP server for the WSGI app (stdlib ``wsgiref``), and ``smartpool serve``.

``smartpool serve --url URL`` opens a pool on each URL (SQLAlchemy URLs get a
``SmartPool``, ``redis://`` / ``rediss://`` URLs a ``SmartRedisPool``) and
serves ``/health``, ``/metrics`` and the status page for them, on
127.0.0.1:8000 unless told otherwise. Pool settings come as usual from the
URL query (``?smartpool_max_size=5``) or ``SMARTPOOL_*`` variables. Nothing
connects until the first request asks for health or status.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socketserver
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from ..errors import describe_error, redact
from .apps import WSGIApp
from .events import AUDIT_LOGGER
from .monitor import PoolMonitor


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """One thread per request: a slow probe never holds up a scrape or the page."""

    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def make_http_server(
    app: Callable[..., Any], host: str = "127.0.0.1", port: int = 8000, *, quiet: bool = False
) -> ThreadingWSGIServer:
    """A threaded WSGI server for ``app``, bound but not yet serving (``port=0``: any free port;
    ``server.server_port`` tells which)."""
    handler = _QuietHandler if quiet else WSGIRequestHandler
    server = make_server(host, port, app, server_class=ThreadingWSGIServer, handler_class=handler)
    assert isinstance(server, ThreadingWSGIServer)
    return server


def serve_in_thread(app: Callable[..., Any], host: str = "127.0.0.1", port: int = 0) -> ThreadingWSGIServer:
    """Serve ``app`` from a daemon thread (tests, notebooks); ``shutdown()`` then
    ``server_close()`` to stop."""
    server = make_http_server(app, host, port, quiet=True)
    threading.Thread(target=server.serve_forever, name="smartpool-http", daemon=True).start()
    return server


# ------------------------------------------------------------------------ smartpool serve


def _split(spec: str) -> tuple[str | None, str]:
    """``NAME=URL`` or ``URL``: a name has no ``:`` or ``/`` before its ``=``."""
    head, sep, rest = spec.partition("=")
    if sep and head and ":" not in head and "/" not in head:
        return head, rest
    return None, spec


def open_pool(url: str) -> tuple[Any, Callable[[], None]]:
    """A pool (or an engine) for ``url`` and how to close it."""
    if url.split(":", 1)[0] in ("redis", "rediss", "unix"):
        from ..redis_pool import SmartRedisPool

        pool = SmartRedisPool.from_url(url)
        return pool, pool.close
    import sqlalchemy as sa

    from ..pool import SmartPool

    parsed = sa.engine.make_url(url)
    if getattr(parsed.get_dialect(), "is_async", False):
        raise ValueError(
            f"{parsed.render_as_string(hide_password=True)}: smartpool serve needs a synchronous driver "
            f"(e.g. postgresql+psycopg2://, mysql+pymysql://); mount the ASGI app for asyncio pools"
        )
    engine = sa.create_engine(parsed, poolclass=SmartPool)
    return engine, engine.dispose


def _default_name(url: str, taken: set[str]) -> str:
    scheme = url.split(":", 1)[0].split("+", 1)[0] or "pool"
    name, n = scheme, 2
    while name in taken:
        name, n = f"{scheme}{n}", n + 1
    return name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="smartpool serve",
        description="Serve /health, /metrics and a live status page for pools on the given URLs.",
    )
    parser.add_argument(
        "--url",
        action="append",
        required=True,
        metavar="[NAME=]URL",
        help="a SQLAlchemy URL (sync driver) or redis:// URL; repeat for several pools",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind, 0 for any (default: 8000)")
    parser.add_argument("--probe-timeout", type=float, default=1.0, help="seconds a health probe may take")
    parser.add_argument("--cache", type=float, default=1.0, help="seconds a health report is reused")
    parser.add_argument("--refresh", type=float, default=2.0, help="status page refresh, seconds")
    parser.add_argument("--quiet", action="store_true", help="no request log")
    args = parser.parse_args(argv)

    pools: dict[str, Any] = {}
    closers: list[Callable[[], None]] = []
    try:
        for spec in args.url:
            name, url = _split(spec)
            name = name or _default_name(url, set(pools))
            if name in pools:
                parser.error(f"--url: the name {name!r} is given twice")
            try:
                target, close = open_pool(url)
            except Exception as err:
                parser.error(f"--url {redact(url)}: {describe_error(err)}")
            pools[name] = target
            closers.append(close)
        try:
            monitor = PoolMonitor(
                pools,
                probe_timeout=args.probe_timeout,
                cache_for=args.cache,
                refresh=args.refresh,
                audit_level=logging.INFO,  # this process owns its logging: show the audit events
            )
        except ValueError as err:
            parser.error(str(err))
        server = make_http_server(WSGIApp(monitor), args.host, args.port, quiet=args.quiet)
        host, port = args.host, server.server_port
        shown = ", ".join(f"{n}={monitor_target(monitor, n)}" for n in pools)
        print(f"smartpool serve: http://{host}:{port}/  ({shown})", flush=True)
        print(f"  logging audit events from {AUDIT_LOGGER!r}; Ctrl-C stops", file=sys.stderr, flush=True)
        _stop_on_sigterm()
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
            monitor.close()
        return 0
    finally:
        for close in closers:
            close()


def _stop_on_sigterm() -> None:
    """SIGTERM ends the server as Ctrl-C does, so the pools are closed on the way out."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


def monitor_target(monitor: PoolMonitor, name: str) -> str:
    from ..metrics import resolve_pool
    from .monitor import describe_target

    target = monitor.targets[name]
    return describe_target(target, resolve_pool(target)) or type(target).__name__

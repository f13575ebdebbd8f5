"""The WSGI / ASGI adapters, the monitor's bookkeeping and the event handler, on embedded SQLite.

The HTTP servers, real databases, outages and the browser are in
tests/integration/test_web.py; here the apps are called as WSGI / ASGI
callables directly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import jsonschema
import pytest
import sqlalchemy as sa
from sqlalchemy.pool import QueuePool

from sqlalchemy_smartpool import SmartPool
from sqlalchemy_smartpool.web import (
    HEALTH_SCHEMA,
    STATUS_SCHEMA,
    ASGIApp,
    PoolMonitor,
    RecentEvents,
    WSGIApp,
)
from sqlalchemy_smartpool.web.page import embed_json, render_page


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    e = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}", poolclass=SmartPool, min_size=1, max_size=2)
    yield e
    e.dispose()
    e.pool.close()  # type: ignore[attr-defined]


@pytest.fixture
def app(engine: sa.Engine) -> Iterator[WSGIApp]:
    a = WSGIApp({"db": engine}, cache_for=0)
    yield a
    a.close()


def call(app: WSGIApp, path: str, method: str = "GET", script: str = "") -> tuple[int, dict[str, str], bytes]:
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path, "SCRIPT_NAME": script}
    setup_testing_defaults(environ)
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        got["status"], got["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    return int(got["status"].split()[0]), got["headers"], body


def test_routes(app: WSGIApp, engine: sa.Engine) -> None:
    code, headers, body = call(app, "/health")
    assert code == 200 and headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == "no-store"
    report = json.loads(body)
    jsonschema.validate(report, HEALTH_SCHEMA)
    assert report["pools"]["db"]["probe"]["outcome"] == "ok"
    assert json.loads(call(app, "/health/db")[2])["pools"].keys() == {"db"}
    code, _, body = call(app, "/health/nope")
    assert code == 404 and json.loads(body)["pools"] == ["db"]
    status = json.loads(call(app, "/status.json")[2])
    jsonschema.validate(status, STATUS_SCHEMA)
    assert status["pools"][0]["stats"]["pool_size"] == engine.pool.stats().pool_size  # type: ignore[attr-defined]
    code, headers, body = call(app, "/")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"] and b'id="initial"' in body
    assert call(app, "/nope")[0] == 404
    code, headers, _ = call(app, "/health", method="POST")
    assert code == 405 and headers["Allow"] == "GET, HEAD"
    code, headers, body = call(app, "/health", method="HEAD")
    assert code == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_the_mount_point_without_its_slash_redirects_to_the_page(app: WSGIApp) -> None:
    code, headers, _ = call(app, "", script="/ops/pool")
    assert code == 307 and headers["Location"] == "/ops/pool/"
    assert call(app, "/health", script="/ops/pool")[0] == 200


def test_metrics_without_prometheus_client_names_the_extra(
    app: WSGIApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, headers, body = call(app, "/metrics")
    assert code == 200 and b'smartpool_pool_size{pool="db"}' in body
    assert headers["Content-Type"].startswith("text/plain")
    for mod in [m for m in sys.modules if m.split(".")[0] == "prometheus_client"]:
        monkeypatch.setitem(sys.modules, mod, None)
    fresh = WSGIApp(PoolMonitor(app.monitor.targets))
    try:
        code, _, body = call(fresh, "/metrics")
    finally:
        fresh.close()
    assert code == 501 and b"pip install 'sqlalchemy-smartpool[prometheus]'" in body


def test_a_pool_without_a_probe_is_judged_by_its_state(tmp_path: Path) -> None:
    qp = sa.create_engine(f"sqlite:///{tmp_path / 'q.db'}", poolclass=QueuePool)
    try:
        with _closing(WSGIApp({"queue": qp})) as a:
            report = json.loads(call(a, "/health")[2])
            jsonschema.validate(report, HEALTH_SCHEMA)
            pool = report["pools"]["queue"]
            assert pool["status"] == "ok" and pool["probe"] is None and pool["pool_class"] == "QueuePool"
            jsonschema.validate(json.loads(call(a, "/status.json")[2]), STATUS_SCHEMA)
    finally:
        qp.dispose()


class _closing:
    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __enter__(self) -> WSGIApp:
        return self.app

    def __exit__(self, *exc: object) -> None:
        self.app.close()


def test_a_failing_health_check_reports_down_with_the_reason(app: WSGIApp, engine: sa.Engine) -> None:
    pool: Any = engine.pool

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom password=hunter2")

    pool.health_check = broken
    code, _, body = call(app, "/health")
    report = json.loads(body)
    assert code == 503 and report["status"] == "down"
    assert report["pools"]["db"]["reasons"][0] == "health check failed: RuntimeError: boom password=***"
    jsonschema.validate(report, HEALTH_SCHEMA)


def test_history_is_sampled_when_asked_and_bounded(engine: sa.Engine) -> None:
    now = [100.0]
    monitor = PoolMonitor({"db": engine}, history=3, sample_every=1.0, clock=lambda: now[0])
    try:
        assert len(monitor.status()["pools"][0]["samples"]) == 1
        assert len(monitor.status()["pools"][0]["samples"]) == 1  # too soon for another
        for _ in range(5):
            now[0] += 1
            samples = monitor.status()["pools"][0]["samples"]
        assert len(samples) == 3
    finally:
        monitor.close()


def test_monitor_arguments_are_checked(engine: sa.Engine) -> None:
    with pytest.raises(ValueError, match="pool names"):
        PoolMonitor({"a/b": engine})
    with pytest.raises(ValueError, match="no pools"):
        PoolMonitor({})
    with pytest.raises(ValueError, match="probe_timeout"):
        PoolMonitor({"db": engine}, probe_timeout=0)
    with pytest.raises(TypeError, match="got object"):
        PoolMonitor({"db": object()})
    single = PoolMonitor(engine)
    single.close()
    assert list(single.targets) == ["default"]
    with pytest.raises(TypeError, match="PoolMonitor"):
        WSGIApp(single, cache_for=3)


# -- ASGI ----------------------------------------------------------------------------------


async def asgi(app: ASGIApp, scope: dict[str, Any], messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    inbox = list(messages)

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def http(path: str, root: str = "", method: str = "GET") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "root_path": root, "headers": []}


def test_asgi_routes_lifespan_and_mounting(engine: sa.Engine) -> None:
    app = ASGIApp({"db": engine})

    async def scenario() -> None:
        life = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        sent = await asgi(app, {"type": "lifespan"}, life)
        assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
        sent = await asgi(app, {"type": "websocket", "path": "/"}, [])
        assert sent == [{"type": "websocket.close", "code": 1003}]
        for scope in (http("/health"), http("/pool/health", root="/pool"), http("/health", root="/pool")):
            start, body = await asgi(app, scope, [{"type": "http.request"}])
            assert start["status"] == 200, scope
            jsonschema.validate(json.loads(body["body"]), HEALTH_SCHEMA)
        start, _ = await asgi(app, http("/pool", root="/pool"), [])
        assert start["status"] == 307 and (b"location", b"/pool/") in start["headers"]
        start, body = await asgi(app, http("/", method="HEAD"), [])
        assert start["status"] == 200 and body["body"] == b""
        start, body = await asgi(app, http("/status.json"), [])
        jsonschema.validate(json.loads(body["body"]), STATUS_SCHEMA)
        start, body = await asgi(app, http("/metrics"), [])
        assert start["status"] == 200 and b"smartpool_checkouts_total" in body["body"]

    try:
        asyncio.run(scenario())
    finally:
        app.close()


# -- the page ------------------------------------------------------------------------------


def test_embedded_json_cannot_close_its_script_element() -> None:
    evil = {"stack": "</script><script>alert(1)</script><!--", "amp": "&amp;", "sep": "\u2028"}
    text = embed_json(evil)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == evil
    empty = {"pools": [], "status": "ok", "refresh": 2, "generated_at": 0}
    page = render_page(empty, title="<i>x</i> __DATA__")
    assert b"<i>x</i>" not in page and b"&lt;i&gt;x&lt;/i&gt; __DATA__" in page


# -- recent events -------------------------------------------------------------------------


def record(msg: str, *args: Any, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("sqlalchemy_smartpool.audit", logging.INFO, __file__, 1, msg, args, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_recent_events_are_kept_per_pool_bounded_and_redacted() -> None:
    h = RecentEvents(3, max_pools=2)
    for i in range(5):
        h.handle(record("a %d", i, pool="a", event="checkout", n=i))
    h.handle(record("shared postgresql://u:pw@h/db"))
    h.handle(record("b", pool="b"))
    a = h.recent("a")
    assert [e["message"] for e in a] == ["a 3", "a 4", "shared postgresql://u:***@h/db"]
    assert a[0]["event"] == "checkout" and a[0]["fields"] == {"n": 3} and a[0]["pool"] == "a"
    assert [e["message"] for e in h.recent("b")] == ["shared postgresql://u:***@h/db", "b"]
    h.handle(record("c", pool="c"))  # a third pool name: the least recently logged one goes
    assert [e["message"] for e in h.recent("a")] == ["shared postgresql://u:***@h/db"]
    assert [e["message"] for e in h.recent("b", "c", "b")] == ["shared postgresql://u:***@h/db", "b", "c"]


def test_a_broken_record_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging, "raiseExceptions", False)
    h = RecentEvents(3)
    h.handle(record("%d", "not a number", pool="a"))
    assert h.recent("a") == []
    with pytest.raises(ValueError):
        RecentEvents(0)


def test_the_monitor_attaches_to_the_audit_logger_and_detaches(engine: sa.Engine) -> None:
    log = logging.getLogger("sqlalchemy_smartpool.audit.test")
    monitor = PoolMonitor({"db": engine}, audit_logger=log.name, audit_level=logging.INFO)
    try:
        assert log.level == logging.INFO
        log.info("pool db: opened", extra={"pool": "db", "event": "opened"})
        log.info("pool other: opened", extra={"pool": "other", "event": "opened"})
        events = monitor.status()["pools"][0]["events"]
        assert [e["message"] for e in events] == ["pool db: opened"]
    finally:
        monitor.close()
        log.setLevel(logging.NOTSET)
    assert monitor.events not in log.handlers


def test_top_holders_are_shown_when_the_pool_has_them(engine: sa.Engine) -> None:
    pool: Any = engine.pool
    monitor = PoolMonitor({"db": engine})
    try:
        shown = monitor.status()["pools"][0]["top_holders"]
        assert isinstance(shown, list), "SmartPool.top_holders() is shown: a list of locations"
        assert all({"location", "count", "total_s", "p99_s"} <= set(h) for h in shown)
        pool.top_holders = lambda: [{"holder": "report_job password=x", "connections": 2, "held": 1.5}]
        shown = monitor.status()["pools"][0]["top_holders"]
        assert shown == [{"holder": "report_job password=***", "connections": 2, "held": 1.5}]

        def broken() -> Any:
            raise RuntimeError("not now")

        pool.top_holders = broken
        assert monitor.status()["pools"][0]["top_holders"] == {"error": "RuntimeError: not now"}
    finally:
        monitor.close()

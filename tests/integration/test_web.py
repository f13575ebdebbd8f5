"""The HTTP endpoints against the real servers: schema, secrets, outages, latency, the browser.

Each app is served by the package's own threaded WSGI server on a free
loopback port (or, for the ASGI app, called through httpx on the pool's
loop). Outages go through the fault proxy (never the shared servers); the
status page is loaded in Debian's headless Chromium (``make sysdeps``).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis
import sqlalchemy as sa

from sqlalchemy_smartpool import AsyncSmartPool, AsyncSmartRedisPool, SmartPool, SmartRedisPool
from sqlalchemy_smartpool.testing import FaultMode, FaultProxy
from sqlalchemy_smartpool.web import HEALTH_SCHEMA, STATUS_SCHEMA, ASGIApp, WSGIApp, serve_in_thread

from ._services import HOST, POSTGRES_PORT, REDIS_PORT, require_postgres, require_redis
from .conftest import EngineFactory, wait_until

pytestmark = pytest.mark.integration

SECRET = "s3cret-pw"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def secret_url(app: str, host: str = HOST, port: int = POSTGRES_PORT) -> str:
    """PostgreSQL here trusts local clients: the password is never checked, only carried."""
    return f"postgresql+psycopg2://postgres:{SECRET}@{host}:{port}/test?application_name={app}"


class Served:
    """An app on a free loopback port, and GET against it."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self.server = serve_in_thread(app)
        self.port = self.server.server_port
        self.base = f"http://127.0.0.1:{self.port}"

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def json(self, path: str) -> tuple[int, Any]:
        status, _, body = self.get(path)
        return status, json.loads(body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.app.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    served: list[Served] = []

    def start(pools: Any, **options: Any) -> Served:
        s = Served(WSGIApp(pools, **options))
        served.append(s)
        return s

    yield start
    for s in served:
        s.close()


@pytest.fixture
def redis_pool() -> Iterator[SmartRedisPool]:
    require_redis()
    pool = SmartRedisPool(host=HOST, port=REDIS_PORT, password=None, max_size=4, min_size=1, name="cache")
    yield pool
    pool.close()


# -- schema and secrets --------------------------------------------------------------------


def test_health_and_status_follow_their_schemas_and_never_show_a_secret(
    serve: Callable[..., Served], make_engine: EngineFactory, app_name: str, redis_pool: SmartRedisPool
) -> None:
    require_postgres()
    engine = make_engine(secret_url(app_name), poolclass=SmartPool, min_size=1, max_size=4, name="orders")
    s = serve({"db": engine, "cache": redis_pool}, cache_for=0)
    assert engine.pool.stats().pool_size == 0  # serving alone connects nothing
    status, report = s.json("/health")
    assert status == 200, report
    jsonschema.validate(report, HEALTH_SCHEMA)
    assert report["status"] == "ok" and set(report["pools"]) == {"db", "cache"}
    db, cache = report["pools"]["db"], report["pools"]["cache"]
    assert db["probe"]["outcome"] == "ok" and db["probe"]["method"] == "connect"  # the first use
    assert db["pool"] == "orders" and db["pool_kind"] == "sqlalchemy" and cache["pool_kind"] == "redis"
    assert cache["probe"]["outcome"] == "ok"
    status, again = s.json("/health/db")
    assert status == 200 and again["pools"]["db"]["probe"]["method"] == "ping"  # it joined the pool
    status, page_data = s.json("/status.json")
    jsonschema.validate(page_data, STATUS_SCHEMA)
    targets = {p["name"]: p["target"] for p in page_data["pools"]}
    assert targets == {
        "db": "postgresql+psycopg2://postgres:***@127.0.0.1:5432/test",
        "cache": f"redis://{HOST}:{REDIS_PORT}/0",
    }
    for path in ("/health", "/status.json", "/", "/metrics"):
        code, _, body = s.get(path)
        assert code == 200, path
        assert SECRET.encode() not in body and app_name.encode() not in body, path
    code, headers, body = s.get("/metrics")
    assert headers["content-type"].startswith("text/plain")
    assert b'smartpool_pool_size{pool="db"}' in body and b'smartpool_pool_size{pool="cache"}' in body


# -- outages -------------------------------------------------------------------------------


def poll_health(s: Served, want: int, timeout: float) -> tuple[int, Any, list[int]]:
    """GET /health until it answers ``want`` (bounded); returns the last answer and every code seen."""
    seen: list[int] = []
    last: tuple[int, Any] = (0, None)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = s.json("/health")
        seen.append(last[0])
        if last[0] == want:
            break
        time.sleep(0.05)
    return last[0], last[1], seen


@pytest.mark.parametrize("mode", [FaultMode.BLACKHOLE, FaultMode.REFUSE])
def test_health_is_503_while_the_database_is_down_and_200_after(
    serve: Callable[..., Served], make_engine: EngineFactory, app_name: str, mode: FaultMode
) -> None:
    require_postgres()
    with FaultProxy(HOST, POSTGRES_PORT) as proxy:
        engine = make_engine(
            proxy.url_for(secret_url(app_name)),
            poolclass=SmartPool,
            min_size=2,
            max_size=4,
            connect_timeout=2,
            retry_attempts=0,
        )
        s = serve({"db": engine}, probe_timeout=0.5, cache_for=0.2)
        engine.pool.wait(timeout=10)
        assert s.json("/health")[0] == 200

        proxy.mode = mode  # queries hang (black hole) / connects are refused
        if mode is FaultMode.REFUSE:
            proxy.reset_all()  # ... and open connections are cut
        t0 = time.monotonic()
        code, report, seen = poll_health(s, 503, timeout=15)
        assert code == 503, (seen, report)
        took = time.monotonic() - t0
        jsonschema.validate(report, HEALTH_SCHEMA)
        db = report["pools"]["db"]
        assert db["status"] == "down", db
        if mode is FaultMode.BLACKHOLE:
            # pool state alone still looks fine: only the probe sees it
            assert db["breaker_state"] == "closed" and db["probe"]["outcome"] == "timeout", db
        else:
            assert db["probe"]["outcome"] in ("failed", "skipped") or db["breaker_state"] != "closed", db
        assert SECRET not in json.dumps(report)

        proxy.mode = FaultMode.PASS
        code, report, seen = poll_health(s, 200, timeout=30)
        assert code == 200, (seen, report)
        assert report["pools"]["db"]["probe"]["outcome"] == "ok"
        print(f"{mode.value}: 503 after {took:.2f}s; codes until healthy again: {seen}")


def test_a_redis_outage_is_503_and_recovers(serve: Callable[..., Served]) -> None:
    require_redis()
    with FaultProxy(HOST, REDIS_PORT) as proxy:
        pool = SmartRedisPool(
            host=proxy.host, port=proxy.port, min_size=1, max_size=2, retry_attempts=0, name="cache"
        )
        try:
            s = serve({"cache": pool}, probe_timeout=0.5, cache_for=0.1)
            assert s.json("/health")[0] == 200
            proxy.mode = FaultMode.REFUSE
            proxy.reset_all()
            code, report, seen = poll_health(s, 503, timeout=15)
            assert code == 503, (seen, report)
            proxy.mode = FaultMode.PASS
            code, report, seen = poll_health(s, 200, timeout=30)
            assert code == 200, (seen, report)
            assert redis.Redis(connection_pool=pool).ping() is True
        finally:
            pool.close()


# -- latency under load --------------------------------------------------------------------


LATENCY_CLIENT = """
import http.client, json, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
seconds, codes, waiting = [], [], 0
for i in range(n + 10):  # the first 10 warm up
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/health")
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    if i >= 10:
        seconds.append(time.perf_counter() - t0)
        codes.append(resp.status)
        waiting = max(waiting, json.loads(body)["pools"]["db"]["stats"]["requests_waiting"])
print(json.dumps({"seconds": seconds, "codes": codes, "waiting_max": waiting}))
"""


def test_health_p99_stays_under_10ms_while_16_threads_load_the_pool(
    serve: Callable[..., Served], make_engine: EngineFactory, app_name: str
) -> None:
    require_postgres()
    engine = make_engine(
        secret_url(app_name), poolclass=SmartPool, min_size=8, max_size=8, acquire_timeout=20
    )
    engine.pool.wait(timeout=10)
    # the goal is the production figure: coverage's line tracer (``make test`` runs under it, and it
    # alone took p99 from ~6 ms to ~9.5 ms) is kept out of the threads started here -- the server's
    # and the load's; what they run is covered by the other tests
    tracer = threading.gettrace()
    threading.settrace(None)  # type: ignore[arg-type]
    try:
        s = serve({"db": engine}, cache_for=1.0, probe_timeout=1.0)
    except BaseException:
        threading.settrace(tracer)  # type: ignore[arg-type]
        raise
    stop = threading.Event()
    errors: list[BaseException] = []

    def load() -> None:
        while not stop.is_set():
            try:
                with engine.connect() as conn:
                    conn.exec_driver_sql("SELECT pg_sleep(0.002)")
            except BaseException as err:  # reported below, never silently
                errors.append(err)
                return

    threads = [threading.Thread(target=load, name=f"load-{i}") for i in range(16)]
    try:
        for t in threads:
            t.start()
    finally:
        threading.settrace(tracer)  # type: ignore[arg-type]
    try:
        assert wait_until(lambda: engine.pool.stats().requests_waiting > 0, timeout=10), "no contention"
        before = engine.pool.stats().checkouts
        # the client is another process, as a load balancer is: it does not compete for our GIL
        out = subprocess.run(
            [sys.executable, "-c", LATENCY_CLIENT, str(s.port), "200"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        measured = json.loads(out.stdout)
        served = engine.pool.stats().checkouts - before
        seconds: list[float] = measured["seconds"]
        codes = set(measured["codes"])
        waiting_seen = measured["waiting_max"]
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors, errors[:3]
    assert codes == {200}, codes  # degraded (callers queue) is still 200
    assert waiting_seen > 0 and served > 200, (waiting_seen, served)  # the pool really was under load
    ordered = sorted(seconds)
    p50, p99 = statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]
    summary = (
        f"/health over {len(seconds)} requests while {served} checkouts ran: "
        f"p50 {p50 * 1e3:.2f} ms, p90 {ordered[int(len(ordered) * 0.9) - 1] * 1e3:.2f} ms, "
        f"p99 {p99 * 1e3:.2f} ms, max {ordered[-1] * 1e3:.2f} ms"
    )
    print(summary)
    assert p99 < 0.010, summary + "; slowest: " + ", ".join(f"{x * 1e3:.1f}" for x in ordered[-10:])


# -- asyncio pools -------------------------------------------------------------------------


def test_asyncio_pools_are_probed_on_their_loop(app_name: str) -> None:
    """``await pool.health_check()`` on AsyncSmartPool and AsyncSmartRedisPool; the ASGI app
    probes them on its loop; the WSGI app, in another thread, reports them unprobed."""
    require_postgres()
    require_redis()
    pytest.importorskip("asyncpg")
    import httpx
    from sqlalchemy.ext.asyncio import create_async_engine

    async def scenario() -> None:
        engine = create_async_engine(
            f"postgresql+asyncpg://postgres:{SECRET}@{HOST}:{POSTGRES_PORT}/test",
            poolclass=AsyncSmartPool,
            min_size=1,
            max_size=2,
            connect_args={"server_settings": {"application_name": app_name}},
        )
        rpool = AsyncSmartRedisPool(host=HOST, port=REDIS_PORT, max_size=2, name="acache")
        app = ASGIApp({"db": engine, "cache": rpool}, cache_for=0)
        try:
            pool: Any = engine.pool
            report = await pool.health_check()
            assert report["status"] == "ok" and report["probe"]["outcome"] == "ok", report
            assert report["pool_class"] == "AsyncSmartPool"
            rreport = await rpool.health_check()
            assert rreport["probe"]["outcome"] == "ok" and rreport["pool_class"] == "AsyncSmartRedisPool"
            cached = await pool.health_check(cache_for=60)
            assert cached["checked_at"] == report["checked_at"]

            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://pool") as client:
                r = await client.get("/health")
                assert r.status_code == 200, r.text
                body = r.json()
                jsonschema.validate(body, HEALTH_SCHEMA)
                assert {p["probe"]["outcome"] for p in body["pools"].values()} == {"ok"}
                r = await client.get("/status.json")
                jsonschema.validate(r.json(), STATUS_SCHEMA)
                assert SECRET not in r.text

            wsgi = WSGIApp({"db": engine}, cache_for=0)
            try:
                served = serve_in_thread(wsgi)
                try:
                    out = await asyncio.to_thread(_get_json, served.server_port, "/health")
                finally:
                    served.shutdown()
                    served.server_close()
            finally:
                wsgi.close()
            probe = out["pools"]["db"]["probe"]
            assert probe["outcome"] == "skipped" and "ASGI" in probe["detail"], out
        finally:
            app.close()
            await rpool.aclose()
            await engine.dispose()

    asyncio.run(scenario())


def _get_json(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


# -- the status page in a real browser -----------------------------------------------------


def require_chromium() -> None:
    """Skip (or fail under SMARTPOOL_REQUIRE_SERVICES=1) unless Debian's chromium and chromedriver are
    installed (``make sysdeps`` installs them)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        reason = f"{', '.join(missing)} missing: run `make sysdeps`"
        if os.environ.get("SMARTPOOL_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (SMARTPOOL_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(reason)


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 1500) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def hold_a_report_connection(engine: sa.Engine) -> sa.Connection:
    """A checkout that is never returned in time: a suspected leak, with this function in its stack."""
    conn = engine.connect()
    conn.exec_driver_sql('SELECT 1 /* <b id="injected">not markup</b> */')
    return conn


def burst(engine: sa.Engine, s: Served, seconds: float) -> None:
    """Six threads of short queries for ``seconds`` while status.json is read (taking samples)."""
    stop = time.monotonic() + seconds

    def work() -> None:
        while time.monotonic() < stop:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT pg_sleep(0.02)")

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    while time.monotonic() < stop:
        assert s.get("/status.json")[0] == 200
        time.sleep(0.1)
    for t in threads:
        t.join(timeout=30)


def test_the_status_page_renders_live_values_in_chromium(
    serve: Callable[..., Served],
    make_engine: EngineFactory,
    app_name: str,
    redis_pool: SmartRedisPool,
    tmp_path: Path,
) -> None:
    require_postgres()
    require_chromium()
    from selenium.webdriver.common.by import By

    engine = make_engine(
        secret_url(app_name),
        poolclass=SmartPool,
        min_size=2,
        max_size=6,
        name="orders",
        leak_detection_threshold=0.2,
    )
    engine.pool.wait(timeout=10)
    redis.Redis(connection_pool=redis_pool).ping()
    s = serve({"orders": engine, "cache": redis_pool}, refresh=0.5, cache_for=0.2, sample_every=0.1)
    burst(engine, s, seconds=1.5)  # some history for the chart
    held = hold_a_report_connection(engine)
    audit = logging.getLogger("sqlalchemy_smartpool.audit")
    old_level = audit.level
    audit.setLevel(logging.INFO)
    try:
        audit.info(
            "pool orders: connection #7 closed (max_lifetime)", extra={"pool": "orders", "event": "closed"}
        )
        assert wait_until(lambda: bool(engine.pool.suspected_leaks()), timeout=10)
        with chromium() as driver:
            driver.get(s.base + "/")
            body = driver.find_element(By.TAG_NAME, "body")
            # the page refreshes itself: wait for two polls of status.json
            assert wait_until(lambda: int(body.get_attribute("data-polls") or 0) >= 2, timeout=15), (
                driver.page_source[:2000]
            )

            def field(name: str) -> str:
                card = driver.find_element(By.CSS_SELECTOR, 'section[data-pool="orders"]')
                return str(card.find_element(By.CSS_SELECTOR, f'[data-field="{name}"]').text)

            def shown() -> tuple[str, ...]:
                return tuple(field(k) for k in ("pool_size", "pool_in_use", "pool_idle", "breaker_state"))

            def actual() -> tuple[str, ...]:
                st = engine.pool.stats()
                return str(st.pool_size), str(st.pool_in_use), str(st.pool_idle), st.breaker_state

            # the page shows what stats() says (a poll may be on its way: compare until they agree)
            assert wait_until(lambda: shown() == actual(), timeout=10), (shown(), actual())
            size, in_use, idle, breaker = shown()
            assert int(size) >= 2 and in_use == "1" and int(idle) == int(size) - 1 and breaker == "closed"
            assert field("name") == "orders"
            assert field("status").lower() == "degraded"  # the held connection is a suspected leak
            assert field("target") == "postgresql+psycopg2://postgres:***@127.0.0.1:5432/test"
            leaks = field("leaks")
            assert "hold_a_report_connection" in leaks and '<b id="injected">not markup</b>' in leaks
            assert driver.find_elements(By.ID, "injected") == []  # shown as text, never as markup
            assert "connection #7 closed" in field("events")
            card = driver.find_element(By.CSS_SELECTOR, 'section[data-pool="orders"]')
            assert len(card.find_elements(By.CSS_SELECTOR, "svg.chart polyline")) == 4
            cache = driver.find_element(By.CSS_SELECTOR, 'section[data-pool="cache"]')
            assert cache.find_element(By.CSS_SELECTOR, '[data-field="status"]').text.lower() == "ok"
            assert SECRET not in driver.page_source
            shot = tmp_path / "status-page.png"
            assert driver.save_screenshot(str(shot))
            assert shot.stat().st_size > 20_000
            if os.environ.get("SMARTPOOL_SCREENSHOT"):  # to refresh docs/img/status-page.png
                shutil.copy(shot, os.environ["SMARTPOOL_SCREENSHOT"])
    finally:
        audit.setLevel(old_level)
        held.close()


# -- smartpool serve -----------------------------------------------------------------------


def test_smartpool_serve_runs_standalone_on_loopback(app_name: str) -> None:
    require_postgres()
    require_redis()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sqlalchemy_smartpool.cli", "serve", "--port", "0", "--quiet",
         "--url", f"db={secret_url(app_name)}", "--url", f"redis://{HOST}:{REDIS_PORT}/0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("smartpool serve: http://127.0.0.1:"), line
        assert SECRET not in line and "postgres:***@" in line
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        body = _get_json(port, "/health")
        jsonschema.validate(body, HEALTH_SCHEMA)
        assert body["status"] == "ok" and set(body["pools"]) == {"db", "redis"}, body
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        page = conn.getresponse()
        assert page.status == 200 and b"pool status" in page.read()
        conn.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()


def test_smartpool_serve_refuses_an_asyncio_url_naming_it_without_its_password() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sqlalchemy_smartpool.cli", "serve", "--port", "0",
         "--url", f"postgresql+asyncpg://postgres:{SECRET}@{HOST}/test"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out
    assert "synchronous driver" in out.stderr and SECRET not in out.stderr + out.stdout

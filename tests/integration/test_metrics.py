"""Metrics exporters end to end: a real UDP StatsD listener, real PostgreSQL / SQLite pools.

The StatsD "server" is a UDP socket on 127.0.0.1:0 that parses the line
protocol, so what is checked is what a real StatsD daemon would receive.
Values are checked against an independent count (checkouts the test made)
and against ``pool.stats()`` taken while the pool is quiescent. Timing only
enters as "eventually" (polling) and "nothing for several intervals".
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from sqlalchemy_smartpool import CircuitBreakerConfig, PoolTimeout, SmartPool
from sqlalchemy_smartpool import stats as S
from sqlalchemy_smartpool.metrics import BREAKER_STATE_VALUES, GAUGES, health
from sqlalchemy_smartpool.metrics.statsd import (
    ACQUIRE_WAIT_P50,
    BREAKER_STATE,
    CHECKINS,
    CONNECTIONS_DETACHED,
    CONNECTIONS_DETACHED_CLOSED,
    CONNECTIONS_SOFT_INVALIDATED,
    StatsdMetrics,
)
from sqlalchemy_smartpool.testing import FaultMode, FaultProxy

from ._services import HOST, POSTGRES_PORT, require_postgres
from .conftest import EngineFactory, wait_until

pytestmark = pytest.mark.integration

pytest.importorskip("statsd")
prometheus_client = pytest.importorskip("prometheus_client")

SECRET = "s3cret"
INTERVAL = 0.05


def pg_secret_url(app: str, host: str = HOST, port: int = POSTGRES_PORT) -> str:
    """A URL with a password (trust auth ignores it) that must never reach a metric, log or report."""
    return f"postgresql+psycopg2://postgres:{SECRET}@{host}:{port}/test?application_name={app}"


# -- a StatsD server -------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    name: str
    value: float
    kind: str  # "c" | "g" | "ms"


class StatsdServer:
    """Receives StatsD datagrams on a real UDP socket and parses ``name:value|type[|@rate]``."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.packets: list[bytes] = []
        self._syncs = 0
        self.lines: list[Line] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-statsd-server", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            parsed = [self.parse(raw) for raw in data.decode("ascii").split("\n")]
            with self._lock:
                self.packets.append(data)
                self.lines.extend(parsed)

    @staticmethod
    def parse(raw: str) -> Line:
        name, _, rest = raw.partition(":")
        fields = rest.split("|")
        assert len(fields) in (2, 3), raw
        value = float(fields[0])
        if len(fields) == 3:
            assert fields[2].startswith("@"), raw
            value /= float(fields[2][1:])
        assert fields[1] in ("c", "g", "ms"), raw
        return Line(name, value, fields[1])

    def sync(self, timeout: float = 5.0) -> None:
        """Wait until every datagram already sent to us has been parsed.

        On loopback ``sendto`` queues the datagram in our receive buffer before
        it returns, so a marker sent now is read after everything sent before.
        """
        self._syncs += 1
        marker = f"__sync__:{self._syncs}|g"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(marker.encode(), ("127.0.0.1", self.port))
        assert wait_until(lambda: self.gauge("__sync__") == self._syncs, timeout=timeout), "marker lost"

    def snapshot(self) -> list[Line]:
        with self._lock:
            return list(self.lines)

    def count(self) -> int:
        """Lines received, not counting our own sync markers."""
        with self._lock:
            return sum(1 for line in self.lines if line.name != "__sync__")

    def counter(self, name: str) -> float:
        return sum(line.value for line in self.snapshot() if line.name == name and line.kind == "c")

    def gauge(self, name: str, since: int = 0) -> float | None:
        """The last value of a gauge received after line index ``since``."""
        values = [line.value for line in self.snapshot()[since:] if line.name == name and line.kind == "g"]
        return values[-1] if values else None

    def names(self) -> set[str]:
        return {line.name for line in self.snapshot() if line.name != "__sync__"}

    def raw(self) -> bytes:
        with self._lock:
            return b"".join(self.packets)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def statsd_server() -> Iterator[StatsdServer]:
    server = StatsdServer()
    yield server
    server.close()


@pytest.fixture
def metrics() -> Iterator[Callable[..., StatsdMetrics]]:
    """``StatsdMetrics`` that are closed at teardown even when a test fails half-way."""
    made: list[StatsdMetrics] = []

    def factory(*args: Any, **kw: Any) -> StatsdMetrics:
        m = StatsdMetrics(*args, **kw)
        made.append(m)
        return m

    yield factory
    for m in made:
        m.close()


def checkouts(engine: sa.Engine, n: int) -> None:
    for _ in range(n):
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1").scalar_one()


def quiescent(pool: Any) -> bool:
    st = pool.stats()
    return bool(st.connections_pending == 0 and st.requests_waiting == 0)


def listeners(pool: Any, name: str) -> int:
    return len(list(getattr(pool.dispatch, name)))


# -- StatsD, stats mode ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_stats_mode_sends_counter_deltas_and_gauges_matching_stats(
    kind: str,
    statsd_server: StatsdServer,
    metrics: Callable[..., StatsdMetrics],
    make_engine: EngineFactory,
    app_name: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    if kind == "postgresql":
        require_postgres()
        url = pg_secret_url(app_name)
    else:
        url = f"sqlite:///{tmp_path / 'metrics.db'}"
    engine = make_engine(url, poolclass=SmartPool, min_size=1, max_size=4, name="orders-db.primary")
    pool = engine.pool
    checkouts(engine, 3)  # before attaching: history, must not be counted
    before = pool.stats()

    m = metrics(engine, port=statsd_server.port, gauge_interval=INTERVAL)
    assert m.events is False  # SmartPool defaults to stats mode...
    assert listeners(pool, "checkout") == 0  # ...so the checkout path is untouched
    assert m.prefix == "smartpool.orders_db_primary"

    done = 25
    checkouts(engine, done)
    held = [engine.connect() for _ in range(2)]
    try:
        assert wait_until(lambda: quiescent(pool), timeout=10)
        expected = pool.stats()
        mark = statsd_server.count()
        p = m.prefix
        # a push that started after the snapshot carries exactly the snapshot's gauges
        assert wait_until(lambda: statsd_server.gauge(f"{p}.{BREAKER_STATE}", since=mark) is not None)
        mark2 = statsd_server.count()
        assert wait_until(lambda: statsd_server.gauge(f"{p}.{BREAKER_STATE}", since=mark2) is not None)
        for key in GAUGES:
            assert statsd_server.gauge(f"{p}.{key}", since=mark2) == getattr(expected, key), key
        assert statsd_server.gauge(f"{p}.{S.POOL_IN_USE}", since=mark2) == 2
        assert statsd_server.gauge(f"{p}.{BREAKER_STATE}", since=mark2) == BREAKER_STATE_VALUES["closed"]
    finally:
        for conn in held:
            conn.close()

    m.close()
    statsd_server.sync()
    after = pool.stats()
    made = done + len(held)
    assert statsd_server.counter(f"{p}.{S.CHECKOUTS}") == made == after.checkouts - before.checkouts
    assert (
        statsd_server.counter(f"{p}.{S.CONNECTIONS_CREATED}")
        == after.connections_created - before.connections_created
    )
    waits = [x for x in statsd_server.snapshot() if x.name == f"{p}.{ACQUIRE_WAIT_P50}"]
    assert waits and all(x.kind == "ms" and x.value >= 0 for x in waits)
    assert all(name.startswith(p + ".") for name in statsd_server.names())

    # close() stops sending: nothing for many intervals
    sent = statsd_server.count()
    checkouts(engine, 3)
    time.sleep(10 * INTERVAL)
    statsd_server.sync()
    assert statsd_server.count() == sent
    m.close()  # idempotent
    m.flush()  # and a no-op once closed
    statsd_server.sync()
    assert statsd_server.count() == sent

    report = json.dumps(health(engine))
    for where in (statsd_server.raw().decode(), caplog.text, report, repr(m)):
        assert SECRET not in where


def test_stats_mode_follows_engine_dispose(
    statsd_server: StatsdServer,
    metrics: Callable[..., StatsdMetrics],
    make_engine: EngineFactory,
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}", poolclass=SmartPool, min_size=1, max_size=2)
    m = metrics(engine, port=statsd_server.port, gauge_interval=60, name="app")  # pushes: ours only
    checkouts(engine, 3)
    m.flush()
    old = engine.pool
    engine.dispose()  # a new pool whose counters start at zero...
    assert engine.pool is not old
    checkouts(engine, 6)  # ...and overtake the old pool's before the next push
    m.close()
    statsd_server.sync()
    assert statsd_server.counter(f"smartpool.app.{S.CHECKOUTS}") == 9


def test_given_client_keeps_its_prefix_and_stays_open(
    statsd_server: StatsdServer, make_engine: EngineFactory, tmp_path: Path
) -> None:
    import statsd

    client = statsd.StatsClient("127.0.0.1", statsd_server.port, prefix="web")
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}", poolclass=SmartPool, min_size=1, max_size=2)
    with StatsdMetrics(engine, client, prefix="db", gauge_interval=60, name="main") as m:
        checkouts(engine, 2)
    assert m.closed
    statsd_server.sync()
    assert statsd_server.counter("web.db.main.checkouts") == 2  # the final push of close()
    client.incr("still_open")  # we did not close the caller's client
    assert wait_until(lambda: statsd_server.counter("web.still_open") == 1, timeout=5)


# -- StatsD, event mode ----------------------------------------------------------------------


def test_event_mode_on_queuepool_counts_every_pool_event(
    statsd_server: StatsdServer,
    metrics: Callable[..., StatsdMetrics],
    make_engine: EngineFactory,
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}", poolclass=sa.pool.QueuePool, pool_size=3)
    checkouts(engine, 1)  # the dialect initializes on the first connect
    pool = engine.pool
    base_connect_listeners = listeners(pool, "connect")

    # an independent witness of connects, to compare the exporter against
    connects: list[int] = []

    def witness(*_: Any) -> None:
        connects.append(1)

    event.listen(pool, "connect", witness)
    m = metrics(engine, port=statsd_server.port, gauge_interval=INTERVAL, name="legacy")
    assert m.events is True
    assert listeners(pool, "checkout") == 1

    done = 0
    checkouts(engine, 10)
    done += 10
    with engine.connect() as conn:  # invalidated: closed now, reconnected on next use
        conn.invalidate()
    done += 1
    with engine.connect() as conn:  # soft: closed and replaced at its next checkout
        conn.connection.invalidate(soft=True)
    done += 1
    conn = engine.connect()  # detached: leaves the pool, closed on its own
    conn.detach()
    conn.close()
    done += 1
    checkouts(engine, 2)
    done += 2

    held = engine.connect()
    done += 1
    try:
        p = m.prefix
        mark = statsd_server.count()
        assert wait_until(lambda: statsd_server.gauge(f"{p}.{S.POOL_IN_USE}", since=mark) is not None)
        assert statsd_server.gauge(f"{p}.{S.POOL_IN_USE}", since=mark) == pool.checkedout() == 1
        assert statsd_server.gauge(f"{p}.{S.POOL_IDLE}", since=mark) == pool.checkedin()
    finally:
        held.close()
    old_pool = pool
    engine.dispose()  # listeners travel to the new pool; counts continue
    checkouts(engine, 2)
    done += 2
    m.close()
    statsd_server.sync()

    assert statsd_server.counter(f"{p}.{S.CHECKOUTS}") == done
    assert statsd_server.counter(f"{p}.{CHECKINS}") == done - 1  # the detached one never checks in
    assert statsd_server.counter(f"{p}.{S.CONNECTIONS_INVALIDATED}") == 1
    assert statsd_server.counter(f"{p}.{CONNECTIONS_SOFT_INVALIDATED}") == 1
    assert statsd_server.counter(f"{p}.{CONNECTIONS_DETACHED}") == 1
    assert statsd_server.counter(f"{p}.{CONNECTIONS_DETACHED_CLOSED}") == 1
    assert statsd_server.counter(f"{p}.{S.CONNECTIONS_CREATED}") == len(connects) > 0
    assert statsd_server.counter(f"{p}.{S.CONNECTIONS_CLOSED}") > 0
    # close() removed every listener it added, from the old pool and from its replacement
    for target in (old_pool, engine.pool):
        assert listeners(target, "checkout") == 0
        assert listeners(target, "checkin") == 0
        assert listeners(target, "connect") == base_connect_listeners + 1  # the dialect's + witness


def test_event_mode_on_smartpool_does_not_double_count(
    statsd_server: StatsdServer,
    metrics: Callable[..., StatsdMetrics],
    make_engine: EngineFactory,
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 's.db'}", poolclass=SmartPool, min_size=1, max_size=2)
    m = metrics(engine, port=statsd_server.port, gauge_interval=INTERVAL, events=True)
    assert listeners(engine.pool, "checkout") == 1
    checkouts(engine, 7)
    m.close()
    statsd_server.sync()
    assert listeners(engine.pool, "checkout") == 0
    assert statsd_server.counter(f"smartpool.{S.CHECKOUTS}") == 7 == engine.pool.stats().checkouts
    assert statsd_server.counter(f"smartpool.{CHECKINS}") == 7
    # gauges and breaker state still come from stats()
    assert statsd_server.gauge(f"smartpool.{BREAKER_STATE}") == 0
    assert statsd_server.gauge(f"smartpool.{S.POOL_MAX}") == 2


def test_event_mode_on_nullpool_counts_without_gauges(
    statsd_server: StatsdServer,
    metrics: Callable[..., StatsdMetrics],
    make_engine: EngineFactory,
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'n.db'}", poolclass=sa.pool.NullPool)
    m = metrics(engine, port=statsd_server.port, gauge_interval=INTERVAL)
    checkouts(engine, 4)
    m.close()
    statsd_server.sync()
    # NullPool opens and closes a connection per checkout, and has no idle/in-use gauges
    assert statsd_server.counter(f"smartpool.{S.CHECKOUTS}") == 4
    assert statsd_server.counter(f"smartpool.{S.CONNECTIONS_CREATED}") == 4
    assert statsd_server.counter(f"smartpool.{S.CONNECTIONS_CLOSED}") == 4
    assert not [x for x in statsd_server.snapshot() if x.kind == "g" and x.name != "__sync__"]
    report = health(engine)
    assert report["status"] == "ok"
    assert report["stats"] == {}


# -- Prometheus ------------------------------------------------------------------------------


def samples(registry: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = prometheus_client.generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_prometheus_collector_reads_stats_at_scrape_time(
    make_engine: EngineFactory, tmp_path: Path, app_name: str
) -> None:
    from prometheus_client import CollectorRegistry

    from sqlalchemy_smartpool.metrics import PrometheusCollector

    require_postgres()
    registry = CollectorRegistry()
    engine = make_engine(pg_secret_url(app_name), poolclass=SmartPool, min_size=1, max_size=3, name="main")
    legacy = make_engine(f"sqlite:///{tmp_path / 'p.db'}", poolclass=sa.pool.QueuePool, pool_size=2)
    collector = PrometheusCollector(engine, registry=registry)
    collector.add(legacy, name="legacy")
    with pytest.raises(ValueError, match="already collected"):
        collector.add(legacy, name="legacy")
    with pytest.raises(ValueError):  # the same names twice in one registry
        PrometheusCollector(legacy, name="other", registry=registry)

    checkouts(engine, 6)
    checkouts(legacy, 2)
    held = legacy.connect()
    try:
        assert wait_until(lambda: quiescent(engine.pool), timeout=10)
        st = engine.pool.stats()
        got = samples(registry)
        text = prometheus_client.generate_latest(registry).decode()
    finally:
        held.close()
    main = (("pool", "main"),)
    assert got[("smartpool_checkouts_total", main)] == st.checkouts == 6
    assert got[("smartpool_connections_created_total", main)] == st.connections_created
    for key in GAUGES:
        assert got[(f"smartpool_{key}", main)] == getattr(st, key), key
    assert got[("smartpool_breaker_state", main)] == 0
    for q, value in (("0.5", st.wait_p50), ("0.95", st.wait_p95), ("0.99", st.wait_p99)):
        assert got[("smartpool_acquire_wait_seconds", (("pool", "main"), ("quantile", q)))] == value
    assert got[("smartpool_acquire_wait_max_seconds", main)] == st.wait_max
    # a QueuePool has the SQLAlchemy gauges only
    assert got[("smartpool_pool_in_use", (("pool", "legacy"),))] == 1
    assert got[("smartpool_pool_idle", (("pool", "legacy"),))] == 0  # one connection made, it is held
    assert ("smartpool_checkouts_total", (("pool", "legacy"),)) not in got
    assert SECRET not in text

    # read at scrape time: more traffic shows up without any push
    checkouts(engine, 3)
    assert samples(registry)[("smartpool_checkouts_total", main)] == 9
    collector.unregister()
    assert not any(name.startswith("smartpool_") for name, _ in samples(registry))


# -- health ----------------------------------------------------------------------------------


def test_health_ok_then_degraded_while_waiting_and_after_timeouts(
    make_engine: EngineFactory, app_name: str
) -> None:
    require_postgres()
    patient = make_engine(pg_secret_url(app_name), poolclass=SmartPool, min_size=1, max_size=1)
    checkouts(patient, 1)
    report = health(patient)
    assert report["status"] == "ok", report
    assert report["reasons"] == []
    assert SECRET not in json.dumps(report)

    held = patient.connect()
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(patient.connect()))
    try:
        waiter.start()
        assert wait_until(lambda: patient.pool.stats().requests_waiting == 1, timeout=5)
        report = health(patient.pool)
        assert report["status"] == "degraded", report
        assert "waiting" in report["reasons"][0]
    finally:
        held.close()
        waiter.join(timeout=10)
    got[0].close()
    assert health(patient)["status"] == "ok"

    hasty = make_engine(
        pg_secret_url(app_name), poolclass=SmartPool, min_size=1, max_size=1, acquire_timeout=0.2
    )
    checkouts(hasty, 1)
    assert health(hasty)["status"] == "ok"  # the baseline
    held = hasty.connect()
    try:
        with pytest.raises(PoolTimeout):
            hasty.connect()
    finally:
        held.close()
    report = health(hasty)
    assert report["status"] == "degraded", report
    assert "timed out" in report["reasons"][0]
    assert report["stats"]["timeouts"] == 1
    assert health(hasty, degraded_for=0)["status"] == "ok"  # the window has passed


def test_health_down_and_breaker_gauges_when_database_refuses(
    statsd_server: StatsdServer,
    metrics: Callable[..., StatsdMetrics],
    make_engine: EngineFactory,
    app_name: str,
) -> None:
    require_postgres()
    with FaultProxy(HOST, POSTGRES_PORT) as proxy:
        proxy.mode = FaultMode.REFUSE
        engine = make_engine(
            proxy.url_for(pg_secret_url(app_name)),
            poolclass=SmartPool,
            min_size=0,
            max_size=2,
            acquire_timeout=2,
            retry_attempts=0,
            breaker=CircuitBreakerConfig(failure_threshold=2, backoff_initial=30, backoff_max=30),
        )
        m = metrics(engine, port=statsd_server.port, gauge_interval=INTERVAL, name="db")

        def try_connect() -> bool:
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                engine.connect().close()
            return bool(engine.pool.stats().breaker_state == "open")

        assert wait_until(try_connect, timeout=10, interval=0.05)
        report = health(engine)
        assert report["status"] == "down", report
        assert report["breaker_state"] == "open"
        assert "circuit breaker open" in report["reasons"]
        assert SECRET not in json.dumps(report)

        mark = statsd_server.count()
        assert wait_until(lambda: statsd_server.gauge("smartpool.db.breaker_state", since=mark) == 2)
        m.close()
        statsd_server.sync()
        st = engine.pool.stats()
        assert statsd_server.counter("smartpool.db.connections_failed") == st.connections_failed >= 2
        assert statsd_server.counter("smartpool.db.breaker_opened") == 1
        assert SECRET not in statsd_server.raw().decode()


# -- the lazy imports ------------------------------------------------------------------------


def test_missing_packages_name_the_extra(
    monkeypatch: pytest.MonkeyPatch, make_engine: EngineFactory, tmp_path: Path
) -> None:
    import sys

    import sqlalchemy_smartpool.metrics as metrics_pkg

    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}", poolclass=SmartPool, min_size=0)
    monkeypatch.setitem(sys.modules, "statsd", None)  # "not installed"
    with pytest.raises(ImportError, match=r"pip install 'sqlalchemy-smartpool\[statsd\]'"):
        StatsdMetrics(engine)
    for mod in [m for m in sys.modules if m.split(".")[0] == "prometheus_client"]:
        monkeypatch.setitem(sys.modules, mod, None)
    monkeypatch.delitem(sys.modules, "sqlalchemy_smartpool.metrics.prometheus", raising=False)
    monkeypatch.delitem(vars(metrics_pkg), "PrometheusCollector", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'sqlalchemy-smartpool\[prometheus\]'"):
        _ = metrics_pkg.PrometheusCollector


def test_unknown_attribute_and_bad_arguments(make_engine: EngineFactory, tmp_path: Path) -> None:
    import sqlalchemy_smartpool.metrics as metrics_pkg

    with pytest.raises(AttributeError):
        _ = metrics_pkg.NoSuchExporter
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}", poolclass=SmartPool, min_size=0)
    with pytest.raises(ValueError, match="gauge_interval"):
        StatsdMetrics(engine, gauge_interval=0)
    with pytest.raises(TypeError, match="Engine"):
        health(object())

"""OpenTelemetryMetrics against the SDK's in-memory reader, on SQLite pools (no server needed)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import QueuePool

from sqlalchemy_smartpool import SmartPool
from sqlalchemy_smartpool import stats as S

sdk_metrics = pytest.importorskip("opentelemetry.sdk.metrics")
sdk_export = pytest.importorskip("opentelemetry.sdk.metrics.export")

from sqlalchemy_smartpool.metrics import OpenTelemetryMetrics  # noqa: E402


class Reader:
    def __init__(self) -> None:
        self.reader = sdk_export.InMemoryMetricReader()
        self.provider = sdk_metrics.MeterProvider(metric_readers=[self.reader])

    def collect(self) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    out[metric.name] = list(metric.data.data_points)
        return out


@pytest.fixture
def reader() -> Iterator[Reader]:
    r = Reader()
    yield r
    r.provider.shutdown()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    e = sa.create_engine(f"sqlite:///{tmp_path / 'o.db'}", poolclass=SmartPool, max_size=2, name="orders")
    yield e
    e.dispose()
    e.pool.close()  # type: ignore[attr-defined]


def work(engine: sa.Engine, n: int) -> None:
    for _ in range(n):
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")


def point(data: dict[str, list[Any]], name: str, **attrs: str) -> Any:
    found = [p for p in data[name] if all(p.attributes.get(k) == v for k, v in attrs.items())]
    assert len(found) == 1, (name, attrs, data.get(name))
    return found[0]


def test_each_collection_reads_the_pool_now(engine: sa.Engine, reader: Reader) -> None:
    OpenTelemetryMetrics(engine, meter_provider=reader.provider)
    engine.pool.wait()  # type: ignore[attr-defined]  # both connections open: nothing moves by itself
    held = engine.connect()
    first = reader.collect()
    assert point(first, "db.client.connection.count", **{"db.client.connection.state": "used"}).value == 1
    used = point(first, "db.client.connection.count", **{"db.client.connection.state": "used"})
    assert used.attributes["db.client.connection.pool.name"] == "orders"
    held.close()
    second = reader.collect()  # right after: no stale snapshot
    assert point(second, "db.client.connection.count", **{"db.client.connection.state": "used"}).value == 0
    assert point(second, "db.client.connection.count", **{"db.client.connection.state": "idle"}).value == 2
    assert point(second, "smartpool.checkouts").value == 1


def test_histograms_are_replayed_exactly_and_a_backlog_waits(engine: sa.Engine, reader: Reader) -> None:
    OpenTelemetryMetrics(engine, meter_provider=reader.provider, max_replay=10)
    engine.pool.wait()  # type: ignore[attr-defined]  # min_size open: no connect lands later
    work(engine, 50)
    dist = engine.pool.stats().timings[S.USE_TIME]  # type: ignore[attr-defined]
    data = reader.collect()
    use = point(data, "db.client.connection.use_time")
    assert 0 < use.count <= 10
    backlog = point(data, "smartpool.otel.replay_backlog").value
    assert backlog > 0
    for _ in range(20):  # each collection takes in up to max_replay more, per histogram
        data = reader.collect()
        if point(data, "smartpool.otel.replay_backlog").value == 0:
            break
    use = point(data, "db.client.connection.use_time")
    assert use.count == dist.count == 50
    assert list(use.bucket_counts) == list(dist.counts)
    assert use.sum == pytest.approx(dist.sum, rel=1e-9)
    wait = point(data, "db.client.connection.wait_time")
    assert wait.count == 50 and list(wait.explicit_bounds) == list(S.TIME_BUCKETS)
    assert point(data, "db.client.connection.create_time").count == engine.pool.stats().connections_created  # type: ignore[attr-defined]


def test_engine_dispose_starts_the_new_pool_from_zero(engine: sa.Engine, reader: Reader) -> None:
    OpenTelemetryMetrics(engine, meter_provider=reader.provider)
    work(engine, 3)
    assert point(reader.collect(), "smartpool.checkouts").value == 3
    old = engine.pool
    engine.dispose()
    old.close()  # type: ignore[attr-defined]
    work(engine, 2)
    data = reader.collect()
    assert point(data, "smartpool.checkouts").value == 2
    assert point(data, "db.client.connection.use_time").count == 3 + 2, "the histogram is cumulative"


def test_a_plain_sqlalchemy_pool_reports_its_connection_counts(tmp_path: Path, reader: Reader) -> None:
    e = sa.create_engine(f"sqlite:///{tmp_path / 'q.db'}", poolclass=QueuePool)
    try:
        OpenTelemetryMetrics(e, meter_provider=reader.provider)
        work(e, 2)
        data = reader.collect()
        assert point(data, "db.client.connection.count", **{"db.client.connection.state": "idle"}).value == 1
        idle = point(data, "db.client.connection.count", **{"db.client.connection.state": "idle"})
        assert idle.attributes["db.client.connection.pool.name"] == "default"
        assert "smartpool.checkouts" not in data or not data["smartpool.checkouts"]
    finally:
        e.dispose()


def test_close_add_and_arguments(engine: sa.Engine, tmp_path: Path, reader: Reader) -> None:
    other = sa.create_engine(f"sqlite:///{tmp_path / 'p.db'}", poolclass=SmartPool, max_size=2)
    try:
        m = OpenTelemetryMetrics(engine, meter_provider=reader.provider)
        m.add(other, name="reports")
        with pytest.raises(ValueError, match="already reported"):
            m.add(engine)
        work(other, 1)
        points = reader.collect()["smartpool.checkouts"]
        names = {p.attributes["db.client.connection.pool.name"] for p in points}
        assert names == {"orders", "reports"}
        assert "orders" in repr(m)
        m.close()
        assert m.closed
        data = reader.collect()
        assert not data.get("smartpool.checkouts"), "closed: nothing observed"
        with pytest.raises(ValueError, match="max_replay"):
            OpenTelemetryMetrics(engine, meter_provider=reader.provider, max_replay=0)
    finally:
        other.dispose()
        other.pool.close()  # type: ignore[attr-defined]


def test_missing_opentelemetry_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlalchemy_smartpool.metrics as metrics_pkg

    for mod in [m for m in sys.modules if m.split(".")[0] == "opentelemetry"]:
        monkeypatch.setitem(sys.modules, mod, None)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "sqlalchemy_smartpool.metrics.otel", raising=False)
    monkeypatch.delitem(vars(metrics_pkg), "OpenTelemetryMetrics", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'sqlalchemy-smartpool\[otel\]'"):
        _ = metrics_pkg.OpenTelemetryMetrics

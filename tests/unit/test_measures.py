"""The measurement table: one meaning per row, names per the OpenTelemetry conventions, histograms."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sqlalchemy_smartpool import measures as M
from sqlalchemy_smartpool import stats as S
from sqlalchemy_smartpool.stats import Distribution, PoolStats, Timing

db_metrics = pytest.importorskip("opentelemetry.semconv._incubating.metrics.db_metrics")
db_attributes = pytest.importorskip("opentelemetry.semconv._incubating.attributes.db_attributes")


class RecordingMeter:
    """Stands in for an OpenTelemetry Meter: notes what the conventions' helpers create."""

    def __init__(self) -> None:
        self.made: dict[str, tuple[str, str, str]] = {}

    def __getattr__(self, method: str) -> Any:
        def create(name: str, description: str = "", unit: str = "", **_: Any) -> None:
            self.made[name] = (method.removeprefix("create_"), unit, description)

        return create


def _semconv() -> dict[str, tuple[str, str, str]]:
    meter = RecordingMeter()
    for name in dir(db_metrics):
        if name.startswith("create_db_client_connection_"):
            getattr(db_metrics, name)(meter)
    return meter.made


def test_semconv_rows_use_the_conventions_names_instruments_units_and_descriptions() -> None:
    conv = _semconv()
    pool_attrs = {
        "db.client.connection.count",
        "db.client.connection.idle.max",
        "db.client.connection.idle.min",
        "db.client.connection.max",
        "db.client.connection.pending_requests",
        "db.client.connection.timeouts",
        "db.client.connection.create_time",
        "db.client.connection.wait_time",
        "db.client.connection.use_time",
    }
    ours = {m.otel for m in M.MEASURES if m.semconv}
    assert ours == pool_attrs, "every pool metric of the conventions, and only those, is a semconv row"
    assert pool_attrs <= set(conv), "the installed conventions still define each of them"
    kinds = {"up_down_counter": "updowncounter", "counter": "counter", "histogram": "histogram"}
    for m in M.MEASURES:
        if not m.semconv:
            assert m.otel is None or not m.otel.startswith("db."), f"{m.key}: our own names stay out of db.*"
            continue
        instrument, unit, description = conv[m.otel]
        assert m.otel_instrument == kinds[instrument], m.key
        assert m.unit == unit, m.key
        assert M.OTEL_DESCRIPTIONS[m.otel] == description, m.key
    assert M.POOL_NAME_ATTR == db_attributes.DB_CLIENT_CONNECTION_POOL_NAME
    assert M.STATE_ATTR == db_attributes.DB_CLIENT_CONNECTION_STATE
    states = {m.otel_attributes[M.STATE_ATTR] for m in M.MEASURES if m.otel == "db.client.connection.count"}
    assert states == {"idle", "used"}


def test_rows_sharing_a_name_agree_on_kind_unit_and_labels() -> None:
    by_otel: dict[str, list[M.Measure]] = {}
    by_prom: dict[str, list[M.Measure]] = {}
    for m in M.MEASURES:
        if m.otel:
            by_otel.setdefault(m.otel, []).append(m)
        if m.prometheus:
            by_prom.setdefault(m.prometheus, []).append(m)
    for rows in by_otel.values():
        assert len({(r.kind, r.unit, r.otel_instrument, tuple(sorted(r.otel_attributes))) for r in rows}) == 1
        assert len({tuple(sorted(r.otel_attributes.items())) for r in rows}) == len(rows), "told apart"
    for rows in by_prom.values():
        assert len({(r.kind, tuple(sorted(r.prometheus_labels))) for r in rows}) == 1
        assert len({tuple(sorted(r.prometheus_labels.items())) for r in rows}) == len(rows)
    assert len({m.key for m in M.MEASURES}) == len(M.MEASURES)
    statsd = [m.statsd for m in M.MEASURES if m.statsd]
    assert len(statsd) == len(set(statsd))


def test_every_row_is_well_formed() -> None:
    prom_name = re.compile(r"^[a-z_][a-z0-9_]*$")
    otel_name = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
    for m in M.MEASURES:
        assert m.kind in (M.GAUGE, M.COUNTER, M.HISTOGRAM), m.key
        assert m.description.endswith("."), m.key
        assert m.prometheus is None or prom_name.match(m.prometheus), m.key
        assert m.prometheus is None or not m.prometheus.endswith("_total"), "prometheus_client adds _total"
        assert m.otel is None or otel_name.match(m.otel), m.key
        assert (m.statsd is None) == (m.statsd_type is None), m.key
        if m.kind == M.COUNTER:
            assert m.source in S.COUNTERS, m.key
            assert m.otel is None or m.otel_instrument == "counter"
        if m.kind == M.HISTOGRAM:
            assert m.source in S.TIMINGS and m.unit == "s"
            assert m.prometheus and m.prometheus.endswith("_seconds")
        if m.unit == "s" and m.statsd:
            assert m.statsd_scale == M.MS, f"{m.key}: StatsD durations are milliseconds"
    covered = {m.source for m in M.MEASURES if m.kind == M.COUNTER}
    assert covered == set(S.COUNTERS), "every stats counter is exported"


def _stats(**kw: Any) -> PoolStats:
    base: dict[str, Any] = {
        "name": "p",
        "pool_size": 4,
        "pool_idle": 1,
        "pool_in_use": 3,
        "requests_waiting": 2,
        "connections_pending": 1,
        "pool_min": 2,
        "pool_max": 9,
        "breaker_state": "half_open",
        "counters": {**dict.fromkeys(S.COUNTERS, 0), S.TIMEOUTS: 7},
        "wait_p50": 0.001,
        "wait_p95": 0.01,
        "wait_p99": 0.1,
        "wait_max": 0.5,
        "acquire_timeout": 2.5,
        "leaks_outstanding": 1,
    }
    base.update(kw)
    return PoolStats(**base)


def test_read_takes_each_value_from_the_snapshot() -> None:
    t = Timing()
    t.record(0.003)
    st = _stats(timings={S.USE_TIME: t.snapshot()})
    got = {m.key: m.read(st) for m in M.MEASURES}
    assert got["connections.idle"] == 1 and got["connections.used"] == 3 and got["connections.open"] == 4
    assert got["pending_requests"] == 2 and got["connects_pending"] == 1
    assert got["idle.min"] == 2 and got["idle.max"] == 9 and got["max"] == 9
    assert got["breaker.state"] == 1 and got["acquire_timeout"] == 2.5 and got["leaks.outstanding"] == 1
    assert got["timeouts"] == 7 and got["errors.timeout"] == 7 and got["checkouts"] == 0
    assert got["wait.p99"] == 0.1
    assert got["use_time"].count == 1 and got["wait_time"] is None, "absent histograms read as None"


def test_name_listings_cover_the_table() -> None:
    prom = M.prometheus_names()
    assert {"smartpool_pool_in_use", "smartpool_timeouts_total", "smartpool_errors_total"} <= prom
    assert {"smartpool_wait_time_seconds_bucket", "smartpool_wait_time_seconds_count"} <= prom
    assert M.prometheus_names("app") >= {"app_pool_size"}
    statsd = M.statsd_names()
    assert statsd["pool_in_use"] == "g" and statsd["timeouts"] == "c" and statsd["acquire_wait_p99"] == "ms"
    assert statsd["use_time_count"] == "c" and statsd["use_time_p99"] == "ms"
    assert statsd["acquire_timeout_ms"] == "g"
    assert set(M.otel_names()) == {m.otel for m in M.MEASURES if m.otel}
    assert M.plain_gauges(2, None) == {S.POOL_IDLE: 2}
    assert M.plain_gauges(2, 3) == {S.POOL_IDLE: 2, S.POOL_IN_USE: 3, S.POOL_SIZE: 5}


# -- histograms -------------------------------------------------------------------------------


def test_timing_buckets_are_inclusive_upper_bounds() -> None:
    t = Timing()
    for v in (0.0, 0.0001, 0.00010001, 60.0, 61.0):
        t.record(v)
    d = t.snapshot(zeros=3)
    assert d.counts[0] == 2 + 3, "0 and exactly the first bound, plus the zeros"
    assert d.counts[1] == 1
    assert d.counts[len(S.TIME_BUCKETS) - 1] == 1, "60 s is in the le=60 bucket"
    assert d.counts[-1] == 1, "above the last bound"
    assert d.count == 8 and d.cumulative()[-1] == 8
    assert d.sum == pytest.approx(0.0001 + 0.00010001 + 121.0)


def test_distribution_minus_and_quantile() -> None:
    t = Timing()
    for _ in range(99):
        t.record(0.002)
    before = t.snapshot()
    t.record(3.0)
    delta = t.snapshot().minus(before)
    assert delta.count == 1 and delta.sum == pytest.approx(3.0)
    assert t.snapshot().minus(None).count == 100
    full = t.snapshot()
    assert 0.001 < full.quantile(0.5) <= 0.0025
    assert 2.5 < full.quantile(1.0) <= 5.0
    assert Distribution(S.TIME_BUCKETS, (0,) * 19, (0.0,) * 19).quantile(0.99) == 0.0
    huge = Timing()
    huge.record(100.0)
    assert huge.snapshot().quantile(0.99) == 60.0, "the open last bucket answers its lower bound"


@given(st.lists(st.floats(min_value=0.0, max_value=120.0), min_size=1, max_size=200), st.floats(0.01, 1.0))
def test_quantile_lies_in_the_bucket_of_the_exact_answer(values: list[float], q: float) -> None:
    t = Timing()
    for v in values:
        t.record(v)
    d = t.snapshot()
    exact = sorted(values)[max(0, math.ceil(q * len(values)) - 1)]
    bounds = (0.0, *S.TIME_BUCKETS, math.inf)
    i = next(i for i in range(len(bounds) - 1) if exact <= bounds[i + 1])
    got = d.quantile(q)
    assert bounds[i] - 1e-12 <= got <= max(bounds[i + 1] if i + 1 < len(bounds) - 1 else bounds[i], exact)
    assert d.count == len(values) and d.sum == pytest.approx(math.fsum(values))


def test_measure_is_frozen() -> None:
    m = M.MEASURES[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.key = "x"  # type: ignore[misc]

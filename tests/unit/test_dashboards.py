"""The Grafana dashboards and Prometheus alert rules in docs/dashboards only use metrics we produce.

Every PromQL expression is parsed (``promql-parser``, the Rust parser the
GreptimeDB project ships for Python), every metric it selects must be in the
measures table *and* in a real scrape of a live SmartPool, with only labels
that metric has. Every Graphite path must be a name StatsdMetrics sends, of
the type the StatsD daemon namespace implies (``stats.gauges.`` for gauges,
``stats.timers.`` for timings, ``stats.`` / ``stats_counts.`` for counters).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from sqlalchemy_smartpool import SmartPool
from sqlalchemy_smartpool import measures as M
from sqlalchemy_smartpool.metrics import PrometheusCollector, StatsdMetrics

promql = pytest.importorskip("promql_parser")
prometheus_client = pytest.importorskip("prometheus_client")

DASHBOARDS = Path(__file__).resolve().parents[2] / "docs" / "dashboards"
ALERTS = {
    "SmartpoolRequestsWaiting",
    "SmartpoolWaitNearTimeout",
    "SmartpoolCheckoutTimeouts",
    "SmartpoolBreakerOpen",
    "SmartpoolConnectionLeak",
}


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, set[str]]]:
    """Sample name -> label names, from a scrape of a SmartPool that did some work."""
    path = tmp_path_factory.mktemp("dash") / "d.db"
    engine = sa.create_engine(f"sqlite:///{path}", poolclass=SmartPool, max_size=2, name="dash")
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    registry = prometheus_client.CollectorRegistry()
    PrometheusCollector(engine, registry=registry)
    out: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    yield out
    engine.dispose()
    engine.pool.close()  # type: ignore[attr-defined]


def _grafana(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DASHBOARDS / name).read_text())
    return data


def _prom_exprs() -> list[tuple[str, str]]:
    out = []
    for panel in _grafana("grafana-prometheus.json")["panels"]:
        for target in panel["targets"]:
            out.append((f"panel {panel['title']!r}", target["expr"]))
    rules = yaml.safe_load((DASHBOARDS / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            out.append((f"alert {rule['alert']}", rule["expr"]))
    return out


def _selectors(node: Any) -> Iterator[Any]:
    """Every vector selector in a parsed PromQL expression."""
    if isinstance(node, promql.VectorSelector):
        yield node
        return
    if isinstance(node, promql.MatrixSelector):
        yield node.vector_selector
        return
    for attr in ("lhs", "rhs", "expr", "param"):
        child = getattr(node, attr, None)
        if child is not None and not isinstance(child, (str, int, float)):
            yield from _selectors(child)
    for arg in getattr(node, "args", None) or ():
        yield from _selectors(arg)


def _grafana_vars(expr: str) -> str:
    return expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$pool", ".*")


def test_every_promql_metric_is_produced_by_the_collector(scraped: dict[str, set[str]]) -> None:
    exprs = _prom_exprs()
    assert len(exprs) >= 20
    table = M.prometheus_names()
    used: set[str] = set()
    for where, expr in exprs:
        tree = promql.parse(_grafana_vars(expr))  # raises on a syntax error
        selectors = list(_selectors(tree))
        assert selectors, f"{where}: selects nothing"
        for sel in selectors:
            name = sel.name
            assert name in table, f"{where}: {name} is not in the measures table"
            assert name in scraped, f"{where}: {name} is not in a scrape of a live pool"
            for matcher in sel.matchers.matchers:
                assert matcher.name in scraped[name], f"{where}: {name} has no label {matcher.name!r}"
            used.add(name)
    # the dashboards show every family's key series: state, waits, errors, breaker, leaks
    for must in (
        "smartpool_pool_in_use",
        "smartpool_pool_idle",
        "smartpool_requests_waiting",
        "smartpool_wait_time_seconds_bucket",
        "smartpool_use_time_seconds_bucket",
        "smartpool_create_time_seconds_bucket",
        "smartpool_acquire_timeout_seconds",
        "smartpool_errors_total",
        "smartpool_timeouts_total",
        "smartpool_breaker_state",
        "smartpool_leaks_outstanding",
    ):
        assert must in used, must


def test_aggregations_keep_only_labels_the_metrics_have(scraped: dict[str, set[str]]) -> None:
    by = re.compile(r"\bby \(([^)]*)\)")
    labels = set().union(*scraped.values())
    for where, expr in _prom_exprs():
        for group in by.findall(expr):
            for label in (x.strip() for x in group.split(",")):
                assert label in labels, f"{where}: groups by {label!r}, which no metric has"


_GRAPHITE = re.compile(
    r"\b(?P<ns>stats\.gauges|stats\.timers|stats_counts|stats)\.smartpool\.\$pool\.(?P<metric>[A-Za-z0-9_]+)"
    r"(?P<agg>\.[a-z0-9_]+)?"
)
_NS_TYPE = {"stats.gauges": "g", "stats.timers": "ms", "stats_counts": "c", "stats": "c"}


class RecordingClient:
    """The ``statsd`` client API, keeping what StatsdMetrics sends."""

    def __init__(self) -> None:
        self.sent: dict[str, str] = {}

    def gauge(self, name: str, value: float) -> None:
        self.sent[name] = "g"

    def incr(self, name: str, count: float = 1) -> None:
        self.sent[name] = "c"

    def timing(self, name: str, ms: float) -> None:
        self.sent[name] = "ms"


def _pushed(tmp_path: Path) -> dict[str, str]:
    engine = sa.create_engine(
        f"sqlite:///{tmp_path / 's.db'}", poolclass=SmartPool, max_size=2, name="dash", validation_interval=0
    )
    client = RecordingClient()
    metrics = StatsdMetrics(engine, client, gauge_interval=3600)
    try:
        for _ in range(3):
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        metrics.flush()
    finally:
        metrics.close()
        engine.dispose()
        engine.pool.close()  # type: ignore[attr-defined]
    return {name.removeprefix("smartpool.dash."): kind for name, kind in client.sent.items()}


def test_every_graphite_path_is_a_statsd_metric_we_send(tmp_path: Path) -> None:
    dash = _grafana("grafana-statsd.json")
    targets = [t["target"] for p in dash["panels"] for t in p["targets"]]
    assert len(targets) >= 25
    table = M.statsd_names()
    sent = _pushed(tmp_path)
    seen = 0
    for target in targets:
        found = list(_GRAPHITE.finditer(target))
        assert found, f"{target!r} reads no smartpool metric"
        for match in found:
            metric, ns = match["metric"], match["ns"]
            assert metric in table, f"{target!r}: {metric} is not in the measures table"
            assert table[metric] == _NS_TYPE[ns], f"{target!r}: {metric} is a {table[metric]}, not under {ns}"
            if ns == "stats.timers":
                assert match["agg"] in (".upper", ".mean", ".lower", ".count", ".median"), target
            seen += 1
    used = {m["metric"] for t in targets for m in _GRAPHITE.finditer(t)}
    for metric in used:
        if table[metric] != "c":  # gauges every push, timings while there is traffic
            assert sent.get(metric) == table[metric], f"{metric} is not in a real push"
    assert {"checkouts", "connections_created", "use_time_count"} <= set(sent), "counters that moved"
    assert seen == sum(len(list(_GRAPHITE.finditer(t))) for t in targets)


def test_dashboards_are_importable_grafana_json() -> None:
    for name, ds in (("grafana-prometheus.json", "prometheus"), ("grafana-statsd.json", "graphite")):
        dash = _grafana(name)
        assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        assert {v["name"] for v in dash["templating"]["list"]} >= {"pool"}
        for panel in dash["panels"]:
            assert panel["datasource"]["type"] == ds and panel["targets"], (name, panel["title"])


def test_alert_rules_cover_the_issue() -> None:
    rules = yaml.safe_load((DASHBOARDS / "alerts.yml").read_text())
    found = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert set(found) == ALERTS
    assert found["SmartpoolRequestsWaiting"]["for"] == "1m"
    assert "smartpool_acquire_timeout_seconds" in found["SmartpoolWaitNearTimeout"]["expr"]
    for rule in found.values():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_the_metrics_page_lists_every_measure() -> None:
    page = (DASHBOARDS.parent / "metrics.md").read_text()
    for m in M.MEASURES:
        assert f"| `{m.key}` |" in page, f"docs/metrics.md has no row for {m.key}"
        for name in (m.otel, m.prometheus and f"smartpool_{m.prometheus}", m.statsd):
            if name:
                assert f"`{name}" in page, f"docs/metrics.md does not name {name}"

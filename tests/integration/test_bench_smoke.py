"""The benchmark runner and the ``smartpool`` command still work, end to end.

Every scenario runs in ``--quick`` mode against the real PostgreSQL (the
redis-* ones against the real Redis), in this process (so coverage sees
it), and must produce a well-formed report with SmartPool and each of its
anchors measured. Quick runs are too short for the
numbers to mean anything, so goals are not asserted here; the real runs and
their numbers are in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sqlalchemy_smartpool import cli
from sqlalchemy_smartpool.bench import SCENARIOS

from ._services import require_postgres, require_redis

pytestmark = pytest.mark.integration

#: scenario -> substrings of the implementations its rows must cover
ANCHORS = {
    "overhead": ("SmartPool", "QueuePool", "psycopg_pool"),
    "prepping": ("SmartPool", "QueuePool"),
    "fairness": ("SmartPool", "QueuePool", "psycopg_pool"),
    "spike": ("SmartPool", "QueuePool"),
    "ramp": ("SmartPool", "QueuePool"),
    "memory": ("SmartPool", "QueuePool"),
    "outage": ("SmartPool", "QueuePool"),
    "soak": ("SmartPool", "QueuePool"),
    "async-overhead": ("AsyncSmartPool", "AsyncAdaptedQueuePool", "asyncpg.Pool", "AsyncConnectionPool"),
    "async-fairness": ("AsyncSmartPool", "AsyncAdaptedQueuePool", "asyncpg.Pool", "AsyncConnectionPool"),
    "async-spike": ("AsyncSmartPool", "AsyncAdaptedQueuePool"),
    "redis-overhead": (
        "SmartRedisPool",
        "AsyncSmartRedisPool",
        "redis.ConnectionPool",
        "redis.BlockingConnectionPool",
        "redis.asyncio.ConnectionPool",
        "redis.asyncio.BlockingConnectionPool",
    ),
    "redis-fairness": (
        "SmartRedisPool",
        "AsyncSmartRedisPool",
        "redis.BlockingConnectionPool",
        "redis.asyncio.BlockingConnectionPool",
    ),
    "redis-outage": ("SmartRedisPool", "redis.BlockingConnectionPool"),
    "fleet": ("SmartPool budget", "SmartPool no budget", "SmartPool -> PgBouncer"),
}


def test_every_scenario_is_smoke_tested() -> None:
    assert set(ANCHORS) == set(SCENARIOS)


def _impls(rows: list[dict[str, Any]]) -> str:
    return " ".join(str(r.get("impl", r)) for r in rows)


def _redis_server_children() -> set[int]:
    """Pids of live (not zombie) redis-server processes this process started."""
    me, found = os.getpid(), set()
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm, _, rest = stat.partition(") ")
        fields = rest.split()
        if comm.endswith("(redis-server") and fields[0] != "Z" and int(fields[1]) == me:
            found.add(int(entry.name))
    return found


#: scenarios that draw plots, and the files they write
PLOTS = {"fairness": ["fairness.png"], "ramp": ["ramp.png"], "async-fairness": ["async-fairness.png"]}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario_runs_and_reports(
    scenario: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    if scenario == "redis-outage":  # runs a redis-server of its own
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server not on PATH")
    elif scenario.startswith("redis-"):
        require_redis()
    elif scenario == "fleet":  # PostgreSQL, Redis, and a PgBouncer of its own
        require_postgres()
        require_redis()
    else:
        require_postgres()
    servers_before = _redis_server_children()
    assert cli.main(["bench", scenario, "--quick", "--json", "--plots", str(tmp_path)]) == 0
    assert _redis_server_children() == servers_before, f"{scenario} left a redis-server running"
    for name in PLOTS.get(scenario, []):
        png = (tmp_path / name).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000, name
    out = json.loads(capsys.readouterr().out)
    assert out["machine"]["nproc"] >= 1
    (result,) = out["results"]
    assert result["scenario"] == scenario
    assert result["rows"], "no measurements"
    impls = _impls(result["rows"])
    for name in ANCHORS[scenario]:
        assert name in impls, f"{scenario}: no row for {name}: {impls}"
    for goal in result["goals"]:
        assert {"name", "target", "measured", "met"} <= set(goal)
    if scenario == "fleet":
        _check_fleet(result["rows"])


def _check_fleet(rows: list[dict[str, Any]]) -> None:
    """Even a quick run must have measured the things the numbers are made of."""
    by_impl = {r["impl"]: r for r in rows}
    budgeted = by_impl["N=2 SmartPool budget"]
    for row in rows:
        assert row["req_per_s"] > 0 and row["peak_server"] >= 1, row
    # the processes' backends were seen, and the leases in Redis too
    assert 1 <= budgeted["peak_leased"] <= budgeted["budget"], budgeted
    assert budgeted["acq_per_connect"] >= 1.0, budgeted  # one lease per physical connect, at least
    assert budgeted["steady_checkouts"] > 0, budgeted


def test_cli_help_lists_both_commands() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sqlalchemy_smartpool.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "demo" in done.stdout and "bench" in done.stdout


def test_cli_rejects_an_unknown_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "no-such-scenario"])
    assert info.value.code == 2
    assert "no-such-scenario" in capsys.readouterr().err

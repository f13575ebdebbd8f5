"""``smartpool demo`` end to end, on a real SQLite file (no server needed).

The demo runs at ``--duration-scale 0.1`` (about 2.5 s a run): every phase and
the pool's idle timeout shrink together, so the same story -- grow with the
bursts, shrink back to ``min_size`` -- has to show up, only faster. Timing
asserts are about order (peak before the final return to ``min_size``), not
about milliseconds.
"""

from __future__ import annotations

import io
import re
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from sqlalchemy_smartpool import demo
from sqlalchemy_smartpool.demo import DemoError, Phase, PhaseResult, Sample

pytestmark = pytest.mark.integration

pytest.importorskip("rich")
pytest.importorskip("matplotlib")

SCALE = "0.1"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _client_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("smartpool-demo-client-")]


def test_main_runs_writes_png_and_reports_grow_then_shrink(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "plots" / "x.png"
    db = tmp_path / "d.db"
    code = demo.main(["--duration-scale", SCALE, "--no-progress", "--out", str(out), "--db", str(db)])
    captured = capsys.readouterr()
    assert code == 0, captured.err

    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 20_000  # a real plot, not an empty canvas

    text = captured.out
    assert "\x1b[" not in text, "no terminal control codes when stdout is not a TTY"
    assert f"plot: {out.resolve()}" in text
    assert len(re.findall(r"^phase \d/5 ", text, re.M)) == 5
    grew = re.search(r"grew: +pool grew above min_size (\d+) to a peak of (\d+)", text)
    shrank = re.search(r"shrank: back to min_size (\d+) .*\(final size (\d+)\)", text)
    assert grew and shrank, text
    min_size, peak = int(grew[1]), int(grew[2])
    assert peak > min_size
    assert int(shrank[1]) == int(shrank[2]) == min_size

    # the database the user asked for is kept, in WAL mode, holding the writes
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute(f"SELECT count(*) FROM {demo.TABLE}").fetchone()[0] > 0
    assert not _client_threads()


def test_run_demo_result_with_live_progress(tmp_path: Path) -> None:
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=140)
    result = demo.run_demo(tmp_path / "d.db", scale=float(SCALE), reporter=demo.RichReporter(console))

    cfg = result.config
    assert result.journal_mode == "wal"
    assert [p.name for p in result.phases] == [p.name for p in demo.PHASES]
    assert all(p.requests > 0 for p in result.phases)
    assert result.requests == sum(p.requests for p in result.phases)
    # every request is a checkout; the setup adds a couple more
    assert result.stats.checkouts >= result.requests
    assert result.stats.timeouts == 0

    # growth: above min_size during the bursts, never above max_size
    sizes = [s.size for s in result.samples]
    assert max(sizes) <= cfg.max_size
    assert result.grew and result.peak_size > cfg.min_size
    bursts = [p for p in result.phases if p.clients > cfg.min_size]
    assert all(p.peak_size > cfg.min_size for p in bursts)
    # the big burst asks for more than max_size, so some requests queue
    assert max(p.max_waiting for p in result.phases) > 0

    # shrink: the last sample at min_size comes after the peak, and the pool ends there
    peak_at = sizes.index(max(sizes))
    assert result.shrank_back
    assert result.final_size == cfg.min_size == sizes[-1]
    assert any(size == cfg.min_size for size in sizes[peak_at:])
    assert result.stats.connections_idle_closed >= result.peak_size - cfg.min_size
    assert result.stats.connections_created >= result.peak_size

    # the live view drew its bar with the pool's numbers
    text = buf.getvalue()
    assert "checkouts/s" in text and "big burst" in text
    assert not _client_threads()

    # plot() and print_summary() on that result (without going through main)
    png = demo.plot(result, tmp_path / "r.png")
    assert png.read_bytes()[:8] == PNG_MAGIC
    summary = io.StringIO()
    demo.print_summary(Console(file=summary, width=120), result)
    assert f"{result.peak_size} (" in summary.getvalue()


class _Interrupting(demo.PlainReporter):
    """A reporter that does something nasty at the first sample of phase ``at``."""

    def __init__(self, at: int, action: Any) -> None:
        super().__init__(lambda line: None)
        self.at = at
        self.action = action

    def sample(self, sample: Sample, phase: Phase, rate: float) -> None:
        if sample.phase == self.at:
            self.action()


def test_ctrl_c_stops_clients_and_releases_the_pool(tmp_path: Path) -> None:
    def interrupt() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        demo.run_demo(tmp_path / "d.db", scale=float(SCALE), reporter=_Interrupting(1, interrupt))
    assert not _client_threads()


def test_main_returns_130_on_ctrl_c(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> demo.DemoResult:
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run_demo", interrupted)
    assert demo.main(["--no-progress"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_a_failing_client_fails_the_demo(tmp_path: Path) -> None:
    db = tmp_path / "d.db"

    def drop_table() -> None:
        with sqlite3.connect(db, timeout=10) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {demo.TABLE}")

    with pytest.raises(DemoError, match="a client failed: OperationalError"):
        demo.run_demo(db, scale=float(SCALE), reporter=_Interrupting(1, drop_table))
    assert not _client_threads()


def test_unusable_database_path_fails_loudly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "missing-dir" / "d.db"
    code = demo.main(
        ["--duration-scale", SCALE, "--no-progress", "--db", str(db), "--out", str(tmp_path / "x.png")]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("smartpool demo: error: cannot create the database")
    assert "missing-dir" in err
    assert not (tmp_path / "x.png").exists()


def test_missing_extra_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert demo.main(["--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "matplotlib" in err and "sqlalchemy-smartpool[plot,cli]" in err


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "fast"])
def test_bad_duration_scale_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        demo.main(["--duration-scale", bad])
    assert exc.value.code == 2
    assert "--duration-scale" in capsys.readouterr().err


def test_phase_throughput_and_helpers() -> None:
    p = PhaseResult("x", 2, 2.0, 10, 0, 10, 3, 2, 0, 0.001)
    assert p.throughput == 5.0
    assert dataclass_replace_seconds(p, 0.0).throughput == 0.0
    assert demo._percentile([], 95) == 0.0
    assert demo._percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0
    assert demo._percentile([3.0, 1.0, 2.0, 4.0], 100) == 4.0
    assert demo._rate([], 1.0) == 0.0


def dataclass_replace_seconds(p: PhaseResult, seconds: float) -> PhaseResult:
    import dataclasses

    return dataclasses.replace(p, seconds=seconds)


def test_cli_demo_help() -> None:
    """``smartpool demo --help`` must reach the demo's own parser and list its options."""
    proc = subprocess.run(
        [sys.executable, "-m", "sqlalchemy_smartpool.cli", "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for option in ("--duration-scale", "--db", "--out", "--no-progress"):
        assert option in proc.stdout, proc.stdout

"""``smartpool demo``: watch SmartPool grow with bursts of demand and shrink back when idle.

The workload runs against an embedded SQLite *file* in WAL mode, so it needs
no server: client threads check a connection out, read, "work" a few
milliseconds while holding it (standing in for network and app latency, which
SQLite itself lacks), write, and return it. Phases of quiet and bursts make
demand move; the pool should follow it up to ``max_size`` and, once a burst
is over, close the surplus after ``idle_timeout`` down to ``min_size``.

Every number shown comes from ``engine.pool.stats()`` or from the clients'
own measurements. ``rich`` (extra ``cli``) draws the live view and the
summary; ``matplotlib`` (extra ``plot``) draws the PNG. Both are imported
lazily so the package itself does not depend on them.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import os
import random
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from sqlalchemy import Engine, create_engine, event, text

from .config import PoolConfig
from .pool import SmartPool
from .sa_errors import PoolTimeout
from .stats import PoolStats

if TYPE_CHECKING:
    from rich.console import Console

DEFAULT_OUT = "smartpool-demo.png"
TABLE = "smartpool_demo_events"


class DemoError(RuntimeError):
    """The demo could not run, or the pool did not behave as the demo expects."""


@dataclasses.dataclass(frozen=True)
class Phase:
    """One stretch of the workload: how many clients, and how long each thinks between requests."""

    name: str
    seconds: float
    clients: int
    think: tuple[float, float]  # seconds between a client's requests (uniform)


#: At scale 1 the workload lasts 22 s; the quiet gaps outlast idle_timeout so the shrink shows.
PHASES: tuple[Phase, ...] = (
    Phase("quiet", 3.0, 2, (0.04, 0.12)),
    Phase("burst", 4.0, 10, (0.002, 0.015)),
    Phase("quiet", 5.0, 2, (0.04, 0.12)),
    Phase("big burst", 4.0, 24, (0.0, 0.008)),
    Phase("cool-down", 6.0, 1, (0.1, 0.3)),
)
#: How long a request keeps its connection (uniform): SQLite answers in microseconds,
#: a networked database in milliseconds, so we hold it for as long as a real request would.
HOLD = (0.005, 0.015)
WRITE_RATIO = 0.3


def demo_config(scale: float = 1.0) -> PoolConfig:
    """The pool the demo runs: small, with timings scaled along with the phases."""
    return PoolConfig(
        name="demo",
        min_size=2,
        max_size=16,
        idle_timeout=3.0 * scale,
        housekeeping_interval=max(0.02, 0.25 * scale),
        acquire_timeout=10.0,
    )


@dataclasses.dataclass(frozen=True)
class Sample:
    """The pool's gauges at one moment, with the demand that drove them."""

    t: float  # seconds since the workload started
    phase: int
    clients: int  # active client threads (the demand)
    size: int
    idle: int
    in_use: int
    waiting: int
    pending: int
    checkouts: int  # cumulative counter


@dataclasses.dataclass(frozen=True)
class PhaseResult:
    """What one phase did, measured by the clients and by the pool's counters."""

    name: str
    clients: int
    seconds: float  # as run (the last phase may be extended until the pool settles)
    requests: int
    timeouts: int
    checkouts: int  # pool counter delta over the phase
    peak_size: int
    end_size: int
    max_waiting: int
    wait_p95: float  # client-side checkout latency, seconds

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """Everything the demo measured; :func:`main` prints it and plots it."""

    config: PoolConfig
    phases: list[PhaseResult]
    samples: list[Sample]
    stats: PoolStats  # final snapshot, taken before the engine is disposed
    elapsed: float
    db_path: str
    journal_mode: str
    scale: float

    @property
    def peak_size(self) -> int:
        return max((s.size for s in self.samples), default=self.stats.size)

    @property
    def peak_phase(self) -> str:
        peak = max(self.samples, key=lambda s: s.size, default=None)
        return self.phases[peak.phase].name if peak is not None else "-"

    @property
    def final_size(self) -> int:
        return self.stats.size

    @property
    def grew(self) -> bool:
        return self.peak_size > self.config.min_size

    @property
    def shrank_back(self) -> bool:
        """Back at ``min_size`` at the end, after having been above it."""
        return self.grew and self.final_size == self.config.min_size

    @property
    def requests(self) -> int:
        return sum(p.requests for p in self.phases)


class Reporter(Protocol):
    """Live feedback while the workload runs (rich progress bar, or plain lines)."""

    def start(self, config: PoolConfig, phases: Sequence[Phase], total: float) -> None: ...

    def sample(self, sample: Sample, phase: Phase, rate: float) -> None: ...

    def phase_done(self, index: int, result: PhaseResult) -> None: ...

    def stop(self) -> None: ...


# ----------------------------------------------------------------------------- workload


class _Workload:
    """Client threads plus the controller that moves them through the phases."""

    def __init__(self, engine: Engine, phases: Sequence[Phase]) -> None:
        self.engine = engine
        self.phases = phases
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.active = 0
        self.phase = 0
        self.waits: list[list[float]] = [[] for _ in phases]
        self.timeouts = [0] * len(phases)
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._client, args=(i,), name=f"smartpool-demo-client-{i}", daemon=True)
            for i in range(max(p.clients for p in phases))
        ]

    def set_phase(self, index: int) -> None:
        with self.cond:
            self.phase = index
            self.active = self.phases[index].clients
            self.cond.notify_all()

    def halt(self) -> None:
        self.stop.set()
        with self.cond:
            self.cond.notify_all()
        deadline = time.monotonic() + 15.0
        for t in self.threads:
            if t.ident is not None:
                t.join(max(0.0, deadline - time.monotonic()))

    def result(
        self, index: int, start: float, end: float, first: int, c0: int, samples: Sequence[Sample]
    ) -> PhaseResult:
        """Phase ``index`` as measured so far (its samples start at ``samples[first]``)."""
        phase = self.phases[index]
        in_phase = [s for s in samples[first:] if s.phase == index]
        with self.cond:
            waits = list(self.waits[index])
            timeouts = self.timeouts[index]
        return PhaseResult(
            name=phase.name,
            clients=phase.clients,
            seconds=end - start,
            requests=len(waits),
            timeouts=timeouts,
            checkouts=in_phase[-1].checkouts - c0,
            peak_size=max(s.size for s in in_phase),
            end_size=in_phase[-1].size,
            max_waiting=max(s.waiting for s in in_phase),
            wait_p95=_percentile(waits, 95),
        )

    def _client(self, i: int) -> None:
        rng = random.Random(7919 * (i + 1))
        try:
            while True:
                with self.cond:
                    self.cond.wait_for(lambda: self.stop.is_set() or i < self.active)
                    if self.stop.is_set():
                        return
                    index = self.phase
                phase = self.phases[index]
                t0 = time.perf_counter()
                try:
                    with self.engine.connect() as conn:
                        waited = time.perf_counter() - t0
                        if rng.random() < 0.5:
                            conn.execute(
                                text(f"SELECT count(*), max(id) FROM {TABLE} WHERE client = :c"), {"c": i}
                            ).one()
                        else:
                            conn.execute(text(f"SELECT id, payload FROM {TABLE} ORDER BY id DESC LIMIT 5"))
                        # the request's own work, connection held (no transaction open: WAL
                        # readers and the writers below never block on it)
                        self.stop.wait(rng.uniform(*HOLD))
                        if rng.random() < WRITE_RATIO:
                            conn.execute(
                                text(
                                    f"INSERT INTO {TABLE} (client, phase, payload, created) "
                                    "VALUES (:c, :p, :payload, :t)"
                                ),
                                {
                                    "c": i,
                                    "p": phase.name,
                                    "payload": f"x{rng.randrange(999999)}",
                                    "t": time.time(),
                                },
                            )
                            conn.commit()
                except PoolTimeout:
                    with self.cond:
                        self.timeouts[index] += 1
                    continue
                with self.cond:
                    self.waits[index].append(waited)
                self.stop.wait(rng.uniform(*phase.think))
        except BaseException as err:  # any failure ends the demo, loudly
            with self.cond:
                self.errors.append(err)
            self.stop.set()


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    data = sorted(values)
    return data[max(0, min(len(data) - 1, math.ceil(q / 100 * len(data)) - 1))]


def rate_window(scale: float) -> float:
    """Seconds over which checkouts/s is averaged: short enough to show a burst's edges."""
    return max(0.2, 0.5 * scale)


def _rate(samples: Sequence[Sample], window: float) -> float:
    """Checkouts per second over the last ``window`` seconds of samples."""
    if len(samples) < 2:
        return 0.0
    last = samples[-1]
    first = samples[-2]
    for s in reversed(samples):
        first = s
        if last.t - s.t >= window:
            break
    dt = last.t - first.t
    return (last.checkouts - first.checkouts) / dt if dt > 0 else 0.0


def _sample(pool: SmartPool, t: float, phase: int, clients: int) -> Sample:
    st = pool.stats()
    return Sample(
        t=t,
        phase=phase,
        clients=clients,
        size=st.size,
        idle=st.idle,
        in_use=st.in_use,
        waiting=st.waiting,
        pending=st.connections_pending,
        checkouts=int(st.counters.get("checkouts", 0)),
    )


def _wal_on_connect(dbapi_conn: Any, _record: Any) -> None:
    """Every new connection: wait for locks instead of failing, and use the WAL journal."""
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA busy_timeout = 10000")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
    finally:
        cur.close()


def run_demo(
    db_path: str | os.PathLike[str],
    *,
    scale: float = 1.0,
    reporter: Reporter | None = None,
    phases: Sequence[Phase] = PHASES,
) -> DemoResult:
    """Run the workload against ``db_path`` and return what was measured.

    Raises :class:`DemoError` when a client fails; ``KeyboardInterrupt``
    stops the clients and disposes the engine before it propagates.
    """
    if not scale > 0 or not math.isfinite(scale):
        raise DemoError(f"duration scale must be a positive number, got {scale!r}")
    parent = Path(db_path).resolve().parent
    if not parent.is_dir():
        raise DemoError(f"cannot create the database {os.fspath(db_path)!r}: no directory {str(parent)!r}")
    scaled = [dataclasses.replace(p, seconds=p.seconds * scale) for p in phases]
    config = demo_config(scale)
    engine = create_engine(f"sqlite:///{os.fspath(db_path)}", poolclass=SmartPool, pool_config=config)
    event.listen(engine, "connect", _wal_on_connect)
    pool = cast(SmartPool, engine.pool)
    work = _Workload(engine, scaled)
    interval = max(0.02, 0.05 * scale)
    window = rate_window(scale)
    samples: list[Sample] = []
    spans: list[tuple[float, float, int, int]] = []  # start, end, first sample, checkouts at start
    started = False
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    f"CREATE TABLE IF NOT EXISTS {TABLE} (id INTEGER PRIMARY KEY, client INTEGER NOT NULL, "
                    "phase TEXT NOT NULL, payload TEXT NOT NULL, created REAL NOT NULL)"
                )
            )
            conn.execute(text(f"CREATE INDEX IF NOT EXISTS {TABLE}_client ON {TABLE} (client)"))
        with engine.connect() as conn:
            journal_mode = str(conn.execute(text("PRAGMA journal_mode")).scalar())
        pool.wait(timeout=10.0)  # start from a prewarmed pool at min_size
        if reporter is not None:
            reporter.start(config, scaled, sum(p.seconds for p in scaled))
            started = True
        for t in work.threads:
            t.start()
        t_start = time.perf_counter()
        for index, phase in enumerate(scaled):
            work.set_phase(index)
            p_start = time.perf_counter()
            first = len(samples)
            c0 = _sample(pool, p_start - t_start, index, phase.clients).checkouts
            end = p_start + phase.seconds
            last = index == len(scaled) - 1
            # the last phase may run a little longer, until surplus connections have idled out
            hard_end = end + (config.idle_timeout + 4 * config.housekeeping_interval if last else 0.0)
            while True:
                now = time.perf_counter()
                s = _sample(pool, now - t_start, index, phase.clients)
                samples.append(s)
                if work.errors:
                    err = work.errors[0]
                    raise DemoError(f"a client failed: {type(err).__name__}: {err}") from err
                if reporter is not None:
                    reporter.sample(s, phase, _rate(samples, window))
                if now >= hard_end or (now >= end and (not last or s.size <= config.min_size)):
                    break
                time.sleep(max(0.0, min(interval, (end if now < end else hard_end) - now)))
            spans.append((p_start, time.perf_counter(), first, c0))
            if reporter is not None:
                reporter.phase_done(index, work.result(index, *spans[-1], samples))
        elapsed = time.perf_counter() - t_start
        work.halt()  # in-flight requests finish and are counted in the phase they started in
        if work.errors:
            err = work.errors[0]
            raise DemoError(f"a client failed: {type(err).__name__}: {err}") from err
        results = [work.result(i, *span, samples) for i, span in enumerate(spans)]
        stats = pool.stats()
    finally:
        work.halt()
        if started and reporter is not None:
            reporter.stop()
        engine.dispose()
    return DemoResult(
        config=config,
        phases=results,
        samples=samples,
        stats=stats,
        elapsed=elapsed,
        db_path=os.fspath(db_path),
        journal_mode=journal_mode,
        scale=scale,
    )


# ----------------------------------------------------------------------------- output


class PlainReporter:
    """One line per phase: for pipes, CI logs and ``--no-progress``."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write
        self._count = 0

    def start(self, config: PoolConfig, phases: Sequence[Phase], total: float) -> None:
        self._count = len(phases)
        self._write(f"running {len(phases)} phases, {total:.1f} s ...")

    def sample(self, sample: Sample, phase: Phase, rate: float) -> None:
        pass

    def phase_done(self, index: int, result: PhaseResult) -> None:
        self._write(
            f"phase {index + 1}/{self._count} {result.name:<10} {result.clients:>2} clients "
            f"{result.seconds:5.1f} s  {result.requests:>6} requests ({result.throughput:6.0f}/s)  "
            f"size peak {result.peak_size:>2}, end {result.end_size:>2}, waiting max {result.max_waiting}"
        )

    def stop(self) -> None:
        pass


class RichReporter:
    """A live progress bar: phase, demand, pool size, in use, waiting, checkouts/s."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._progress: Any = None
        self._task: Any = None
        self._count = 0

    def start(self, config: PoolConfig, phases: Sequence[Phase], total: float) -> None:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._count = len(phases)
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold cyan]{task.fields[phase]:<16}"),
            BarColumn(bar_width=24),
            TimeElapsedColumn(),
            TextColumn(
                "clients [bold]{task.fields[clients]:>2}[/]"
                "  size [bold green]{task.fields[size]:>2}[/]"
                "  in use [bold yellow]{task.fields[in_use]:>2}[/]"
                "  waiting [bold red]{task.fields[waiting]:>2}[/]"
                "  [bold]{task.fields[rate]:>5.0f}[/] checkouts/s"
            ),
            console=self._console,
            refresh_per_second=10,
        )
        self._task = self._progress.add_task(
            "demo", total=total, phase="starting", clients=0, size=0, in_use=0, waiting=0, rate=0.0
        )
        self._progress.start()

    def sample(self, sample: Sample, phase: Phase, rate: float) -> None:
        self._progress.update(
            self._task,
            completed=sample.t,
            phase=f"{sample.phase + 1}/{self._count} {phase.name}",
            clients=sample.clients,
            size=sample.size,
            in_use=sample.in_use,
            waiting=sample.waiting,
            rate=rate,
        )

    def phase_done(self, index: int, result: PhaseResult) -> None:
        self._progress.console.print(
            f"[dim]phase {index + 1}/{self._count}[/] [bold]{result.name}[/]: {result.clients} clients, "
            f"{result.requests} requests ({result.throughput:.0f}/s), pool size peak {result.peak_size}, "
            f"end {result.end_size}",
            highlight=False,
        )

    def stop(self) -> None:
        self._progress.update(self._task, completed=self._progress.tasks[0].total)
        self._progress.stop()


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def print_summary(console: Console, result: DemoResult) -> None:
    """The summary tables and the two lines the demo exists to show (growth, then shrink)."""
    from rich.table import Table

    st = result.stats
    cfg = result.config
    c = st.counters
    overall = Table(title="SmartPool demo: summary", title_justify="left")
    overall.add_column("metric")
    overall.add_column("value", justify="right")
    rows = [
        ("requests served", f"{result.requests}"),
        ("checkouts", f"{c.get('checkouts', 0)}"),
        ("checkouts that waited", f"{c.get('checkouts_waited', 0)}"),
        ("timeouts", f"{c.get('timeouts', 0)}"),
        ("connections created", f"{c.get('connections_created', 0)}"),
        ("connections closed", f"{c.get('connections_closed', 0)}"),
        ("  of which idle > idle_timeout", f"{c.get('connections_idle_closed', 0)}"),
        ("validations", f"{c.get('validations', 0)}"),
        ("wait p50 / p95", f"{_ms(st.wait_p50)} / {_ms(st.wait_p95)}"),
        ("wait p99 / max", f"{_ms(st.wait_p99)} / {_ms(st.wait_max)}"),
        ("min size / max size", f"{cfg.min_size} / {cfg.max_size}"),
        ("peak size", f"{result.peak_size} ({result.peak_phase})"),
        ("final size", f"{result.final_size}"),
        ("wall time", f"{result.elapsed:.1f} s"),
    ]
    for name, value in rows:
        overall.add_row(name, value)
    console.print(overall)

    per_phase = Table(title="per phase", title_justify="left")
    for name in ("phase", "clients", "secs", "req/s", "peak", "end", "wait", "p95 wait"):
        per_phase.add_column(name, justify="left" if name == "phase" else "right")
    for p in result.phases:
        per_phase.add_row(
            p.name,
            str(p.clients),
            f"{p.seconds:.1f}",
            f"{p.throughput:.0f}",
            str(p.peak_size),
            str(p.end_size),
            str(p.max_waiting),
            _ms(p.wait_p95),
        )
    console.print(per_phase)
    console.print(
        "[dim]peak/end = pool size, wait = most requests queued at once; "
        "wait percentiles: pool-measured (last 8192 checkouts) above, client-measured per phase[/]",
        highlight=False,
    )
    if result.grew:
        console.print(
            f"grew:   pool grew above min_size {cfg.min_size} to a peak of {result.peak_size} "
            f"during '{result.peak_phase}'",
            highlight=False,
        )
    if result.shrank_back:
        console.print(
            f"shrank: back to min_size {cfg.min_size} after idle_timeout {cfg.idle_timeout:g}s "
            f"(final size {result.final_size})",
            highlight=False,
        )


def plot(result: DemoResult, out: str | os.PathLike[str]) -> Path:
    """Pool size and in-use against demand over time, phases shaded; written as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    samples = result.samples
    cfg = result.config
    t = [s.t for s in samples]
    window = rate_window(result.scale)
    rates = [_rate(samples[: i + 1], window) for i in range(len(samples))]

    fig = Figure(figsize=(11, 7), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    fig.suptitle(
        "SmartPool on SQLite (WAL): pool size follows demand, then shrinks back to min_size",
        fontsize=13,
        fontweight="bold",
    )
    top.set_title(
        f"min_size={cfg.min_size}  max_size={cfg.max_size}  idle_timeout={cfg.idle_timeout:g}s  "
        f"housekeeping_interval={cfg.housekeeping_interval:g}s",
        fontsize=10,
        pad=18,  # room for the phase names between the title and the plot
    )
    # phase bands, named at the top
    bounds: list[tuple[int, float, float]] = []
    for index in range(len(result.phases)):
        ts = [s.t for s in samples if s.phase == index]
        if ts:
            bounds.append((index, ts[0], ts[-1]))
    for i, (index, t0, t1) in enumerate(bounds):
        end = bounds[i + 1][1] if i + 1 < len(bounds) else t1
        for ax in (top, bottom):
            ax.axvspan(t0, end, color="#f2f2f2" if i % 2 else "#e4ecf7", zorder=0, lw=0)
        top.text(
            (t0 + end) / 2,
            1.0,
            result.phases[index].name,
            transform=top.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=9,
            color="#444444",
        )
    top.fill_between(
        t,
        [s.clients for s in samples],
        step="post",
        color="#bbbbbb",
        alpha=0.6,
        label="active clients (demand)",
    )
    top.step(t, [s.size for s in samples], where="post", color="#1f77b4", lw=2.4, label="pool size")
    top.step(t, [s.in_use for s in samples], where="post", color="#ff7f0e", lw=1.2, label="in use")
    top.step(t, [s.waiting for s in samples], where="post", color="#d62728", lw=1.0, label="waiting")
    top.axhline(cfg.max_size, color="#1f77b4", ls="--", lw=0.9, label=f"max_size ({cfg.max_size})")
    top.axhline(cfg.min_size, color="#2ca02c", ls="--", lw=0.9, label=f"min_size ({cfg.min_size})")
    # where surplus connections become eligible to close: demand dropped, then idle_timeout passed
    drops = [
        t0 + cfg.idle_timeout
        for index, t0, _ in bounds
        if index and result.phases[index].clients < result.phases[index - 1].clients
    ]
    for i, x in enumerate(drops):
        top.axvline(
            x, color="#2ca02c", ls=":", lw=1.2, label="demand drop + idle_timeout" if i == 0 else None
        )
    top.set_ylabel("connections / clients")
    top.set_ylim(0, max([cfg.max_size, *(s.clients for s in samples), *(s.waiting for s in samples)]) + 3)
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, framealpha=0.9)
    top.grid(True, alpha=0.3)

    bottom.plot(t, rates, color="#9467bd", lw=1.2)
    bottom.set_ylabel("checkouts/s")
    bottom.set_xlabel("time since start (s)")
    bottom.grid(True, alpha=0.3)
    if t:
        bottom.set_xlim(t[0], t[-1])

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path.resolve()


# ----------------------------------------------------------------------------- command line


def _require_extras() -> None:
    for module, extra in (("rich", "cli"), ("matplotlib", "plot")):
        try:
            importlib.import_module(module)
        except ImportError:
            raise DemoError(
                f"the demo needs {module} (extra '{extra}'): pip install 'sqlalchemy-smartpool[plot,cli]'"
            ) from None


def _positive(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {raw!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartpool demo",
        description="A bursty multi-threaded workload on embedded SQLite: watch SmartPool grow with "
        "demand and shrink back to min_size once idle. Prints a summary and writes a PNG plot.",
    )
    parser.add_argument(
        "--duration-scale",
        type=_positive,
        default=1.0,
        metavar="FLOAT",
        help="multiply every phase and pool timing by this (default 1: about 22 s)",
    )
    parser.add_argument("--db", metavar="PATH", help="SQLite database file (default: a temporary file)")
    parser.add_argument(
        "--out", metavar="PATH", default=DEFAULT_OUT, help=f"PNG plot path (default ./{DEFAULT_OUT})"
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="plain text instead of a live progress bar (automatic when not a terminal)",
    )
    return parser


def _say(line: str) -> None:
    """Plain output: never wrapped or styled, flushed so a pipe sees progress as it happens."""
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``smartpool demo``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        _require_extras()
    except DemoError as err:
        print(f"smartpool demo: {err}", file=sys.stderr)
        return 2
    from rich.console import Console

    console = Console()
    live = not args.no_progress and console.is_terminal and not console.is_dumb_terminal
    reporter: Reporter = RichReporter(console) if live else PlainReporter(_say)
    cfg = demo_config(args.duration_scale)
    _say(
        f"smartpool demo: SQLite (WAL), min_size={cfg.min_size} max_size={cfg.max_size} "
        f"idle_timeout={cfg.idle_timeout:g}s, up to {max(p.clients for p in PHASES)} client threads"
    )
    tmp: tempfile.TemporaryDirectory[str] | None = None
    try:
        if args.db:
            db_path = Path(args.db)
        else:
            tmp = tempfile.TemporaryDirectory(prefix="smartpool-demo-")
            db_path = Path(tmp.name) / "demo.db"
        result = run_demo(db_path, scale=args.duration_scale, reporter=reporter)
        print_summary(console, result)
        png = plot(result, args.out)
    except KeyboardInterrupt:
        print("smartpool demo: interrupted", file=sys.stderr)
        return 130
    except DemoError as err:
        print(f"smartpool demo: error: {err}", file=sys.stderr)
        if err.__cause__ is not None:
            traceback.print_exception(err.__cause__, file=sys.stderr)
        return 1
    except Exception as err:
        print(f"smartpool demo: error: {type(err).__name__}: {err}", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        return 1
    finally:
        if tmp is not None:
            tmp.cleanup()
    _say(f"plot: {png}")
    _say(f"database: {result.db_path}" + (" (temporary, removed)" if tmp is not None else ""))
    if not (result.grew and result.shrank_back):
        print(
            f"smartpool demo: error: expected the pool to grow above min_size {cfg.min_size} and return; "
            f"peak {result.peak_size}, final {result.final_size}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

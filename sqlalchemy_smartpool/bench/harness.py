"""Shared plumbing of the benchmark scenarios: options, statistics, engines, output.

A scenario runs one *trial* (every implementation, interleaved, in this one
process) and returns rows of numbers; ``--repeat N`` runs N trials and
reports the per-cell median, then judges the goals on those medians. Nothing
here is imported by the pool itself: heavy or optional packages (psycopg_pool,
matplotlib) are imported inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
#: the redis-* scenarios' server (``--redis-url`` overrides)
DEFAULT_REDIS_URL = os.environ.get("SMARTPOOL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
#: application_name of every benchmark connection, so other sessions on the server can tell them apart
APP_NAME = "smartpool-bench"

Row = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Options:
    """Command-line settings every scenario sees."""

    url: str = DEFAULT_URL
    redis_url: str = DEFAULT_REDIS_URL
    repeat: int = 1
    quick: bool = False
    plots: Path | None = None
    as_json: bool = False
    #: the fleet scenario's sizes (None: its defaults)
    fleet_budget: int | None = None
    fleet_procs: tuple[int, ...] | None = None
    fleet_threads: int | None = None
    fleet_seconds: float | None = None


@dataclasses.dataclass(frozen=True)
class Goal:
    """One target from the issue, judged on the median numbers."""

    name: str
    target: str
    measured: str
    met: bool

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Trial:
    """What one run of a scenario measured: table rows, plus raw series for plots."""

    rows: list[Row]
    series: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Verdict:
    """Ratios and goals derived from the (median) rows."""

    ratios: dict[str, float]
    goals: list[Goal]
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A benchmark scenario: how to run one trial, how to judge it, how to draw it."""

    name: str
    title: str
    trial: Callable[[Options], Trial]
    judge: Callable[[list[Row]], Verdict]
    plot: Callable[[Trial, Path], list[Path]] | None = None
    needs_postgres: bool = True
    needs_redis: bool = False


@dataclasses.dataclass
class Report:
    scenario: str
    title: str
    repeat: int
    rows: list[Row]
    verdict: Verdict
    notes: list[str]
    plots: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "title": self.title,
            "repeat": self.repeat,
            "rows": self.rows,
            "ratios": self.verdict.ratios,
            "goals": [g.as_dict() for g in self.verdict.goals],
            "notes": self.notes + self.verdict.notes,
            "plots": self.plots,
        }


# ------------------------------------------------------------------ statistics


def percentile(data: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (0..100) of *sorted* data; NaN when empty."""
    if not data:
        return math.nan
    rank = max(1, min(len(data), math.ceil(q * len(data) / 100.0)))
    return data[rank - 1]


def jain_index(xs: Sequence[float]) -> float:
    """Jain's fairness index: 1.0 when every thread got the same share, 1/n when one got all."""
    total = sum(xs)
    squares = sum(x * x for x in xs)
    if not xs or squares == 0:
        return math.nan
    return total * total / (len(xs) * squares)


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def median(xs: Iterable[float]) -> float:
    values = [x for x in xs if not math.isnan(x)]
    return statistics.median(values) if values else math.nan


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def median_rows(trials: Sequence[Trial]) -> list[Row]:
    """Cell-wise median over trials; rows are matched by position and must name the same thing."""
    first = trials[0].rows
    out: list[Row] = []
    for i, row in enumerate(first):
        merged: Row = {}
        for key, value in row.items():
            if _is_number(value):
                merged[key] = median(float(t.rows[i][key]) for t in trials)
                if isinstance(value, int) and all(isinstance(t.rows[i][key], int) for t in trials):
                    merged[key] = round(merged[key], 1) if len(trials) % 2 == 0 else int(merged[key])
            else:
                others = {t.rows[i][key] for t in trials}
                if len(others) != 1:
                    raise ValueError(f"trials disagree on row {i} column {key!r}: {others}")
                merged[key] = value
        out.append(merged)
    return out


def find(rows: Sequence[Row], **match: Any) -> Row:
    """The one row whose columns equal ``match``."""
    hits = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    if len(hits) != 1:
        raise KeyError(f"{len(hits)} rows match {match}")
    return hits[0]


# ------------------------------------------------------------------ URLs and engines


def is_postgres(url: str) -> bool:
    from sqlalchemy.engine import make_url

    return make_url(url).get_backend_name() == "postgresql"


def with_driver(url: str, driver: str) -> str:
    """``url`` with its DBAPI driver replaced (``psycopg2`` -> ``psycopg``)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return u.set(drivername=f"{u.get_backend_name()}+{driver}").render_as_string(hide_password=False)


def conninfo(url: str) -> str:
    """A libpq conninfo string for the same server, for psycopg_pool."""
    from psycopg.conninfo import make_conninfo
    from sqlalchemy.engine import make_url

    u = make_url(url)
    parts: dict[str, Any] = {
        "host": u.host,
        "port": u.port,
        "user": u.username,
        "password": u.password,
        "dbname": u.database,
    }
    parts.update({k: v for k, v in u.query.items() if isinstance(v, str)})
    return make_conninfo("", **{k: v for k, v in parts.items() if v is not None})


def connect_args(url: str) -> dict[str, Any]:
    return {"application_name": APP_NAME} if is_postgres(url) else {}


def smart_engine(url: str, **pool_kw: Any) -> Any:
    """An engine on SmartPool; ``pool_kw`` are SmartPool / PoolConfig keywords."""
    from sqlalchemy import create_engine

    from ..pool import SmartPool

    return create_engine(url, poolclass=SmartPool, connect_args=connect_args(url), **pool_kw)


def queue_engine(url: str, **kw: Any) -> Any:
    """An engine on SQLAlchemy's QueuePool (its default for client/server databases)."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import QueuePool

    return create_engine(url, poolclass=QueuePool, connect_args=connect_args(url), **kw)


def psycopg_pool(url: str, *, min_size: int, max_size: int | None = None, **kw: Any) -> Any:
    """An open, filled psycopg_pool.ConnectionPool on the same server (psycopg 3)."""
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(
        conninfo(url),
        min_size=min_size,
        max_size=max_size,
        kwargs={"application_name": APP_NAME},
        open=True,
        **kw,
    )
    pool.wait(timeout=60)
    return pool


# ------------------------------------------------------------------ asyncio engines and pools


def async_connect_args(url: str) -> dict[str, Any]:
    """``connect_args`` for asyncpg (it takes ``application_name`` as a server setting)."""
    return {"server_settings": {"application_name": APP_NAME}} if is_postgres(url) else {}


def async_smart_engine(url: str, **pool_kw: Any) -> Any:
    """An async engine on AsyncSmartPool; ``pool_kw`` are the same keywords as SmartPool's."""
    import importlib

    from sqlalchemy.ext.asyncio import create_async_engine

    # looked up by name: the benchmark must type-check whichever module defines the pool
    pool_class = importlib.import_module("sqlalchemy_smartpool").AsyncSmartPool
    return create_async_engine(url, poolclass=pool_class, connect_args=async_connect_args(url), **pool_kw)


def async_queue_engine(url: str, **kw: Any) -> Any:
    """An async engine on SQLAlchemy's AsyncAdaptedQueuePool (its default for asyncio drivers)."""
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import AsyncAdaptedQueuePool

    return create_async_engine(
        url, poolclass=AsyncAdaptedQueuePool, connect_args=async_connect_args(url), **kw
    )


async def warm_async(engine: Any, connections: int, timeout: float = 30.0) -> None:
    """Leave ``connections`` open and idle in an async engine's pool.

    A pool with ``stats()`` (AsyncSmartPool) prewarms to ``min_size`` itself:
    one checkout starts it, then this waits until that many are open and no
    connect is pending. Other pools get ``connections`` checkouts held at once.
    """
    import asyncio
    import time

    pool = engine.sync_engine.pool
    if not hasattr(pool, "stats"):
        held = [engine.connect() for _ in range(connections)]
        await asyncio.gather(*(c.start() for c in held))
        await asyncio.gather(*(c.close() for c in held))
        return
    async with engine.connect():
        pass
    deadline = time.monotonic() + timeout
    while True:
        stats = pool.stats()
        if stats.pool_size >= connections and not stats.connections_pending:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"pool did not prewarm to {connections} in {timeout:g}s: {stats}")
        await asyncio.sleep(0.01)


async def asyncpg_pool(url: str, *, min_size: int, max_size: int, **kw: Any) -> Any:
    """An open, filled ``asyncpg.Pool`` on the same server."""
    import importlib

    from sqlalchemy.engine import make_url

    asyncpg = importlib.import_module("asyncpg")  # ships no type information
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        server_settings={"application_name": APP_NAME},
        **kw,
    )


async def psycopg_async_pool(url: str, *, min_size: int, max_size: int | None = None, **kw: Any) -> Any:
    """An open, filled psycopg_pool.AsyncConnectionPool on the same server (psycopg 3)."""
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(
        conninfo(url),
        min_size=min_size,
        max_size=max_size,
        kwargs={"application_name": APP_NAME},
        open=False,
        **kw,
    )
    await pool.open(wait=True, timeout=60)
    return pool


def count_connects(engine: Any) -> Callable[[], int]:
    """Attach a ``connect`` listener; returns a function reading how many DBAPI connections opened."""
    from sqlalchemy import event

    counter = [0]

    def on_connect(dbapi_conn: Any, record: Any) -> None:
        counter[0] += 1

    event.listen(engine.pool, "connect", on_connect)
    return lambda: counter[0]


def check_postgres(url: str) -> str | None:
    """None if the server answers, else a one-line reason."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    try:
        engine = create_engine(url, poolclass=NullPool, connect_args=connect_args(url))
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
    except Exception as err:
        return f"cannot reach {_safe(url)}: {type(err).__name__}: {str(err).splitlines()[0]}"
    return None


def check_redis(url: str) -> str | None:
    """None if the redis server answers PING, else a one-line reason."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as err:
        return f"cannot reach {_safe_redis(url)}: {type(err).__name__}: {str(err).splitlines()[0]}"
    return None


def _safe_redis(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def redis_key_prefix(scenario: str) -> str:
    """A key prefix no other run on a shared server uses (``smartpool-bench:<scenario>:<pid>:<random>:``)."""
    import secrets

    return f"{APP_NAME}:{scenario}:{os.getpid()}:{secrets.token_hex(4)}:"


def delete_redis_keys(url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` (never anything else); returns how many."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        return int(client.delete(*keys)) if keys else 0
    finally:
        client.close()


def wait_for_headroom(url: str, needed: int, timeout: float = 120.0) -> int:
    """Block until the server can take ``needed`` more client connections (others share it).

    Returns the free connection slots seen last; raises TimeoutError if they never sufficed.
    """
    import time

    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args(url))
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as conn:
                free = int(
                    conn.execute(
                        text(
                            "select current_setting('max_connections')::int"
                            " - current_setting('superuser_reserved_connections')::int"
                            " - (select count(*) from pg_stat_activity where backend_type = 'client backend')"
                        )
                    ).scalar_one()
                )
            if free >= needed:
                return free
            if time.monotonic() >= deadline:
                raise TimeoutError(f"server has {free} free connection slots, need {needed}")
            progress(f"waiting for the server: {free} free connection slots, need {needed}")
            time.sleep(2.0)
    finally:
        engine.dispose()


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def machine_info(url: str, redis_url: str | None = None) -> dict[str, Any]:
    """What the numbers were measured on (no secrets)."""
    import importlib.metadata as md

    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "url": _safe(url),
    }
    for dist in (
        "sqlalchemy",
        "psycopg2-binary",
        "psycopg",
        "psycopg-pool",
        "asyncpg",
        "redis",
        "greenlet",
        "sqlalchemy-smartpool",
    ):
        try:
            info[dist] = md.version(dist)
        except md.PackageNotFoundError:
            info[dist] = None
    if is_postgres(url) and check_postgres(url) is None:
        from sqlalchemy import create_engine, text
        from sqlalchemy.pool import NullPool

        engine = create_engine(url, poolclass=NullPool, connect_args=connect_args(url))
        with engine.connect() as conn:
            info["server"] = conn.execute(text("select version()")).scalar_one().split(" on ")[0]
            info["server_max_connections"] = int(conn.execute(text("show max_connections")).scalar_one())
        engine.dispose()
    if redis_url is not None:
        info["redis_url"] = _safe_redis(redis_url)
        if check_redis(redis_url) is None:
            import redis

            client = redis.Redis.from_url(redis_url, socket_timeout=2)
            try:
                info["redis_server"] = client.info("server").get("redis_version")
            finally:
                client.close()
    return info


# ------------------------------------------------------------------ running and output


def progress(msg: str) -> None:
    """Progress goes to stderr so ``--json`` output stays clean."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def run(scenario: Scenario, opts: Options) -> Report:
    trials: list[Trial] = []
    for i in range(opts.repeat):
        progress(f"{scenario.name}: trial {i + 1}/{opts.repeat}")
        trials.append(scenario.trial(opts))
    rows = median_rows(trials)
    verdict = scenario.judge(rows)
    plots: list[str] = []
    if opts.plots is not None and scenario.plot is not None:
        opts.plots.mkdir(parents=True, exist_ok=True)
        plots = [str(p) for p in scenario.plot(trials[-1], opts.plots)]
    notes: list[str] = []
    for t in trials:
        notes.extend(n for n in t.notes if n not in notes)
    return Report(scenario.name, scenario.title, opts.repeat, rows, verdict, notes, plots)


def fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.1f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.4f}" if abs(value) >= 0.001 else f"{value:.2e}"
    return str(value)


def table(rows: Sequence[Row]) -> str:
    """A plain-text table: the union of columns, in first-seen order."""
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    numeric = [any(_is_number(r.get(c)) for r in rows) for c in cols]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append(
            "  ".join(
                v.rjust(w) if num else v.ljust(w) for v, w, num in zip(row, widths, numeric, strict=True)
            )
        )
    return "\n".join(lines)


def render(report: Report) -> str:
    out = [f"== {report.scenario}: {report.title} (median of {report.repeat} trial(s))", table(report.rows)]
    if report.verdict.ratios:
        out.append("ratios (SmartPool / anchor):")
        out.extend(f"  {k:<84} {fmt(v)}" for k, v in report.verdict.ratios.items())
    if report.verdict.goals:
        out.append("goals:")
        for g in report.verdict.goals:
            mark = "MET" if g.met else "MISSED"
            out.append(f"  [{mark}] {g.name}: target {g.target}; measured {g.measured}")
    for n in report.notes + report.verdict.notes:
        out.append(f"  note: {n}")
    for p in report.plots:
        out.append(f"  plot: {p}")
    return "\n".join(out) + "\n"


def dumps(reports: Sequence[Report], machine: dict[str, Any]) -> str:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean({"machine": machine, "results": [r.as_dict() for r in reports]}), indent=2)

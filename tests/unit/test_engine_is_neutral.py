"""The engine and its policies import neither SQLAlchemy nor redis: adapters do.

Checked in a fresh interpreter, with the package's ``__init__`` (which
exports the SQLAlchemy adapters) bypassed, so every import the engine makes
is seen.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sqlalchemy_smartpool

#: the modules every adapter shares; none may pull in an ecosystem
NEUTRAL = (
    "engine",
    "core",
    "config",
    "errors",
    "stats",
    "leaks",
    "breaker",
    "sizing",
    "backoff",
    "sched",
    "sched_asyncio",
    "urltemplate",
    "urlcrypt",
    "health",
    "measures",
    "profiling",
    "forks",
    "logs",
    "live",
)

#: the metric exporters: their own client libraries, but no SQLAlchemy (a Redis pool needs none)
EXPORTERS = ("metrics", "metrics.prometheus", "metrics.statsd", "metrics.otel")

PROBE = """
import importlib, sys, types
pkg = types.ModuleType("sqlalchemy_smartpool")
pkg.__path__ = [{path!r}]
sys.modules["sqlalchemy_smartpool"] = pkg
for name in {modules!r}:
    importlib.import_module("sqlalchemy_smartpool." + name)
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("sqlalchemy", "redis"))
print(",".join(bad))
"""


def test_engine_modules_import_neither_sqlalchemy_nor_redis() -> None:
    path = str(Path(sqlalchemy_smartpool.__file__).parent)
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(path=path, modules=NEUTRAL)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "", f"the engine imported: {out.stdout.strip()}"


def test_the_probe_would_see_an_import() -> None:
    """The check itself works: an adapter module does show up."""
    path = str(Path(sqlalchemy_smartpool.__file__).parent)
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(path=path, modules=("sa_errors",))],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "sqlalchemy" in out.stdout


def test_metric_exporters_import_no_sqlalchemy() -> None:
    path = str(Path(sqlalchemy_smartpool.__file__).parent)
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(path=path, modules=EXPORTERS)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "", f"the exporters imported: {out.stdout.strip()}"

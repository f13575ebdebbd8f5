"""matplotlib glue for the benchmark figures (imported only when ``--plots`` is given)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fairness_plot(series: dict[str, Any], path: Path, unit: str = "thread") -> Path:
    """Left: completions per ``unit`` (thread, task) in one segment (sorted); right: CDF of all waits."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for impl, run in series.items():
        counts = sorted(run["counts"])
        left.plot(range(1, len(counts) + 1), counts, marker="o", markersize=3, label=impl)
        waits = run["waits"]
        n = len(waits)
        ys = [(i + 1) / n for i in range(n)]
        right.plot([w * 1e3 for w in waits], ys, label=impl)
    left.set_xlabel(f"{unit} (sorted by completions)")
    left.set_ylabel("requests completed")
    left.set_ylim(bottom=0)
    seconds = next(iter(series.values())).get("seconds", 0)
    left.set_title(f"Completions per {unit} in one {seconds:g} s segment (flat = fair)")
    left.legend(fontsize=8)
    right.set_xscale("log")
    right.set_xlabel("wait for a connection (ms, log)")
    right.set_ylabel("fraction of requests")
    right.set_title("Wait CDF")
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ramp_plot(series: dict[str, Any], path: Path) -> Path:
    """One panel per pool: demand (active clients), open connections and in-use over time."""
    plt = _pyplot()
    impls = list(series)
    fig, axes = plt.subplots(len(impls), 1, figsize=(11, 3.4 * len(impls)), sharex=True, squeeze=False)
    for ax, impl in zip(axes[:, 0], impls, strict=True):
        s = series[impl]
        ax.step(s["t"], s["demand"], where="post", label="demand (active clients)", color="black", lw=1.2)
        ax.plot(s["t"], s["size"], label="pool size (open connections)", color="tab:blue", lw=1.6)
        ax.plot(s["t"], s["in_use"], label="in use", color="tab:orange", lw=0.8, alpha=0.7)
        ax.axhline(s["min_size"], color="gray", ls=":", lw=1, label=f"min_size={s['min_size']}")
        ax.set_ylabel("connections / clients")
        ax.set_title(f"{impl}: {s['opened']} connections opened during the run")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

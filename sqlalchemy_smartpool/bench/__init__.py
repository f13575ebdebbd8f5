"""``smartpool bench SCENARIO``: SmartPool against QueuePool and psycopg_pool, in one process.

Every scenario runs SmartPool and its anchors in the same run, interleaved,
so machine noise hits all of them alike; ``--repeat N`` repeats the whole
scenario and reports medians. Scenarios live in their own modules and are
imported only when chosen, so ``import sqlalchemy_smartpool`` never pays for
psycopg_pool or matplotlib.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from .harness import (
    DEFAULT_REDIS_URL,
    DEFAULT_URL,
    Options,
    Report,
    Scenario,
    check_postgres,
    check_redis,
    dumps,
    machine_info,
    progress,
)

#: scenario name -> module defining ``SCENARIO``
SCENARIOS: dict[str, str] = {
    "overhead": "overhead",
    "prepping": "prepping",
    "fairness": "fairness",
    "spike": "spike",
    "ramp": "ramp",
    "memory": "memory",
    "outage": "outage",
    "soak": "soak",
    "async-overhead": "async_overhead",
    "async-fairness": "async_fairness",
    "async-spike": "async_spike",
    "redis-overhead": "redis_overhead",
    "redis-fairness": "redis_fairness",
    "redis-outage": "redis_outage",
    "fleet": "fleet",
}
#: what ``all`` runs, in this order (outage, soak, redis-outage and fleet are long; run them by name)
ALL: tuple[str, ...] = (
    "overhead",
    "prepping",
    "fairness",
    "spike",
    "ramp",
    "memory",
    "async-overhead",
    "async-fairness",
    "async-spike",
    "redis-overhead",
    "redis-fairness",
)

__all__ = ["ALL", "SCENARIOS", "load", "main"]


def load(name: str) -> Scenario:
    module = importlib.import_module(f"{__name__}.{SCENARIOS[name]}")
    scenario = module.SCENARIO
    assert isinstance(scenario, Scenario)
    return scenario


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smartpool bench",
        description="Benchmark SmartPool against QueuePool and psycopg_pool "
        "(medians; ratios are SmartPool / anchor).",
    )
    p.add_argument("scenario", choices=[*SCENARIOS, "all"])
    p.add_argument(
        "--url", default=DEFAULT_URL, help="PostgreSQL URL (psycopg2 driver; psycopg 3 is derived)"
    )
    p.add_argument(
        "--redis-url",
        default=DEFAULT_REDIS_URL,
        help="redis URL for the redis-* scenarios (default: $SMARTPOOL_BENCH_REDIS_URL or %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable results only")
    p.add_argument("--repeat", type=int, default=1, metavar="N", help="run N trials, report medians")
    p.add_argument("--quick", action="store_true", help="short runs (smoke test; numbers are not meaningful)")
    p.add_argument(
        "--plots", type=Path, default=None, metavar="DIR", help="write PNG plots (matplotlib) here"
    )
    p.add_argument("--save", type=Path, default=None, metavar="FILE", help="also write the JSON results here")
    p.add_argument("--check", action="store_true", help="exit 1 if a goal was missed")
    fleet = p.add_argument_group("fleet scenario")
    fleet.add_argument(
        "--budget", type=_positive, default=None, metavar="B", help="fleet budget (default 20)"
    )
    fleet.add_argument(
        "--procs", type=_int_list, default=None, metavar="N,N,...", help="process counts (default 2,4,8)"
    )
    fleet.add_argument("--threads", type=_positive, default=None, metavar="T", help="threads per process (8)")
    fleet.add_argument(
        "--seconds", type=float, default=None, metavar="D", help="measured seconds per cell (10)"
    )
    return p


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text}")
    return value


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(_positive(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of counts: {text}") from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.repeat < 1:
        print("smartpool bench: --repeat must be >= 1", file=sys.stderr)
        return 2
    opts = Options(
        url=args.url,
        redis_url=args.redis_url,
        repeat=args.repeat,
        quick=args.quick,
        plots=args.plots,
        as_json=args.json,
        fleet_budget=args.budget,
        fleet_procs=args.procs,
        fleet_threads=args.threads,
        fleet_seconds=args.seconds,
    )
    names = list(ALL) if args.scenario == "all" else [args.scenario]
    scenarios = [load(n) for n in names]
    if any(s.needs_postgres for s in scenarios):
        problem = check_postgres(opts.url)
        if problem is not None:
            print(f"smartpool bench: {problem}", file=sys.stderr)
            return 2
    needs_redis = any(s.needs_redis for s in scenarios)
    if needs_redis:
        problem = check_redis(opts.redis_url)
        if problem is not None:
            print(f"smartpool bench: {problem}", file=sys.stderr)
            return 2
    machine = machine_info(opts.url, opts.redis_url if needs_redis else None)
    if not opts.as_json:
        print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()), flush=True)
    reports: list[Report] = []
    from .harness import render, run

    failed: list[str] = []
    for scenario in scenarios:
        try:
            report = run(scenario, opts)
        except Exception as err:  # one broken scenario must not lose the others' results
            failed.append(scenario.name)
            print(f"smartpool bench: {scenario.name} failed: {type(err).__name__}: {err}", file=sys.stderr)
            continue
        reports.append(report)
        if not opts.as_json:
            print(render(report), flush=True)
    if opts.as_json:
        print(dumps(reports, machine))
    if args.save is not None:
        args.save.write_text(dumps(reports, machine) + "\n")
    progress("done" if not failed else f"done; failed: {', '.join(failed)}")
    missed = [g for r in reports for g in r.verdict.goals if not g.met]
    if failed:
        return 2
    return 1 if args.check and missed else 0

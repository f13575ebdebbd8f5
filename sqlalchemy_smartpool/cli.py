"""The ``smartpool`` command: ``smartpool demo``, ``smartpool bench SCENARIO`` and ``smartpool serve``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smartpool", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="bursty workload on embedded SQLite with a live view", add_help=False)
    sub.add_parser("bench", help="benchmark scenarios vs QueuePool / psycopg_pool", add_help=False)
    sub.add_parser("serve", help="HTTP /health, /metrics and a live status page for pools", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        from .bench import main as bench_main

        return int(bench_main(rest))
    if args.command == "serve":
        from .web.server import main as serve_main

        return int(serve_main(rest))
    from .demo import main as demo_main

    return int(demo_main(rest))


if __name__ == "__main__":
    sys.exit(main())

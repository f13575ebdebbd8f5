"""The ``smartpool`` command: ``smartpool demo``, ``smartpool bench SCENARIO``, ``smartpool serve``,
and ``smartpool encrypt-url`` / ``decrypt-url`` / ``gen-key`` (encrypted connection URLs)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smartpool", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="bursty workload on embedded SQLite with a live view", add_help=False)
    sub.add_parser("bench", help="benchmark scenarios vs QueuePool / psycopg_pool", add_help=False)
    sub.add_parser("encrypt-url", help="encrypt a connection URL (read from stdin)", add_help=False)
    sub.add_parser("decrypt-url", help="check an encrypted URL; prints it redacted", add_help=False)
    sub.add_parser("gen-key", help="make a key for encrypted URLs", add_help=False)
    sub.add_parser("serve", help="HTTP /health, /metrics and a live status page for pools", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command in ("encrypt-url", "decrypt-url", "gen-key"):
        from .urlcrypt import COMMANDS

        return COMMANDS[args.command](rest)
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

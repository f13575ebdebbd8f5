"""One process of the fleet-budget tests (tests/integration/test_fleet.py), run by path.

It builds a SmartPool with a fleet budget through ``create_engine``, runs
``threads`` loops of one short query each, and reports on stdout, one JSON
line every ``every`` seconds: its request and error counts (cumulative), the
instant (``time.monotonic()``, the same clock as the parent's on Linux) and
``fleet_status()``. A line ``stop`` on stdin (or EOF: the parent died) ends
the load; the last line has ``"final": true``, then the pool is closed.
The parent can SIGSTOP or kill -9 it at any moment: nothing here relies on
a clean exit.

Argument: one JSON object -- url, application_name, threads, query, every, pool (the
keywords of SmartPool: sizes, budget settings).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import sqlalchemy as sa

from sqlalchemy_smartpool import SmartPool


def main(argv: list[str]) -> int:
    cfg: dict[str, Any] = json.loads(argv[1])
    engine = sa.create_engine(
        cfg["url"],
        poolclass=SmartPool,
        connect_args={"application_name": cfg["application_name"]},
        **cfg["pool"],
    )
    pool: Any = engine.pool
    stop = threading.Event()
    lock = threading.Lock()
    counts = {"requests": 0, "errors": 0}
    errors: list[str] = []
    out = threading.Lock()

    def emit(**extra: Any) -> None:
        with lock:
            line: dict[str, Any] = {"t": time.monotonic(), **counts, "first_errors": errors[:5]}
        line["fleet"] = pool.fleet_status()
        line.update(extra)
        with out:
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()

    def work() -> None:
        query = cfg["query"]
        while not stop.is_set():
            try:
                with engine.connect() as conn:
                    conn.exec_driver_sql(query).all()
            except Exception as err:  # counted and reported: the test fails on any
                with lock:
                    counts["errors"] += 1
                    if len(errors) < 5:
                        errors.append(f"{type(err).__name__}: {err}"[:300])
            else:
                with lock:
                    counts["requests"] += 1

    def control() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()

    threading.Thread(target=control, daemon=True).start()
    workers = [threading.Thread(target=work, daemon=True) for _ in range(int(cfg["threads"]))]
    for w in workers:
        w.start()
    every = float(cfg.get("every", 0.2))
    while not stop.wait(every):
        emit()
    deadline = time.monotonic() + 30.0
    for w in workers:
        w.join(max(deadline - time.monotonic(), 0.0))
    emit(final=True, stuck=sum(w.is_alive() for w in workers))
    pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

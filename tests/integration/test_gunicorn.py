"""A real gunicorn with ``--preload`` and 3 threaded workers over one SmartPool engine.

The engine is created and used in the master (tests/integration/_gunicorn_app.py),
so every worker inherits a pool with live sessions. Under concurrent HTTP load
every response must be right, no backend session may serve two processes, and
what PostgreSQL sees under the test's ``application_name`` must be exactly the
master's pool plus the pools the workers report. gunicorn is stopped at the
end (SIGTERM, bounded wait); its workers exit through the normal interpreter
shutdown, and the test's sessions disappear with them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ._services import HOST, require_postgres
from .conftest import PgAdmin, pg_url, wait_until

pytestmark = pytest.mark.integration

WORKERS = 3
APP_DIR = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


class Gunicorn:
    def __init__(self, app_name: str, log: Path) -> None:
        pytest.importorskip("gunicorn")
        self.port = _free_port()
        env = dict(os.environ, SP_GUNICORN_URL=pg_url(app_name))
        self._log = log.open("wb")
        argv = [sys.executable, "-m", "gunicorn", "--preload", "--workers", str(WORKERS)]
        argv += ["--threads", "4", "--worker-class", "gthread", "--bind", f"{HOST}:{self.port}"]
        argv += ["--chdir", str(APP_DIR), "--graceful-timeout", "10", "_gunicorn_app:app"]
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.log = log

    def up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"gunicorn exited ({self.proc.returncode}):\n{self.log.read_text()}")
        try:
            return _get(self.port, "/health", 1.0)[0] == 200
        except OSError:
            return False

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def gunicorn(app_name: str, tmp_path: Path, pg_admin: PgAdmin) -> Iterator[Gunicorn]:
    require_postgres()
    server = Gunicorn(app_name, tmp_path / "gunicorn.log")
    try:
        yield server
    finally:
        server.stop()
        if not wait_until(lambda: pg_admin.count(app_name) == 0, 5):
            pg_admin.terminate(app_name)


def test_gunicorn_preload_workers_get_their_own_sessions(
    gunicorn: Gunicorn, app_name: str, pg_admin: PgAdmin
) -> None:
    assert wait_until(gunicorn.up, 30), gunicorn.log.read_text()
    # before any request: only the master's sessions (the workers' pools start empty and idle)
    master = pg_admin.pids(app_name)
    assert len(master) == 2, master

    with ThreadPoolExecutor(24) as ex:
        replies = list(ex.map(lambda _: _get(gunicorn.port, "/query"), range(400)))
    bad = [r for r in replies if r[0] != 200 or r[1].get("answer") != 42]
    assert not bad, bad[:5]
    by_worker: dict[int, set[int]] = {}
    for _, body in replies:
        by_worker.setdefault(body["pid"], set()).add(body["backend"])
    # (a worker that served nothing holds no session; the kernel decides who accepts)
    assert len(by_worker) >= 2, by_worker.keys()
    used = [b for backends in by_worker.values() for b in backends]
    assert len(used) == len(set(used)), "one backend session served two workers"
    assert not set(used) & master, "a worker used the master's session"

    stats: dict[int, int] = {}
    for _ in range(300):  # every worker's own report (the kernel picks who accepts)
        status, body = _get(gunicorn.port, "/stats")
        assert status == 200 and body["in_use"] == 0, body
        stats[body["pid"]] = body["size"]
        if set(stats) >= set(by_worker):
            break
    assert set(stats) >= set(by_worker), (stats, by_worker.keys())
    print(f"gunicorn: {len(replies)} requests ok; worker pools {stats}; master pool {len(master)}")
    # the server holds the master's sessions plus exactly what the workers' pools count
    assert pg_admin.count(app_name) == len(master) + sum(stats.values())
    assert pg_admin.alive(master) == master  # no worker closed the master's sessions

    assert gunicorn.stop() == 0, gunicorn.log.read_text()
    assert wait_until(lambda: pg_admin.count(app_name) == 0, 10), pg_admin.pids(app_name)
    log = gunicorn.log.read_text()
    assert "Traceback" not in log and "Exception" not in log, log

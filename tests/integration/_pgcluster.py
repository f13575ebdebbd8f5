"""A throw-away PostgreSQL cluster that checks passwords (scram-sha-256), owned by one test module.

The shared server on 127.0.0.1:5432 trusts every local TCP connection
(``pg_hba.conf``: ``host all all 127.0.0.1 trust``), so a wrong password is
accepted there and a credential rotation cannot be shown to matter. This
cluster is made with the installed server's ``initdb`` in a temporary
directory, listens on a free port of 127.0.0.1 only, with fsync off, and is
stopped and deleted afterwards (~0.5 s to make and start). As root (initdb
refuses to run as root) it runs as the ``postgres`` system user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from ._services import HOST


def _bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class PgCluster:
    """``superuser`` / ``password`` log in to database ``postgres`` at ``HOST:port``."""

    superuser = "postgres"

    def __init__(self) -> None:
        bindir = _bin()
        if bindir is None:
            if os.environ.get("SMARTPOOL_REQUIRE_SERVICES") == "1":
                pytest.fail("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin)", pytrace=False)
            pytest.skip("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin) for a cluster of our own")
        self.bindir = bindir
        self.password = f"su-{uuid.uuid4().hex}"
        self.port = _free_port()
        self.dir = tempfile.mkdtemp(prefix="smartpool-pg-")
        self._as: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        pwfile = os.path.join(self.dir, "pw")
        with open(pwfile, "w") as f:
            f.write(self.password)
        if self._as:
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        self.data = os.path.join(self.dir, "data")
        self._run("initdb", "-D", self.data, "-U", self.superuser, "--auth=scram-sha-256",
                  f"--pwfile={pwfile}", "-N", "-E", "UTF8")  # fmt: skip
        os.unlink(pwfile)
        options = (
            f"-p {self.port} -c listen_addresses={HOST} -c unix_socket_directories={self.dir} "
            "-c fsync=off -c synchronous_commit=off -c max_connections=60"
        )
        self._run("pg_ctl", "-D", self.data, "-w", "-t", "30", "-o", options, "-l",
                  os.path.join(self.dir, "log"), "start")  # fmt: skip

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self._as, os.path.join(self.bindir, tool), *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def connect(self, user: str | None = None, password: str | None = None) -> Any:
        import psycopg2

        conn = psycopg2.connect(host=HOST, port=self.port, dbname="postgres", user=user or self.superuser,
                                password=self.password if password is None else password)  # fmt: skip
        conn.autocommit = True
        return conn

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()


@contextlib.contextmanager
def pg_cluster() -> Iterator[PgCluster]:
    cluster = PgCluster()
    try:
        yield cluster
    finally:
        cluster.stop()

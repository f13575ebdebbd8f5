"""Helpers of the secrets tests: login roles of a test's own, a redis-server that wants a password."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import redis

from ._services import HOST
from .conftest import PgAdmin, wait_until


@dataclass
class Role:
    name: str
    password: str


@contextlib.contextmanager
def login_roles(admin: PgAdmin, prefix: str, n: int, password: str | None = None) -> Iterator[list[Role]]:
    """``n`` login roles of this test's own (``CREATE ROLE ... PASSWORD``), dropped afterwards
    (their backends terminated first: DROP ROLE fails while one is logged in)."""
    tag = uuid.uuid4().hex[:10]
    made = [Role(f"{prefix}_{tag}_{i}", password or f"pw-{i}-{tag}") for i in range(n)]
    names = [role.name for role in made]
    try:
        for role in made:
            admin.query(f"CREATE ROLE {role.name} LOGIN PASSWORD %s", role.password)
        yield made
    finally:
        backends = "SELECT pid FROM pg_stat_activity WHERE usename = ANY(%s)"
        admin.query(f"SELECT pg_terminate_backend(pid) FROM ({backends}) b", names)
        wait_until(lambda: not admin.query(backends, names), 5)
        for name in names:
            admin.query(f"DROP ROLE IF EXISTS {name}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class LockedRedis:
    """A redis-server of this test's own that requires a password (only its own is rotated)."""

    def __init__(self, password: str) -> None:
        self.port = _free_port()
        self.password = password
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no",
             "--requirepass", password],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

        def up() -> bool:
            try:
                return bool(self.admin().ping())
            except redis.ConnectionError:
                return False

        if not wait_until(up, 10):
            self.stop()
            raise AssertionError("redis-server did not start")

    def admin(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, password=self.password, socket_timeout=2)

    def rotate(self, password: str) -> None:
        self.admin().config_set("requirepass", password)
        self.password = password

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

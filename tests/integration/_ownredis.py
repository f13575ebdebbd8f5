"""A redis-server of the test's own on a free port (no persistence), to stop and start again.

The shared Redis is never stopped by a test; a test that needs a Redis to die uses this one
(the ``own_redis`` fixture in conftest.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest
import redis

from ._services import HOST
from .conftest import wait_until


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class OwnRedis:
    """A throw-away redis-server (no persistence) that can be killed and started again on its port."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("SMARTPOOL_REQUIRE_SERVICES") == "1":
                pytest.fail("redis-server not on PATH and SMARTPOOL_REQUIRE_SERVICES=1", pytrace=False)
            pytest.skip("redis-server not on PATH")
        self.binary = binary
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host=HOST, port=self.port, socket_timeout=0.5)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        try:
            assert wait_until(up, 10.0, 0.05), f"redis-server on {self.port} did not start"
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

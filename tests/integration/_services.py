"""Reachability guards for the local database servers used by integration tests.

A missing server skips the test with a one-line reason, so the suite runs
on a laptop without databases; CI sets ``SMARTPOOL_REQUIRE_SERVICES=1`` to
turn that skip into a failure, so a broken service cannot pass silently.
"""

from __future__ import annotations

import os
import socket

import pytest

HOST = "127.0.0.1"
POSTGRES_PORT = 5432
MYSQL_PORT = 3306
REDIS_PORT = 6379

POSTGRES_URL = f"postgresql+psycopg2://postgres@{HOST}:{POSTGRES_PORT}/test"
MYSQL_URL = f"mysql+pymysql://root@{HOST}:{MYSQL_PORT}/test"


def _require(name: str, port: int) -> None:
    try:
        socket.create_connection((HOST, port), timeout=1.0).close()
    except OSError as exc:
        reason = f"{name} not reachable at {HOST}:{port} ({exc})"
        if os.environ.get("SMARTPOOL_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} and SMARTPOOL_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip(reason)


def require_postgres() -> None:
    """Skip (or fail under SMARTPOOL_REQUIRE_SERVICES=1) unless PostgreSQL listens."""
    _require("PostgreSQL", POSTGRES_PORT)


def require_mysql() -> None:
    """Skip (or fail under SMARTPOOL_REQUIRE_SERVICES=1) unless MariaDB/MySQL listens."""
    _require("MariaDB/MySQL", MYSQL_PORT)


def require_redis() -> None:
    """Skip (or fail under SMARTPOOL_REQUIRE_SERVICES=1) unless Redis listens."""
    _require("Redis", REDIS_PORT)

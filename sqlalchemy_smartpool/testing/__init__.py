"""Testing utilities shipped with sqlalchemy-smartpool (standard library only)."""

from sqlalchemy_smartpool.testing.pgbouncer import PgBouncer, PgBouncerError
from sqlalchemy_smartpool.testing.proxy import FaultMode, FaultProxy

__all__ = ["FaultMode", "FaultProxy", "PgBouncer", "PgBouncerError"]

"""sqlalchemy-smartpool: a fair, adaptive, observable connection pool for SQLAlchemy.

``create_engine(url, poolclass=SmartPool)`` or ``?plugin=smartpool`` in the URL.
"""

from __future__ import annotations

from .breaker import BreakerState
from .config import CircuitBreakerConfig, PoolConfig
from .errors import ConfigError
from .pool import AsyncSmartPool, SmartPool
from .sa_errors import (
    CircuitOpenError,
    PoolClosed,
    PoolTimeout,
    TooManyWaiters,
)
from .stats import PoolStats

__version__ = "0.1.0"

__all__ = [
    "AsyncSmartPool",
    "BreakerState",
    "CircuitBreakerConfig",
    "CircuitOpenError",
    "ConfigError",
    "PoolClosed",
    "PoolConfig",
    "PoolStats",
    "PoolTimeout",
    "SmartPool",
    "TooManyWaiters",
    "__version__",
]

"""sqlalchemy-smartpool: a fair, adaptive, observable connection pool for SQLAlchemy.

``create_engine(url, poolclass=SmartPool)`` or ``?plugin=smartpool`` in the URL.
"""

from __future__ import annotations

import importlib
from typing import Any

from .breaker import BreakerState
from .config import CircuitBreakerConfig, PoolConfig
from .errors import ConfigError
from .logs import correlation_id
from .pool import AsyncSmartPool, SmartPool
from .sa_errors import (
    CircuitOpenError,
    PoolClosed,
    PoolTimeout,
    TooManyWaiters,
)
from .stats import PoolStats

__version__ = "0.1.0"

#: exported lazily: ``import sqlalchemy_smartpool`` must not import redis
_LAZY = {
    "SmartRedisPool": "redis_pool",
    "AsyncSmartRedisPool": "redis_pool",
    "smartpool_url": "plugin",
    "decrypt_url": "urlcrypt",
    "encrypt_url": "urlcrypt",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "AsyncSmartPool",
    "AsyncSmartRedisPool",
    "BreakerState",
    "CircuitBreakerConfig",
    "CircuitOpenError",
    "ConfigError",
    "PoolClosed",
    "PoolConfig",
    "PoolStats",
    "PoolTimeout",
    "SmartPool",
    "SmartRedisPool",
    "TooManyWaiters",
    "__version__",
    "correlation_id",
    "decrypt_url",
    "encrypt_url",
    "smartpool_url",
]

"""The pool errors as redis-py users catch them.

redis-py's pools raise ``redis.exceptions.ConnectionError`` when no connection
can be had (``BlockingConnectionPool``: "No connection available." after its
timeout; ``ConnectionPool``: ``MaxConnectionsError``), so every pool error
here is a ``ConnectionError`` -- switching the pool class changes no
``except`` clause -- and also the neutral class from :mod:`.errors`, so code
that serves several ecosystems can catch one type (``except CircuitOpen``).
"""

from __future__ import annotations

from redis import exceptions as redis_exc

from .errors import (
    AcquireTimeout,
    CircuitOpen,
    ErrorTypes,
    PoolClosedError,
    WaitQueueFull,
)


class RedisPoolTimeout(redis_exc.ConnectionError, AcquireTimeout):
    """No connection became available within ``acquire_timeout``."""


class RedisTooManyWaiters(RedisPoolTimeout, WaitQueueFull):
    """The wait queue is full (``max_waiting``): fail fast instead of queueing."""


class RedisPoolClosed(redis_exc.ConnectionError, PoolClosedError):
    """The pool was closed for good (``close()``); no checkout is possible."""


class RedisCircuitOpenError(redis_exc.ConnectionError, CircuitOpen):
    """The circuit breaker is open: the server is considered down.

    Raised at once instead of dialing. ``retry_after`` is the number of
    seconds to the next probe; ``orig`` the last connect error.
    """

    def __init__(self, message: str, retry_after: float, orig: BaseException | None = None) -> None:
        redis_exc.ConnectionError.__init__(self, message)
        self._note(message, retry_after, orig)


REDIS_ERRORS = ErrorTypes(
    timeout=RedisPoolTimeout,
    queue_full=RedisTooManyWaiters,
    closed=RedisPoolClosed,
    circuit_open=RedisCircuitOpenError,
)

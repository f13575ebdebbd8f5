"""The pool errors as SQLAlchemy users catch them.

Each subclasses the SQLAlchemy exception that existing code already catches
for the same situation, so switching ``poolclass`` changes no ``except``
clause, and the neutral class from :mod:`.errors`, so code that serves
several ecosystems can catch one type.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import exc as sa_exc

from .errors import (
    AcquireTimeout,
    CircuitOpen,
    DatabaseUnavailable,
    ErrorTypes,
    PoolClosedError,
    WaitQueueFull,
)


class PoolTimeout(sa_exc.TimeoutError, AcquireTimeout):
    """No connection became available within the checkout timeout."""


class TooManyWaiters(PoolTimeout, WaitQueueFull):
    """The wait queue is full (``max_waiting``): fail fast instead of queueing.

    A subclass of :class:`PoolTimeout` because callers treat both as "the pool
    could not serve me in time".
    """


class PoolClosed(sa_exc.InvalidRequestError, PoolClosedError):
    """The pool was closed for good; no checkout is possible."""


class CircuitOpenError(sa_exc.OperationalError, CircuitOpen):
    """The circuit breaker is open: the database is considered down.

    Raised at once instead of dialing. It is an ``OperationalError`` because
    that is what an application already catches for "database unreachable".
    ``retry_after`` tells how many seconds remain until the next probe;
    ``orig`` is the last connect error, as SQLAlchemy's DBAPIError carries it.
    """

    def __init__(self, message: str, retry_after: float, orig: BaseException | None = None) -> None:
        sa_exc.OperationalError.__init__(
            self, None, None, orig if orig is not None else DatabaseUnavailable(message)
        )
        self.message = message
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> Any:
        return self.__class__, (self.message, self.retry_after)


SQLALCHEMY_ERRORS = ErrorTypes(
    timeout=PoolTimeout, queue_full=TooManyWaiters, closed=PoolClosed, circuit_open=CircuitOpenError
)

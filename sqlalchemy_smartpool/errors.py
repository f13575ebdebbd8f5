"""Exceptions raised by SmartPool.

Each pool error subclasses the SQLAlchemy exception that existing code already
catches for the same situation, so switching ``poolclass`` changes no ``except``
clause in an application.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import exc as sa_exc

_SECRETS = (
    # scheme://user:password@host
    (re.compile(r"(://[^:/@\s]*:)[^@\s]*@"), r"\1***@"),
    # password=..., passwd=..., pwd=... in DSNs and driver messages
    (re.compile(r"(?i)\b(password|passwd|pwd)(\s*=\s*)('[^']*'|\"[^\"]*\"|\S+)"), r"\1\2***"),
)


def describe_error(err: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message``, secrets redacted: safe for logs and errors.

    Driver messages say why a connect failed (unknown host, auth failed for
    user X) and that is worth showing; a DSN echoed back may carry a password.
    """
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    for pattern, repl in _SECRETS:
        text = pattern.sub(repl, text)
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class ConfigError(ValueError):
    """A pool setting is invalid; raised at construction, naming field and value."""

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"invalid pool setting {field}={value!r}: {reason}")


class PoolTimeout(sa_exc.TimeoutError):
    """No connection became available within the checkout timeout."""


class TooManyWaiters(PoolTimeout):
    """The wait queue is full (``max_waiting``): fail fast instead of queueing.

    A subclass of :class:`PoolTimeout` because callers treat both as "the pool
    could not serve me in time".
    """


class PoolClosed(sa_exc.InvalidRequestError):
    """The pool was closed for good; no checkout is possible."""


class DatabaseUnavailable(Exception):
    """The ``orig`` of a :class:`CircuitOpenError`: no DBAPI error exists for it."""


class CircuitOpenError(sa_exc.OperationalError):
    """The circuit breaker is open: the database is considered down.

    Raised at once instead of dialing. It is an ``OperationalError`` because
    that is what an application already catches for "database unreachable".
    ``retry_after`` tells how many seconds remain until the next probe.
    """

    def __init__(self, message: str, retry_after: float, orig: BaseException | None = None) -> None:
        # ``orig`` is the last connect error (the driver's), as SQLAlchemy's
        # DBAPIError carries it; DatabaseUnavailable when there was none
        super().__init__(None, None, orig if orig is not None else DatabaseUnavailable(message))
        self.message = message
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> Any:
        return self.__class__, (self.message, self.retry_after)

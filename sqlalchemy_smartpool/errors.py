"""The pool's exceptions, neutral of any ecosystem, and safe error descriptions.

The engine raises pool errors through an :class:`ErrorTypes` table that the
adapter supplies, so a SQLAlchemy user catches ``sqlalchemy.exc`` types (see
``sa_errors``) and a redis-py user catches redis-py's, while every one of
them is also an instance of the neutral class here: ``except CircuitOpen``
works for every pool. This module imports neither SQLAlchemy nor redis.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

_SECRETS = (
    # scheme://user:password@host
    (re.compile(r"(://[^:/@\s]*:)[^@\s]*@"), r"\1***@"),
    # password=..., passwd=..., pwd=... in DSNs and driver messages
    (re.compile(r"(?i)\b(password|passwd|pwd)(\s*=\s*)('[^']*'|\"[^\"]*\"|\S+)"), r"\1\2***"),
    # SQL: ALTER ROLE ... PASSWORD '...', CREATE USER ... IDENTIFIED BY '...' (a leak report's statement)
    (re.compile(r"(?i)\b(password|identified\s+by)(\s+)('[^']*'|\"[^\"]*\")"), r"\1\2'***'"),
)


#: what every pattern above needs: one search decides for most text (JSON log lines redact every field)
_MAYBE_SECRET = re.compile(r"[@=]|password|identified", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with passwords in URLs and DSNs replaced by ``***``."""
    if _MAYBE_SECRET.search(text) is None:
        return text
    for pattern, repl in _SECRETS:
        text = pattern.sub(repl, text)
    return text


def describe_error(err: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message``, secrets redacted: safe for logs and errors.

    Driver messages say why a connect failed (unknown host, auth failed for
    user X) and that is worth showing; a DSN echoed back may carry a password.
    """
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = redact(text)
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class ConfigError(ValueError):
    """A pool setting is invalid; raised at construction, naming field, value and source.

    ``source`` says where the value came from (``keyword``, ``URL parameter
    smartpool_max_size``, ``environment variable SMARTPOOL_MAX_SIZE``, a file
    and key), so the user knows what to fix.
    """

    def __init__(self, field: str, value: Any, reason: str, *, source: str | None = None) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        self.source = source
        where = f" (from {source})" if source else ""
        super().__init__(f"invalid pool setting {field}={value!r}{where}: {reason}")


class SecretError(ConfigError):
    """A secret could not be had: a ``{env:}``/``{file:}`` placeholder, a URL key, an encrypted URL.

    A :class:`ConfigError` (raised at construction, or at a connect when a
    secret disappeared later) whose message names what failed and where --
    the placeholder, the variable, the key file -- and never the secret, the
    key or the token themselves. ``value`` is the placeholder text or None.
    """

    def __init__(self, field: str, value: str | None, reason: str, *, source: str | None = None) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        self.source = source
        where = f" ({source})" if source else ""
        what = f"{value} in {field}" if value else field
        ValueError.__init__(self, f"{what}{where}: {reason}")

    def __reduce__(self) -> Any:
        return _rebuild_secret_error, (type(self), self.field, self.value, self.reason, self.source)


def _rebuild_secret_error(
    cls: type[SecretError], field: str, value: str | None, reason: str, source: str | None
) -> SecretError:
    return cls(field, value, reason, source=source)


class PoolError(Exception):
    """Base of the pool's own runtime errors (not of the driver's)."""


class AcquireTimeout(PoolError):
    """No connection became available within the checkout timeout."""


class WaitQueueFull(AcquireTimeout):
    """``max_waiting`` callers already wait: fail fast instead of queueing."""


class PoolClosedError(PoolError):
    """The pool was closed for good; no checkout is possible."""


class WrongEventLoop(PoolError, RuntimeError):
    """An asyncio pool was used from another event loop than its connections' (or from none)."""


class DatabaseUnavailable(Exception):
    """The ``orig`` of a circuit-open error when no connect error was recorded."""


class CircuitOpen(PoolError):
    """The circuit breaker is open: the server is considered down (catch this).

    ``retry_after`` is the number of seconds to the next probe; ``orig`` the
    last connect error (the driver's). A marker without ``__init__``, so that
    ecosystem classes can combine it with theirs (``sa_errors.CircuitOpenError``
    is also a SQLAlchemy ``OperationalError``).
    """

    message: str
    retry_after: float
    orig: Any

    def _note(self, message: str, retry_after: float, orig: BaseException | None) -> None:
        """Set the attributes; each ecosystem class calls it after its own base's ``__init__``."""
        self.message = message
        self.retry_after = retry_after
        self.orig = orig if orig is not None else DatabaseUnavailable(message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> Any:
        return self.__class__, (self.message, self.retry_after)


class BreakerOpenError(CircuitOpen):
    """The neutral :class:`CircuitOpen`, for adapters without an ecosystem type."""

    def __init__(self, message: str, retry_after: float, orig: BaseException | None = None) -> None:
        super().__init__(message)
        self._note(message, retry_after, orig)


@dataclasses.dataclass(frozen=True)
class ErrorTypes:
    """The exception classes an adapter's users expect, one per pool error.

    Each must subclass the neutral class of the same job; ``circuit_open`` is
    called as ``cls(message, retry_after, orig)``, the others as ``cls(message)``.
    """

    timeout: type[AcquireTimeout] = AcquireTimeout
    queue_full: type[WaitQueueFull] = WaitQueueFull
    closed: type[PoolClosedError] = PoolClosedError
    circuit_open: Callable[[str, float, BaseException | None], CircuitOpen] = BreakerOpenError


#: the neutral classes themselves (unit tests of the core, or an adapter with no ecosystem types)
NEUTRAL = ErrorTypes()

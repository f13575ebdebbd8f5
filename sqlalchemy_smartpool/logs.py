"""Every log line the pools write: structured fields, correlation IDs, the audit logger.

One place decides what a pool's log record looks like, so every pool
(SQLAlchemy's, asyncio's, Redis') and every module (engine, core, breaker,
leaks, runtimes, adapters) writes the same fields:

* :func:`event` -- a record on one of the package's loggers, with ``pool``,
  ``event`` and the event's own fields in ``extra`` (so a JSON formatter or a
  log pipeline gets them as fields, not as text to parse), plus the
  ``correlation_id`` of the request it was made in;
* :func:`audit` -- the same on the audit logger ``sqlalchemy_smartpool.audit``
  (connect, close with its reason, invalidate, validation failures, breaker
  transitions, leak reports, configuration changes, credential rotation);
* :func:`correlation_id` -- ``with correlation_id("req-42"):`` tags every pool
  line made inside it (background work started from inside it too); without
  one, the current OpenTelemetry trace id is used when there is a span;
* :class:`JsonFormatter` -- one JSON object per line, secrets redacted;
* :class:`OutageTracker` -- the outage log policy: one WARNING when connects
  start failing, at most one line per backoff step while they do (INFO only on
  a doubling schedule), one INFO when a connect works again.

Engine-neutral: imports neither SQLAlchemy nor redis, and OpenTelemetry only
if the application already did. Every function returns at once when its
logger is not enabled for the level (a call then costs ~0.3 us, its arguments
included), and the checkout/checkin fast path makes none. docs/logging.md lists
every event and field.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from .errors import redact

#: the package's loggers (one per module that writes; the audit trail is separate)
ENGINE_LOGGER = "sqlalchemy_smartpool.engine"
BREAKER_LOGGER = "sqlalchemy_smartpool.breaker"
LEAKS_LOGGER = "sqlalchemy_smartpool.leaks"
SCHED_LOGGER = "sqlalchemy_smartpool.sched"
POOL_LOGGER = "sqlalchemy_smartpool.pool"
METRICS_LOGGER = "sqlalchemy_smartpool.metrics"
AUDIT_LOGGER = "sqlalchemy_smartpool.audit"

# -- event names (the ``event`` field); docs/logging.md describes each ----------------------

CONNECT = "connect"
CONNECT_FAILED = "connect_failed"
CLOSE = "close"
CLOSE_FAILED = "close_failed"
INVALIDATE = "invalidate"
VALIDATION_FAILED = "validation_failed"
KEEPALIVE_FAILED = "keepalive_failed"
CHECKOUT_TIMEOUT = "checkout_timeout"
OUTAGE_STARTED = "outage_started"
OUTAGE_CONTINUES = "outage_continues"
OUTAGE_ENDED = "outage_ended"
BREAKER_OPENED = "breaker_opened"
BREAKER_HALF_OPEN = "breaker_half_open"
BREAKER_CLOSED = "breaker_closed"
LEAK_SUSPECTED = "leak_suspected"
LEAK_RETURNED = "leak_returned"
LEAK_COLLECTED = "leak_collected"
SERVER_LIMIT = "server_limit"
SERVER_LIMIT_UNKNOWN = "server_limit_unknown"
POOL_DISPOSED = "pool_disposed"
POOL_CLOSED = "pool_closed"
POOL_NAMED = "pool_named"
TASK_FAILED = "task_failed"
JOB_FAILED = "job_failed"
METRICS_PUSH_FAILED = "metrics_push_failed"
#: for reconfigure(): call :func:`config_changed`
CONFIG_CHANGED = "config_changed"
#: for credential rotation: call :func:`credentials_rotated`
CREDENTIALS_ROTATED = "credentials_rotated"
#: fleet budget (fleet.py): the lease store went away / came back; leases were lost
BUDGET_STORE_DOWN = "budget_store_down"
BUDGET_STORE_BACK = "budget_store_back"
BUDGET_LEASES_LOST = "budget_leases_lost"

# -- close reasons (the ``reason`` field of ``close``) ---------------------------------------

CLOSE_IDLE_TIMEOUT = "idle_timeout"  # idle above min_size for longer than idle_timeout
CLOSE_MAX_LIFETIME = "max_lifetime"  # reached its (jittered) max_lifetime
CLOSE_INVALIDATED = "invalidated"  # came back unusable (invalidated, detached, unread data)
CLOSE_VALIDATION_FAILED = "validation_failed"  # failed its checkout ping (a disconnect)
CLOSE_VALIDATION_ERROR = "validation_error"  # its ping raised an error the caller got
CLOSE_KEEPALIVE_FAILED = "keepalive_failed"  # failed a background keepalive ping
CLOSE_PROBE_FAILED = "probe_failed"  # failed a health check's ping
CLOSE_SUSPECT = "disconnect_seen"  # older than a disconnect seen elsewhere, nothing validates it
CLOSE_DISPOSED = "disposed"  # dispose() (or a connect that finished after it)
CLOSE_POOL_CLOSED = "pool_closed"  # close(): for good
CLOSE_CLIENT_DISCONNECT = "client_disconnect"  # redis-py's disconnect() on a connection in use
CLOSE_DETACHED = "detached"  # the adapter closed it itself (a detached connection)
CLOSE_UNSPECIFIED = "unspecified"
CLOSE_RETIRED = "retired"  # drain(), rotate_credentials(), a lowered max_size, a swapped-out pool
CLOSE_FENCED = "fenced"  # its fleet-budget lease was lost (the holder expired): never used again
CLOSE_OVER_SHARE = "over_share"  # above this pool's fair share of the fleet budget while others wait

_AUDIT = logging.getLogger(AUDIT_LOGGER)
_ENGINE = logging.getLogger(ENGINE_LOGGER)

# ------------------------------------------------------------------ correlation IDs

_correlation: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "smartpool_correlation_id", default=None
)
_UNSAFE_ID = re.compile(r"[\x00-\x1f\x7f]")
#: longer IDs are cut: an ID is a key to search by, not a payload
MAX_CORRELATION_ID = 128


@contextlib.contextmanager
def correlation_id(value: str | None = None) -> Iterator[str]:
    """Tag every pool log line made inside the block (and background work started in it).

    ``with correlation_id("req-42"):`` or, with no value, a fresh random id
    (yielded). Control characters are replaced (an ID taken from a request
    header cannot forge log lines) and the ID is cut to 128 characters. Works
    in threads and in asyncio tasks (a ``contextvars`` variable); usable as a
    decorator too.
    """
    if value is None:
        value = uuid.uuid4().hex
    elif not isinstance(value, str):
        raise TypeError(f"a correlation id must be a string, got {type(value).__name__}")
    clean = _UNSAFE_ID.sub("?", value)[:MAX_CORRELATION_ID]
    token = _correlation.set(clean)
    try:
        yield clean
    finally:
        _correlation.reset(token)


def current_correlation_id() -> str | None:
    """The ID set by :func:`correlation_id`, else the current OpenTelemetry trace id, else None.

    OpenTelemetry is never imported here: if the application did not import
    ``opentelemetry.trace``, no span can be current.
    """
    value = _correlation.get()
    if value is not None:
        return value
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    try:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            return f"{ctx.trace_id:032x}"
    except Exception:  # a broken tracer must never break a log line
        return None
    return None


class CorrelationIdFilter(logging.Filter):
    """Adds ``correlation_id`` to records that lack it (your own loggers' lines).

    Attach it to a handler (``handler.addFilter(CorrelationIdFilter())``) so
    that the application's lines carry the same ID as the pool's. It runs in
    the thread that logs, so put it before any ``QueueHandler``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "correlation_id", None) is None:
            cid = current_correlation_id()
            if cid is not None:
                record.correlation_id = cid
        return True


# ------------------------------------------------------------------ writing records


def event(
    logger: logging.Logger,
    level: int,
    pool: str,
    name: str,
    msg: str,
    *args: Any,
    exc_info: Any = None,
    _depth: int = 2,
    **fields: Any,
) -> None:
    """One structured record: ``"pool <pool>: " + msg % args`` with ``extra`` fields.

    ``pool`` and ``event`` (``name``) are always set, ``correlation_id`` when
    there is one (a ``correlation_id`` field given wins), the other ``fields``
    unless None. Nothing happens when the
    logger is not enabled for ``level``. Field values must hold no secret
    (pass causes through :func:`~.errors.describe_error`).
    """
    if not logger.isEnabledFor(level):
        return
    extra: dict[str, Any] = {"pool": pool, "event": name}
    for key, value in fields.items():
        if value is not None:
            extra[key] = value
    if "correlation_id" not in extra:  # a field given (a leak's checkout) wins over the context
        cid = current_correlation_id()
        if cid is not None:
            extra["correlation_id"] = cid
    logger.log(level, "pool %s: " + msg, pool, *args, exc_info=exc_info, extra=extra, stacklevel=_depth)


def audit(pool: str, name: str, msg: str, *args: Any, **fields: Any) -> None:
    """:func:`event` at INFO on the audit logger ``sqlalchemy_smartpool.audit``."""
    if _AUDIT.isEnabledFor(logging.INFO):
        event(_AUDIT, logging.INFO, pool, name, msg, *args, _depth=3, **fields)


def audit_enabled() -> bool:
    """Would :func:`audit` write anything? (For call sites that must compute fields first.)"""
    return _AUDIT.isEnabledFor(logging.INFO)


def config_changed(pool: str, changes: Mapping[str, tuple[Any, Any]], *, source: str | None = None) -> None:
    """Audit a live settings change: ``changes`` maps each setting to ``(old, new)``.

    For ``reconfigure()``; the values are shown redacted (no setting holds a
    secret, but a validation query or a name might be typed carelessly).
    """
    if not changes or not audit_enabled():
        return
    shown = {key: [_plain(old), _plain(new)] for key, (old, new) in changes.items()}
    text = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in shown.items())
    audit(pool, CONFIG_CHANGED, "settings changed: %s", redact(text), changes=shown, source=source)


def credentials_rotated(pool: str, *, credential: str = "password", source: str | None = None) -> None:
    """Audit new credentials taking effect (never pass the credential itself):
    ``credential`` says which (``password``, ``token``, ``user``), ``source`` from where."""
    where = f" (from {source})" if source else ""
    audit(
        pool, CREDENTIALS_ROTATED, "new %s in use%s", credential, where, credential=credential, source=source
    )


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return redact(str(value))


# ------------------------------------------------------------------ deferred records


class Note(NamedTuple):
    """A record decided under the pool's lock and written after it is released
    (a slow handler must never hold up checkouts). ``level`` is for ``logger``
    (None: audit only); ``audit`` also writes it, at INFO, to the audit logger."""

    logger: str
    level: int | None
    event: str
    msg: str
    args: tuple[Any, ...]
    fields: dict[str, Any]
    audit: bool = False


def emit(pool: str, notes: list[Note]) -> None:
    """Write deferred records, in order, under the pool's current name."""
    for note in notes:
        if note.level is not None:
            logger = logging.getLogger(note.logger)
            if logger.isEnabledFor(note.level):
                event(logger, note.level, pool, note.event, note.msg, *note.args, _depth=3, **note.fields)
        if note.audit and _AUDIT.isEnabledFor(logging.INFO):
            event(_AUDIT, logging.INFO, pool, note.event, note.msg, *note.args, _depth=3, **note.fields)


# ------------------------------------------------------------------ the outage policy

#: the first "still down" line at INFO comes this long after the outage started ...
OUTAGE_REPORT_FIRST = 1.0
#: ... the next ones twice as far apart each time, then at this interval
OUTAGE_REPORT_MAX = 60.0


class OutageTracker:
    """From the first failed connect to the next that works: what to log, and when.

    * the first failure: one WARNING ``outage_started`` with the cause;
    * then at most one line per backoff step: a failed breaker probe (or,
      with the breaker off, a failure when a report is due) gives one
      ``outage_continues`` line with the count of failed connects and the next
      probe -- at INFO when a report is due (1 s after the start, then 2, 4,
      ... up to every 60 s), else at DEBUG; other failures write nothing;
    * the first success: one INFO ``outage_ended`` with the duration and count.

    Pure: time is passed in; the core calls it under the pool's lock and the
    engine writes the notes afterwards.
    """

    __slots__ = ("_interval", "_next_report", "cause", "failures", "since")

    def __init__(self) -> None:
        self.since: float | None = None
        self.failures = 0
        self.cause: str | None = None
        self._interval = OUTAGE_REPORT_FIRST
        self._next_report = 0.0

    @property
    def ongoing(self) -> bool:
        return self.since is not None

    def started(self, now: float, cause: str) -> Note | None:
        """A connect failed: the ``outage_started`` note if none was going on."""
        if self.since is not None:
            return None
        self.since = now
        self.failures = 0
        self.cause = cause
        self._interval = OUTAGE_REPORT_FIRST
        self._next_report = now + self._interval
        return Note(
            ENGINE_LOGGER,
            logging.WARNING,
            OUTAGE_STARTED,
            "connect failed, outage started: %s",
            (cause,),
            {"cause": cause},
            audit=True,
        )

    def failed(self, now: float, cause: str, *, probe: bool, retry_in: float | None) -> Note | None:
        """Count a failed connect (after :meth:`started`); a note when one is due."""
        if self.since is None:  # started() was not called: start now
            return self.started(now, cause)
        self.failures += 1
        self.cause = cause
        if self.failures == 1:  # the one ``outage_started`` already reported
            return None
        due = now >= self._next_report
        if due:
            self._interval = min(self._interval * 2.0, OUTAGE_REPORT_MAX)
            self._next_report = now + self._interval
        elif not probe:
            return None
        nxt = f"; next probe in {retry_in:.2f}s" if retry_in is not None else ""
        return Note(
            ENGINE_LOGGER,
            logging.INFO if due else logging.DEBUG,
            OUTAGE_CONTINUES,
            "still cannot connect after %.1fs, %d failed connects%s: %s",
            (now - self.since, self.failures, nxt, cause),
            {
                "cause": cause,
                "failures": self.failures,
                "duration_s": round(now - self.since, 3),
                "retry_in_s": None if retry_in is None else round(retry_in, 3),
            },
        )

    def succeeded(self, now: float) -> Note | None:
        """A connect worked: the ``outage_ended`` note if an outage was going on."""
        if self.since is None:
            return None
        took = now - self.since
        failures, cause = self.failures, self.cause
        self.since = None
        self.failures = 0
        self.cause = None
        return Note(
            ENGINE_LOGGER,
            logging.INFO,
            OUTAGE_ENDED,
            "database reachable again: outage ended after %.1fs, %d failed connects",
            (took, failures),
            {"duration_s": round(took, 3), "failures": failures, "cause": cause},
            audit=True,
        )


# ------------------------------------------------------------------ JSON lines

#: attributes every LogRecord has; anything else on a record came in through ``extra=``
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, then every ``extra`` field (``pool``, ``event``, ``conn_id``,
    ``cause``, ``correlation_id``, ...), then ``exc_info`` / ``stack_info`` as text.

    ``static`` fields are added to every line (``{"service": "orders"}``).
    Text is passed through :func:`~.errors.redact` (passwords in URLs and
    DSNs become ``***``), so a record from any logger is safe to ship.
    Values JSON cannot hold are written as their ``str()``.
    """

    def __init__(self, *, static: Mapping[str, Any] | None = None, ensure_ascii: bool = False) -> None:
        super().__init__()
        self.static = dict(static or {})
        self.ensure_ascii = ensure_ascii

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        out.update(self.static)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out:
                out[key] = _jsonable(value)
        if record.exc_info:
            out["exc_info"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exc_info"] = redact(record.exc_text)
        if record.stack_info:
            out["stack_info"] = redact(self.formatStack(record.stack_info))
        return json.dumps(out, ensure_ascii=self.ensure_ascii, default=lambda v: redact(str(v)))


def _iso(created: float) -> str:
    stamp = datetime.datetime.fromtimestamp(created, tz=datetime.timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return redact(str(value))

"""What the pool must know about particular DBAPI drivers, and nothing else.

* how each driver spells a connect timeout, so an unreachable host cannot
  hang a background connect for the OS's minutes;
* how to reach a connection's socket, so a hung validation can be cut off;
* how to see the SQL a checkout runs (for leak reports), via the dialect's
  ``do_execute`` events -- scoped to one engine, installed only when asked.
"""

from __future__ import annotations

import math
import os
import socket
import weakref
from collections.abc import Callable
from typing import Any, cast

from sqlalchemy import event

#: driver name (``dialect.driver``) -> connect kwarg and how to express the seconds
CONNECT_TIMEOUT_ARGS: dict[str, tuple[str, Callable[[float], Any]]] = {
    # libpq takes whole seconds (and treats values below 2 as 2)
    "psycopg2": ("connect_timeout", lambda s: max(1, math.ceil(s))),
    "psycopg": ("connect_timeout", lambda s: max(1, math.ceil(s))),
    "mysqldb": ("connect_timeout", lambda s: max(1, math.ceil(s))),
    "pymysql": ("connect_timeout", float),
}


#: hooks already installed per dialect: recreate() (Engine.dispose) builds a new pool
#: on the same dialect, and listeners must not pile up there
_installed: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def _first_time(dialect: Any, hook: str) -> bool:
    done = _installed.setdefault(dialect, set())
    if hook in done:
        return False
    done.add(hook)
    return True


#: record.info key: the pool set PyMySQL's read_timeout for the handshake only
_HANDSHAKE_READ_TIMEOUT = "smartpool_handshake_read_timeout"


def install_connect_timeout(dialect: Any, seconds: float) -> bool:
    """Pass ``seconds`` as the driver's connect timeout unless the app set one.

    Returns False for drivers without one (sqlite: nothing to time out).
    PyMySQL's ``connect_timeout`` covers the TCP connect only; a server that
    accepts and never answers would hang the handshake, so its
    ``read_timeout`` is set too and cleared by :func:`after_connect`.
    """
    driver = getattr(dialect, "driver", "")
    spec = CONNECT_TIMEOUT_ARGS.get(driver)
    if spec is None:
        return False
    if not _first_time(dialect, "connect_timeout"):
        return True
    name, convert = spec
    value = convert(seconds)

    def _set_timeout(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        cparams.setdefault(name, value)
        if driver == "pymysql" and "read_timeout" not in cparams and conn_rec is not None:
            cparams["read_timeout"] = value
            conn_rec.info[_HANDSHAKE_READ_TIMEOUT] = True

    event.listen(dialect, "do_connect", _set_timeout)
    return True


def ping_opens_transaction(dialect: Any) -> bool:
    """Does the dialect's ping (``SELECT 1``) leave a transaction open?

    psycopg2 and psycopg begin one implicitly; the MySQL drivers ping with
    their protocol's ping command and sqlite does not begin on a SELECT.
    """
    return getattr(dialect, "name", "") == "postgresql"


def needs_after_connect(dialect: Any) -> bool:
    return getattr(dialect, "driver", "") == "pymysql"


def after_connect(dbapi_conn: Any, record: Any) -> None:
    """Pool ``connect`` listener: undo what was only meant for the connect
    (PyMySQL's handshake read timeout), whoever opened the connection --
    the pool's connector or SQLAlchemy reconnecting in a request thread."""
    if (
        record is not None
        and record.info.pop(_HANDSHAKE_READ_TIMEOUT, False)
        and dbapi_conn is not None
        and hasattr(dbapi_conn, "_read_timeout")
    ):
        dbapi_conn._read_timeout = None  # re-applied by PyMySQL before every read


#: PostgreSQL connect errors that retrying cannot fix (psycopg gives no SQLSTATE at connect)
_PERMANENT_PG = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "does not exist",
    "is not permitted to log in",
    "unable to open database file",  # sqlite: a missing directory does not appear by itself
)
#: MySQL/MariaDB: access denied (1044, 1045, 1698), unknown database (1049)
_PERMANENT_MYSQL = (1044, 1045, 1049, 1698)


def is_permanent_connect_error(err: BaseException) -> bool:
    """Would a retry of this connect fail the same way (bad credentials, unknown database)?"""
    args = getattr(err, "args", ())
    if args and isinstance(args[0], int) and args[0] in _PERMANENT_MYSQL:
        return True
    text = str(err)
    return any(marker in text for marker in _PERMANENT_PG)


def install_statement_hook(dialect: Any, note: Callable[[Any, str], None]) -> None:
    """Call ``note(pool_record, statement)`` before each statement an engine runs."""
    if not _first_time(dialect, "statements"):
        return

    def _record(cursor: Any, statement: str, *rest: Any) -> None:
        context = rest[-1] if rest else None
        fairy = getattr(context, "_dbapi_connection", None)
        record = getattr(fairy, "_connection_record", None)
        if record is not None:
            note(record, statement)

    for name in ("do_execute", "do_execute_no_params", "do_executemany"):
        event.listen(dialect, name, _record)


def socket_fd(dbapi_conn: Any) -> int | None:
    """The connection's socket descriptor, for drivers that expose one (not sqlite)."""
    sock = getattr(dbapi_conn, "_sock", None)  # PyMySQL
    if sock is not None:
        try:
            return cast(int, sock.fileno())
        except (OSError, ValueError):
            return None
    fileno = getattr(dbapi_conn, "fileno", None)  # psycopg2, psycopg, mysqlclient
    if fileno is None:
        return None
    try:
        fd = fileno()
    except Exception:
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def abort_socket(fd: int) -> None:
    """Shut a hung connection's socket down so the call blocked on it returns."""
    try:
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        s.close()

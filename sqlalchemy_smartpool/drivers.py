"""What the pool must know about particular DBAPI drivers, and nothing else.

* how each driver spells a connect timeout, so an unreachable host cannot
  hang a background connect for the OS's minutes;
* how to reach a connection's socket, so a hung validation can be cut off;
* how to see the SQL a checkout runs (for leak reports), via the dialect's
  ``do_execute`` events -- scoped to one engine, installed only when asked.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import event

from . import urltemplate

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


def install_url_templates(dialect: Any) -> bool:
    """Resolve ``{env:NAME}`` / ``{file:PATH}`` placeholders in the connect arguments at every connect.

    The URL's user, password, host, database and query end up as the
    driver's connect arguments; a ``do_connect`` hook replaces each
    placeholder there just before the driver dials, so a rotated secret file
    is read by the next connect. The templates are kept aside: SQLAlchemy
    2.0 hands every connect the same argument dict, which the first
    resolution would otherwise overwrite. Nothing is resolved or installed
    twice per dialect; a connect argument without a placeholder costs one
    ``in`` test.
    """
    if not _first_time(dialect, "url_templates"):
        return False
    templates: dict[tuple[str, Any], str] = {}

    def _resolve(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        for key, value in cparams.items():
            if urltemplate.has_placeholders(value):
                templates[("kw", key)] = value
        if isinstance(cargs, list):
            for i, value in enumerate(cargs):
                if urltemplate.has_placeholders(value):
                    templates[("arg", i)] = value
        for (kind, key), template in templates.items():
            where = f"connect argument {key}" if kind == "kw" else f"connect argument #{key + 1}"
            value = urltemplate.resolve(template, where=where)
            if kind == "kw":
                cparams[key] = value
            else:
                cargs[key] = value

    event.listen(dialect, "do_connect", _resolve)
    return True


#: the database each dialect connects to, for the pool's name (noted by the plugin from the
#: URL at create_engine, else by a ``do_connect`` hook at the first connect)
_databases: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
#: the connect keywords drivers take the database under (psycopg: dbname, MySQLdb: db)
_DATABASE_KEYS = ("database", "dbname", "db")


def database_label(database: Any) -> str | None:
    """The URL's database as a pool name: a file's name without its directories (sqlite),
    None for an in-memory database or none at all."""
    if isinstance(database, bytes):
        database = database.decode("utf-8", "replace")
    if not isinstance(database, str):
        return None
    text = database.strip()
    if text.startswith("file:"):  # a sqlite URI filename: file:app.db?mode=ro
        text = text[5:].split("?", 1)[0]
    if not text or text == ":memory:" or "mode=memory" in database:
        return None
    label = text.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return label or None


def note_database(dialect: Any, database: Any) -> None:
    """Remember the database ``dialect`` connects to (the plugin, which sees the URL)."""
    label = database_label(database)
    if label is not None and dialect is not None:
        with contextlib.suppress(TypeError):  # not weak-referenceable: no name from the URL then
            _databases[dialect] = label


def connect_target(dialect: Any, creator: Any) -> str | None:
    """``<dialect>://<host>:<port>/<database>`` -- where ``create_engine``'s creator connects,
    never who as (no user, no password) -- read from the arguments it closes over
    (``cargs``/``cparams``); None for a creator of the application's own."""
    code = getattr(creator, "__code__", None)
    cells = getattr(creator, "__closure__", None) or ()
    if code is None:
        return None
    free = dict(zip(code.co_freevars, cells, strict=False))
    try:
        cparams = free["cparams"].cell_contents if "cparams" in free else None
        cargs = free["cargs"].cell_contents if "cargs" in free else ()
    except ValueError:  # an empty cell
        return None
    if not isinstance(cparams, Mapping):
        return None
    name = getattr(dialect, "name", None) or "db"
    database = next((cparams[k] for k in _DATABASE_KEYS if cparams.get(k)), None)
    if name == "sqlite":
        database = database or (cargs[0] if cargs else None)
        return f"sqlite:///{database}" if database else None
    host = cparams.get("host") or cparams.get("unix_socket") or "localhost"
    port = cparams.get("port", "")
    return f"{name}://{host}{':' if port else ''}{port}/{database or ''}"


def noted_database(dialect: Any) -> str | None:
    """The database noted for ``dialect``, if any."""
    try:
        return _databases.get(dialect)
    except TypeError:
        return None


def install_database_note(dialect: Any) -> bool:
    """Note the database at the first connect, from the driver's connect arguments.

    For ``poolclass=SmartPool`` without the plugin, SQLAlchemy gives the pool
    no URL; every connect of ``create_engine``'s creator runs the dialect's
    ``do_connect`` event with the arguments the URL became, which name the
    database under the driver's keyword (``database``, ``dbname``, ``db``) or,
    for sqlite, as the first positional argument. The hook runs after the
    placeholder one, so a ``{env:}`` database is seen resolved.
    """
    if not _first_time(dialect, "database_note"):
        return False

    def _note(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        if noted_database(dialect) is not None:
            return
        for key in _DATABASE_KEYS:
            if cparams.get(key):
                note_database(dialect, cparams[key])
                return
        if getattr(dialect, "name", None) == "sqlite" and cargs:
            note_database(dialect, cargs[0])

    event.listen(dialect, "do_connect", _note)
    return True


#: record.info key: (version, fetched now?) of the credentials a connect used (see live.CredentialSource)
CREDENTIALS_USED = "smartpool_credentials_used"
_SENTINEL_USER, _SENTINEL_PASSWORD = "smartpool-user-probe", "smartpool-password-probe"


def credential_keys(dialect: Any) -> tuple[str, str]:
    """How the dialect passes a URL's user and password to its driver (``passwd`` for mysqlclient)."""
    from sqlalchemy.engine.url import URL

    user_key, password_key = "user", "password"
    try:
        url = URL.create(
            f"{dialect.name}+{dialect.driver}",
            username=_SENTINEL_USER,
            password=_SENTINEL_PASSWORD,
            host="localhost",
            database="db",
        )
        _, cparams = dialect.create_connect_args(url)
    except Exception:  # an exotic dialect: the DB-API's usual names
        return user_key, password_key
    for key, value in dict(cparams).items():
        if value == _SENTINEL_USER:
            user_key = key
        elif value == _SENTINEL_PASSWORD:
            password_key = key
    return user_key, password_key


def install_credentials(dialect: Any) -> bool:
    """Put the pool's ``credentials=`` into the driver's connect arguments at every connect.

    A ``do_connect`` hook asks the pool that opens the connection (the
    record's pool: the engine's current one, or a recreated / swapped one)
    for its credentials and sets the user (when given) and the password. For
    a pool without credentials on the same dialect the URL's own values are
    put back (SQLAlchemy 2.0 hands every connect the same argument dict).
    Installed once per dialect; the values never reach a log.
    """
    if not _first_time(dialect, "credentials"):
        return False
    event.listen(dialect, "do_connect", credentials_hook(*credential_keys(dialect)))
    return True


def credentials_hook(user_key: str, password_key: str) -> Callable[[Any, Any, Any, dict[str, Any]], None]:
    """The ``do_connect`` listener of :func:`install_credentials` for one dialect's argument names."""
    originals: dict[str, Any] = {}

    def _credentials(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        pool = getattr(conn_rec, "_ConnectionRecord__pool", None)
        fetch = getattr(pool, "_credentials_for_connect", None)
        got = fetch() if fetch is not None else None
        for key in (user_key, password_key):
            if key not in originals:
                originals[key] = cparams.get(key, _MISSING)
        if got is None:
            for key, value in originals.items():
                if value is _MISSING:
                    cparams.pop(key, None)
                else:
                    cparams[key] = value
            return
        creds, version, fresh = got
        if conn_rec is not None:
            conn_rec.info[CREDENTIALS_USED] = (version, fresh)
        if creds.user is not None:
            cparams[user_key] = creds.user
        cparams[password_key] = creds.password

    return _credentials


_MISSING: Any = object()


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


#: how each server family states the connections one client may open, as one row of
#: numbers; NULL or a non-positive number means "no limit" from that setting
_LIMIT_QUERIES = {
    "postgresql": (
        "SELECT current_setting('max_connections')::int"
        " - current_setting('superuser_reserved_connections')::int"
        " - coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0),"
        " (SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user)"
    ),
    "mysql": "SELECT @@max_connections, @@max_user_connections",
    "mariadb": "SELECT @@max_connections, @@max_user_connections",
}


def server_connection_limit(dialect: Any, dbapi_conn: Any) -> int | None:
    """The most connections this client may open on the server (None: unknown or none).

    PostgreSQL: ``max_connections`` less the reserved slots, and the role's
    ``CONNECTION LIMIT``; MySQL/MariaDB: ``max_connections`` and
    ``max_user_connections``. Run once, on a connection not yet handed out;
    a transaction it opened is rolled back.
    """
    query = _LIMIT_QUERIES.get(getattr(dialect, "name", ""))
    if query is None or dbapi_conn is None:
        return None
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute(query)
        row = cursor.fetchone()
    finally:
        cursor.close()
        dbapi_conn.rollback()
    limits = [int(v) for v in (row or ()) if v is not None and int(v) > 0]
    return min(limits) if limits else None


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


def _fd(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _transport_fd(transport: Any) -> int | None:
    sock = transport.get_extra_info("socket") if transport is not None else None
    return _fd(sock.fileno()) if sock is not None else None


#: driver name -> how to reach the socket of one of its (SQLAlchemy-adapted) connections
_SOCKETS: dict[str, Callable[[Any], int | None]] = {
    "psycopg2": lambda c: _fd(c.fileno()),
    "psycopg": lambda c: _fd(c.fileno() if hasattr(c, "fileno") else c._connection.fileno()),
    "mysqldb": lambda c: _fd(c.fileno()),
    "pymysql": lambda c: _fd(c._sock.fileno()) if c._sock is not None else None,
    "asyncpg": lambda c: _transport_fd(c._connection._transport),
    "aiomysql": lambda c: _transport_fd(getattr(c._connection._writer, "transport", None)),
}


#: async drivers read their sockets in the event loop: an EOF may already have been
#: consumed (and the socket closed, its number reused) by the time the pool looks, so
#: the driver's own state is asked too
_CLOSED: dict[str, Callable[[Any], bool]] = {
    "asyncpg": lambda c: bool(c._connection.is_closed()),
    "aiomysql": lambda c: c._connection._reader is None or bool(c._connection._reader.at_eof()),
}


def closed_probe(dialect: Any, dbapi_conn: Any) -> Callable[[], bool] | None:
    """A cheap check that the driver already knows its connection is gone (None: no such state)."""
    check = _CLOSED.get(getattr(dialect, "driver", ""))
    if check is None or dbapi_conn is None:
        return None

    def probe() -> bool:
        try:
            return check(dbapi_conn)
        except Exception:  # the driver's internals moved: fall back to the ping
            return True

    return probe


def socket_fd(dialect: Any, dbapi_conn: Any) -> int | None:
    """The connection's socket descriptor, for drivers known to have one (not sqlite).

    Used for the non-blocking liveness look before a checkout and to cut a
    hung validation off; only a driver listed in ``_SOCKETS`` is asked.
    """
    reach = _SOCKETS.get(getattr(dialect, "driver", ""))
    if reach is None or dbapi_conn is None:
        return None
    try:
        return reach(dbapi_conn)
    except Exception:  # closed, or a driver version that hides it: no look, no watchdog
        return None

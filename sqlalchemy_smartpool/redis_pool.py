"""SmartRedisPool and AsyncSmartRedisPool: redis-py's pools on the pool engine.

Drop-ins for ``redis.ConnectionPool`` / ``redis.BlockingConnectionPool`` and
``redis.asyncio.ConnectionPool``: ``redis.Redis(connection_pool=pool)``. The
connection is redis-py's own ``Connection`` object; every policy (waiting,
validation, growth, shrinking, lifetimes, retries, breaker, leaks) is the
engine's. This module only translates: how a redis connection is opened,
closed and pinged, which connect errors are transient or permanent, the
exceptions redis-py users catch (:mod:`.redis_errors`), and the pool API the
redis-py client calls (``get_connection``, ``release``, ``connection_kwargs``,
``get_encoder``, ``disconnect``, ``reset``, ``pid``).

Not supported, refused at construction: client-side caching (``cache``,
``cache_config``: redis-py wraps connections in a pool-owned cache proxy) and
maintenance notifications / connection handoff (``maint_notifications_config``
enabled: redis-py's handler walks and rewrites the pool's connection lists and
connection kwargs under the pool's lock while connections move to another
endpoint; the engine owns those lists).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import redis
import redis.asyncio
import redis.asyncio.connection as aio_connection
from redis import connection as sync_connection
from redis import exceptions as redis_exc
from redis._parsers import Encoder
from redis.credentials import CredentialProvider

from . import forks, leaks, live, logs, profiling, urltemplate
from . import stats as S
from .config import MAX_SECONDS, POOL_KEYWORDS, PoolConfig, from_pool_arguments
from .engine import CAUSE_ATTR, SLOT_ATTR, Pending, PoolEngine, Runtime
from .errors import ConfigError, describe_error, redact
from .health import HealthChecker, checker_for
from .redis_errors import REDIS_ERRORS
from .sched import Housekeeper
from .sched_asyncio import check_on_loop

#: on every connection we open: the backend (and so the engine, and the process) it belongs to
OWNER_ATTR = "_smartpool_owner"
#: on every connection we open: the socket (sync) / stream writer (asyncio) it was opened with
_WIRE_ATTR = "_smartpool_wire"

#: redis-py's own kwargs that are pool settings, not connection settings
_REDIS_POOL_ARGS = ("max_connections", "timeout", "queue_class")
#: kwargs for features this pool does not support (see the module docstring)
_UNSUPPORTED = ("cache", "cache_config", "cache_factory", "oss_cluster_maint_notifications_handler")
#: redacted in repr(), as redis-py does
_SENSITIVE = frozenset({"password", "username", "ssl_password", "credential_provider"})

_DISCONNECTS = (redis_exc.ConnectionError, redis_exc.TimeoutError, OSError)
_AUTH = (redis_exc.AuthenticationError, redis_exc.AuthorizationError)
_PERMANENT_MESSAGES = ("invalid db index", "db index is out of range", "noauth", "wrongpass", "noperm")

_UNSET: Any = object()
_P = TypeVar("_P", bound="_PoolBase")
_parse_url: Callable[[str], dict[str, Any]] = sync_connection.parse_url


def split_kwargs(
    kwargs: Mapping[str, Any],
    *,
    url_query: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[PoolConfig, dict[str, Any]]:
    config, rest, _ = _split_kwargs(kwargs, url_query=url_query, environ=environ)
    return config, rest


def _split_kwargs(
    kwargs: Mapping[str, Any],
    *,
    url_query: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[PoolConfig, dict[str, Any], live.Layers]:
    """Separate pool settings from connection kwargs; returns (config, connection kwargs).

    Pool settings: every :class:`PoolConfig` field (``breaker_<field>`` too) and
    ``pool_config=``; redis-py's pool arguments ``max_connections`` (-> ``max_size``)
    and ``timeout`` (``BlockingConnectionPool``'s wait; ``None`` = wait for ever ->
    ``acquire_timeout``). ``queue_class`` is accepted and ignored (the engine's
    ``reuse`` decides). Everything else goes to the connection class. The layers
    are the SQLAlchemy pools': defaults (``redis``'s) < ``pool_config`` < keywords
    < the settings file and ``SMARTPOOL_*`` variables of ``environ`` (none if None)
    < ``url_query``.
    """
    rest = dict(kwargs)
    base = rest.pop("pool_config", None)
    given = {k: rest.pop(k) for k in list(rest) if k in POOL_KEYWORDS or k.startswith("breaker_")}
    redis_given = {k: rest.pop(k) for k in _REDIS_POOL_ARGS if k in rest}
    redis_given.pop("queue_class", None)
    for name, field, value in (
        ("max_connections", "max_size", redis_given.get("max_connections", _UNSET)),
        ("timeout", "acquire_timeout", redis_given.get("timeout", _UNSET)),
    ):
        if value is _UNSET:
            continue
        if name == "timeout" and value is None:
            value = MAX_SECONDS
        if name == "max_connections" and value is None:
            continue  # redis-py: None means its default; ours applies
        if field in given and given[field] != value:
            raise ConfigError(
                field,
                given[field],
                f"conflicts with redis-py's {name}={value!r}; give only one of them",
                source="keyword",
            )
        given.setdefault(field, value)
    for name in _UNSUPPORTED:
        if rest.get(name) is not None:
            raise ConfigError(name, rest[name], "not supported by SmartRedisPool", source="keyword")
        rest.pop(name, None)
    maint = rest.pop("maint_notifications_config", None)
    if maint is not None and getattr(maint, "enabled", False) is True:
        raise ConfigError(
            "maint_notifications_config",
            maint,
            "maintenance notifications (connection handoff) are not supported by SmartRedisPool; "
            "leave it unset or pass MaintNotificationsConfig(enabled=False)",
            source="keyword",
        )
    config = from_pool_arguments(base, given, {}, url_query=url_query, environ=environ, backend="redis")
    layers = live.Layers.of(base, given, {}, environ=environ, url_query=url_query, backend="redis")
    if (
        config.connect_timeout is not None
        and rest.get("socket_connect_timeout") is None
        and rest.get("socket_timeout") is None
    ):
        rest["socket_connect_timeout"] = config.connect_timeout  # an unreachable host cannot hang a connect
    return config, rest, layers


def _url_kwargs(url: str, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """redis-py's ``from_url`` merge (URL options win), with the pool settings of the query
    (``smartpool_<setting>`` or a bare setting name) split off, to be parsed as text."""
    safe, restore = urltemplate.protect(url)  # {env:REDIS_HOST} would not survive the URL parser
    options: dict[str, Any] = {
        k: restore(v) if isinstance(v, str) else v for k, v in _parse_url(safe).items()
    }
    query = {k: options.pop(k) for k in list(options) if k.startswith("smartpool_")}
    for k in list(options):  # ?max_size=9: a pool setting, as text, spelled without the prefix
        if k in POOL_KEYWORDS or k.startswith("breaker_"):
            query[f"smartpool_{k}"] = options.pop(k)
    if "connection_class" in kwargs:
        options["connection_class"] = kwargs["connection_class"]
    return {**kwargs, **options}, query


class TemplatedCredentials(CredentialProvider):
    """``username`` / ``password`` with ``{env:}`` / ``{file:}`` placeholders, resolved at each AUTH.

    redis-py asks its credential provider whenever a connection (re)connects,
    also when it reconnects on its own after an error, so a rotated secret
    file is used by the next one. Its repr shows no credentials.
    """

    def __init__(self, username: str | None, password: str | None) -> None:
        self._username = username
        self._password = password

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        password = self._password or ""
        if urltemplate.has_placeholders(password):
            password = urltemplate.resolve(password, where="redis password")
        username = self._username or ""
        if urltemplate.has_placeholders(username):
            username = urltemplate.resolve(username, where="redis username")
        return (username, password) if username else (password,)

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        return self.get_credentials()

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


class PoolCredentials(CredentialProvider):
    """redis-py's credential provider over a ``credentials=`` callable (:class:`~.live.CredentialSource`).

    redis-py asks it at every AUTH (each new connection, and each reconnect it
    makes on its own); the source's cache spares the callable most of those.
    ``user``: the user name when the callable gives only a password or token.
    Each connection gets a :class:`_BoundCredentials` that remembers which
    value it used, so a refused cached password is retried fresh once.
    """

    def __init__(self, source: live.CredentialSource, user: str | None = None) -> None:
        self.source = source
        self.user = user

    def _pair(self, creds: live.Credentials) -> tuple[str] | tuple[str, str]:
        user = creds.user or self.user
        return (user, creds.password) if user else (creds.password,)

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        return self._pair(self.source.get()[0])

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        return self._pair((await self.source.aget())[0])

    def bound(self) -> _BoundCredentials:
        return _BoundCredentials(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


class _BoundCredentials(CredentialProvider):
    """One connection's view of :class:`PoolCredentials`: notes the version it used."""

    def __init__(self, pool_credentials: PoolCredentials) -> None:
        self.pool_credentials = pool_credentials
        self.used: tuple[int, bool] | None = None

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        creds, version, fresh = self.pool_credentials.source.get()
        self.used = (version, fresh)
        return self.pool_credentials._pair(creds)

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        creds, version, fresh = await self.pool_credentials.source.aget()
        self.used = (version, fresh)
        return self.pool_credentials._pair(creds)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


def _with_credentials(
    conn_kwargs: dict[str, Any], credentials: Any, ttl: Any, is_async: bool
) -> dict[str, Any]:
    """``credentials=`` (a callable) as the connections' credential provider."""
    if credentials is None:
        if ttl is not _UNSET:
            raise ConfigError("credentials_ttl", ttl, "needs credentials=", source="keyword")
        return conn_kwargs
    for key in ("credential_provider", "password"):
        if conn_kwargs.get(key) is not None:
            raise ConfigError(
                "credentials",
                f"<{type(credentials).__name__}>",
                f"give either credentials= or {key}=, not both",
                source="keyword",
            )
    source = live.CredentialSource(credentials, live.DEFAULT_CREDENTIALS_TTL if ttl is _UNSET else ttl)
    if source.is_async and not is_async:
        raise ConfigError(
            "credentials",
            f"<{type(credentials).__name__}>",
            "is an async callable: it needs AsyncSmartRedisPool",
            source="keyword",
        )
    out = dict(conn_kwargs)
    out.pop("password", None)
    out["credential_provider"] = PoolCredentials(source, out.pop("username", None))
    return out


def _templated(conn_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Check the placeholders of the connection kwargs now (fail early, naming them); templated
    credentials become a :class:`TemplatedCredentials` provider, read at each AUTH."""
    for key in urltemplate.templated_keys(conn_kwargs):
        urltemplate.check(conn_kwargs[key], where=f"redis connection argument {key}")
    creds = [k for k in ("username", "password") if urltemplate.has_placeholders(conn_kwargs.get(k))]
    if creds and conn_kwargs.get("credential_provider") is None:
        conn_kwargs = dict(conn_kwargs)
        username, password = conn_kwargs.pop("username", None), conn_kwargs.pop("password", None)
        conn_kwargs["credential_provider"] = TemplatedCredentials(username, password)
    return conn_kwargs


def _is_permanent(err: BaseException) -> bool:
    if isinstance(err, _AUTH):
        return True
    if isinstance(err, redis_exc.ResponseError):
        text = str(err).lower()
        return any(m in text for m in _PERMANENT_MESSAGES) or isinstance(
            err, redis_exc.NoPermissionError
        )
    return False


def _is_transient(err: BaseException) -> bool:
    return isinstance(err, _DISCONNECTS) and not isinstance(err, _AUTH)


def _parse_maxclients(reply: Any) -> int | None:
    """``CONFIG GET maxclients``: a [name, value] list (RESP2) or a {name: value} map (RESP3)."""
    if isinstance(reply, dict):
        values = list(reply.values())
    elif isinstance(reply, (list, tuple)):
        values = list(reply[1:2])
    else:
        return None
    try:
        return int(values[0]) if values else None
    except (TypeError, ValueError):
        return None


def default_name(conn_kwargs: Mapping[str, Any]) -> str:
    """``redis-<host>:<port>/<db>`` (``redis-unix:<path>/<db>``): where the pool connects, never
    who it is (no user, no password); a placeholder is shown as written."""
    db = conn_kwargs.get("db", 0)
    path = conn_kwargs.get("path")
    if path:
        return redact(f"redis-unix:{path}/{db}")
    return redact(f"redis-{conn_kwargs.get('host', 'localhost')}:{conn_kwargs.get('port', 6379)}/{db}")


def _ok_pong(reply: Any) -> bool:
    return reply in (b"PONG", "PONG", True)


def _identity(value: Any) -> Any:
    return value


class _SyncBackend:
    """The engine's :class:`~.engine.Backend` for ``redis.Connection`` objects.

    Written once for both pools: every driver call goes through ``self._await``
    (the identity here; the greenlet bridge's ``await_`` in :class:`_AsyncBackend`),
    so only what really differs -- the wire object, how unread data is seen, the
    socket -- is overridden there.
    """

    def __init__(
        self, connection_class: Any, kwargs: dict[str, Any], await_: Callable[[Any], Any] = _identity
    ) -> None:
        self._cls = connection_class
        self._kwargs = kwargs
        self._await = await_
        self.pid = os.getpid()
        self.engine: PoolEngine[Any] | None = None

    def _wire(self, conn: Any) -> Any:
        """The object a connection talks through (redis-py replaces it when it reconnects)."""
        return conn._sock

    def _can_read(self, conn: Any) -> bool:
        return bool(conn.can_read())

    def open(self) -> Any:
        provider = self._kwargs.get("credential_provider")
        if not isinstance(provider, PoolCredentials):
            return self._open(self._kwargs)
        for attempt in (1, 2):
            bound = provider.bound()
            try:
                return self._open({**self._kwargs, "credential_provider": bound})
            except Exception as err:
                used = bound.used
                if attempt == 2 or used is None or not _is_permanent(err):
                    raise
                if not provider.source.refused(*used):
                    raise
                # a cached password the server no longer takes (rotated): once more with a fresh one
        raise AssertionError("unreachable")

    def _open(self, kwargs: dict[str, Any]) -> Any:
        if urltemplate.templated_keys(kwargs):  # {env:}/{file:} in host, db, ...: read at each connect
            kwargs = urltemplate.resolve_kwargs(kwargs, where="redis connection argument {key}")
        conn = self._cls(**kwargs)
        user = conn.socket_timeout
        bound = conn.socket_connect_timeout  # yours, or connect_timeout (see split_kwargs)
        if bound is None or (user is not None and user <= bound):
            self._await(conn.connect())
        else:
            # redis-py reads the handshake (HELLO, AUTH, SELECT, CLIENT SETNAME) with
            # socket_timeout, by default none: a black-holed host would hang this connect
            # for ever, and the breaker never hear of it. Bound it as the TCP connect is.
            conn.socket_timeout = bound
            try:
                self._await(conn.connect())
            finally:
                conn.socket_timeout = user
                self._restore_timeout(conn, user)
        setattr(conn, OWNER_ATTR, self)
        setattr(conn, _WIRE_ATTR, self._wire(conn))
        return conn

    @staticmethod
    def _restore_timeout(conn: Any, timeout: float | None) -> None:
        """The socket and the parser's buffer copied the handshake's bound: give them the user's."""
        sock = conn._sock
        if sock is not None:
            sock.settimeout(timeout)
        parser = conn._parser
        buffer = getattr(parser, "_buffer", None)
        if buffer is not None and hasattr(buffer, "socket_timeout"):  # the Python parser
            buffer.socket_timeout = timeout
        if hasattr(parser, "_socket_timeout"):  # hiredis
            parser._socket_timeout = timeout

    def close(self, conn: Any, reason: BaseException | None = None) -> None:
        self._await(conn.disconnect())

    def same_wire(self, conn: Any) -> bool:
        """Still on the socket it was opened with (redis-py reconnects on its own after errors)."""
        wire = self._wire(conn)
        return wire is not None and wire is getattr(conn, _WIRE_ATTR, None)

    def ping(self, conn: Any) -> bool:
        if not self.same_wire(conn):
            setattr(conn, CAUSE_ATTR, "disconnected (redis-py closed or replaced its socket)")
            return False
        try:
            if self._can_read(conn):  # unread data: a reply nobody read, or the server's goodbye
                setattr(conn, CAUSE_ATTR, "unread data on the connection (or the server closed it)")
                return False
            self._await(conn.send_command("PING", check_health=False))
            return _ok_pong(self._await(conn.read_response()))
        except _DISCONNECTS as err:
            setattr(conn, CAUSE_ATTR, describe_error(err))
            return False

    def reusable(self, conn: Any) -> bool:
        """May a released connection serve the next caller? Connected, on its own socket,
        not marked for reconnect, and nothing unread (redis-py's "Connection has data")."""
        if not self.same_wire(conn) or conn.should_reconnect():
            return False
        try:
            return not self._can_read(conn)
        except _DISCONNECTS:
            return False

    def judge(self, conn: Any) -> tuple[bool, bool]:
        """For :meth:`PoolEngine.return_judged`: (may serve again, died while held)."""
        usable = self.reusable(conn)
        died = not usable and not self.same_wire(conn)
        if not usable:  # why, for the engine's invalidate line
            why = "disconnected while checked out" if died else "unread data, or marked for reconnect"
            setattr(conn, CAUSE_ATTR, why)
        return usable, died

    def is_transient(self, err: BaseException) -> bool:
        return _is_transient(err)

    def is_permanent(self, err: BaseException) -> bool:
        return _is_permanent(err)

    def socket_fd(self, conn: Any) -> int | None:
        sock = conn._sock
        return sock.fileno() if sock is not None else None

    def server_limit(self, conn: Any) -> int | None:
        try:
            self._await(conn.send_command("CONFIG", "GET", "maxclients", check_health=False))
            return _parse_maxclients(self._await(conn.read_response()))
        except redis_exc.ResponseError:  # CONFIG disabled, renamed or not permitted
            return None

    def closed_probe(self, conn: Any) -> Callable[[], bool] | None:
        return None


class _PoolBase:
    """What both pools share -- everything but the sync/async shells of redis-py's API:
    kwargs, config, engine construction, fork handling, the return path, repr, encoder, stats."""

    connection_class: Any
    _engine: PoolEngine[Any]
    #: what the metrics call this pool: ``smartpool.redis.<name>.*`` in StatsD, ``pool_kind`` in health()
    pool_kind = "redis"
    _backend_class: type[_SyncBackend] = _SyncBackend
    _await_: Callable[[Any], Any] = staticmethod(_identity)
    _is_asyncio = False

    def __init__(self, connection_class: Any, **kwargs: Any) -> None:
        url_query = kwargs.pop("_url_query", None)
        environ = kwargs.pop("environ", None)
        layers = kwargs.pop("_layers", None)
        credentials = kwargs.pop("credentials", None)
        credentials_ttl = kwargs.pop("credentials_ttl", _UNSET)
        environ = os.environ if environ is None else environ
        config, conn_kwargs, built_from = _split_kwargs(kwargs, url_query=url_query, environ=environ)
        #: what the config was merged from: a settings reload merges the same way (live.watch_settings)
        self._layers: live.Layers = layers or built_from
        self._layered = config
        self._settings_watch: live.SettingsWatch | None = None
        conn_kwargs = _with_credentials(conn_kwargs, credentials, credentials_ttl, self._is_asyncio)
        conn_kwargs = _templated(conn_kwargs)
        if conn_kwargs.get("himport_registry") is None:
            registry_cls = _himport_registry()
            if registry_cls is not None:  # redis-py >= 8.1 shares one registry across connections
                conn_kwargs["himport_registry"] = registry_cls()
        self.himport_registry = conn_kwargs.get("himport_registry")
        connection_class(**conn_kwargs)  # a bad keyword fails here, not in a background connect
        self.connection_class = connection_class
        self._connection_kwargs = conn_kwargs
        self._config = config
        self._clock: Callable[[], float] = time.monotonic
        self._name = config.name or default_name(conn_kwargs)
        self.cache = None  # client-side caching is not supported (see the module docstring)
        self._fork_lock = threading.Lock()
        self._engine = self._new_engine()
        self.pid = os.getpid()
        forks.register(self)

    @classmethod
    def from_url(cls: type[_P], url: str, **kwargs: Any) -> _P:
        """As redis-py's ``ConnectionPool.from_url``; ``smartpool_<setting>`` query keys
        (or a bare setting name: ``?max_size=9``) are pool settings."""
        merged, query = _url_kwargs(url, kwargs)
        return cls(**cls._url_connection_class(merged), _url_query=query)

    @staticmethod
    def _url_connection_class(kwargs: dict[str, Any]) -> dict[str, Any]:
        return kwargs

    def _runtime(self, name: str, workers: int) -> Runtime:
        raise NotImplementedError

    def _new_engine(self) -> PoolEngine[Any]:
        backend = self._backend_class(self.connection_class, self._connection_kwargs, self._await_)
        engine: PoolEngine[Any] = PoolEngine(
            self._config,
            backend,
            name=self._name,
            errors=REDIS_ERRORS,
            runtime=self._runtime,
            budget_target=lambda: default_name(self._connection_kwargs),
        )
        backend.engine = engine
        old = getattr(self, "_engine", None)
        if old is not None:  # reset() or a fork: the checkout listeners stay registered
            engine.adopt_listeners(old.listeners)
        return engine

    def _after_fork_in_child(self) -> None:
        """Run by :mod:`.forks` in a forked child: a fresh lock and engine at once. The old
        engine, reset by the same hook, quarantines and keeps the parent's connections."""
        self._fork_lock = threading.Lock()
        self._engine = self._new_engine()
        self.pid = os.getpid()

    def _checkpid(self) -> None:
        """redis-py's pid check, for a fork that skipped Python's at-fork hooks (C code calling
        ``fork()``; after ``os.fork()`` :meth:`_after_fork_in_child` has already run): a fresh
        engine for the child; the parent's connections are forgotten (never reused, closed or
        shut down here)."""
        if self.pid == os.getpid():
            return
        lock = self._fork_lock
        if not lock.acquire(timeout=5):  # forked while another thread held it
            raise redis_exc.ChildDeadlockedError
        try:
            if self.pid != os.getpid():
                self._engine = self._new_engine()
                if self._settings_watch is not None:
                    self._settings_watch.attach(self)
                self.pid = os.getpid()  # last: other threads of the child wait on the lock till now
        finally:
            lock.release()

    def _return(self, connection: Any) -> None:
        """Take a connection back (blocking-style: the async pool runs it in a greenlet).
        One with unread data, or disconnected, is replaced; not ours, or released twice: ignored."""
        slot = self._owned_slot(connection)
        if slot is None:
            return
        owner = getattr(connection, OWNER_ATTR)
        owner.engine.return_judged(slot, lambda: owner.judge(connection))

    def _disconnect(self, inuse_connections: bool) -> None:
        """redis-py's ``disconnect()``: idle connections closed, and by default those in use
        too (their next command fails or reconnects; they are replaced when released)."""
        engine = self._engine
        engine.dispose()
        if inuse_connections:
            for conn in engine.connections(in_use_only=True):
                engine.backend.close(conn)
                slot = getattr(conn, SLOT_ATTR, None)
                why = logs.CLOSE_CLIENT_DISCONNECT
                conn_id = slot.id if slot is not None else None
                msg = "connection #%s closed (%s)"
                logs.audit(engine.name, logs.CLOSE, msg, conn_id, why, conn_id=conn_id, reason=why)

    def _re_auth(self, token: Any) -> None:
        for conn in self._engine.connections():
            conn.set_re_auth_token(token)

    # -- what redis-py's clients read --------------------------------------------------

    @property
    def connection_kwargs(self) -> dict[str, Any]:
        return self._connection_kwargs

    @connection_kwargs.setter
    def connection_kwargs(self, value: dict[str, Any]) -> None:
        self._connection_kwargs = value
        self._engine.backend._kwargs = value  # type: ignore[attr-defined]

    @property
    def max_connections(self) -> int:
        return self._config.max_size

    @property
    def config(self) -> PoolConfig:
        return self._config

    @property
    def name(self) -> str:
        """What log lines, errors, ``stats()`` and metrics call this pool: ``name=``, else
        ``redis-<host>:<port>/<db>``."""
        return self._name

    def get_protocol(self) -> Any:
        return self._connection_kwargs.get("protocol")

    def get_encoder(self) -> Any:
        kw = self._connection_kwargs
        return kw.get("encoder_class", Encoder)(
            encoding=kw.get("encoding", "utf-8"),
            encoding_errors=kw.get("encoding_errors", "strict"),
            decode_responses=kw.get("decode_responses", False),
        )

    def set_retry(self, retry: Any) -> None:
        self._connection_kwargs["retry"] = retry
        for conn in self._engine.connections():
            conn.retry = retry

    def maint_notifications_enabled(self) -> bool:
        return False

    def owns_connection(self, connection: Any) -> bool:
        owner = getattr(connection, OWNER_ATTR, None)
        return owner is not None and owner.engine is self._engine and owner.pid == os.getpid()

    def get_connection_count(self) -> list[tuple[int, dict[str, Any]]]:
        core = self._engine.core
        return [(len(core.idle), {"state": "idle"}), (core.in_use, {"state": "used"})]

    def __repr__(self) -> str:
        pieces = ",".join(
            f"{k}={'<REDACTED>' if k in _SENSITIVE else v}"
            for k, v in self._connection_kwargs.items()
            if k != "himport_registry"
        )
        cls = self.connection_class
        return (
            f"<{type(self).__module__}.{type(self).__name__}"
            f"(<{cls.__module__}.{cls.__name__}({pieces})>) "
            f"min_size={self._config.min_size} max_size={self._config.max_size}>"
        )

    # -- the pool's own API ------------------------------------------------------------

    def stats(self) -> S.PoolStats:
        """A consistent snapshot of gauges, counters and wait percentiles."""
        return self._engine.stats()

    def fleet_status(self) -> dict[str, Any] | None:
        """The fleet budget as this pool sees it (None without ``budget``); docs/fleet.md."""
        return self._engine.fleet_status()

    def suspected_leaks(self) -> list[leaks.LeakInfo]:
        """Checkouts held longer than ``leak_detection_threshold``, oldest first."""
        return self._engine.suspected_leaks()

    def size(self) -> int:
        """Open connections (idle + in use)."""
        return self._engine.core.size

    def top_holders(self, n: int = 10, *, by: str = "total") -> list[profiling.Holder]:
        """The code locations that hold connections longest (see ``SmartPool.top_holders``)."""
        return self._engine.top_holders(n, by=by)

    def add_checkout_listener(self, fn: profiling.Listener, *, location: bool = False) -> None:
        """Call ``fn(CheckoutTiming)`` at every release (see ``SmartPool.add_checkout_listener``)."""
        self._engine.add_checkout_listener(fn, location=location)

    def remove_checkout_listener(self, fn: profiling.Listener) -> bool:
        """Stop calling ``fn``; False if it was not registered."""
        return self._engine.remove_checkout_listener(fn)

    # -- live operations (docs/operations.md); the asyncio pool awaits the closing ones ---

    def pause(self) -> None:
        """Hold checkouts (each waits within ``acquire_timeout``) and open nothing, until :meth:`resume`."""
        self._checkpid()
        self._engine.pause()

    def resume(self) -> None:
        """End :meth:`pause`; the waiters are served in their order."""
        self._checkpid()
        self._engine.resume()

    @property
    def paused(self) -> bool:
        return self._engine.paused

    def _apply_changes(self, changes: Mapping[str, Any], source: str) -> dict[str, tuple[Any, Any]]:
        """The one path of every live change (reconfigure, resize, a settings reload)."""
        self._checkpid()
        diff = self._engine.reconfigure(changes, source=source)
        self._config = self._engine.config
        return diff

    def _drain(self) -> int:
        self._checkpid()
        return self._engine.drain(source="drain()")

    def _rotate(self) -> int:
        self._checkpid()
        provider = self._connection_kwargs.get("credential_provider")
        if isinstance(provider, PoolCredentials):
            provider.source.invalidate()
        return self._engine.drain(event=live.CREDENTIALS_ROTATED, source="rotate_credentials()")

    def _recreate_with(self, config: PoolConfig) -> Any:
        """A new pool of this kind with ``config`` (``swap_pool``): same connection class and
        arguments (its credential provider too), checkout listeners and layers; a settings watch
        moves over."""
        new = type(self)(self.connection_class, **self._connection_kwargs, pool_config=config, environ={},
                         _layers=self._layers)  # fmt: skip
        new._engine.adopt_listeners(self._engine.listeners)  # checkout listeners carry over
        if self._settings_watch is not None:
            self._settings_watch.attach(new)
        return new

    def _health_checker(self) -> HealthChecker:
        spawn = getattr(self, "_spawn", None)  # the asyncio pool's greenlet bridge
        return checker_for(self, lambda: self._engine, pool_kind=self.pool_kind, spawn=spawn)

    def _owned_slot(self, connection: Any) -> Any:
        """The slot of a connection this pool's current engine handed out, else None."""
        owner = getattr(connection, OWNER_ATTR, None)
        slot = getattr(connection, SLOT_ATTR, None)
        if owner is None or slot is None or owner.pid != os.getpid():
            return None  # not ours, or a parent process's: never touch its socket
        engine = owner.engine
        if engine is None or not engine.is_leased(slot):
            return None  # released twice
        return slot


def _himport_registry() -> Any:
    try:
        from redis.himport import HImportRegistry
    except ImportError:  # pragma: no cover - redis-py < 8.1
        return None
    return HImportRegistry


class SmartRedisPool(_PoolBase, sync_connection.ConnectionPoolInterface):
    """A fair, adaptive, self-healing pool for ``redis.Redis(connection_pool=pool)``.

    ``SmartRedisPool(host=..., port=..., db=..., min_size=2, max_size=20)`` or
    ``SmartRedisPool.from_url("redis://host:6379/0", max_size=20)``: every
    :class:`PoolConfig` field is a keyword (``pool_config=`` too); redis-py's
    ``max_connections`` means ``max_size`` and ``BlockingConnectionPool``'s
    ``timeout`` means ``acquire_timeout``; all other keywords go to
    ``connection_class`` as with redis-py. The settings file
    (``SMARTPOOL_CONFIG_FILE``) and ``SMARTPOOL_*`` variables apply on top, as
    for SmartPool (``environ={}`` ignores them); ``{env:NAME}`` /
    ``{file:PATH}`` placeholders in the URL or keywords are read at every
    connect. Callers wait (FIFO, up to
    ``acquire_timeout``) when all connections are busy, as with
    ``BlockingConnectionPool``; a timeout raises :class:`~.redis_errors.RedisPoolTimeout`,
    a ``redis.ConnectionError``.

    ``disconnect()`` closes connections and keeps the pool usable (as
    redis-py's); ``close()`` closes it for good. Fork-safe: a child process
    gets a fresh pool on its first use and never touches its parent's sockets.
    """

    def __init__(self, connection_class: Any = redis.Connection, **kwargs: Any) -> None:
        super().__init__(connection_class, **kwargs)

    def _runtime(self, name: str, workers: int) -> Runtime:
        return Housekeeper(name, workers=workers, clock=self._clock)

    # -- redis-py's pool API -----------------------------------------------------------

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        """A connected connection (the command-name arguments of redis-py < 5.3 are ignored)."""
        if self.pid != os.getpid():
            self._checkpid()
        return self._engine.checkout()

    def release(self, connection: Any) -> None:
        """Take a connection back; one with unread data, or disconnected, is replaced."""
        if self.pid != os.getpid():
            self._checkpid()
        self._return(connection)

    def disconnect(self, inuse_connections: bool = True) -> None:
        """Close idle connections (and, by default, those in use: as redis-py, their
        next command fails or reconnects; they are replaced when released). The pool stays usable."""
        self._checkpid()
        self._disconnect(inuse_connections)

    def close(self) -> None:
        """Close for good: fail waiters, close idle connections; in-use ones close on release."""
        self._checkpid()
        self._engine.close()

    def reset(self) -> None:
        """Start over with a fresh engine (the old one is closed)."""
        if self.pid != os.getpid():
            self._checkpid()
            return
        old, self._engine = self._engine, self._new_engine()
        if self._settings_watch is not None:
            self._settings_watch.attach(self)
        old.close()

    def re_auth_callback(self, token: Any) -> None:
        """New credentials: every connection re-authenticates when next used."""
        self._re_auth(token)

    def reconfigure(self, **changes: Any) -> dict[str, tuple[Any, Any]]:
        """Change settings while the pool runs (as :meth:`SmartPool.reconfigure`); returns what changed."""
        return self._apply_changes(changes, "reconfigure")

    def resize(self, min_size: int | None = None, max_size: int | None = None) -> dict[str, tuple[Any, Any]]:
        """``reconfigure(min_size=..., max_size=...)``; None leaves that limit as it is."""
        changes = {k: v for k, v in (("min_size", min_size), ("max_size", max_size)) if v is not None}
        return self._apply_changes(changes, "resize")

    def drain(self) -> int:
        """Replace every connection: idle ones close now, those in use when released, new ones
        are opened fresh. Returns how many closed now."""
        return self._drain()

    def rotate_credentials(self) -> int:
        """Forget the ``credentials=`` cache (if any), then :meth:`drain`."""
        return self._rotate()

    def wait(self, timeout: float = 30.0) -> None:
        """Start the pool and block until ``min_size`` connections are open (prewarm)."""
        self._checkpid()
        self._engine.wait_ready(timeout)

    def health_check(self, timeout: float = 1.0, *, cache_for: float = 1.0) -> dict[str, Any]:
        """Does Redis answer? ``ok`` / ``degraded`` / ``down``, reasons and key stats: one idle
        connection PINGed (or one opened) within ``timeout``, cached for ``cache_for`` seconds
        (see :mod:`sqlalchemy_smartpool.health`). Probes only when called."""
        self._checkpid()
        return self._health_checker().check(timeout, cache_for=cache_for)

    def __enter__(self) -> SmartRedisPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- asyncio


def _aio_closed(conn: Any) -> bool:
    """The driver knows: the stream hit EOF, or holds bytes nobody asked for."""
    reader = conn._reader
    return reader is None or reader.at_eof() or bool(getattr(reader, "_buffer", b""))


def _aio_unread(conn: Any) -> bool:
    """What redis-py's asyncio ``can_read()`` looks at -- the parser's buffer (or
    hiredis' reader), the stream's buffer and EOF -- read without awaiting, so a
    release needs no greenlet. A closed parser counts as unread data: not reusable."""
    parser = conn._parser
    if not getattr(parser, "_connected", True):
        return True
    if getattr(parser, "_buffer", None):
        return True
    reader = getattr(parser, "_reader", None)
    has_data = getattr(reader, "has_data", None)
    if has_data is not None and has_data():
        return True
    return _aio_closed(conn)


class _AsyncBackend(_SyncBackend):
    """The engine's Backend for ``redis.asyncio.Connection``: the same calls, each awaited
    from the engine's greenlet (``await_``); only the wire and the socket differ."""

    def _wire(self, conn: Any) -> Any:
        return conn._writer

    @staticmethod
    def _restore_timeout(conn: Any, timeout: float | None) -> None:
        """redis.asyncio reads ``socket_timeout`` at each read: nothing else kept a copy."""

    def same_wire(self, conn: Any) -> bool:
        return super().same_wire(conn) and bool(conn.is_connected)

    def _can_read(self, conn: Any) -> bool:
        return _aio_unread(conn)

    def socket_fd(self, conn: Any) -> int | None:
        writer = conn._writer
        sock = writer.transport.get_extra_info("socket") if writer is not None else None
        return sock.fileno() if sock is not None else None

    def closed_probe(self, conn: Any) -> Callable[[], bool] | None:
        return lambda: _aio_closed(conn)


class AsyncSmartRedisPool(_PoolBase, aio_connection.ConnectionPoolInterface):
    """:class:`SmartRedisPool` for ``redis.asyncio.Redis(connection_pool=pool)``.

    The same engine and settings; its runtime is the event loop the pool is
    first used on (waiters await a future, connects and pings run as tasks).
    The engine's blocking-style code runs in greenlets (SQLAlchemy's
    ``greenlet_spawn``), as SQLAlchemy's asyncio extension runs its Engine.
    A pool bound to one loop refuses callers from another with
    :class:`~.errors.WrongEventLoop`; ``await pool.disconnect()`` releases it.
    """

    _backend_class = _AsyncBackend
    _is_asyncio = True

    def __init__(self, connection_class: Any = redis.asyncio.Connection, **kwargs: Any) -> None:
        from . import greenlets

        self._spawn = greenlets.spawn
        self._await_ = greenlets.await_
        super().__init__(connection_class, **kwargs)

    @staticmethod
    def _url_connection_class(kwargs: dict[str, Any]) -> dict[str, Any]:
        """redis-py's URL parser names the sync connection classes: their asyncio twins."""
        if kwargs.get("connection_class") is sync_connection.SSLConnection:
            kwargs["connection_class"] = aio_connection.SSLConnection
        elif kwargs.get("connection_class") is sync_connection.UnixDomainSocketConnection:
            kwargs["connection_class"] = aio_connection.UnixDomainSocketConnection
        return kwargs

    def _runtime(self, name: str, workers: int) -> Runtime:
        from .greenlets import loop_runtime

        return loop_runtime(name, self._clock)

    # -- redis.asyncio's pool API ------------------------------------------------------

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        """A connected connection (legacy command-name arguments are ignored).

        An idle connection that needs no ping is taken without entering a greenlet;
        only a wait, a ping or a connect runs the engine's blocking-style code in one.
        """
        self._checkpid()
        engine = self._engine
        check_on_loop(engine)
        got = engine.checkout_nowait()
        if got.__class__ is Pending:
            return await self._spawn(got.finish)
        return got

    async def release(self, connection: Any) -> None:
        """Take a connection back; the look at it and the return never block, so no
        greenlet either -- unless the pool's tasks have stopped and a close must happen here."""
        self._checkpid()
        owner = getattr(connection, OWNER_ATTR, None)  # its engine: ours, or one reset() replaced
        engine = owner.engine if owner is not None else None
        rt = engine._rt if engine is not None else None
        if rt is not None and rt.alive:
            self._return(connection)
        else:
            await self._spawn(self._return, connection)

    async def disconnect(self, inuse_connections: bool = True) -> None:
        """Close idle connections (and by default those in use); the pool stays usable
        and may be used on another event loop afterwards (its runtime starts anew)."""
        self._checkpid()
        await self._spawn(self._disconnect, inuse_connections)

    async def aclose(self) -> None:
        """Close for good: fail waiters, close idle connections; in-use ones close on release."""
        self._checkpid()
        await self._spawn(self._engine.close)

    def reset(self) -> None:
        """Start over with a fresh engine; the old one's connections are dropped unclosed
        (their sockets close when collected) -- prefer ``await disconnect()``."""
        if self.pid != os.getpid():
            self._checkpid()
            return
        old, self._engine = self._engine, self._new_engine()
        if self._settings_watch is not None:
            self._settings_watch.attach(self)
        old._stop_runtime()

    async def re_auth_callback(self, token: Any) -> None:
        self._re_auth(token)

    async def reconfigure(self, **changes: Any) -> dict[str, tuple[Any, Any]]:
        """:meth:`SmartRedisPool.reconfigure`, awaited (connections it closes close on the loop)."""
        return await self._spawn(self._apply_changes, changes, "reconfigure")  # type: ignore[no-any-return]

    async def resize(
        self, min_size: int | None = None, max_size: int | None = None
    ) -> dict[str, tuple[Any, Any]]:
        changes = {k: v for k, v in (("min_size", min_size), ("max_size", max_size)) if v is not None}
        return await self._spawn(self._apply_changes, changes, "resize")  # type: ignore[no-any-return]

    async def drain(self) -> int:
        """:meth:`SmartRedisPool.drain`, awaited."""
        return await self._spawn(self._drain)  # type: ignore[no-any-return]

    async def rotate_credentials(self) -> int:
        """:meth:`SmartRedisPool.rotate_credentials`, awaited."""
        return await self._spawn(self._rotate)  # type: ignore[no-any-return]

    async def wait(self, timeout: float = 30.0) -> None:
        """Start the pool and wait until ``min_size`` connections are open (prewarm)."""
        self._checkpid()
        await self._spawn(self._engine.wait_ready, timeout)

    async def health_check(self, timeout: float = 1.0, *, cache_for: float = 1.0) -> dict[str, Any]:
        """:meth:`SmartRedisPool.health_check`, awaited on the pool's event loop."""
        self._checkpid()
        return await self._health_checker().acheck(timeout, cache_for=cache_for)

    async def __aenter__(self) -> AsyncSmartRedisPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

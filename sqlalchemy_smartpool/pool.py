"""SmartPool and AsyncSmartPool: the SQLAlchemy adapters over the pool engine.

SQLAlchemy keeps a ``_ConnectionRecord`` per DBAPI connection and wraps each
checkout in a ``_ConnectionFairy``; a ``Pool`` subclass supplies ``_do_get``
(hand out a record) and ``_do_return_conn`` (take one back). Here both go
straight to :class:`~.engine.PoolEngine`; this module only translates:
records for connections, the dialect's ping and error classes, SQLAlchemy's
exception types, and (for asyncio) the event loop as the engine's runtime.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import Pool
from sqlalchemy.pool.base import _ConnDialect, _ConnectionRecord

from . import drivers, forks, leaks, live, logs, profiling
from . import stats as S
from .config import PoolConfig, from_pool_arguments
from .core import PoolCore
from .engine import CAUSE_ATTR, SLOT_ATTR, PoolEngine, Runtime
from .errors import ConfigError, describe_error
from .health import HealthChecker, checker_for
from .sa_errors import SQLALCHEMY_ERRORS
from .sched import Housekeeper
from .sched_asyncio import checkout_on_loop

_UNSET: Any = object()


class _RecordBackend:
    """The engine's :class:`~.engine.Backend` for SQLAlchemy: a connection is a
    ``_ConnectionRecord``, opened through the pool's creator and dialect hooks."""

    def __init__(self, pool: SmartPool) -> None:
        self._pool = pool
        self._dialect: Any = pool._dialect
        self._ping_opens_transaction = drivers.ping_opens_transaction(pool._dialect)

    def open(self) -> _ConnectionRecord:
        try:
            return self._open()
        finally:  # the connect arguments named the database (or failed to): before any log line
            if not self._pool._name_known:
                self._pool._learn_name()

    def _open(self) -> _ConnectionRecord:
        source = self._pool._credentials
        if source is None:
            return _ConnectionRecord(self._pool)
        for attempt in (1, 2):
            record = _ConnectionRecord(self._pool, connect=False)
            try:
                record.get_connection()
                return record
            except Exception as err:
                used = record.info.get(drivers.CREDENTIALS_USED)
                if attempt == 2 or used is None or not self.is_permanent(err) or not source.refused(*used):
                    raise
                # a cached password the server no longer takes (rotated): once with a fresh one
                cause = describe_error(err)
                logs.event(logging.getLogger(logs.POOL_LOGGER), logging.INFO, self._pool._pool_name,
                           "credentials_refused", "connect refused with cached credentials (%s); retrying "
                           "once with fresh ones", cause, cause=cause)  # fmt: skip
        raise AssertionError("unreachable")

    def close(self, conn: _ConnectionRecord, reason: BaseException | None = None) -> None:
        if reason is not None:  # fires SQLAlchemy's invalidate event, as its pre-ping does
            conn.invalidate(reason)
        else:
            conn.close()

    def ping(self, conn: _ConnectionRecord) -> bool:
        """The dialect's ping (or ``validation_query``); a transaction it opened is rolled back.

        An error the dialect's own ping raised was already judged (by
        ``is_disconnect`` and any ``handle_error`` hook, which may downgrade a
        disconnect): it is raised as it is, as SQLAlchemy's pre-ping does.
        """
        dbapi_conn = conn.dbapi_connection
        if dbapi_conn is None:
            return False
        query = self._pool._engine.config.validation_query
        judged = False
        try:
            if query is None:
                judged = True
                if not self._dialect._do_ping_w_event(dbapi_conn):
                    return False
                judged = False
            else:
                cursor = dbapi_conn.cursor()
                try:
                    cursor.execute(query)
                    cursor.fetchall()
                finally:
                    cursor.close()
            if query is not None or self._ping_opens_transaction:
                dbapi_conn.rollback()
            return True
        except Exception as err:
            if judged or not self._is_disconnect(err, dbapi_conn):
                raise
            setattr(conn, CAUSE_ATTR, describe_error(err))  # for the engine's validation_failed line
            return False

    def _is_disconnect(self, err: BaseException, dbapi_conn: Any) -> bool:
        error_cls = getattr(getattr(self._dialect, "loaded_dbapi", None), "Error", None)
        if error_cls is None or not isinstance(err, error_cls):
            return self._pool._engine.config.validation_query is not None and isinstance(err, OSError)
        try:
            return bool(self._dialect.is_disconnect(err, dbapi_conn, None))
        except Exception:
            return False

    def is_transient(self, err: BaseException) -> bool:
        # asyncpg (under SQLAlchemy too) raises the socket's own error for a refused or
        # reset connect (ConnectionRefusedError, OSError, TimeoutError): transient as well
        if isinstance(err, OSError):
            return True
        operational = getattr(getattr(self._dialect, "loaded_dbapi", None), "OperationalError", None)
        return operational is not None and isinstance(err, operational)

    def is_permanent(self, err: BaseException) -> bool:
        return drivers.is_permanent_connect_error(err)

    def socket_fd(self, conn: _ConnectionRecord) -> int | None:
        dbapi_conn = conn.dbapi_connection
        return drivers.socket_fd(self._dialect, dbapi_conn)

    def closed_probe(self, conn: _ConnectionRecord) -> Callable[[], bool] | None:
        return drivers.closed_probe(self._dialect, conn.dbapi_connection)

    def server_limit(self, conn: _ConnectionRecord) -> int | None:
        return drivers.server_connection_limit(self._dialect, conn.dbapi_connection)

    def forget(self, conn: _ConnectionRecord) -> None:
        """In a forked child: make a record of the parent's inert, without I/O.

        As SQLAlchemy's own invalidation does: a fairy (checked out in the
        parent) loses its DBAPI connection and its GC finalizer, so closing it
        in the child resets nothing, rolls nothing back and only returns the
        record, which is no longer ours and is dropped. The DBAPI connection
        is kept alive: a driver finalizer (mysqlclient sends ``COM_QUIT``) never runs.
        """
        ref = conn.fairy_ref
        fairy = ref() if ref is not None else None
        if fairy is not None:
            finalizer = getattr(fairy, "_finalizer", None)  # SQLAlchemy >= 2.1
            if finalizer is not None:
                finalizer.detach()
            fairy.dbapi_connection = None  # type: ignore[assignment]
        forks.keep(conn.dbapi_connection, fairy)
        conn.dbapi_connection = None
        conn.__dict__.pop(SLOT_ATTR, None)


class SmartPool(Pool):
    """A fair, adaptive, self-healing pool for SQLAlchemy engines.

    Use ``create_engine(url, poolclass=SmartPool, min_size=5, max_size=100)``
    or pass ``pool_config=PoolConfig(...)``; every :class:`PoolConfig` field is
    also a keyword here (and so of ``create_engine``). SQLAlchemy's own pool
    arguments are honoured too, so switching only ``poolclass`` keeps an
    app's settings: ``pool_size`` -> ``min_size``, ``pool_size + max_overflow``
    -> ``max_size``, ``pool_timeout`` -> ``acquire_timeout``, ``pool_recycle``
    -> ``max_lifetime``, ``pool_pre_ping`` -> ``validate_on_checkout``,
    ``pool_use_lifo`` -> ``reuse``.

    The operator's layers apply on top of the code's, as with the
    ``smartpool`` plugin: the settings file named by ``SMARTPOOL_CONFIG_FILE``,
    then ``SMARTPOOL_*`` variables (of ``environ``, ``os.environ`` by default;
    ``environ={}`` ignores them). Without ``pool_config`` the defaults are
    those of the dialect's backend (:data:`~.config.BACKEND_DEFAULTS`).
    ``{env:NAME}`` / ``{file:PATH}`` placeholders in the URL are resolved at
    every connect (:mod:`~.urltemplate`).

    Background work (prewarm to ``min_size``, growth, shrinking, lifetimes)
    starts at the first checkout or at :meth:`wait` -- not in the constructor,
    because ``create_engine`` attaches the dialect's connect hooks only after
    it built the pool.
    """

    def __init__(
        self,
        creator: Any,
        pool_config: PoolConfig | None = None,
        min_size: Any = _UNSET,
        max_size: Any = _UNSET,
        acquire_timeout: Any = _UNSET,
        idle_timeout: Any = _UNSET,
        max_lifetime: Any = _UNSET,
        lifetime_jitter: Any = _UNSET,
        keepalive_interval: Any = _UNSET,
        reuse: Any = _UNSET,
        barge_window: Any = _UNSET,
        validate_on_checkout: Any = _UNSET,
        validation_interval: Any = _UNSET,
        validation_query: Any = _UNSET,
        validation_timeout: Any = _UNSET,
        check_socket: Any = _UNSET,
        max_waiting: Any = _UNSET,
        max_concurrent_connects: Any = _UNSET,
        connect_timeout: Any = _UNSET,
        retry_attempts: Any = _UNSET,
        retry_backoff_initial: Any = _UNSET,
        retry_backoff_max: Any = _UNSET,
        leak_detection_threshold: Any = _UNSET,
        housekeeping_interval: Any = _UNSET,
        track_wait_times: Any = _UNSET,
        holder_sample_every: Any = _UNSET,
        name: Any = _UNSET,
        budget: Any = _UNSET,
        budget_redis: Any = _UNSET,
        budget_key: Any = _UNSET,
        budget_prefix: Any = _UNSET,
        budget_ttl: Any = _UNSET,
        budget_on_redis_down: Any = _UNSET,
        budget_timeout: Any = _UNSET,
        breaker: Any = _UNSET,
        # SQLAlchemy's spellings, as create_engine() passes them
        pool_size: Any = _UNSET,
        max_overflow: Any = _UNSET,
        timeout: Any = _UNSET,
        recycle: Any = _UNSET,
        pre_ping: Any = _UNSET,
        use_lifo: Any = _UNSET,
        # passed through to sqlalchemy.pool.Pool
        echo: Any = None,
        logging_name: str | None = None,
        reset_on_return: Any = True,
        events: Any = None,
        dialect: Any = None,
        _dispatch: Any = None,
        clock: Callable[[], float] | None = None,
        environ: Mapping[str, str] | None = None,
        credentials: Any = None,
        credentials_ttl: Any = _UNSET,
        _layers: live.Layers | None = None,
    ) -> None:
        given = {
            k: v
            for k, v in locals().items()
            if v is not _UNSET and k in PoolConfig.__dataclass_fields__ and k != "breaker"
        }
        if breaker is not _UNSET:
            given["breaker"] = breaker
        sa_given = {
            "pool_size": pool_size,
            "max_overflow": max_overflow,
            "timeout": timeout,
            "recycle": recycle,
            "pre_ping": pre_ping,
            "use_lifo": use_lifo,
        }
        sa_given = {k: v for k, v in sa_given.items() if v is not _UNSET}
        real_dialect = dialect is not None and not isinstance(dialect, _ConnDialect)
        env = os.environ if environ is None else environ
        backend = getattr(dialect, "name", None) if real_dialect else None
        self._config = from_pool_arguments(pool_config, given, sa_given, environ=env, backend=backend)
        #: what the config was merged from: a settings reload merges the same way (live.watch_settings)
        self._layers = _layers or live.Layers.of(pool_config, given, sa_given, environ=env, backend=backend)
        self._layered = self._config
        self._settings_watch: live.SettingsWatch | None = None
        self._credentials = self._credential_source(credentials, credentials_ttl)
        Pool.__init__(
            self,
            creator,
            recycle=-1,  # lifetimes are ours (jittered, never in the request thread)
            echo=echo,
            logging_name=logging_name or self._config.name,
            reset_on_return=reset_on_return,
            events=events,
            dialect=dialect,
            pre_ping=False,  # validation is ours (with a bypass window)
            _dispatch=_dispatch,
        )
        self._check_dialect(dialect)
        self._clock: Callable[[], float] = clock or time.monotonic
        # the name: name=, else pool_logging_name, else the URL's database (noted by the
        # plugin now, or at the first connect by a do_connect hook), else the pool's id
        chosen = self._config.name or logging_name
        database = drivers.noted_database(self._dialect) if real_dialect else None
        #: False while the name is only the id (metrics then use their own default)
        self._name_known = bool(chosen or database)
        self._pool_name: str = chosen or database or f"0x{id(self):x}"
        # without a dialect (a bare pool) there is no ping, only a validation_query
        can_validate = self._config.validation_query is not None or real_dialect
        if real_dialect and self._config.connect_timeout is not None:
            drivers.install_connect_timeout(self._dialect, self._config.connect_timeout)
        if real_dialect:
            drivers.install_url_templates(self._dialect)
            drivers.install_database_note(self._dialect)
        if real_dialect and self._config.leak_detection_threshold is not None:
            drivers.install_statement_hook(self._dialect, _note_statement)
        if real_dialect and self._credentials is not None:
            drivers.install_credentials(self._dialect)
        # recreate() copies the old pool's listeners (``_dispatch``): add it once
        if drivers.needs_after_connect(self._dialect) and not event.contains(
            self, "connect", drivers.after_connect
        ):
            event.listen(self, "connect", drivers.after_connect)
        for name in ("invalidate", "soft_invalidate"):  # the cause, for the engine's audit line
            if not event.contains(self, name, _note_invalidation):
                event.listen(self, name, _note_invalidation)
        self._engine: PoolEngine[_ConnectionRecord] = PoolEngine(
            self._config,
            _RecordBackend(self),
            name=self._pool_name,
            errors=SQLALCHEMY_ERRORS,
            runtime=self._runtime,
            clock=self._clock,
            can_validate=can_validate,
            budget_target=self._budget_target,
        )
        # the hot path: SQLAlchemy calls these, straight into the engine
        self._do_get = self._engine.checkout  # type: ignore[method-assign]
        self._checkin = self._engine.checkin

    _is_asyncio = False  # create_engine() refuses a sync pool on an asyncio engine (and back)

    def _check_dialect(self, dialect: Any) -> None:
        if dialect is not None and bool(getattr(dialect, "is_async", False)) is not self._is_asyncio:
            right = "AsyncSmartPool" if dialect.is_async else "SmartPool"
            kind = "an asyncio" if dialect.is_async else "a synchronous"
            raise sa_exc.ArgumentError(
                f"{type(self).__name__} cannot be used with {kind} engine "
                f"({dialect.name}+{dialect.driver}); use poolclass={right}"
            )

    def _runtime(self, name: str, workers: int) -> Runtime:
        return Housekeeper(name, workers=workers, clock=self._clock)

    def _credential_source(self, credentials: Any, ttl: Any) -> live.CredentialSource | None:
        if isinstance(credentials, live.CredentialSource):  # recreate(): the same cache
            return credentials
        if credentials is None:
            if ttl is not _UNSET:
                raise ConfigError("credentials_ttl", ttl, "needs credentials=", source="keyword")
            return None
        source = live.CredentialSource(credentials, live.DEFAULT_CREDENTIALS_TTL if ttl is _UNSET else ttl)
        if source.is_async and not self._is_asyncio:
            raise ConfigError(
                "credentials",
                f"<{type(credentials).__name__}>",
                "is an async callable: it needs AsyncSmartPool (create_async_engine)",
                source="keyword",
            )
        return source

    def _credentials_for_connect(self) -> tuple[live.Credentials, int, bool] | None:
        """The credentials for the connection being opened (the dialect's do_connect hook)."""
        source = self._credentials
        return None if source is None else source.get()

    # ------------------------------------------------------------------ public API

    @property
    def config(self) -> PoolConfig:
        return self._config

    @property
    def name(self) -> str:
        """What log lines, errors and ``stats()`` call this pool: ``name=``, else
        ``pool_logging_name``, else the URL's database, else ``0x<id>``."""
        return self._pool_name

    def _budget_target(self) -> str:
        """The fleet budget's target when ``budget_key`` is not given: the database URL without
        credentials, from the connect arguments ``create_engine`` gave its creator."""
        target = drivers.connect_target(self._dialect, self._creator)
        if target is None:
            from .errors import ConfigError

            raise ConfigError(
                "budget_key", None, "is needed: this pool cannot tell which database it connects to "
                "(a custom creator); name the budget's target"
            )
        return target

    def fleet_status(self) -> dict[str, Any] | None:
        """The fleet budget as this pool sees it (None without ``budget``): its share, leases
        held, the fleet's total, whether Redis answers (docs/fleet.md)."""
        return self._engine.fleet_status()

    def _learn_name(self) -> None:
        """After a connect: take the database its arguments named, if one did."""
        database = drivers.noted_database(self._dialect)
        if database is not None and not self._name_known:
            self._name_known = True
            self._pool_name = database
            self._engine.rename(database)

    @property
    def _core(self) -> PoolCore[_ConnectionRecord]:
        """The engine's state machine (for tests and invariant checks)."""
        return self._engine.core

    @property
    def _lock(self) -> Any:
        return self._engine._lock

    def stats(self) -> S.PoolStats:
        """A consistent snapshot of gauges, counters and wait percentiles."""
        return self._engine.stats()

    def wait(self, timeout: float = 30.0) -> None:
        """Start the pool and block until ``min_size`` connections are open (prewarm).

        Raises a permanent connect error (bad password, unknown database) at
        once, and :class:`PoolTimeout` naming the pool's state and the last
        connect error if it takes longer than ``timeout``.
        """
        self._engine.wait_ready(timeout)

    def suspected_leaks(self) -> list[leaks.LeakInfo]:
        """Checkouts held longer than ``leak_detection_threshold``, oldest first."""
        return self._engine.suspected_leaks()

    def top_holders(self, n: int = 10, *, by: str = "total") -> list[profiling.Holder]:
        """The code locations that hold connections longest (in total, or ``by="p99"``),
        estimated from one checkout in ``holder_sample_every`` (docs/metrics.md)."""
        return self._engine.top_holders(n, by=by)

    def add_checkout_listener(self, fn: profiling.Listener, *, location: bool = False) -> None:
        """Call ``fn(CheckoutTiming)`` at every checkin: queue wait, hold time, and with
        ``location=True`` the caller's ``file:line``. Nothing is traced while none is registered."""
        self._engine.add_checkout_listener(fn, location=location)

    def remove_checkout_listener(self, fn: profiling.Listener) -> bool:
        """Stop calling ``fn``; False if it was not registered."""
        return self._engine.remove_checkout_listener(fn)

    def health_check(self, timeout: float = 1.0, *, cache_for: float = 1.0) -> dict[str, Any]:
        """Does the database answer? ``ok`` / ``degraded`` / ``down``, reasons and key stats.

        Pings one idle connection (or opens one) within ``timeout`` seconds and
        judges it with the breaker, saturation and suspected leaks; a report
        younger than ``cache_for`` seconds is returned instead of probing again
        (see :mod:`sqlalchemy_smartpool.health`). Probes only when called.
        """
        return self._health_checker().check(timeout, cache_for=cache_for)

    def _health_checker(self) -> HealthChecker:
        return checker_for(self, lambda: self._engine, pool_kind="sqlalchemy")

    def close(self) -> None:
        """Close for good: fail waiters, close idle connections, stop background work.

        Connections still checked out are closed when they come back.
        """
        self._engine.close()

    # ------------------------------------------------ live operations (docs/operations.md)

    def reconfigure(self, **changes: Any) -> dict[str, tuple[Any, Any]]:
        """Change settings while the pool runs; returns ``{field: (old, new)}`` of what changed.

        Any :class:`PoolConfig` field (``breaker_<field>`` for the breaker's)
        except ``name`` and ``connect_timeout``. Validated as a whole: an
        invalid change raises :class:`~.errors.ConfigError` (source
        ``reconfigure``) and changes nothing. In force at once; a lowered
        ``max_size`` never cuts a checkout short. Audit-logged.
        """
        return self._apply_changes(changes, "reconfigure")

    def resize(self, min_size: int | None = None, max_size: int | None = None) -> dict[str, tuple[Any, Any]]:
        """``reconfigure(min_size=..., max_size=...)``; None leaves that limit as it is."""
        changes = {k: v for k, v in (("min_size", min_size), ("max_size", max_size)) if v is not None}
        return self._apply_changes(changes, "resize")

    def drain(self) -> int:
        """Replace every connection: idle ones close now, checked-out ones when they come back,
        new ones are opened fresh. Returns how many closed now."""
        return self._engine.drain(source="drain()")

    def rotate_credentials(self) -> int:
        """New credentials for every connection: the ``credentials=`` cache is forgotten, then
        :meth:`drain` (also without ``credentials=``: ``{file:}`` URLs are read at each connect)."""
        if self._credentials is not None:
            self._credentials.invalidate()
        return self._engine.drain(event=live.CREDENTIALS_ROTATED, source="rotate_credentials()")

    def pause(self) -> None:
        """Hold checkouts (each waits within ``acquire_timeout``) and open nothing, until :meth:`resume`."""
        self._engine.pause()

    def resume(self) -> None:
        """End :meth:`pause`; the waiters are served in their order."""
        self._engine.resume()

    @property
    def paused(self) -> bool:
        return self._engine.paused

    def _apply_changes(self, changes: Mapping[str, Any], source: str) -> dict[str, tuple[Any, Any]]:
        """The one path of every live change (reconfigure, resize, a settings reload)."""
        diff = self._engine.reconfigure(changes, source=source)
        self._config = self._engine.config
        if (
            self._config.leak_detection_threshold is not None
            and self._dialect is not None
            and not isinstance(self._dialect, _ConnDialect)
        ):
            drivers.install_statement_hook(self._dialect, _note_statement)  # once per dialect
        return diff

    # ---------------------------------------------------- sqlalchemy.pool.Pool API

    def status(self) -> str:
        return f"{type(self).__name__} {self._engine.describe()}"

    def size(self) -> int:
        return self._engine.core.size

    def checkedin(self) -> int:
        return len(self._engine.core.idle)

    def checkedout(self) -> int:
        return self._engine.core.in_use

    def overflow(self) -> int:
        return max(0, self._engine.core.size - self._config.min_size)

    def timeout(self) -> float:
        return self._config.acquire_timeout

    def dispose(self) -> None:
        """Close idle connections and stop background work; the pool stays usable
        (checked-out connections come back normally, the next checkout restarts it)."""
        self._engine.dispose()
        self.logger.info("Pool disposed. %s", self.status())

    def recreate(self) -> SmartPool:
        self.logger.info("Pool recreating")
        return self._recreate_with(self._config)

    def _recreate_with(self, config: PoolConfig) -> SmartPool:
        """A new pool of this kind with ``config`` (``recreate()``, ``swap_pool``): same creator,
        listeners, dialect, credentials and layers; a settings watch moves over."""
        new = self.__class__(
            self._creator,
            pool_config=config,
            echo=self.echo,
            logging_name=self._orig_logging_name,
            reset_on_return=self._reset_on_return,
            _dispatch=self.dispatch,
            dialect=self._dialect,
            clock=self._clock if self._clock is not time.monotonic else None,
            environ={},  # the config already holds the file's, environment's and URL's settings
            credentials=self._credentials,
            _layers=self._layers,
        )
        new._engine.adopt_listeners(self._engine.listeners)  # engine.dispose() keeps them
        if self._settings_watch is not None:
            self._settings_watch.attach(new)
        return new

    def _do_get(self) -> _ConnectionRecord:  # replaced per instance by the engine's checkout
        return self._engine.checkout()

    def _do_return_conn(self, record: Any) -> None:
        slot = record.__dict__.get(SLOT_ATTR)
        if slot is None:  # not ours (e.g. a record made by SQLAlchemy internals); just close it
            record.close()
            return
        self._checkin(
            slot, record.dbapi_connection is not None and record._soft_invalidate_time <= record.starttime
        )

    # Pool._return_conn only forwards here; skipping the extra frame is measurable.
    _return_conn = _do_return_conn

    def _invalidate(
        self, connection: Any, exception: BaseException | None = None, _checkin: bool = True
    ) -> None:
        # SQLAlchemy's version makes every older connection reconnect, in the
        # request threads. A disconnect usually means "this one died"; for a
        # server restart the others fail validation and are replaced in the
        # background: the engine marks them suspect instead.
        self._engine.disconnect_seen()
        if _checkin and getattr(connection, "is_valid", False):
            connection.invalidate(exception)


# ------------------------------------------------------------------ helpers


def _note_invalidation(dbapi_connection: Any, record: Any, exception: BaseException | None) -> None:
    """SQLAlchemy invalidated a record (a disconnect, ``invalidate()``): keep why, redacted."""
    if exception is not None and record is not None and record.__dict__.get(SLOT_ATTR) is not None:
        setattr(record, CAUSE_ATTR, describe_error(exception))


def _note_statement(record: Any, statement: str) -> None:
    slot = record.__dict__.get(SLOT_ATTR)
    lease = slot.lease if slot is not None else None
    if isinstance(lease, leaks.Lease):
        leaks.note_statement(lease, statement)


class AsyncSmartPool(SmartPool):
    """SmartPool for ``create_async_engine(url, poolclass=AsyncSmartPool, ...)``.

    The same engine and settings as :class:`SmartPool`; its runtime is the
    event loop the pool is first used on: waiting callers await a future,
    connects, closes and pings run as tasks on that loop (in greenlets, as
    SQLAlchemy runs the async dialects' I/O), timers are ``loop.call_later``.
    A pool bound to one loop refuses callers from another with
    :class:`~.errors.WrongEventLoop` (``await engine.dispose()`` releases it).
    ``await pool.wait()`` prewarms.
    """

    _is_asyncio = True

    def __init__(self, creator: Any, **kw: Any) -> None:
        super().__init__(creator, **kw)
        self._do_get = self._checkout_on_loop  # type: ignore[method-assign]

    def _runtime(self, name: str, workers: int) -> Runtime:
        from .greenlets import loop_runtime

        return loop_runtime(name, self._clock)

    def _credentials_for_connect(self) -> tuple[live.Credentials, int, bool] | None:
        """As SmartPool's; an async callable is awaited in the connect's greenlet."""
        from .greenlets import await_

        source = self._credentials
        return None if source is None else source.get(await_)

    async def reconfigure(self, **changes: Any) -> dict[str, tuple[Any, Any]]:  # type: ignore[override]
        """:meth:`SmartPool.reconfigure`, awaited (connections it closes close on the loop)."""
        from .greenlets import spawn

        return await spawn(self._apply_changes, changes, "reconfigure")  # type: ignore[no-any-return]

    async def resize(  # type: ignore[override]
        self, min_size: int | None = None, max_size: int | None = None
    ) -> dict[str, tuple[Any, Any]]:
        from .greenlets import spawn

        changes = {k: v for k, v in (("min_size", min_size), ("max_size", max_size)) if v is not None}
        return await spawn(self._apply_changes, changes, "resize")  # type: ignore[no-any-return]

    async def drain(self) -> int:  # type: ignore[override]
        from .greenlets import spawn

        return await spawn(SmartPool.drain, self)  # type: ignore[no-any-return]

    async def rotate_credentials(self) -> int:  # type: ignore[override]
        from .greenlets import spawn

        return await spawn(SmartPool.rotate_credentials, self)  # type: ignore[no-any-return]

    def _checkout_on_loop(self) -> _ConnectionRecord:
        record: _ConnectionRecord = checkout_on_loop(self._engine)
        return record

    async def wait(self, timeout: float = 30.0) -> None:  # type: ignore[override]
        """Start the pool and wait until ``min_size`` connections are open (prewarm)."""
        from .greenlets import spawn

        await spawn(self._engine.wait_ready, timeout)

    async def health_check(  # type: ignore[override]
        self, timeout: float = 1.0, *, cache_for: float = 1.0
    ) -> dict[str, Any]:
        """:meth:`SmartPool.health_check`, awaited on the pool's event loop."""
        return await self._health_checker().acheck(timeout, cache_for=cache_for)

    def _health_checker(self) -> HealthChecker:
        from .greenlets import spawn

        return checker_for(self, lambda: self._engine, pool_kind="sqlalchemy", spawn=spawn)

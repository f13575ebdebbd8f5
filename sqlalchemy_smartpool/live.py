"""Changing a running pool: settings, credentials, replacement (docs/operations.md).

The verbs themselves (``reconfigure``, ``resize``, ``drain``,
``rotate_credentials``, ``pause``, ``resume``) are methods of every pool and
are implemented once, in :class:`~.engine.PoolEngine` and
:class:`~.core.PoolCore`. This module holds what they share and what works
on any pool:

* :func:`audit`: the one place an operation is logged to the
  ``sqlalchemy_smartpool.audit`` logger (the status page shows those records);
* :func:`replace_config` / :func:`config_diff` / :data:`NOT_LIVE`: a change
  validated as a whole, and which settings cannot change while a pool runs;
* :class:`CredentialSource`: the ``credentials=`` callable behind a TTL cache;
* :func:`watch_settings` / :func:`install_sighup_reload`: reload the settings
  file when it changes, or on SIGHUP, through the same layers the pool was
  built with;
* :func:`swap_pool`: put a new pool under an engine or a Redis client while the
  old one finishes its checkouts and closes.

Nothing here imports SQLAlchemy or redis: pools and clients are used through
the attributes they have in common.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import signal
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from types import FrameType
from typing import Any

from . import logs
from .config import (
    ENV_CONFIG_FILE,
    ENV_PREFIX,
    ENV_PROFILE,
    MAX_SECONDS,
    CircuitBreakerConfig,
    PoolConfig,
    from_pool_arguments,
)
from .errors import ConfigError, describe_error

AUDIT_LOGGER = logs.AUDIT_LOGGER

#: Event names of the audit records this module's verbs write.
CONFIG_CHANGED = logs.CONFIG_CHANGED
CONFIG_RELOAD_FAILED = "config_reload_failed"
CREDENTIALS_ROTATED = logs.CREDENTIALS_ROTATED
DRAINED = "drained"
PAUSED = "paused"
RESUMED = "resumed"
POOL_SWAPPED = "pool_swapped"
POOL_RETIRED = "pool_retired"


def audit(pool: str, event: str, message: str, **fields: Any) -> None:
    """Log one operation on a pool to the audit logger: ``pool <pool>: <message>``, with
    ``pool``, ``event`` and ``fields`` in ``extra`` (:func:`~.logs.audit`). No secret in any."""
    logs.audit(pool, event, "%s", message, **fields)


# -- settings ----------------------------------------------------------------------------

#: Settings that cannot change while a pool runs, and why (``reconfigure`` raises ConfigError).
NOT_LIVE: Mapping[str, str] = {
    "name": "it names the pool in logs and metrics; use swap_pool() with a new pool of that name",
    "connect_timeout": (
        "it is part of the driver's connect arguments, fixed when the engine or client was built"
    ),
    **dict.fromkeys(
        (
            "budget",
            "budget_redis",
            "budget_key",
            "budget_prefix",
            "budget_ttl",
            "budget_on_redis_down",
            "budget_timeout",
        ),
        "the fleet budget's leases are held under it; use swap_pool() with a pool built with the new value",
    ),
}


def replace_config(config: PoolConfig, changes: Mapping[str, Any], source: str) -> PoolConfig:
    """``config`` with ``changes`` (PoolConfig fields, ``breaker_<field>``), validated as a whole;
    an error names the field, the value and ``source``."""
    try:
        return config.replace(**changes)
    except ConfigError as err:
        raise ConfigError(err.field, err.value, err.reason, source=source) from None
    except TypeError as err:  # a positional-only oddity from dataclasses: still the caller's input
        raise ConfigError("reconfigure", dict(changes), str(err), source=source) from None


def config_diff(old: PoolConfig, new: PoolConfig) -> dict[str, tuple[Any, Any]]:
    """Every setting that differs, as keyword spelling (``breaker_<field>``) -> (old, new).

    The values are the configs' own (a defaulted limit keeps its marker), so
    ``old.replace(**{k: n for k, (_, n) in diff.items()}) == new``.
    """
    out: dict[str, tuple[Any, Any]] = {}
    for f in dataclasses.fields(PoolConfig):
        if f.name == "breaker":
            continue
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a != b:
            out[f.name] = (a, b)
    for f in dataclasses.fields(CircuitBreakerConfig):
        a, b = getattr(old.breaker, f.name), getattr(new.breaker, f.name)
        if a != b:
            out[f"breaker_{f.name}"] = (a, b)
    return out


def check_live(diff: Mapping[str, tuple[Any, Any]], source: str) -> None:
    """Refuse a change to a setting of :data:`NOT_LIVE`."""
    for name, why in NOT_LIVE.items():
        if name in diff:
            raise ConfigError(name, diff[name][1], f"cannot change while the pool runs: {why}", source=source)


def _plain(value: Any) -> Any:
    """A defaulted limit as the plain number it is (for messages and log fields)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


def describe_changes(diff: Mapping[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k} {_plain(a)!r} -> {_plain(b)!r}" for k, (a, b) in diff.items())


def audit_changes(pool: str, diff: Mapping[str, tuple[Any, Any]], source: str) -> None:
    logs.config_changed(pool, {k: (_plain(a), _plain(b)) for k, (a, b) in diff.items()}, source=source)


@dataclasses.dataclass(frozen=True)
class Layers:
    """What a pool's config was merged from (:func:`~.config.from_pool_arguments`), kept so
    a reload of the settings file gives what a restart would."""

    base: PoolConfig | None = None
    given: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    sa_given: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: only the ``SMARTPOOL_*`` variables (the merge reads no others; nothing else is kept)
    environ: Mapping[str, str] = dataclasses.field(default_factory=dict)
    url_query: Mapping[str, Any] | None = None
    backend: str | None = None

    @classmethod
    def of(
        cls,
        base: PoolConfig | None,
        given: Mapping[str, Any],
        sa_given: Mapping[str, Any],
        *,
        environ: Mapping[str, str] | None,
        url_query: Mapping[str, Any] | None = None,
        backend: str | None = None,
    ) -> Layers:
        env = {k: v for k, v in (environ or {}).items() if k.startswith(ENV_PREFIX)}
        return cls(base, dict(given), dict(sa_given), env, dict(url_query or {}) or None, backend)

    def build(self, environ: Mapping[str, str] | None = None) -> PoolConfig:
        """The merged config, with ``environ`` (default: the one kept) as the environment."""
        return from_pool_arguments(
            self.base,
            self.given,
            self.sa_given,
            environ=self.environ if environ is None else environ,
            url_query=self.url_query,
            backend=self.backend,
        )


# -- credentials -------------------------------------------------------------------------

#: default seconds a value of a ``credentials=`` callable is reused for new connections
DEFAULT_CREDENTIALS_TTL = 60.0


class Credentials:
    """A user name (None: the URL's / connection's own) and a password or token. No secret in repr."""

    __slots__ = ("password", "user")

    def __init__(self, user: str | None, password: str) -> None:
        self.user = user
        self.password = password

    def __repr__(self) -> str:
        return f"<Credentials user={self.user!r} password=<redacted>>"


class CredentialsUnavailable(ConnectionError):
    """The ``credentials=`` callable failed: a transient connect error (retried with backoff).

    Its message is the callable's error, redacted (:func:`~.errors.describe_error`).
    """


_KEYS = {"user": "user", "username": "user", "password": "password", "token": "password"}


def _shape_error(reason: str) -> ConfigError:
    return ConfigError("credentials", "<the callable's result>", reason, source="credentials callable")


def _normalize(result: Any) -> Credentials:
    """What a ``credentials=`` callable may return; an error never quotes the value."""
    expected = (
        "must return a str (a password or token), a mapping with user/username and "
        "password/token, or a (user, password) pair"
    )
    if isinstance(result, str):
        if not result:
            raise _shape_error("returned an empty string")
        return Credentials(None, result)
    if isinstance(result, Mapping):
        fields: dict[str, Any] = {}
        for key, value in result.items():
            name = _KEYS.get(key) if isinstance(key, str) else None
            if name is None:
                raise _shape_error(f"returned a mapping with key {key!r}; {expected}")
            if name in fields:
                raise _shape_error(f"returned a mapping with two keys for the {name}")
            fields[name] = value
        password, user = fields.get("password"), fields.get("user")
        if not isinstance(password, str) or not password:
            raise _shape_error("returned a mapping without a non-empty str password/token")
        if user is not None and not isinstance(user, str):
            raise _shape_error("returned a mapping whose user is not a str")
        return Credentials(user or None, password)
    if isinstance(result, (tuple, list)) and len(result) == 2 and all(isinstance(v, str) for v in result):
        if not result[1]:
            raise _shape_error("returned an empty password")
        return Credentials(result[0] or None, result[1])
    raise _shape_error(f"returned a {type(result).__name__}; {expected}")


def is_async_callable(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004


class CredentialSource:
    """A ``credentials=`` callable behind a cache of ``ttl`` seconds (0: called per connect).

    The callable runs when a connection is opened and the cached value is
    older than ``ttl``, or after :meth:`invalidate` (``rotate_credentials()``).
    Each value has a version, so a connect refused with a cached value can ask
    for a fresh one once (:meth:`refused`). The lock guards the cache only; it
    is never held while the callable runs (an async one awaits in a greenlet).
    """

    def __init__(
        self,
        provider: Any,
        ttl: Any = DEFAULT_CREDENTIALS_TTL,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not callable(provider):
            raise ConfigError(
                "credentials",
                f"<{type(provider).__name__}>",
                "must be a callable returning a password/token or user and password",
                source="keyword",
            )
        if (
            isinstance(ttl, bool)
            or not isinstance(ttl, (int, float))
            or not 0 <= ttl <= MAX_SECONDS
            or ttl != ttl
        ):
            reason = f"must be a number of seconds from 0 to {MAX_SECONDS:g}"
            raise ConfigError("credentials_ttl", ttl, reason, source="keyword")
        self.provider = provider
        self.ttl = float(ttl)
        self.is_async = is_async_callable(provider)
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: Credentials | None = None
        self._expires = 0.0
        self._version = 0
        #: how often the callable ran (for tests and the docs' numbers)
        self.calls = 0

    def __repr__(self) -> str:
        return f"<CredentialSource ttl={self.ttl:g}s>"

    def _hit(self) -> tuple[Credentials, int] | None:
        with self._lock:
            if self._cached is not None and self._clock() < self._expires:
                return self._cached, self._version
        return None

    def _call(self) -> Any:
        self.calls += 1
        try:
            return self.provider()
        except ConfigError:
            raise
        except Exception as err:
            raise CredentialsUnavailable(f"credentials callable failed: {describe_error(err)}") from None

    def _store(self, result: Any) -> tuple[Credentials, int, bool]:
        creds = _normalize(result)
        with self._lock:
            self._version += 1
            if self.ttl > 0:
                self._cached, self._expires = creds, self._clock() + self.ttl
            return creds, self._version, True

    def get(self, await_: Callable[[Awaitable[Any]], Any] | None = None) -> tuple[Credentials, int, bool]:
        """(credentials, version, fetched now?) for one new connection. An awaitable result is
        awaited with ``await_`` (the greenlet bridge; None in a sync pool: an error)."""
        hit = self._hit()
        if hit is not None:
            return hit[0], hit[1], False
        result = self._call()
        if inspect.isawaitable(result):
            if await_ is None:
                with contextlib.suppress(Exception):
                    result.close()  # type: ignore[attr-defined]
                raise ConfigError(
                    "credentials",
                    f"<{type(self.provider).__name__}>",
                    "returned an awaitable: an async callable needs an asyncio pool "
                    "(AsyncSmartPool, AsyncSmartRedisPool)",
                    source="keyword",
                )
            try:
                result = await_(result)
            except ConfigError:
                raise
            except Exception as err:
                raise CredentialsUnavailable(f"credentials callable failed: {describe_error(err)}") from None
        return self._store(result)

    async def aget(self) -> tuple[Credentials, int, bool]:
        """:meth:`get` for a coroutine (redis.asyncio's credential provider)."""
        hit = self._hit()
        if hit is not None:
            return hit[0], hit[1], False
        result = self._call()
        if inspect.isawaitable(result):
            try:
                result = await result
            except Exception as err:
                raise CredentialsUnavailable(f"credentials callable failed: {describe_error(err)}") from None
        return self._store(result)

    def invalidate(self) -> None:
        """Forget the cached value: the next connect calls the callable."""
        with self._lock:
            self._cached = None
            self._version += 1

    def refused(self, version: int, fresh: bool) -> bool:
        """A connect with the value of ``version`` was refused as permanent (bad password).

        Returns whether one retry is worthwhile: the value was a cached one (it
        is forgotten now) or a newer one exists already. A value fetched for
        this very connect and still the newest is not retried.
        """
        with self._lock:
            if version != self._version:
                return True
            if fresh:
                return False
            self._cached = None
            self._version += 1
            return True


# -- settings file reload ----------------------------------------------------------------

_watches: weakref.WeakSet[SettingsWatch] = weakref.WeakSet()


def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class SettingsWatch:
    """Reloads one pool's settings when its TOML file changes, or on request (SIGHUP).

    The file's modification time, size and inode are looked at from the pool's
    own housekeeping timer (no thread of its own); a change is reloaded by a
    background job of the pool. Only a pool that runs is watched: an unused one
    (never checked out, or disposed) does nothing, and sees the change when it
    starts again. The config a reload yields is the one a restart would give --
    the pool's layers (code, environment, URL) with this file as the settings
    file -- and only what changed since the last load is applied, so a
    ``reconfigure()`` of another setting stays. A bad file is logged (audit
    event ``config_reload_failed``) and changes nothing.
    """

    def __init__(self, pool: Any, path: str | os.PathLike[str], profile: str | None) -> None:
        self.path = os.fspath(path)
        self.profile = profile
        self._pool: weakref.ref[Any] = weakref.ref(pool)
        self._engine: Any = None
        self._signature = _signature(self.path)
        self.requested = False
        self._loaded = self._build(pool)  # a bad file fails here, in the caller
        #: completed reloads that changed something / that failed
        self.reloads = 0
        self.failures = 0
        self.last_error: ConfigError | None = None
        self._running = False

    def _environ(self, pool: Any) -> dict[str, str]:
        env = dict(pool._layers.environ)
        env[ENV_CONFIG_FILE] = self.path
        if self.profile is not None:
            env[ENV_PROFILE] = self.profile
        return env

    def _build(self, pool: Any) -> PoolConfig:
        layers: Layers = pool._layers
        return layers.build(self._environ(pool))

    @property
    def source(self) -> str:
        return f"settings file {self.path}"

    def attach(self, pool: Any) -> None:
        """Watch from ``pool``'s timer (a recreated or swapped-in pool takes the watch over)."""
        self.detach()
        self._pool = weakref.ref(pool)
        pool._settings_watch = self
        engine = pool._engine
        engine.add_tick_hook(self._tick)
        self._engine = weakref.ref(engine)
        _watches.add(self)

    def detach(self) -> None:
        ref = self._engine
        engine = ref() if ref is not None else None
        if engine is not None:
            engine.remove_tick_hook(self._tick)
        self._engine = None

    def stop(self) -> None:
        """Stop watching."""
        self.detach()
        _watches.discard(self)
        pool = self._pool()
        if pool is not None and getattr(pool, "_settings_watch", None) is self:
            pool._settings_watch = None

    def _tick(self) -> None:
        """From the housekeeping timer: cheap (one stat); a change is reloaded as a job."""
        sig = _signature(self.path)
        if (sig == self._signature and not self.requested) or self._running:
            return
        self.requested = False
        self._signature = sig
        pool = self._pool()
        if pool is None:
            return
        self._running = True
        if not pool._engine._submit_job(self._job):
            self._running = False

    def _job(self) -> None:
        try:
            self.reload()
        finally:
            self._running = False

    def reload(self) -> dict[str, tuple[Any, Any]]:
        """Read the file now and apply what changed (blocking-style: in a greenlet for asyncio)."""
        pool = self._pool()
        if pool is None:
            return {}
        name = pool._engine.name
        try:
            new = self._build(pool)
            diff = config_diff(self._loaded, new)
            check_live(diff, self.source)
            applied = pool._apply_changes({k: b for k, (_, b) in diff.items()}, self.source) if diff else {}
        except ConfigError as err:
            self.failures += 1
            self.last_error = err
            reason = f"settings not reloaded, nothing changed: {err}"
            audit(name, CONFIG_RELOAD_FAILED, reason, source=self.source)
            return {}
        self._loaded = new
        if applied:
            self.reloads += 1
        return applied


def watch_settings(pool: Any, path: str | os.PathLike[str], profile: str | None = None) -> SettingsWatch:
    """Reload ``pool``'s settings from the TOML file ``path`` whenever it changes.

    ``pool``: a SmartPool, AsyncSmartPool, SmartRedisPool or AsyncSmartRedisPool
    (or an engine / client over one). ``profile``: the ``[profiles.<name>]``
    table; None takes ``SMARTPOOL_PROFILE`` as the pool saw it. The file is
    read now: what it changes against the pool's own layers is applied at once
    (an invalid file raises :class:`~.errors.ConfigError` and changes
    nothing). Returns the watch (``stop()``, ``reload()``). One watch per pool;
    a new one replaces the old. ``engine.dispose()`` and :func:`swap_pool`
    carry it over to the new pool.
    """
    target = _pool_of(pool)
    if getattr(target, "_layers", None) is None or not hasattr(target, "_apply_changes"):
        raise TypeError(f"watch_settings() needs a smartpool pool, not {type(target).__name__}")
    old = getattr(target, "_settings_watch", None)
    watch = SettingsWatch(target, path, profile)
    baseline: PoolConfig = target._layered
    diff = config_diff(baseline, watch._loaded)
    check_live(diff, watch.source)
    if old is not None:
        old.stop()
    if diff:
        target._apply_changes({k: b for k, (_, b) in diff.items()}, watch.source)
    watch.attach(target)
    return watch


def request_reload() -> int:
    """Ask every settings watch to reload at its pool's next housekeeping tick; returns how many.
    Safe in a signal handler: it only sets flags."""
    watches = list(_watches)
    for watch in watches:
        watch.requested = True
    return len(watches)


_SignalHandler = Callable[[int, FrameType | None], Any] | int | None


def install_sighup_reload() -> _SignalHandler:
    """On SIGHUP, reload every watched settings file (:func:`watch_settings`) at once.

    The handler only sets a flag per watch; each pool reloads at its next
    housekeeping tick (``housekeeping_interval``, 0.5 s by default), off the
    signal handler. A handler installed before is still called. Call it from
    the main thread; returns that previous handler.
    """
    previous = signal.getsignal(signal.SIGHUP)

    def on_sighup(signum: int, frame: FrameType | None) -> None:
        request_reload()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGHUP, on_sighup)
    return previous


# -- swapping a pool ---------------------------------------------------------------------


def _pool_of(target: Any) -> Any:
    """The pool behind an engine (sync or asyncio), a Redis client, or the pool itself."""
    sync_engine = getattr(target, "sync_engine", None)  # AsyncEngine
    if sync_engine is not None:
        return sync_engine.pool
    if hasattr(target, "connection_pool"):  # redis.Redis, redis.asyncio.Redis
        return target.connection_pool
    if hasattr(target, "pool") and hasattr(target, "dialect"):  # sqlalchemy Engine
        return target.pool
    return target


def swap_pool(target: Any, new: Any = None) -> Any:
    """Replace the pool under ``target`` with no request failing; returns the old pool.

    ``target``: a SQLAlchemy ``Engine`` or ``AsyncEngine`` (``engine.pool`` is
    replaced) or a ``redis.Redis`` / ``redis.asyncio.Redis`` client
    (``client.connection_pool``). ``new``: a pool to put in, or a
    :class:`~.config.PoolConfig`, or a mapping of changes to the current
    settings (validated as a whole), or None for the same settings: then a
    new pool of the same kind is built (as ``engine.dispose()`` does). The
    assignment is one attribute store: every checkout from then on goes to
    the new pool. The old one keeps serving the callers already queued on
    it, closes each connection as it comes back, and closes for good once
    nothing is out (a smartpool pool; any other pool is disposed). A
    settings watch moves to the new pool.
    """
    if hasattr(target, "sync_engine"):
        holder, attr = target.sync_engine, "pool"
    elif hasattr(target, "connection_pool"):
        holder, attr = target, "connection_pool"
    elif hasattr(target, "pool") and hasattr(target, "dialect"):
        holder, attr = target, "pool"
    else:
        kind = type(target).__name__
        raise TypeError(f"swap_pool() needs a SQLAlchemy Engine/AsyncEngine or a redis client, not {kind}")
    old = getattr(holder, attr)
    if new is None or isinstance(new, (PoolConfig, Mapping)):
        if not hasattr(old, "_recreate_with"):
            if new is not None:
                raise TypeError(f"swap_pool() can build a new pool from settings only for a smartpool pool, "
                                f"not {type(old).__name__}; pass the new pool")  # fmt: skip
            replacement = old.recreate()
        else:
            if isinstance(new, PoolConfig):
                config = new
            else:
                config = replace_config(old._engine.config, new or {}, "swap_pool")
            replacement = old._recreate_with(config)
    else:
        replacement = new
    setattr(holder, attr, replacement)
    old_name = getattr(getattr(old, "_engine", None), "name", type(old).__name__)
    new_name = getattr(getattr(replacement, "_engine", None), "name", type(replacement).__name__)
    watch = getattr(old, "_settings_watch", None)
    if watch is not None and hasattr(replacement, "_engine") and getattr(replacement, "_layers", None):
        watch.attach(replacement)
    audit(old_name, POOL_SWAPPED, f"replaced by pool {new_name}; it closes once its checkouts are back",
          new_pool=new_name)  # fmt: skip
    engine = getattr(old, "_engine", None)
    if engine is not None and hasattr(engine, "retire"):
        engine.retire()
    else:
        old.dispose()
    return old


__all__ = [
    "AUDIT_LOGGER",
    "NOT_LIVE",
    "CredentialSource",
    "Credentials",
    "CredentialsUnavailable",
    "Layers",
    "SettingsWatch",
    "audit",
    "config_diff",
    "install_sighup_reload",
    "replace_config",
    "request_reload",
    "swap_pool",
    "watch_settings",
]

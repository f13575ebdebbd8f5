"""Pool settings: one frozen, validated value object, and the merge of every source.

Every field is checked when the object is built, so a misconfigured pool fails
at construction, never on the 10,000th checkout. Only text sources (URL query,
environment, :meth:`PoolConfig.from_strings` for files) are parsed by their
field's type; a Python keyword is taken as given, so ``max_lifetime=""`` is an
error, not "off". :func:`from_pool_arguments` merges the sources in one
documented order and names the source of a bad value.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
import threading
from collections.abc import Collection, Iterable, Mapping
from typing import Any, Literal, get_args

from .errors import ConfigError, redact

ReuseStrategy = Literal["fifo", "lifo"]
#: the fleet budget's policy while Redis is down (fleet.DOWN_POLICIES; kept here so config imports nothing)
BudgetDownPolicy = Literal["share", "held", "max"]
BUDGET_DOWN_POLICIES: tuple[str, ...] = get_args(BudgetDownPolicy)
#: URL schemes redis-py accepts for the budget's store
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
REUSE_STRATEGIES: tuple[str, ...] = get_args(ReuseStrategy)

#: Prefix of the environment variables read by :meth:`PoolConfig.from_env`.
ENV_PREFIX = "SMARTPOOL_"
#: Prefix of the URL query keys read by the ``smartpool`` engine plugin.
URL_PREFIX = "smartpool_"
#: Names the TOML settings file every pool reads as its deployment layer (see :func:`from_pool_arguments`).
ENV_CONFIG_FILE = "SMARTPOOL_CONFIG_FILE"
#: Picks the ``[profiles.<name>]`` table of that file (dev, staging, prod, ...).
ENV_PROFILE = "SMARTPOOL_PROFILE"

#: ``SMARTPOOL_*`` variables that are no pool setting: the project's own (CI, tests,
#: benchmarks) and names reserved for later. Any other unknown one is an error.
ENV_NON_SETTINGS: frozenset[str] = frozenset(
    {
        "SMARTPOOL_REQUIRE_SERVICES",  # CI: fail, not skip, integration tests without servers
        "SMARTPOOL_STATEMENT_GUARD",  # the statement guard (guard.py), read by the engine plugin
        "SMARTPOOL_STATEMENT_GUARD_ALLOWLIST",
        "SMARTPOOL_PROFILE",  # the settings file's profile
        "SMARTPOOL_CONFIG_FILE",  # the settings file
        "SMARTPOOL_URL_ENCRYPTED",  # urlcrypt: the encrypted URL the plugin uses
        "SMARTPOOL_URL_KEY",  # urlcrypt: its key(s)
        "SMARTPOOL_URL_KEY_FILE",
        "SMARTPOOL_CHAOS_SEED",  # tests/integration/test_chaos.py
        "SMARTPOOL_LIVE_SEED",  # tests/integration/test_live_ops.py
        "SMARTPOOL_SUITE_MIN_SIZE",  # tests/sqlalchemy_suite
        "SMARTPOOL_SUITE_VALIDATION_INTERVAL",
        "SMARTPOOL_SA_CACHE",
        "SMARTPOOL_SA_SDIST",
        "SMARTPOOL_SA_BACKENDS",
        "SMARTPOOL_SA_PG_URL",
        "SMARTPOOL_BENCH_URL",  # benchmarks
        "SMARTPOOL_BENCH_REDIS_URL",
    }
)

#: Longest accepted duration in seconds (~11.6 days): beyond any sane timeout,
#: interval or lifetime, and within what threading's waits accept.
MAX_SECONDS: float = min(1_000_000.0, threading.TIMEOUT_MAX)
#: Most connections a pool may keep, or open at once.
MAX_CONNECTIONS = 100_000
#: Ceiling of the other counts (waiters, breaker thresholds).
MAX_COUNT = 1_000_000
#: Most extra attempts of a failed connect.
MAX_RETRIES = 100
#: Largest breaker backoff multiplier.
MAX_MULTIPLIER = 100.0

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

#: setting name -> (value, where it came from)
Settings = dict[str, tuple[Any, str]]


class _DefaultInt(int):
    """A defaulted limit: it follows the other limit of its pair when only that one was given.

    ``max_size=3`` alone then lowers ``min_size`` (default 5) to 3 instead of
    failing on a value the user never wrote. Equal to a plain int everywhere.
    ``origin`` is the default it started as (the class's, a backend's, or one
    derived from QueuePool's arguments), which it returns to when the limit it
    followed changes again.
    """

    origin: int

    def __new__(cls, value: int, origin: int | None = None) -> _DefaultInt:
        self = super().__new__(cls, value)
        self.origin = int(value) if origin is None else origin
        return self

    def __reduce__(self) -> Any:
        return type(self), (int(self), self.origin)


class _DefaultFloat(float):
    """:class:`_DefaultInt` for durations (backoff_initial / backoff_max)."""

    origin: float

    def __new__(cls, value: float, origin: float | None = None) -> _DefaultFloat:
        self = super().__new__(cls, value)
        self.origin = float(value) if origin is None else origin
        return self

    def __reduce__(self) -> Any:
        return type(self), (float(self), self.origin)


def _is_default(value: Any) -> bool:
    return isinstance(value, (_DefaultInt, _DefaultFloat))


def _follow(default: Any, value: Any) -> Any:
    """``default``'s marker type with ``value``, keeping the default it started as."""
    return type(default)(value, default.origin)


class LimitOrderError(ConfigError):
    """Two given limits out of order (``min_size`` above ``max_size``); ``other`` names the second.

    A :class:`ConfigError`; the merge uses ``other`` to say where that one came from.
    """

    def __init__(self, field: str, value: Any, reason: str, other: str) -> None:
        super().__init__(field, value, reason)
        self.other = other


def _order(obj: Any, low: str, high: str, *, blame_low: bool, prefix: str = "") -> None:
    """Keep ``low <= high``: a defaulted limit follows a given one; two given ones must agree."""
    lo, hi = getattr(obj, low), getattr(obj, high)
    if lo <= hi:
        return
    if _is_default(hi):
        object.__setattr__(obj, high, _follow(hi, lo))
    elif _is_default(lo):
        object.__setattr__(obj, low, _follow(lo, hi))
    elif blame_low:
        raise LimitOrderError(prefix + low, lo, f"must be <= {prefix}{high} ({hi!r})", prefix + high)
    else:
        raise LimitOrderError(prefix + high, hi, f"must be >= {prefix}{low} ({lo!r})", prefix + low)


def _defaults_anew(obj: Any, changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` plus every unchanged defaulted limit back at its origin, so it can follow anew."""
    reset = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name not in changes and _is_default(value):
            reset[f.name] = type(value)(value.origin)
    return {**reset, **changes}


def _check_number(
    name: str,
    value: Any,
    *,
    minimum: float,
    maximum: float,
    integer: bool = False,
    allow_none: bool = False,
    strict_min: bool = False,
) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        kind = "an integer" if integer else "a number"
        raise ConfigError(name, value, f"must be {kind}{' or None' if allow_none else ''}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(name, value, "must be finite")
    if value < minimum or (strict_min and value == minimum):
        raise ConfigError(name, value, f"must be {'>' if strict_min else '>='} {minimum:.15g}")
    if value > maximum:
        raise ConfigError(name, value, f"must be <= {maximum:.15g}")


def _seconds(name: str, value: Any, *, zero: bool = False, optional: bool = False) -> None:
    """A duration: finite, > 0 (>= 0 with ``zero``), at most :data:`MAX_SECONDS`."""
    _check_number(
        name, value, minimum=0, maximum=MAX_SECONDS, strict_min=not zero, allow_none=optional
    )


def _count(name: str, value: Any, minimum: int, maximum: int) -> None:
    _check_number(name, value, integer=True, minimum=minimum, maximum=maximum)


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(name, value, "must be a bool")


@dataclasses.dataclass(frozen=True)
class CircuitBreakerConfig:
    """When the pool stops dialing a database that keeps failing, and how it probes.

    The breaker opens after ``failure_threshold`` consecutive connect failures
    (or, with ``failure_ratio`` set, when that share of the connects in the last
    ``ratio_window`` seconds failed, over at least ``ratio_min_calls`` of them).
    While open it lets one probe through at a time, waiting between probes with
    exponential backoff from ``backoff_initial`` to ``backoff_max`` seconds,
    each delay spread by +/- ``jitter`` (a fraction, never past ``backoff_max``)
    so fleets do not probe in step. The default ceiling of 1 s means a pool
    notices a recovered database within a second, for one connect attempt per
    second per pool while it is down; raise it (the plan allows 30 s) for
    large fleets. A ``backoff_initial`` above the default ``backoff_max``
    raises that too.
    """

    enabled: bool = True
    failure_threshold: int = 5
    failure_ratio: float | None = None
    ratio_window: float = 10.0
    ratio_min_calls: int = 10
    backoff_initial: float = _DefaultFloat(0.25)
    backoff_max: float = _DefaultFloat(1.0)
    backoff_multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        _flag("breaker.enabled", self.enabled)
        _count("breaker.failure_threshold", self.failure_threshold, 1, MAX_COUNT)
        _check_number(
            "breaker.failure_ratio",
            self.failure_ratio,
            minimum=0,
            maximum=1,
            allow_none=True,
            strict_min=True,
        )
        _seconds("breaker.ratio_window", self.ratio_window)
        _count("breaker.ratio_min_calls", self.ratio_min_calls, 1, MAX_COUNT)
        _seconds("breaker.backoff_initial", self.backoff_initial)
        _seconds("breaker.backoff_max", self.backoff_max)
        _order(self, "backoff_initial", "backoff_max", blame_low=False, prefix="breaker.")
        _check_number(
            "breaker.backoff_multiplier", self.backoff_multiplier, minimum=1, maximum=MAX_MULTIPLIER
        )
        _check_number("breaker.jitter", self.jitter, minimum=0, maximum=1)


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    """Every SmartPool setting, with the default a production service should start from.

    Durations are seconds (floats), at most :data:`MAX_SECONDS`. ``None`` turns
    an optional behaviour off. Of a pair of limits (``min_size``/``max_size``,
    ``retry_backoff_initial``/``retry_backoff_max``), a defaulted one follows
    the one given: ``PoolConfig(max_size=3).min_size == 3``.
    """

    #: Connections kept open even when idle; opened in the background at start.
    min_size: int = _DefaultInt(5)
    #: Hard ceiling of open connections (idle + in use + being opened).
    max_size: int = _DefaultInt(100)
    #: How long a checkout waits for a connection before :class:`PoolTimeout`.
    acquire_timeout: float = 30.0
    #: Idle connections above ``min_size`` are closed after idling this long.
    idle_timeout: float = 600.0
    #: Connections are retired after this age (spread by ``lifetime_jitter``); never while in use.
    max_lifetime: float | None = 1800.0
    #: Fraction of ``max_lifetime`` by which each connection's end is moved earlier at random.
    lifetime_jitter: float = 0.1
    #: Idle connections are pinged after idling this long, to keep firewalls and servers from dropping them.
    keepalive_interval: float | None = None
    #: Which idle connection a checkout takes: the most recently used ("lifo", keeps the
    #: working set hot and lets the rest idle out) or the least recently used ("fifo").
    reuse: ReuseStrategy = "lifo"
    #: Strict first come, first served when 0 (the default). Otherwise a caller may take an
    #: idle connection ahead of queued callers while the longest of them has waited less than
    #: this (seconds), and a returned connection is kept idle for such a caller rather than
    #: handed over (one thread switch less per request); waits grow by at most this much.
    #: Measured in the fairness benchmark: no consistent gain yet (docs/benchmarks.md).
    barge_window: float = 0.0
    #: Validate a connection on checkout when it sat idle longer than ``validation_interval``.
    validate_on_checkout: bool = True
    validation_interval: float = 0.5
    #: SQL to validate with; ``None`` uses the dialect's own ping.
    validation_query: str | None = None
    #: A validation that takes longer than this fails and the connection is replaced.
    validation_timeout: float = 5.0
    #: Before handing out a connection inside the bypass window, one non-blocking poll of its
    #: socket (~0.3 us, no round trip) for anything the server sent (EOF, RST, a goodbye);
    #: if there is, it is pinged. Keeps ``pool_pre_ping`` safe across a server restart.
    check_socket: bool = True
    #: Most callers allowed to wait at once; more fail fast with :class:`TooManyWaiters`. 0 = no cap.
    max_waiting: int = 0
    #: Connections opened at the same time by the background connector.
    max_concurrent_connects: int = 2
    #: Passed to drivers that support it, so an unreachable host cannot hang a connect.
    connect_timeout: float | None = 10.0
    #: Extra attempts of a connect that failed with a transient error, with backoff and jitter.
    retry_attempts: int = 2
    retry_backoff_initial: float = _DefaultFloat(0.05)
    retry_backoff_max: float = _DefaultFloat(2.0)
    #: A checkout held longer than this is reported as a suspected leak. ``None`` = off.
    leak_detection_threshold: float | None = None
    #: How often the housekeeper wakes for timed work (shrinking, lifetimes, keepalive, leaks).
    housekeeping_interval: float = 0.5
    #: Keep acquire-wait percentiles and the wait / use / create time histograms
    #: (a few hundred ns per checkout; docs/metrics.md).
    track_wait_times: bool = True
    #: One checkout in this many records its caller's code location for ``top_holders()``
    #: (a frame walk of ~1-2 us, amortised to a few ns); 0 turns the sampling off.
    holder_sample_every: int = 64
    #: Name used in logs and metrics; defaults to the pool's id.
    name: str | None = None
    #: Fleet-wide ceiling of server connections for this pool's target, kept in Redis and
    #: shared by every pool (any process, any host) with the same target (docs/fleet.md).
    #: A lease is taken before each physical connect; checkouts never touch Redis. None: off.
    budget: int | None = None
    #: The Redis URL the budget is kept in; required with ``budget``. Never logged.
    budget_redis: str | None = dataclasses.field(default=None, repr=False)
    #: What the budget is for; by default the database URL without credentials.
    budget_key: str | None = None
    #: Prefix of the budget's Redis keys.
    budget_prefix: str = "smartpool:budget"
    #: A lease lives this long without renewal (renewed every quarter of it, at most every
    #: second): a killed process's leases come back within it; a process frozen longer
    #: closes the connections whose leases it lost before using them.
    budget_ttl: float = 10.0
    #: While Redis cannot be reached: "share" keeps the connections held and opens new ones up
    #: to the last fair share; "held" opens none; "max" ignores the budget (up to ``max_size``).
    budget_on_redis_down: BudgetDownPolicy = "share"
    #: Socket timeouts of the budget's Redis calls, at most a quarter of ``budget_ttl`` (a
    #: slower Redis counts as down).
    budget_timeout: float = 2.0
    breaker: CircuitBreakerConfig = dataclasses.field(default_factory=CircuitBreakerConfig)

    def __post_init__(self) -> None:
        _count("min_size", self.min_size, 0, MAX_CONNECTIONS)
        _count("max_size", self.max_size, 1, MAX_CONNECTIONS)
        _order(self, "min_size", "max_size", blame_low=True)
        _seconds("acquire_timeout", self.acquire_timeout, zero=True)
        _seconds("idle_timeout", self.idle_timeout)
        _seconds("max_lifetime", self.max_lifetime, optional=True)
        _check_number("lifetime_jitter", self.lifetime_jitter, minimum=0, maximum=0.5)
        _seconds("keepalive_interval", self.keepalive_interval, optional=True)
        if self.reuse not in REUSE_STRATEGIES:
            raise ConfigError("reuse", self.reuse, f"must be one of {', '.join(REUSE_STRATEGIES)}")
        _flag("validate_on_checkout", self.validate_on_checkout)
        _seconds("validation_interval", self.validation_interval, zero=True)
        _seconds("barge_window", self.barge_window, zero=True)
        if self.validation_query is not None and (
            not isinstance(self.validation_query, str) or not self.validation_query.strip()
        ):
            raise ConfigError("validation_query", self.validation_query, "must be non-empty SQL")
        _seconds("validation_timeout", self.validation_timeout)
        _flag("check_socket", self.check_socket)
        _count("max_waiting", self.max_waiting, 0, MAX_COUNT)
        _count("max_concurrent_connects", self.max_concurrent_connects, 1, MAX_CONNECTIONS)
        _seconds("connect_timeout", self.connect_timeout, optional=True)
        _count("retry_attempts", self.retry_attempts, 0, MAX_RETRIES)
        _seconds("retry_backoff_initial", self.retry_backoff_initial, zero=True)
        _seconds("retry_backoff_max", self.retry_backoff_max, zero=True)
        _order(self, "retry_backoff_initial", "retry_backoff_max", blame_low=False)
        _seconds("leak_detection_threshold", self.leak_detection_threshold, optional=True)
        _seconds("housekeeping_interval", self.housekeeping_interval)
        _flag("track_wait_times", self.track_wait_times)
        _count("holder_sample_every", self.holder_sample_every, 0, MAX_COUNT)
        if self.name is not None and not isinstance(self.name, str):
            raise ConfigError("name", self.name, "must be a string")
        if not isinstance(self.breaker, CircuitBreakerConfig):
            raise ConfigError("breaker", self.breaker, "must be a CircuitBreakerConfig")
        self._check_budget()

    def _check_budget(self) -> None:
        _check_number(
            "budget", self.budget, integer=True, minimum=1, maximum=MAX_CONNECTIONS, allow_none=True
        )
        redis_url = self.budget_redis
        if redis_url is not None and (
            not isinstance(redis_url, str) or not redis_url.strip().lower().startswith(_REDIS_SCHEMES)
        ):
            shown = redact(redis_url) if isinstance(redis_url, str) else redis_url
            raise ConfigError("budget_redis", shown, f"must be a Redis URL ({', '.join(_REDIS_SCHEMES)})")
        if self.budget is not None and redis_url is None:
            raise ConfigError(
                "budget", self.budget, "needs budget_redis, the Redis URL the budget is kept in"
            )
        for name in ("budget_key", "budget_prefix"):
            value = getattr(self, name)
            if value is None and name == "budget_key":
                continue
            if not isinstance(value, str) or not value.strip() or any(c in value for c in "{}\n\r"):
                raise ConfigError(name, value, "must be a non-empty string without braces or newlines")
        _check_number("budget_ttl", self.budget_ttl, minimum=0.1, maximum=86_400.0)
        if self.budget_on_redis_down not in BUDGET_DOWN_POLICIES:
            raise ConfigError(
                "budget_on_redis_down",
                self.budget_on_redis_down,
                f"must be one of {', '.join(BUDGET_DOWN_POLICIES)}",
            )
        _check_number("budget_timeout", self.budget_timeout, minimum=0.001, maximum=60.0)

    # -- building from other sources -------------------------------------------------

    def replace(self, **changes: Any) -> PoolConfig:
        """A copy with ``changes`` applied (and validated); unknown names raise ConfigError."""
        _reject_unknown(changes)
        plain = {k: v for k, v in changes.items() if not k.startswith("breaker_")}
        breaker_changes = {k.removeprefix("breaker_"): v for k, v in changes.items() if k not in plain}
        breaker = plain.get("breaker", self.breaker)
        if breaker_changes and isinstance(breaker, CircuitBreakerConfig):
            plain["breaker"] = dataclasses.replace(breaker, **_defaults_anew(breaker, breaker_changes))
        return dataclasses.replace(self, **_defaults_anew(self, plain))

    @classmethod
    def from_strings(cls, values: Mapping[str, str], *, base: PoolConfig | None = None) -> PoolConfig:
        """Build from text values (URL query, environment, a file), coercing each by its field's type.

        Breaker fields are spelled ``breaker_<field>``. The empty string or
        ``none`` turns an optional field off.
        """
        base = base or cls()
        changes = {name: coerce_setting(name, raw) for name, raw in values.items()}
        return base.replace(**changes)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        prefix: str = ENV_PREFIX,
        allow: Collection[str] = ENV_NON_SETTINGS,
    ) -> PoolConfig:
        """Build from ``SMARTPOOL_<FIELD>`` environment variables (e.g. ``SMARTPOOL_MAX_SIZE=50``).

        Any other variable with the prefix that is not in ``allow`` is an error:
        a typo must not leave a pool silently untuned.
        """
        environ = os.environ if environ is None else environ
        return _apply(cls(), _env_settings(environ, prefix=prefix, allow=allow))

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        profile: str | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        base: PoolConfig | None = None,
    ) -> PoolConfig:
        """Build from a TOML settings file: its top-level keys, then the chosen ``[profiles.<name>]``.

        ``profile=None`` takes the name from ``SMARTPOOL_PROFILE`` in
        ``environ`` (``os.environ`` by default); ``""`` means the top level
        only. Values are typed as TOML types them (``max_size = 20``,
        ``max_lifetime = "off"``); every profile is checked, not only the
        chosen one, so a typo in ``prod`` fails in ``dev`` already. Errors
        name the file and the key with its table path.
        """
        environ = os.environ if environ is None else environ
        if profile is None:
            profile, profile_source = environ.get(ENV_PROFILE, ""), f"environment variable {ENV_PROFILE}"
        else:
            profile_source = "argument profile"
        settings = file_settings(os.fspath(path), profile, profile_source=profile_source)
        return _apply(base or cls(), settings, base_source="base" if base else None)


def field_types() -> dict[str, str]:
    """Every settable name (breaker fields as ``breaker_<field>``) with its annotated type."""
    names = {f.name: str(f.type) for f in dataclasses.fields(PoolConfig) if f.name != "breaker"}
    names.update({f"breaker_{f.name}": str(f.type) for f in dataclasses.fields(CircuitBreakerConfig)})
    return names


#: The keywords SmartPool takes for PoolConfig fields (``breaker`` is a CircuitBreakerConfig).
POOL_KEYWORDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(PoolConfig))


def _unknown(
    name: str, value: Any, candidates: Iterable[str], *, key: str | None = None, source: str | None = None
) -> ConfigError:
    """An "unknown pool setting" error with the closest known spelling as a hint."""
    spelled = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches((key or name).lower(), spelled, n=1)
    hint = f"; did you mean {spelled[close[0]]}?" if close else ""
    return ConfigError(name, value, f"unknown pool setting{hint}", source=source)


def _reject_unknown(changes: Mapping[str, Any]) -> None:
    known = field_types()
    for name, value in changes.items():
        if name not in known and name != "breaker":
            raise _unknown(name, value, [*known, "breaker"])


def coerce_setting(name: str, raw: Any) -> Any:
    """Turn a text value (URL, env, file) into its field's type; other values pass through."""
    types = field_types()
    if name not in types:
        raise _unknown(name, raw, types)
    if not isinstance(raw, str):
        return raw
    annotation = types[name]
    text = raw.strip()
    if "None" in annotation and text.lower() in {"", "none", "null", "off"}:
        return None
    if annotation.startswith("bool"):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(name, raw, "must be a boolean (true/false, 1/0, yes/no, on/off)")
    if annotation.startswith("int"):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(name, raw, "must be an integer") from None
    if annotation.startswith("float"):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(name, raw, "must be a number") from None
    return text


def _text_setting(
    name: str, raw: Any, candidates: Iterable[str], *, key: str, source: str
) -> tuple[Any, str]:
    """One setting from a text source, coerced by its field's type, errors naming ``source``."""
    if name not in field_types():
        raise _unknown(name, raw, candidates, key=key, source=source)
    try:
        return coerce_setting(name, raw), source
    except ConfigError as err:
        raise ConfigError(err.field, err.value, err.reason, source=source) from None


def _env_settings(environ: Mapping[str, str], *, prefix: str, allow: Collection[str]) -> Settings:
    """The ``<prefix><FIELD>`` variables of ``environ``; an unknown one that is not in ``allow`` raises."""
    candidates = [prefix + name.upper() for name in field_types()] + sorted(allow)
    settings: Settings = {}
    for key, raw in environ.items():
        if key.startswith(prefix) and key not in allow:
            name, source = key[len(prefix) :].lower(), f"environment variable {key}"
            settings[name] = _text_setting(name, raw, candidates, key=key, source=source)
    return settings


def _url_settings(query: Mapping[str, Any]) -> Settings:
    """The ``smartpool_<field>`` keys of a URL query; an unknown or repeated one raises."""
    candidates = [URL_PREFIX + name for name in field_types()]
    settings: Settings = {}
    for key, raw in query.items():
        if not key.startswith(URL_PREFIX):
            continue
        name, source = key[len(URL_PREFIX) :], f"URL parameter {key}"
        if not isinstance(raw, str):
            raise ConfigError(name, raw, "given more than once in the URL", source=source)
        settings[name] = _text_setting(name, raw, candidates, key=key, source=source)
    return settings


# -- settings files ---------------------------------------------------------------------

#: top-level keys of a settings file that are no pool setting
_FILE_TABLES = ("breaker", "profiles")


def _load_toml(path: str, source: str | None) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ConfigError(
                "config_file",
                path,
                "reading TOML on Python 3.10 needs tomli: pip install 'sqlalchemy-smartpool[toml]'",
                source=source,
            ) from None
    try:
        with open(path, "rb") as f:
            doc: dict[str, Any] = tomllib.load(f)
    except OSError as err:
        reason = f"cannot be read: {err.strerror or err}"
        raise ConfigError("config_file", path, reason, source=source) from None
    except tomllib.TOMLDecodeError as err:  # "Invalid value (at line 3, column 12)": no content quoted
        raise ConfigError("config_file", path, f"is not valid TOML: {err}", source=source) from None
    return doc


def _file_value(name: str, value: Any) -> Any:
    """A TOML value as given; TOML has no null, so ``"off"`` / ``"none"`` turn an optional setting off."""
    optional = "None" in field_types()[name]
    if optional and isinstance(value, str) and value.strip().lower() in {"", "none", "null", "off"}:
        return None
    return value


def _table_settings(table: Mapping[str, Any], path: str, prefix: str) -> Settings:
    """The settings of one table (the top level or a profile), each with its file-and-key source."""
    known = field_types()
    out: Settings = {}

    def put(name: str, value: Any, key: str) -> None:
        source = f"file {path}, key {key}"
        if name not in known:
            if name.startswith("breaker_") and ".breaker." in f".{key}":  # within a [breaker] table
                candidates = [f.name for f in dataclasses.fields(CircuitBreakerConfig)]
            else:
                candidates = [*known, *_FILE_TABLES] if not prefix else [*known, "breaker"]
            raise _unknown(key, value, candidates, key=key.rpartition(".")[2], source=source)
        if name in out:
            raise ConfigError(name, value, f"given twice (also as {out[name][1]})", source=source)
        out[name] = (_file_value(name, value), source)

    for key, value in table.items():
        if key == "profiles" and not prefix:
            continue
        if key == "breaker":
            if not isinstance(value, dict):
                source = f"file {path}, key {prefix}{key}"
                raise ConfigError(prefix + key, value, "must be a table ([breaker])", source=source)
            for sub, sub_value in value.items():
                put(f"breaker_{sub}", sub_value, f"{prefix}breaker.{sub}")
            continue
        put(key, value, prefix + key)
    return out


def file_settings(
    path: str, profile: str = "", *, profile_source: str | None = None, source: str | None = None
) -> Settings:
    """The settings of a TOML file: the top level overlaid by ``[profiles.<profile>]``.

    Every table is validated on its own (names, types, ranges), so an error
    in any profile shows whichever profile is chosen. ``source`` says where
    the path came from, ``profile_source`` where the profile's name did.
    """
    doc = _load_toml(path, source)
    top = _table_settings(doc, path, "")
    profiles = doc.get("profiles", {})
    if not isinstance(profiles, dict):
        reason = "must be a table of profiles ([profiles.prod])"
        raise ConfigError("profiles", profiles, reason, source=f"file {path}, key profiles")
    tables: dict[str, Settings] = {}
    for name, table in profiles.items():
        if not isinstance(table, dict):
            key = f"profiles.{name}"
            reason = "must be a table ([profiles.<name>])"
            raise ConfigError(key, table, reason, source=f"file {path}, key {key}")
        tables[name] = _table_settings(table, path, f"profiles.{name}.")
    for settings in (top, *({**top, **t} for t in tables.values())):
        _apply(PoolConfig(), settings)
    if not profile:
        return top
    if profile not in tables:
        have = f"its profiles are {', '.join(sorted(tables))}" if tables else "it has no [profiles.*] tables"
        reason = f"no [profiles.{profile}] in {path}; {have}"
        raise ConfigError("profile", profile, reason, source=profile_source)
    return {**top, **tables[profile]}


def _deployment_settings(environ: Mapping[str, str]) -> Settings:
    """The settings file named by ``SMARTPOOL_CONFIG_FILE`` (and its ``SMARTPOOL_PROFILE``), if any."""
    path, profile = environ.get(ENV_CONFIG_FILE, ""), environ.get(ENV_PROFILE, "")
    profile_source = f"environment variable {ENV_PROFILE}"
    if not path:
        if profile:
            reason = f"{ENV_CONFIG_FILE} is not set: no file to take it from"
            raise ConfigError("profile", profile, reason, source=profile_source)
        return {}
    source = f"environment variable {ENV_CONFIG_FILE}"
    return file_settings(path, profile, profile_source=profile_source, source=source)


# -- per-database defaults ---------------------------------------------------------------

#: Defaults that differ by backend (``dialect.name``; ``redis`` for the Redis pools), below every
#: other source. docs/adopting.md says why each exists and why the others have none.
BACKEND_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    # one writer at a time, connections in-process: more than QueuePool's 5 + 10 only queue on the
    # database lock; no server, firewall or proxy ever drops a connection, so none needs retiring
    "sqlite": {"max_size": _DefaultInt(15), "max_lifetime": None},
    "postgresql": {},
    "mysql": {},
    "mariadb": {},
    "redis": {},
}


def backend_settings(backend: str | None) -> Settings:
    """The :data:`BACKEND_DEFAULTS` of ``backend`` as settings (none for an unknown one)."""
    if not backend:
        return {}
    source = f"defaults for {backend}"
    return {name: (value, source) for name, value in BACKEND_DEFAULTS.get(backend, {}).items()}


#: SQLAlchemy's pool arguments as SmartPool receives them -> as create_engine() spells them
SA_POOL_ARGUMENTS = {
    "pool_size": "pool_size",
    "max_overflow": "max_overflow",
    "timeout": "pool_timeout",
    "recycle": "pool_recycle",
    "pre_ping": "pool_pre_ping",
    "use_lifo": "pool_use_lifo",
}


def _sa_settings(sa: Mapping[str, Any]) -> Settings:
    """SQLAlchemy's pool arguments as SmartPool settings.

    A limit derived from a QueuePool default the app never wrote (max_overflow
    10, pool_size 5) is a default: it yields to any given limit.
    """

    def src(*names: str) -> str:
        args = ", ".join(f"{SA_POOL_ARGUMENTS[n]}={sa[n]!r}" for n in names)
        return f"create_engine argument{'s' if len(names) > 1 else ''} {args}"

    def bad(name: str, kind: str) -> ConfigError:
        spelled = SA_POOL_ARGUMENTS[name]
        return ConfigError(spelled, sa[name], f"must be {kind}", source=f"create_engine argument {spelled}")

    def integer(name: str, default: int) -> int:
        value = sa.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(name, "an integer")
        return value

    def flag(name: str) -> bool:
        if isinstance(sa[name], str):  # "false" is truthy: refuse rather than guess
            raise bad(name, "a bool")
        return bool(sa[name])

    out: Settings = {}
    if "pool_size" in sa or "max_overflow" in sa:
        size, overflow = integer("pool_size", 5), integer("max_overflow", 10)
        written = [n for n in ("pool_size", "max_overflow") if n in sa]
        out["min_size"] = (size if "pool_size" in sa else _DefaultInt(size), src(*written))
        if size > 0 and overflow >= 0:  # otherwise QueuePool's "no limit": keep SmartPool's ceiling
            ceiling = size + overflow
            if "max_overflow" not in sa:
                ceiling = _DefaultInt(min(ceiling, MAX_CONNECTIONS))
            out["max_size"] = (ceiling, src(*written))
    if "timeout" in sa:
        out["acquire_timeout"] = (sa["timeout"], src("timeout"))
    if "recycle" in sa:
        recycle = sa["recycle"]
        negative = isinstance(recycle, (int, float)) and not isinstance(recycle, bool) and recycle < 0
        out["max_lifetime"] = (None if recycle is None or negative else recycle, src("recycle"))
    if "pre_ping" in sa:
        out["validate_on_checkout"] = (flag("pre_ping"), src("pre_ping"))
    if "use_lifo" in sa:
        out["reuse"] = ("lifo" if flag("use_lifo") else "fifo", src("use_lifo"))
    return out


def from_pool_arguments(
    base: PoolConfig | None,
    given: Mapping[str, Any],
    sa_given: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    url_query: Mapping[str, Any] | None = None,
    backend: str | None = None,
) -> PoolConfig:
    """Merge every source of pool settings into one validated config; later sources win.

    Defaults < :data:`BACKEND_DEFAULTS` of ``backend`` (only without a
    ``base``: a ``pool_config=`` is a whole config) < ``base``
    (``pool_config=``) < SQLAlchemy's pool arguments in code (``sa_given``:
    pool_size, max_overflow, timeout, recycle, pre_ping, use_lifo) <
    SmartPool keywords in code (``given``) < the settings file named by
    ``SMARTPOOL_CONFIG_FILE`` in ``environ`` (its top level, then its
    ``SMARTPOOL_PROFILE`` profile) < ``SMARTPOOL_*`` variables of ``environ``
    < ``smartpool_*`` keys of ``url_query``. The file, environment and URL
    are the operator's knobs, to tune a deployed app without touching its
    code, so they override code without conflict; of those, the more
    specific wins (a file shared by a fleet < one process's environment <
    one engine's URL). A SmartPool keyword and a SQLAlchemy argument that
    disagree about one field, both in code, are an error unless the operator
    sets that field. Keywords are never parsed as text.
    """
    if base is not None and not isinstance(base, PoolConfig):
        raise ConfigError("pool_config", base, "must be a PoolConfig", source="keyword")
    code: Settings = {name: (value, "keyword") for name, value in given.items()}
    conflicts: list[ConfigError] = []
    for name, (value, source) in _sa_settings(sa_given).items():
        if name not in code:
            code[name] = (value, source)
        elif not _is_default(value) and code[name][0] != value:
            reason = f"conflicts with {source} ({name}={value!r}); give only one of them"
            conflicts.append(ConfigError(name, code[name][0], reason, source="keyword"))
    operator = {
        **_deployment_settings(environ or {}),
        **_env_settings(environ or {}, prefix=ENV_PREFIX, allow=ENV_NON_SETTINGS),
        **_url_settings(url_query or {}),
    }
    for conflict in conflicts:
        if conflict.field not in operator:
            raise conflict
    if base is not None:
        return _apply(base, {**code, **operator}, base_source="pool_config")
    return _apply(PoolConfig(), {**backend_settings(backend), **code, **operator})


def _apply(base: PoolConfig, settings: Settings, *, base_source: str | None = None) -> PoolConfig:
    """``base`` with ``settings`` applied; a validation error is re-raised naming its value's source.

    A derived default (QueuePool's overflow) never replaces a limit ``base`` was given.
    """
    changes = {
        name: value
        for name, (value, _) in settings.items()
        if not _is_default(value) or _is_default(getattr(base, name))
    }
    try:
        return base.replace(**changes)
    except ConfigError as err:

        def where(field: str) -> str | None:  # "breaker.jitter": breaker_jitter, else the breaker object
            for key in (field.replace("breaker.", "breaker_", 1), field.partition(".")[0]):
                if key in settings:
                    return settings[key][1]
            return base_source

        reason = err.reason
        other = err.other if isinstance(err, LimitOrderError) else None
        if other and where(other):
            reason += f"; {other} is from {where(other)}"
        raise ConfigError(err.field, err.value, reason, source=where(err.field)) from None

"""Pool settings: one frozen, validated value object.

Every field is checked when the object is built, so a misconfigured pool fails
at construction, never on the 10,000th checkout. Settings that arrive as text
(URL query, environment) go through :meth:`PoolConfig.from_strings`, which
coerces each value by its field's type and names the field on failure.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from collections.abc import Mapping
from typing import Any, Literal, get_args

from .errors import ConfigError

ReuseStrategy = Literal["fifo", "lifo"]
REUSE_STRATEGIES: tuple[str, ...] = get_args(ReuseStrategy)

#: Prefix of the environment variables read by :meth:`PoolConfig.from_env`.
ENV_PREFIX = "SMARTPOOL_"
#: Prefix of the URL query keys read by the ``smartpool`` engine plugin.
URL_PREFIX = "smartpool_"

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


class _DefaultInt(int):
    """A defaulted limit: it follows the other limit of its pair when only that one was given.

    ``max_size=3`` alone then lowers ``min_size`` (default 5) to 3 instead of
    failing on a value the user never wrote. Equal to a plain int everywhere.
    """


class _DefaultFloat(float):
    """:class:`_DefaultInt` for durations (backoff_initial / backoff_max)."""


def _is_default(value: Any) -> bool:
    return isinstance(value, (_DefaultInt, _DefaultFloat))


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
        object.__setattr__(obj, high, type(hi)(lo))
    elif _is_default(lo):
        object.__setattr__(obj, low, type(lo)(hi))
    elif blame_low:
        raise LimitOrderError(prefix + low, lo, f"must be <= {prefix}{high} ({hi!r})", prefix + high)
    else:
        raise LimitOrderError(prefix + high, hi, f"must be >= {prefix}{low} ({lo!r})", prefix + low)


def _defaults_anew(obj: Any, changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` plus the class default of every unchanged defaulted limit, so it can follow anew."""
    reset = {
        f.name: f.default
        for f in dataclasses.fields(obj)
        if f.name not in changes and _is_default(getattr(obj, f.name))
    }
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
    #: Validate a connection on checkout when it sat idle longer than ``validation_interval``.
    validate_on_checkout: bool = True
    validation_interval: float = 0.5
    #: SQL to validate with; ``None`` uses the dialect's own ping.
    validation_query: str | None = None
    #: A validation that takes longer than this fails and the connection is replaced.
    validation_timeout: float = 5.0
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
    #: Keep acquire-wait percentiles (a few hundred ns per checkout).
    track_wait_times: bool = True
    #: Name used in logs and metrics; defaults to the pool's id.
    name: str | None = None
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
        if self.validation_query is not None and (
            not isinstance(self.validation_query, str) or not self.validation_query.strip()
        ):
            raise ConfigError("validation_query", self.validation_query, "must be non-empty SQL")
        _seconds("validation_timeout", self.validation_timeout)
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
        if self.name is not None and not isinstance(self.name, str):
            raise ConfigError("name", self.name, "must be a string")
        if not isinstance(self.breaker, CircuitBreakerConfig):
            raise ConfigError("breaker", self.breaker, "must be a CircuitBreakerConfig")

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
        """Build from text values (URL query, environment), coercing each by its field's type.

        Breaker fields are spelled ``breaker_<field>``. The empty string or
        ``none`` turns an optional field off.
        """
        base = base or cls()
        changes = {name: coerce_setting(name, raw) for name, raw in values.items()}
        return base.replace(**changes)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, prefix: str = ENV_PREFIX
    ) -> PoolConfig:
        """Build from ``SMARTPOOL_<FIELD>`` environment variables (e.g. ``SMARTPOOL_MAX_SIZE=50``)."""
        environ = os.environ if environ is None else environ
        values = {
            key[len(prefix) :].lower(): value
            for key, value in environ.items()
            if key.startswith(prefix) and key[len(prefix) :].lower() in field_types()
        }
        return cls.from_strings(values)


def field_types() -> dict[str, str]:
    """Every settable name (breaker fields as ``breaker_<field>``) with its annotated type."""
    names = {f.name: str(f.type) for f in dataclasses.fields(PoolConfig) if f.name != "breaker"}
    names.update({f"breaker_{f.name}": str(f.type) for f in dataclasses.fields(CircuitBreakerConfig)})
    return names


def _reject_unknown(changes: Mapping[str, Any]) -> None:
    known = field_types()
    for name, value in changes.items():
        if name not in known and name != "breaker":
            raise ConfigError(name, value, "unknown pool setting")


def coerce_setting(name: str, raw: Any) -> Any:
    """Turn a text value (URL, env) into its field's type; other values pass through."""
    types = field_types()
    if name not in types:
        raise ConfigError(name, raw, "unknown pool setting")
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


#: create_engine() spells these SQLAlchemy pool arguments; each maps onto a PoolConfig field
_SA_ALIASES = {
    "pool_size": "min_size",
    "max_overflow": "max_size",
    "timeout": "acquire_timeout",
    "recycle": "max_lifetime",
    "pre_ping": "validate_on_checkout",
    "use_lifo": "reuse",
}


def from_pool_arguments(
    base: PoolConfig | None, given: dict[str, Any], sa_given: dict[str, Any]
) -> PoolConfig:
    """Merge pool_config, SmartPool keywords and SQLAlchemy's pool keywords into one config."""
    if base is not None and not isinstance(base, PoolConfig):
        raise ConfigError("pool_config", base, "must be a PoolConfig")
    config = base or PoolConfig()
    changes = {k: coerce_setting(k, v) for k, v in given.items() if k != "breaker"}
    if "breaker" in given:
        changes["breaker"] = given["breaker"]
    mapped: dict[str, Any] = {}
    if "pool_size" in sa_given or "max_overflow" in sa_given:
        # a missing one takes QueuePool's default, so the app keeps the limits it had
        size = _sa_int("pool_size", sa_given.get("pool_size", 5))
        overflow = _sa_int("max_overflow", sa_given.get("max_overflow", 10))
        mapped["min_size"] = size
        if "max_overflow" not in sa_given and "max_size" in changes:
            pass  # an explicit max_size beats QueuePool's default overflow
        elif size == 0 or overflow < 0:
            # QueuePool's "no limit": SmartPool always has a ceiling; keep ours
            mapped["max_size"] = max(size, changes.get("max_size", config.max_size), 1)
        else:
            mapped["max_size"] = max(size + overflow, 1)
    if "timeout" in sa_given:
        mapped["acquire_timeout"] = sa_given["timeout"]
    if "recycle" in sa_given:
        recycle = sa_given["recycle"]
        mapped["max_lifetime"] = None if recycle is None or recycle < 0 else recycle
    if "pre_ping" in sa_given:
        mapped["validate_on_checkout"] = bool(sa_given["pre_ping"])
    if "use_lifo" in sa_given:
        mapped["reuse"] = "lifo" if sa_given["use_lifo"] else "fifo"
    for field, value in mapped.items():
        if field in changes and changes[field] != value:
            alias = next(k for k, v in _SA_ALIASES.items() if v == field and k in sa_given)
            raise ConfigError(
                field,
                changes[field],
                f"conflicts with SQLAlchemy's {alias}={sa_given[alias]!r}; give only one of them",
            )
        changes.setdefault(field, value)
    return config.replace(**changes)


def _sa_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(name, value, "must be an integer")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(name, value, "must be an integer") from None

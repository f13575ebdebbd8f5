"""PoolConfig / CircuitBreakerConfig validation, text coercion, SmartPool and create_engine entry points.

A bad setting must fail at construction with a ConfigError that names the
field and the offending value (and never a URL password).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import traceback
from typing import Any

import pytest
from sqlalchemy import create_engine

from sqlalchemy_smartpool import SmartPool
from sqlalchemy_smartpool.config import (
    ENV_NON_SETTINGS,
    MAX_CONNECTIONS,
    MAX_SECONDS,
    CircuitBreakerConfig,
    PoolConfig,
    coerce_setting,
    field_types,
    from_pool_arguments,
)
from sqlalchemy_smartpool.errors import ConfigError

NAN = float("nan")
INF = float("inf")


def _creator() -> Any:  # never called: SmartPool only connects at the first checkout
    raise AssertionError("no connection may be opened by these tests")


def assert_names(err: ConfigError, field: str, value: Any) -> None:
    """The message must let an operator find the setting: field name and value's repr."""
    message = str(err)
    assert err.field == field
    assert field in message, message
    assert repr(value) in message, message
    if isinstance(value, float) and math.isnan(value):
        assert math.isnan(err.value)
    else:
        assert err.value == value and type(err.value) is type(value)


# -- construction ---------------------------------------------------------------------

POOL_INVALID: list[tuple[str, Any]] = [
    ("min_size", -1), ("min_size", 1.5), ("min_size", "5"), ("min_size", True), ("min_size", None),
    ("max_size", 0), ("max_size", -3), ("max_size", 2.0), ("max_size", False), ("max_size", None),
    ("acquire_timeout", -0.1), ("acquire_timeout", NAN), ("acquire_timeout", INF),
    ("acquire_timeout", "1"), ("acquire_timeout", True), ("acquire_timeout", None),
    ("idle_timeout", 0), ("idle_timeout", -1.0), ("idle_timeout", NAN), ("idle_timeout", INF),
    ("idle_timeout", True),
    ("max_lifetime", 0), ("max_lifetime", -5), ("max_lifetime", NAN), ("max_lifetime", INF),
    ("max_lifetime", "1800"), ("max_lifetime", True),
    ("lifetime_jitter", -0.1), ("lifetime_jitter", 0.51), ("lifetime_jitter", NAN),
    ("lifetime_jitter", True), ("lifetime_jitter", None),
    ("keepalive_interval", 0), ("keepalive_interval", -1), ("keepalive_interval", INF),
    ("keepalive_interval", True),
    ("reuse", "LIFO"), ("reuse", "random"), ("reuse", None), ("reuse", 1),
    ("validate_on_checkout", 1), ("validate_on_checkout", "yes"), ("validate_on_checkout", None),
    ("validation_interval", -1), ("validation_interval", NAN), ("validation_interval", True),
    ("validation_interval", None),
    ("validation_query", ""), ("validation_query", "   "), ("validation_query", 5),
    ("validation_timeout", 0), ("validation_timeout", -1), ("validation_timeout", INF),
    ("validation_timeout", None),
    ("max_waiting", -1), ("max_waiting", 1.0), ("max_waiting", True), ("max_waiting", None),
    ("max_concurrent_connects", 0), ("max_concurrent_connects", -1), ("max_concurrent_connects", 2.5),
    ("max_concurrent_connects", True),
    ("connect_timeout", 0), ("connect_timeout", -1), ("connect_timeout", NAN), ("connect_timeout", True),
    ("retry_attempts", -1), ("retry_attempts", 1.5), ("retry_attempts", True), ("retry_attempts", None),
    ("retry_backoff_initial", -0.1), ("retry_backoff_initial", NAN), ("retry_backoff_initial", True),
    ("retry_backoff_max", -1), ("retry_backoff_max", INF), ("retry_backoff_max", True),
    ("retry_backoff_max", None),
    ("leak_detection_threshold", 0), ("leak_detection_threshold", -1),
    ("leak_detection_threshold", NAN), ("leak_detection_threshold", True),
    ("housekeeping_interval", 0), ("housekeeping_interval", -1), ("housekeeping_interval", INF),
    ("housekeeping_interval", None), ("housekeeping_interval", True),
    ("track_wait_times", 1), ("track_wait_times", "true"), ("track_wait_times", None),
    ("name", 5), ("name", b"pool"),
    ("breaker", "closed"), ("breaker", {}),
]  # fmt: skip


@pytest.mark.parametrize(("field", "value"), POOL_INVALID)
def test_pool_field_rejects_bad_value(field: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        PoolConfig(**{field: value})
    assert_names(info.value, field, value)
    assert isinstance(info.value, ValueError)  # callers catching ValueError keep working


BREAKER_INVALID: list[tuple[str, Any]] = [
    ("enabled", 1), ("enabled", "true"), ("enabled", None),
    ("failure_threshold", 0), ("failure_threshold", -1), ("failure_threshold", 1.5),
    ("failure_threshold", True), ("failure_threshold", None),
    ("failure_ratio", 0), ("failure_ratio", -0.1), ("failure_ratio", 1.01), ("failure_ratio", NAN),
    ("failure_ratio", True),
    ("ratio_window", 0), ("ratio_window", -1), ("ratio_window", INF), ("ratio_window", True),
    ("ratio_min_calls", 0), ("ratio_min_calls", 1.0), ("ratio_min_calls", True),
    ("backoff_initial", 0), ("backoff_initial", -1), ("backoff_initial", NAN), ("backoff_initial", True),
    ("backoff_max", 0), ("backoff_max", INF), ("backoff_max", True),
    ("backoff_multiplier", 0.5), ("backoff_multiplier", NAN), ("backoff_multiplier", True),
    ("jitter", -0.1), ("jitter", 1.1), ("jitter", NAN), ("jitter", True),
]  # fmt: skip


@pytest.mark.parametrize(("field", "value"), BREAKER_INVALID)
def test_breaker_field_rejects_bad_value(field: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        CircuitBreakerConfig(**{field: value})
    assert_names(info.value, f"breaker.{field}", value)


@pytest.mark.parametrize(
    "settings",
    [
        {"min_size": 0},
        {"max_size": 1, "min_size": 1},
        {"min_size": 7, "max_size": 7},
        {"acquire_timeout": 0},  # fail at once instead of waiting
        {"acquire_timeout": 5},  # an int where a float is expected is fine
        {"max_lifetime": None, "keepalive_interval": None, "connect_timeout": None},
        {"leak_detection_threshold": None, "validation_query": None, "name": None},
        {"lifetime_jitter": 0.0},
        {"lifetime_jitter": 0.5},
        {"max_waiting": 0, "retry_attempts": 0},
        {"retry_backoff_initial": 0, "retry_backoff_max": 0},
        {"validation_interval": 0},
        {"reuse": "fifo"},
        {"validation_query": "SELECT 1", "name": "orders"},
    ],
)
def test_pool_boundary_values_are_accepted(settings: dict[str, Any]) -> None:
    config = PoolConfig(**settings)
    for field, value in settings.items():
        assert getattr(config, field) == value


@pytest.mark.parametrize(
    "settings",
    [
        {"failure_ratio": 1.0},
        {"failure_ratio": 0.01},
        {"jitter": 0.0},
        {"jitter": 1.0},
        {"backoff_multiplier": 1.0},
        {"backoff_initial": 2.0, "backoff_max": 2.0},
        {"enabled": False},
    ],
)
def test_breaker_boundary_values_are_accepted(settings: dict[str, Any]) -> None:
    breaker = CircuitBreakerConfig(**settings)
    for field, value in settings.items():
        assert getattr(breaker, field) == value


def test_defaults_are_the_documented_ones() -> None:
    config = PoolConfig()
    assert (config.min_size, config.max_size, config.reuse) == (5, 100, "lifo")
    assert config.max_lifetime == 1800 and config.keepalive_interval is None
    assert config.max_waiting == 0 and config.max_concurrent_connects == 2
    assert config.breaker == CircuitBreakerConfig()


def test_min_size_above_max_size_names_both() -> None:
    with pytest.raises(ConfigError) as info:
        PoolConfig(min_size=10, max_size=5)
    assert_names(info.value, "min_size", 10)
    assert "max_size (5)" in str(info.value)


def test_retry_backoff_max_below_initial() -> None:
    with pytest.raises(ConfigError) as info:
        PoolConfig(retry_backoff_initial=1.0, retry_backoff_max=0.5)
    assert_names(info.value, "retry_backoff_max", 0.5)
    assert "retry_backoff_initial (1.0)" in str(info.value)


def test_breaker_backoff_max_below_initial() -> None:
    with pytest.raises(ConfigError) as info:
        CircuitBreakerConfig(backoff_initial=5.0, backoff_max=1.0)
    assert_names(info.value, "breaker.backoff_max", 1.0)
    assert "breaker.backoff_initial (5.0)" in str(info.value)


def test_config_is_frozen() -> None:
    config = PoolConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_size = 3  # type: ignore[misc]


# -- replace ------------------------------------------------------------------------


def test_replace_returns_validated_copy() -> None:
    base = PoolConfig(max_size=10)
    changed = base.replace(max_size=20, reuse="fifo")
    assert (changed.max_size, changed.reuse) == (20, "fifo")
    assert (base.max_size, base.reuse) == (10, "lifo")
    with pytest.raises(ConfigError) as info:
        base.replace(min_size=11)
    assert_names(info.value, "min_size", 11)


def test_replace_breaker_fields_keep_the_others() -> None:
    base = PoolConfig(breaker=CircuitBreakerConfig(jitter=0.0, backoff_max=7.0))
    changed = base.replace(breaker_failure_threshold=9)
    assert changed.breaker.failure_threshold == 9
    assert (changed.breaker.jitter, changed.breaker.backoff_max) == (0.0, 7.0)
    assert base.breaker.failure_threshold == 5


def test_replace_breaker_object_and_breaker_fields_together() -> None:
    changed = PoolConfig().replace(breaker=CircuitBreakerConfig(enabled=False), breaker_jitter=0.0)
    assert changed.breaker.enabled is False and changed.breaker.jitter == 0.0


@pytest.mark.parametrize("name", ["max_sizes", "breaker_bogus", "pool_size"])
def test_replace_rejects_unknown_names(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        PoolConfig().replace(**{name: 3})
    assert_names(info.value, name, 3)
    assert "unknown" in str(info.value)


def test_replace_validates_breaker_fields() -> None:
    with pytest.raises(ConfigError) as info:
        PoolConfig().replace(breaker_failure_threshold=0)
    assert_names(info.value, "breaker.failure_threshold", 0)


# -- from_strings / coerce_setting ----------------------------------------------------


def test_from_strings_coerces_by_field_type() -> None:
    config = PoolConfig.from_strings(
        {
            "min_size": "3",
            "max_size": " 20 ",
            "acquire_timeout": "2",
            "idle_timeout": "1.5",
            "reuse": "fifo",
            "validation_query": "SELECT 1",
            "name": "orders",
            "breaker_failure_threshold": "7",
            "breaker_failure_ratio": "0.5",
            "breaker_jitter": "0",
        }
    )
    assert config.min_size == 3 and type(config.min_size) is int
    assert config.max_size == 20
    assert config.acquire_timeout == 2.0 and type(config.acquire_timeout) is float
    assert config.idle_timeout == 1.5
    assert config.reuse == "fifo"
    assert config.validation_query == "SELECT 1" and config.name == "orders"
    assert config.breaker.failure_threshold == 7
    assert config.breaker.failure_ratio == 0.5 and config.breaker.jitter == 0.0


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "Yes", "on", " on "])
@pytest.mark.parametrize("field", ["validate_on_checkout", "track_wait_times", "breaker_enabled"])
def test_from_strings_true_spellings(field: str, text: str) -> None:
    assert coerce_setting(field, text) is True


@pytest.mark.parametrize("text", ["0", "false", "False", "no", "OFF"])
@pytest.mark.parametrize("field", ["validate_on_checkout", "track_wait_times", "breaker_enabled"])
def test_from_strings_false_spellings(field: str, text: str) -> None:
    assert coerce_setting(field, text) is False


def test_from_strings_bools_reach_the_config() -> None:
    config = PoolConfig.from_strings(
        {"validate_on_checkout": "off", "track_wait_times": "no", "breaker_enabled": "false"}
    )
    assert config.validate_on_checkout is False and config.track_wait_times is False
    assert config.breaker.enabled is False


@pytest.mark.parametrize("text", ["", "none", "None", "NULL", "off", " off "])
@pytest.mark.parametrize(
    "field",
    [
        "max_lifetime",
        "keepalive_interval",
        "connect_timeout",
        "leak_detection_threshold",
        "validation_query",
        "name",
        "breaker_failure_ratio",
    ],
)
def test_from_strings_turns_optional_fields_off(field: str, text: str) -> None:
    assert coerce_setting(field, text) is None
    config = PoolConfig.from_strings({field: text}, base=PoolConfig(name="x", keepalive_interval=5))
    target = config.breaker if field.startswith("breaker_") else config
    assert getattr(target, field.removeprefix("breaker_")) is None


@pytest.mark.parametrize(
    ("field", "raw", "reported_field", "reported_value"),
    [
        ("min_size", "abc", "min_size", "abc"),
        ("min_size", "1.5", "min_size", "1.5"),
        ("max_size", "", "max_size", ""),
        ("max_waiting", "none", "max_waiting", "none"),
        ("acquire_timeout", "fast", "acquire_timeout", "fast"),
        ("acquire_timeout", "off", "acquire_timeout", "off"),
        ("validate_on_checkout", "maybe", "validate_on_checkout", "maybe"),
        ("breaker_failure_threshold", "x", "breaker_failure_threshold", "x"),
        ("breaker_enabled", "2", "breaker_enabled", "2"),
        ("reuse", "LIFO", "reuse", "LIFO"),
        # parsed fine, then refused by validation: still field + (parsed) value
        ("acquire_timeout", "nan", "acquire_timeout", NAN),
        ("idle_timeout", "inf", "idle_timeout", INF),
        ("min_size", "-1", "min_size", -1),
        ("breaker_jitter", "2", "breaker.jitter", 2.0),
    ],
)
def test_from_strings_garbage_names_field_and_value(
    field: str, raw: str, reported_field: str, reported_value: Any
) -> None:
    with pytest.raises(ConfigError) as info:
        PoolConfig.from_strings({field: raw})
    assert_names(info.value, reported_field, reported_value)


@pytest.mark.parametrize("name", ["max_sizes", "breaker", "SMARTPOOL_MAX_SIZE", "pool_size"])
def test_from_strings_rejects_unknown_keys(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        PoolConfig.from_strings({name: "3"})
    assert_names(info.value, name, "3")


def test_from_strings_keeps_base_and_passes_non_text_through() -> None:
    base = PoolConfig(max_size=50, name="base")
    config = PoolConfig.from_strings({"min_size": 4}, base=base)  # type: ignore[dict-item]
    assert (config.min_size, config.max_size, config.name) == (4, 50, "base")


def test_field_types_lists_every_settable_name() -> None:
    names = field_types()
    plain = {f.name for f in dataclasses.fields(PoolConfig)} - {"breaker"}
    nested = {f"breaker_{f.name}" for f in dataclasses.fields(CircuitBreakerConfig)}
    assert set(names) == plain | nested


# -- from_env ------------------------------------------------------------------------


def test_from_env_reads_prefixed_known_variables_only() -> None:
    config = PoolConfig.from_env(
        {
            "SMARTPOOL_MAX_SIZE": "17",
            "SMARTPOOL_BREAKER_ENABLED": "false",
            "SMARTPOOL_MAX_LIFETIME": "off",
            # CI sets this one: an unrelated SMARTPOOL_ variable must not break every pool
            "SMARTPOOL_REQUIRE_SERVICES": "1",
            "MAX_SIZE": "3",
            "smartpool_min_size": "9",
        }
    )
    assert config.max_size == 17 and config.min_size == 5
    assert config.breaker.enabled is False and config.max_lifetime is None


def test_from_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTPOOL_ACQUIRE_TIMEOUT", "2.5")
    assert PoolConfig.from_env().acquire_timeout == 2.5


def test_from_env_custom_prefix() -> None:
    assert PoolConfig.from_env({"APP_DB_MAX_SIZE": "8"}, prefix="APP_DB_").max_size == 8


def test_from_env_garbage_names_field_and_value() -> None:
    with pytest.raises(ConfigError) as info:
        PoolConfig.from_env({"SMARTPOOL_MAX_SIZE": "lots"})
    assert_names(info.value, "max_size", "lots")


# -- through SmartPool and create_engine -----------------------------------------------


def test_smartpool_constructor_validates() -> None:
    with pytest.raises(ConfigError) as info:
        SmartPool(_creator, min_size=10, max_size=5)
    assert_names(info.value, "min_size", 10)


def test_smartpool_keywords_override_pool_config() -> None:
    pool = SmartPool(_creator, pool_config=PoolConfig(max_size=9, name="p"), max_size=12, min_size=2)
    assert (pool.config.max_size, pool.config.min_size, pool.config.name) == (12, 2, "p")


def test_smartpool_rejects_non_config_pool_config() -> None:
    with pytest.raises(ConfigError) as info:
        SmartPool(_creator, pool_config={"max_size": 3})  # type: ignore[arg-type]
    assert info.value.field == "pool_config"


def _engine_config(url: str = "sqlite://", **kwargs: Any) -> PoolConfig:
    engine = create_engine(url, **kwargs)
    try:
        assert isinstance(engine.pool, SmartPool)
        return engine.pool.config
    finally:
        engine.dispose()


def test_sqlalchemy_pool_size_and_max_overflow_map_to_min_and_max() -> None:
    config = _engine_config(poolclass=SmartPool, pool_size=3, max_overflow=4)
    assert (config.min_size, config.max_size) == (3, 7)


def test_sqlalchemy_pool_size_alone_keeps_queuepool_default_overflow() -> None:
    config = _engine_config(poolclass=SmartPool, pool_size=3)
    assert (config.min_size, config.max_size) == (3, 13)


def test_sqlalchemy_unbounded_overflow_keeps_a_ceiling() -> None:
    """SmartPool's default ceiling: the backend's (sqlite's 15 here), else 100."""
    config = _engine_config(poolclass=SmartPool, pool_size=4, max_overflow=-1)
    assert (config.min_size, config.max_size) == (4, 15)
    bare = SmartPool(_creator, pool_size=4, max_overflow=-1, environ={})
    assert (bare.config.min_size, bare.config.max_size) == (4, 100)


@pytest.mark.parametrize(
    ("kwargs", "field", "expected"),
    [
        ({"pool_recycle": -1}, "max_lifetime", None),
        ({"pool_recycle": 60}, "max_lifetime", 60),
        ({"pool_use_lifo": False}, "reuse", "fifo"),
        ({"pool_use_lifo": True}, "reuse", "lifo"),
        ({"pool_timeout": 4}, "acquire_timeout", 4),
        ({"pool_pre_ping": False}, "validate_on_checkout", False),
    ],
)
def test_sqlalchemy_pool_arguments_are_mapped(kwargs: dict[str, Any], field: str, expected: Any) -> None:
    config = _engine_config(poolclass=SmartPool, **kwargs)
    assert getattr(config, field) == expected


def test_smartpool_field_keywords_through_create_engine() -> None:
    breaker = CircuitBreakerConfig(jitter=0)
    config = _engine_config(poolclass=SmartPool, min_size=1, max_size=3, breaker=breaker)
    assert (config.min_size, config.max_size, config.breaker.jitter) == (1, 3, 0)


@pytest.mark.parametrize(
    ("kwargs", "field", "alias_text"),
    [
        ({"min_size": 3, "pool_size": 4}, "min_size", "pool_size=4"),
        ({"max_size": 20, "pool_size": 4, "max_overflow": 2}, "max_size", "max_overflow=2"),
        ({"reuse": "lifo", "pool_use_lifo": False}, "reuse", "use_lifo=False"),
        ({"max_lifetime": 100, "pool_recycle": 50}, "max_lifetime", "recycle=50"),
    ],
)
def test_conflicting_spellings_name_both(kwargs: dict[str, Any], field: str, alias_text: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_engine("sqlite://", poolclass=SmartPool, **kwargs)
    assert_names(info.value, field, kwargs[field])
    assert alias_text in str(info.value)


def test_same_value_in_both_spellings_is_no_conflict() -> None:
    config = _engine_config(poolclass=SmartPool, min_size=4, pool_size=4, max_overflow=6)
    assert (config.min_size, config.max_size) == (4, 10)


def test_pool_size_with_explicit_max_size() -> None:
    config = _engine_config(poolclass=SmartPool, pool_size=3, max_size=20)
    assert (config.min_size, config.max_size) == (3, 20)


@pytest.mark.parametrize(("key", "raw"), [("min_size", "abc"), ("max_size", "1.5"), ("bogus", "1")])
def test_plugin_rejects_bad_url_settings_at_create_engine(key: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_engine(f"sqlite://?plugin=smartpool&smartpool_{key}={raw}")
    assert_names(info.value, key, raw)


def test_plugin_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTPOOL_MAX_SIZE", "17")
    monkeypatch.setenv("SMARTPOOL_MIN_SIZE", "2")
    config = _engine_config("sqlite://?plugin=smartpool")
    assert (config.min_size, config.max_size) == (2, 17)


def test_plugin_precedence_keywords_then_env_then_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTPOOL_MAX_SIZE", "17")
    monkeypatch.setenv("SMARTPOOL_ACQUIRE_TIMEOUT", "3")
    config = _engine_config("sqlite://?plugin=smartpool&smartpool_max_size=9&smartpool_min_size=1")
    assert (config.min_size, config.max_size, config.acquire_timeout) == (1, 9, 3.0)
    # the URL and environment are the operator's knobs: they beat the code's keywords
    config = _engine_config("sqlite://?plugin=smartpool&smartpool_max_size=9", max_size=11)
    assert config.max_size == 9


def test_plugin_rejects_bad_environment_at_create_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTPOOL_MAX_SIZE", "many")
    with pytest.raises(ConfigError) as info:
        create_engine("sqlite://?plugin=smartpool")
    assert_names(info.value, "max_size", "many")


def test_config_error_through_url_never_shows_the_password() -> None:
    url = "postgresql+psycopg2://u:s3cret@127.0.0.1/x?plugin=smartpool&smartpool_max_size=x"
    with pytest.raises(ConfigError) as info:
        create_engine(url)  # fails before any connect
    assert_names(info.value, "max_size", "x")
    rendered = "".join(traceback.format_exception(info.value)) + repr(info.value) + repr(info.value.args)
    assert "s3cret" not in rendered


# -- ranges: every numeric setting is bounded at construction ----------------------------

DURATIONS = [
    "acquire_timeout", "idle_timeout", "max_lifetime", "keepalive_interval", "validation_interval",
    "validation_timeout", "connect_timeout", "retry_backoff_initial", "retry_backoff_max",
    "leak_detection_threshold", "housekeeping_interval", "barge_window",
]  # fmt: skip
BREAKER_DURATIONS = ["ratio_window", "backoff_initial", "backoff_max"]


def test_every_duration_field_is_listed() -> None:
    floats = {n for n, t in field_types().items() if t.startswith("float") and "jitter" not in n}
    floats -= {"breaker_failure_ratio", "breaker_backoff_multiplier"}
    floats -= {"budget_ttl", "budget_timeout"}  # ranges of their own: tests/unit/test_fleet.py
    assert floats == set(DURATIONS) | {f"breaker_{n}" for n in BREAKER_DURATIONS}


@pytest.mark.parametrize("value", [1e300, MAX_SECONDS * 1.5, 10**400], ids=["1e300", "cap+50%", "10**400"])
@pytest.mark.parametrize("field", DURATIONS)
def test_durations_are_capped(field: str, value: float) -> None:
    """1e300 passed construction and raised OverflowError at the first checkout (Lock.acquire)."""
    settings = {field: value}
    if field == "retry_backoff_initial":
        settings["retry_backoff_max"] = value
    with pytest.raises(ConfigError) as info:
        PoolConfig(**settings)
    assert_names(info.value, field, value)
    assert f"<= {MAX_SECONDS:.15g}" in str(info.value)


@pytest.mark.parametrize("field", BREAKER_DURATIONS)
def test_breaker_durations_are_capped(field: str) -> None:
    settings = {field: 1e300}
    if field == "backoff_initial":
        settings["backoff_max"] = 1e300
    with pytest.raises(ConfigError) as info:
        CircuitBreakerConfig(**settings)
    assert_names(info.value, f"breaker.{field}", 1e300)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_size", MAX_CONNECTIONS + 1), ("max_size", MAX_CONNECTIONS + 1), ("max_size", 10**400),
        ("max_concurrent_connects", MAX_CONNECTIONS + 1), ("max_waiting", 10**7), ("retry_attempts", 101),
    ],
    ids=lambda v: "10**400" if v == 10**400 else None,
)  # fmt: skip
def test_counts_are_capped(field: str, value: int) -> None:
    settings = {field: value, "max_size": MAX_CONNECTIONS} if field == "min_size" else {field: value}
    with pytest.raises(ConfigError) as info:
        PoolConfig(**settings)
    assert_names(info.value, field, value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("failure_threshold", 10**7), ("ratio_min_calls", 10**7), ("backoff_multiplier", 101.0)],
)
def test_breaker_counts_are_capped(field: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        CircuitBreakerConfig(**{field: value})
    assert_names(info.value, f"breaker.{field}", value)


def test_realistic_large_values_are_accepted() -> None:
    week = 7 * 24 * 3600.0
    config = PoolConfig(
        max_lifetime=week,
        idle_timeout=24 * 3600.0,
        acquire_timeout=MAX_SECONDS,
        leak_detection_threshold=MAX_SECONDS,
        min_size=MAX_CONNECTIONS,
        max_size=MAX_CONNECTIONS,
        breaker=CircuitBreakerConfig(backoff_max=3600.0, ratio_window=week),
    )
    assert config.max_lifetime == week and config.max_size == MAX_CONNECTIONS
    lock = threading.Lock()  # the checkout wait: must not overflow at the cap
    assert lock.acquire(timeout=config.acquire_timeout)


# -- one limit given, the other follows ---------------------------------------------------


def test_max_size_alone_lowers_the_default_min_size() -> None:
    assert (PoolConfig(max_size=3).min_size, PoolConfig(max_size=3).max_size) == (3, 3)
    assert PoolConfig(max_size=7, min_size=0).min_size == 0


def test_min_size_alone_raises_the_default_max_size() -> None:
    config = PoolConfig(min_size=200)
    assert (config.min_size, config.max_size) == (200, 200)


def test_followed_limit_is_a_default_again_after_replace() -> None:
    assert PoolConfig(max_size=3).replace(max_size=50).min_size == 5
    assert PoolConfig(min_size=200).replace(min_size=10).max_size == 100
    assert PoolConfig().replace(max_size=2).min_size == 2


def test_given_limits_in_conflict_still_fail_naming_only_given_fields() -> None:
    with pytest.raises(ConfigError) as info:
        PoolConfig(max_size=3).replace(min_size=4)
    assert_names(info.value, "min_size", 4)
    assert "max_size (3)" in str(info.value)


def test_backoff_limits_follow_too() -> None:
    assert PoolConfig(retry_backoff_initial=3.0).retry_backoff_max == 3.0
    assert PoolConfig(retry_backoff_max=0.01).retry_backoff_initial == 0.01
    assert CircuitBreakerConfig(backoff_initial=5.0).backoff_max == 5.0
    assert CircuitBreakerConfig(backoff_max=0.1).backoff_initial == 0.1
    assert PoolConfig().replace(breaker_backoff_initial=4.0).breaker.backoff_max == 4.0


def test_defaults_compare_and_print_as_plain_numbers() -> None:
    assert PoolConfig() == PoolConfig(min_size=5, max_size=100, retry_backoff_max=2.0)
    assert "min_size=5, max_size=100," in repr(PoolConfig())


# -- keywords are never parsed as text ----------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_lifetime", "none"), ("max_lifetime", ""), ("connect_timeout", "off"),
        ("keepalive_interval", "null"), ("max_size", "12"), ("acquire_timeout", "2.5"),
        ("validate_on_checkout", "false"), ("track_wait_times", "yes"), ("breaker", "off"),
    ],
)  # fmt: skip
def test_text_keyword_for_a_typed_field_is_an_error(field: str, value: str) -> None:
    """``max_lifetime="none"`` used to turn lifetimes off silently."""
    with pytest.raises(ConfigError) as info:
        SmartPool(_creator, **{field: value})
    assert_names(info.value, field, value)
    assert info.value.source == "keyword" and "(from keyword)" in str(info.value)


def test_text_keywords_for_text_fields_are_fine() -> None:
    pool = SmartPool(_creator, reuse="fifo", name="x", validation_query="SELECT 1")
    assert (pool.config.reuse, pool.config.name, pool.config.validation_query) == ("fifo", "x", "SELECT 1")


# -- from_pool_arguments: precedence and sources, with plain mappings ---------------------


def _merge(
    base: PoolConfig | None = None,
    given: dict[str, Any] | None = None,
    sa: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    url: dict[str, Any] | None = None,
) -> PoolConfig:
    return from_pool_arguments(base, given or {}, sa or {}, environ=env, url_query=url)


def test_precedence_ladder() -> None:
    """defaults < pool_config < SQLAlchemy args < SmartPool keywords < environment < URL."""
    base = PoolConfig(acquire_timeout=1, idle_timeout=2, connect_timeout=4, name="base")
    sa = {"timeout": 10, "pool_size": 3, "pre_ping": False}
    given = {"max_size": 20, "connect_timeout": 40, "idle_timeout": 50}
    env = {"SMARTPOOL_CONNECT_TIMEOUT": "400", "SMARTPOOL_IDLE_TIMEOUT": "500"}
    url = {"smartpool_idle_timeout": "5000", "other": "kept for the driver"}
    config = _merge(base, given, sa, env, url)
    assert config.name == "base"  # only pool_config set it
    assert config.acquire_timeout == 10  # SQLAlchemy arg > pool_config
    assert (config.min_size, config.validate_on_checkout) == (3, False)
    assert config.max_size == 20  # keyword > SQLAlchemy's pool_size + default max_overflow (13)
    assert (config.connect_timeout, config.idle_timeout) == (400, 5000)  # env > keyword, URL > env


def test_same_field_keyword_and_sqlalchemy_conflict_only_in_code() -> None:
    with pytest.raises(ConfigError) as info:
        _merge(given={"min_size": 3}, sa={"pool_size": 4})
    assert_names(info.value, "min_size", 3)
    assert info.value.source == "keyword" and "pool_size=4" in str(info.value)
    # the operator settling the field removes the conflict
    assert _merge(given={"min_size": 3}, sa={"pool_size": 4}, url={"smartpool_min_size": "6"}).min_size == 6
    assert _merge(given={"min_size": 3}, sa={"pool_size": 4}, env={"SMARTPOOL_MIN_SIZE": "2"}).min_size == 2


def test_operator_overrides_mapped_sqlalchemy_values() -> None:
    """QueuePool's default max_overflow (10) once made pool_size=3 + smartpool_max_size=7 give 13."""
    for layer in ({"url": {"smartpool_max_size": "7"}}, {"env": {"SMARTPOOL_MAX_SIZE": "7"}}):
        config = _merge(sa={"pool_size": 3}, **layer)  # type: ignore[arg-type]
        assert (config.min_size, config.max_size) == (3, 7)
    config = _merge(
        sa={"pool_size": 3, "max_overflow": 2, "recycle": 60, "use_lifo": False, "pre_ping": True},
        url={"smartpool_max_size": "9", "smartpool_max_lifetime": "off", "smartpool_reuse": "lifo"},
        env={"SMARTPOOL_VALIDATE_ON_CHECKOUT": "false"},
    )
    assert (config.max_size, config.max_lifetime, config.reuse) == (9, None, "lifo")
    assert config.validate_on_checkout is False


def test_queuepool_default_overflow_yields_to_every_given_max_size() -> None:
    assert _merge(sa={"pool_size": 3}).max_size == 13  # the app keeps the limits it had
    assert _merge(PoolConfig(max_size=20), sa={"pool_size": 3}).max_size == 20
    assert _merge(sa={"pool_size": 30}, env={"SMARTPOOL_MIN_SIZE": "50"}).max_size == 50


def test_max_overflow_alone_with_min_size() -> None:
    """Used to raise StopIteration (the conflict message looked for a pool_size never given)."""
    config = _merge(given={"min_size": 3}, sa={"max_overflow": 20})
    assert (config.min_size, config.max_size) == (3, 25)


def test_limits_follow_through_the_merge() -> None:
    assert _merge(given={"max_size": 3}).min_size == 3
    assert _merge(url={"smartpool_min_size": "200"}).max_size == 200
    assert _merge(PoolConfig(max_size=3), url={"smartpool_max_size": "50"}).min_size == 5


@pytest.mark.parametrize(
    ("kwargs", "min_source", "max_source"),
    [
        ({"given": {"min_size": 10}, "env": {"SMARTPOOL_MAX_SIZE": "5"}},
         "keyword", "environment variable SMARTPOOL_MAX_SIZE"),
        ({"sa": {"pool_size": 30}, "url": {"smartpool_max_size": "7"}},
         "create_engine argument pool_size=30", "URL parameter smartpool_max_size"),
        ({"base": PoolConfig(min_size=30), "given": {"max_size": 20}}, "pool_config", "keyword"),
    ],
)  # fmt: skip
def test_limit_conflict_names_both_sources(kwargs: dict[str, Any], min_source: str, max_source: str) -> None:
    with pytest.raises(ConfigError) as info:
        _merge(**kwargs)
    assert info.value.field == "min_size" and info.value.source == min_source
    assert f"max_size is from {max_source}" in str(info.value)


def test_breaker_field_error_names_the_breaker_keyword_and_the_env_variable() -> None:
    with pytest.raises(ConfigError) as info:
        _merge(
            given={"breaker": CircuitBreakerConfig(backoff_max=1.0)},
            env={"SMARTPOOL_BREAKER_BACKOFF_INITIAL": "5"},
        )
    assert_names(info.value, "breaker.backoff_max", 1.0)
    assert info.value.source == "keyword"
    assert "breaker.backoff_initial is from environment variable SMARTPOOL_BREAKER_BACKOFF_INITIAL" in str(
        info.value
    )


@pytest.mark.parametrize(
    ("kwargs", "field", "value", "source"),
    [
        ({"given": {"acquire_timeout": -1}}, "acquire_timeout", -1, "keyword"),
        ({"url": {"smartpool_acquire_timeout": "1e300"}}, "acquire_timeout", 1e300,
         "URL parameter smartpool_acquire_timeout"),
        ({"env": {"SMARTPOOL_BREAKER_JITTER": "2"}}, "breaker.jitter", 2.0,
         "environment variable SMARTPOOL_BREAKER_JITTER"),
        ({"env": {"SMARTPOOL_MAX_SIZE": "lots"}}, "max_size", "lots",
         "environment variable SMARTPOOL_MAX_SIZE"),
        ({"sa": {"timeout": -1}}, "acquire_timeout", -1, "create_engine argument pool_timeout=-1"),
        ({"sa": {"recycle": 1e300}}, "max_lifetime", 1e300, "create_engine argument pool_recycle=1e+300"),
        ({"sa": {"recycle": "x"}}, "max_lifetime", "x", "create_engine argument pool_recycle='x'"),
        ({"sa": {"pool_size": "5"}}, "pool_size", "5", "create_engine argument pool_size"),
        ({"sa": {"use_lifo": "false"}}, "pool_use_lifo", "false", "create_engine argument pool_use_lifo"),
        ({"sa": {"pre_ping": "no"}}, "pool_pre_ping", "no", "create_engine argument pool_pre_ping"),
        ({"base": {"max_size": 3}}, "pool_config", {"max_size": 3}, "keyword"),
        ({"url": {"smartpool_max_size": ("3", "4")}}, "max_size", ("3", "4"),
         "URL parameter smartpool_max_size"),
    ],
)  # fmt: skip
def test_errors_name_their_source(kwargs: dict[str, Any], field: str, value: Any, source: str) -> None:
    with pytest.raises(ConfigError) as info:
        _merge(**kwargs)
    assert_names(info.value, field, value)
    assert info.value.source == source and f"(from {source})" in str(info.value)


# -- unknown names: errors with a suggestion, environment included ------------------------


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("SMARTPOOL_MAX_SISE", "SMARTPOOL_MAX_SIZE"),
        ("SMARTPOOL_MAXSIZE", "SMARTPOOL_MAX_SIZE"),
        ("SMARTPOOL_BREAKER_ENABLE", "SMARTPOOL_BREAKER_ENABLED"),
        ("SMARTPOOL_REQUIRE_SERVICE", "SMARTPOOL_REQUIRE_SERVICES"),
    ],
)
def test_from_env_rejects_unknown_names_with_a_suggestion(key: str, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        PoolConfig.from_env({key: "3"})
    assert info.value.source == f"environment variable {key}"
    assert f"did you mean {hint}?" in str(info.value) and info.value.value == "3"


def test_from_env_unknown_name_without_a_close_match() -> None:
    with pytest.raises(ConfigError, match=r"unknown pool setting$"):
        PoolConfig.from_env({"SMARTPOOL_ZZZZZZZZZZZZZZZZZ": "1"})


def test_from_env_allows_the_non_setting_names() -> None:
    for name in ("SMARTPOOL_REQUIRE_SERVICES", "SMARTPOOL_PROFILE", "SMARTPOOL_URL_ENCRYPTED"):
        assert name in ENV_NON_SETTINGS
    config = PoolConfig.from_env({name: "anything" for name in ENV_NON_SETTINGS})
    assert config == PoolConfig()


def test_from_env_custom_prefix_with_its_own_allow_list() -> None:
    environ = {"APP_DB_MAX_SIZE": "8", "APP_DB_URL": "postgresql://x"}
    with pytest.raises(ConfigError, match="APP_DB_URL"):
        PoolConfig.from_env(environ, prefix="APP_DB_")
    assert PoolConfig.from_env(environ, prefix="APP_DB_", allow={"APP_DB_URL"}).max_size == 8


def test_url_unknown_key_gets_a_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        _merge(url={"smartpool_MAX_SIZE": "3"})
    assert info.value.source == "URL parameter smartpool_MAX_SIZE"
    assert "did you mean smartpool_max_size?" in str(info.value)


def test_replace_unknown_name_gets_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"did you mean max_size\?"):
        PoolConfig().replace(max_sizes=3)

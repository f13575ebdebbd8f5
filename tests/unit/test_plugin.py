"""``?plugin=smartpool`` through a real ``create_engine`` on a SQLite file (no server).

The URL and ``SMARTPOOL_*`` environment are the operator's knobs: they must win
over what the code passes, and every bad value must name where it came from.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from sqlalchemy_smartpool import SmartPool
from sqlalchemy_smartpool.config import PoolConfig
from sqlalchemy_smartpool.errors import ConfigError

pytestmark = pytest.mark.usefixtures("clean_smartpool_env")




@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'plugin.db'}?plugin=smartpool"


def config_of(url: str, query: str = "", **kwargs: Any) -> PoolConfig:
    engine = create_engine(url + query, **kwargs)
    try:
        assert isinstance(engine.pool, SmartPool)
        assert not [k for k in engine.url.query if k.startswith("smartpool_")]  # never reaches the driver
        return engine.pool.config
    finally:
        engine.dispose()


# -- precedence ---------------------------------------------------------------------------


def test_url_max_size_beats_pool_size_and_queuepool_default_overflow(url: str) -> None:
    """Was max_size=13: pool_size=3 plus QueuePool's max_overflow 10 the user never wrote."""
    config = config_of(url, "&smartpool_max_size=7", pool_size=3)
    assert (config.min_size, config.max_size) == (3, 7)


def test_env_max_size_beats_pool_size(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTPOOL_MAX_SIZE", "7")
    config = config_of(url, pool_size=3)
    assert (config.min_size, config.max_size) == (3, 7)


def test_url_beats_env_beats_keywords(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTPOOL_ACQUIRE_TIMEOUT", "3")
    monkeypatch.setenv("SMARTPOOL_IDLE_TIMEOUT", "30")
    config = config_of(url, "&smartpool_idle_timeout=300", acquire_timeout=1, idle_timeout=1, name="app")
    assert (config.acquire_timeout, config.idle_timeout, config.name) == (3, 300, "app")


def test_code_layers_keep_their_order_under_the_plugin(url: str) -> None:
    """pool_config < SQLAlchemy args < SmartPool keywords, as without the plugin."""
    base = PoolConfig(acquire_timeout=1, max_lifetime=2, name="base")
    config = config_of(url, pool_config=base, pool_timeout=5, pool_size=3, max_size=9)
    assert (config.acquire_timeout, config.max_lifetime, config.name) == (5, 2, "base")
    assert (config.min_size, config.max_size) == (3, 9)


def test_operator_overrides_every_mapped_sqlalchemy_argument(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMARTPOOL_VALIDATE_ON_CHECKOUT", "false")
    query = "&smartpool_acquire_timeout=2&smartpool_max_lifetime=off&smartpool_reuse=lifo"
    query += "&smartpool_min_size=1"
    config = config_of(
        url, query, pool_timeout=5, pool_recycle=60, pool_use_lifo=False, pool_pre_ping=True, pool_size=4
    )
    assert (config.acquire_timeout, config.max_lifetime, config.reuse) == (2, None, "lifo")
    assert (config.validate_on_checkout, config.min_size) == (False, 1)


def test_operator_setting_settles_a_conflict_in_code(url: str) -> None:
    with pytest.raises(ConfigError, match="conflicts with create_engine argument pool_size=4"):
        config_of(url, min_size=3, pool_size=4)
    assert config_of(url, "&smartpool_min_size=6", min_size=3, pool_size=4).min_size == 6


def test_config_survives_dispose(url: str) -> None:
    """Engine.dispose() recreates the pool from its config: the merged one, not the code's."""
    engine = create_engine(url + "&smartpool_max_size=7", pool_size=3)
    try:
        engine.dispose()
        assert isinstance(engine.pool, SmartPool)
        assert (engine.pool.config.min_size, engine.pool.config.max_size) == (3, 7)
    finally:
        engine.dispose()


def test_another_pool_class_is_left_alone_but_settings_are_still_checked(url: str) -> None:
    engine = create_engine(url + "&smartpool_max_size=7", poolclass=NullPool)
    assert isinstance(engine.pool, NullPool)
    engine.dispose()
    with pytest.raises(ConfigError, match="smartpool_max_size"):
        create_engine(url + "&smartpool_max_size=x", poolclass=NullPool)


# -- one limit given, the other follows ---------------------------------------------------


def test_url_max_size_alone_lowers_min_size(url: str) -> None:
    config = config_of(url, "&smartpool_max_size=3")
    assert (config.min_size, config.max_size) == (3, 3)


def test_env_min_size_alone_raises_max_size(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTPOOL_MIN_SIZE", "200")
    config = config_of(url)
    assert (config.min_size, config.max_size) == (200, 200)


def test_keyword_max_size_alone_through_create_engine(tmp_path: Path) -> None:
    config = config_of(f"sqlite:///{tmp_path / 'x.db'}", poolclass=SmartPool, max_size=3)
    assert (config.min_size, config.max_size) == (3, 3)


def test_two_given_limits_in_conflict_name_both_sources(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_of(url, "&smartpool_max_size=7", pool_size=30)
    assert (info.value.field, info.value.value) == ("min_size", 30)
    assert info.value.source == "create_engine argument pool_size=30"
    assert "max_size is from URL parameter smartpool_max_size" in str(info.value)


# -- unknown names ------------------------------------------------------------------------


def test_unknown_env_variable_is_an_error_with_a_suggestion(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was silently ignored, while the same typo in the URL was rejected."""
    monkeypatch.setenv("SMARTPOOL_MAX_SIZ", "7")
    with pytest.raises(ConfigError) as info:
        create_engine(url)
    assert info.value.source == "environment variable SMARTPOOL_MAX_SIZ"
    assert "did you mean SMARTPOOL_MAX_SIZE?" in str(info.value)


def test_unknown_url_key_is_an_error_with_a_suggestion(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_engine(url + "&smartpool_acquire_timout=3")
    assert info.value.source == "URL parameter smartpool_acquire_timout"
    assert "did you mean smartpool_acquire_timeout?" in str(info.value)


@pytest.mark.parametrize(
    "name",
    [
        "SMARTPOOL_REQUIRE_SERVICES",
        "SMARTPOOL_URL_ENCRYPTED",  # used only by the stub URL smartpool://
        "SMARTPOOL_URL_KEY",
        "SMARTPOOL_CHAOS_SEED",
        "SMARTPOOL_BENCH_REDIS_URL",
    ],
)
def test_non_setting_env_variables_stay_allowed(
    url: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, "1")
    assert config_of(url) == PoolConfig(max_size=15, max_lifetime=None)  # sqlite's defaults


# -- ranges, keywords, sources ------------------------------------------------------------


def test_url_duration_is_range_checked(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_engine(url + "&smartpool_acquire_timeout=1e300")
    assert (info.value.field, info.value.value) == ("acquire_timeout", 1e300)
    assert info.value.source == "URL parameter smartpool_acquire_timeout"


@pytest.mark.parametrize("value", ["", "none"])
def test_text_keyword_is_not_parsed_with_the_plugin(url: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_engine(url, max_lifetime=value)
    assert (info.value.field, info.value.value, info.value.source) == ("max_lifetime", value, "keyword")


def test_text_keyword_is_not_parsed_without_the_plugin(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        create_engine(f"sqlite:///{tmp_path / 'x.db'}", poolclass=SmartPool, max_lifetime="")
    assert (info.value.field, info.value.value, info.value.source) == ("max_lifetime", "", "keyword")


def test_env_error_names_the_variable(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTPOOL_BREAKER_FAILURE_THRESHOLD", "0")
    with pytest.raises(ConfigError) as info:
        create_engine(url)
    assert (info.value.field, info.value.value) == ("breaker.failure_threshold", 0)
    assert "(from environment variable SMARTPOOL_BREAKER_FAILURE_THRESHOLD)" in str(info.value)


def test_sqlalchemy_argument_error_names_it(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_engine(url, pool_recycle=1e300)
    assert info.value.field == "max_lifetime"
    assert info.value.source == "create_engine argument pool_recycle=1e+300"

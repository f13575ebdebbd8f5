"""The settings file (TOML, profiles), per-backend defaults, and where both sit among the layers.

Every pool -- SmartPool, AsyncSmartPool, the Redis pools, the plugin -- must
take the same layers: defaults < backend defaults < pool_config < SQLAlchemy
arguments < keywords < file < environment < URL. Every error must name the
file and the key (with its table path), the field and the value.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine

from sqlalchemy_smartpool import AsyncSmartPool, SmartPool
from sqlalchemy_smartpool.config import (
    BACKEND_DEFAULTS,
    PoolConfig,
    file_settings,
    from_pool_arguments,
)
from sqlalchemy_smartpool.errors import ConfigError
from sqlalchemy_smartpool.redis_pool import SmartRedisPool, split_kwargs

pytestmark = pytest.mark.usefixtures("clean_smartpool_env")

FILE = """
max_size = 20
acquire_timeout = 5
max_lifetime = "off"
name = "from-file"

[breaker]
failure_threshold = 3

[profiles.dev]
max_size = 4
breaker_jitter = 0.0

[profiles.prod]
max_size = 200
min_size = 10

[profiles.prod.breaker]
backoff_max = 30
"""



@pytest.fixture
def toml(tmp_path: Path) -> Iterator[Any]:
    def write(text: str, name: str = "smartpool.toml") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    yield write


def _creator() -> Any:  # never called: nothing here connects
    raise AssertionError("no connection may be opened by these tests")


# -- the file and its profiles ------------------------------------------------------------


def test_top_level_and_breaker_table(toml: Any) -> None:
    config = PoolConfig.from_file(toml(FILE), profile="")
    assert (config.max_size, config.acquire_timeout, config.max_lifetime) == (20, 5, None)
    assert (config.name, config.breaker.failure_threshold) == ("from-file", 3)
    assert config.min_size == 5  # untouched


def test_profile_overrides_the_top_level(toml: Any) -> None:
    prod = PoolConfig.from_file(toml(FILE), profile="prod")
    assert (prod.min_size, prod.max_size, prod.acquire_timeout) == (10, 200, 5)
    assert (prod.breaker.failure_threshold, prod.breaker.backoff_max) == (3, 30)
    dev = PoolConfig.from_file(toml(FILE), profile="dev")
    assert (dev.min_size, dev.max_size, dev.breaker.jitter) == (4, 4, 0.0)  # min follows max


def test_profile_from_smartpool_profile(toml: Any) -> None:
    path = toml(FILE)
    assert PoolConfig.from_file(path, environ={"SMARTPOOL_PROFILE": "prod"}).max_size == 200
    assert PoolConfig.from_file(path, environ={}).max_size == 20
    # an explicit profile wins over the variable, "" means the top level only
    assert PoolConfig.from_file(path, "dev", environ={"SMARTPOOL_PROFILE": "prod"}).max_size == 4
    assert PoolConfig.from_file(path, "", environ={"SMARTPOOL_PROFILE": "prod"}).max_size == 20


def test_from_file_onto_a_base(toml: Any) -> None:
    base = PoolConfig(idle_timeout=7, max_size=50)
    config = PoolConfig.from_file(toml("acquire_timeout = 2\n"), "", base=base)
    assert (config.idle_timeout, config.max_size, config.acquire_timeout) == (7, 50, 2)


def test_unknown_profile_lists_the_profiles(toml: Any) -> None:
    path = toml(FILE)
    with pytest.raises(ConfigError) as info:
        PoolConfig.from_file(path, environ={"SMARTPOOL_PROFILE": "staging"})
    err = info.value
    assert (err.field, err.value, err.source) == (
        "profile",
        "staging",
        "environment variable SMARTPOOL_PROFILE",
    )
    assert f"no [profiles.staging] in {path}; its profiles are dev, prod" in str(err)
    with pytest.raises(ConfigError, match=r"it has no \[profiles\.\*\] tables") as info:
        PoolConfig.from_file(toml("max_size = 3\n", "flat.toml"), "prod")
    assert info.value.source == "argument profile"


@pytest.mark.parametrize(
    ("text", "field", "value", "key", "hint"),
    [
        ("max_siz = 3\n", "max_siz", 3, "max_siz", "did you mean max_size?"),
        ("[profiles.prod]\nacquire_timout = 3\n", "profiles.prod.acquire_timout", 3,
         "profiles.prod.acquire_timout", "did you mean acquire_timeout?"),
        ("[breaker]\nfailure_treshold = 3\n", "breaker.failure_treshold", 3, "breaker.failure_treshold",
         "did you mean failure_threshold?"),
        ("[profiles.prod.breaker]\njiter = 0.1\n", "profiles.prod.breaker.jiter", 0.1,
         "profiles.prod.breaker.jiter", "did you mean jitter?"),
        ("pool_size = 3\n", "pool_size", 3, "pool_size", "unknown pool setting"),
    ],
)  # fmt: skip
def test_unknown_key_names_file_and_key_path(
    toml: Any, text: str, field: str, value: Any, key: str, hint: str
) -> None:
    path = toml(text)
    with pytest.raises(ConfigError) as info:
        PoolConfig.from_file(path, "")
    err = info.value
    assert (err.field, err.value, err.source) == (field, value, f"file {path}, key {key}")
    assert hint in str(err)


@pytest.mark.parametrize(
    ("text", "field", "value", "key", "reason"),
    [
        ('max_size = "20"\n', "max_size", "20", "max_size", "must be an integer"),
        ("max_size = true\n", "max_size", True, "max_size", "must be an integer"),
        ("acquire_timeout = -1\n", "acquire_timeout", -1, "acquire_timeout", "must be >= 0"),
        ('validate_on_checkout = "yes"\n', "validate_on_checkout", "yes", "validate_on_checkout",
         "must be a bool"),
        ('max_size = "off"\n', "max_size", "off", "max_size", "must be an integer"),
        ("[profiles.prod]\nreuse = \"random\"\n", "reuse", "random", "profiles.prod.reuse", "must be one of"),
        ("[profiles.prod.breaker]\njitter = 2\n", "breaker.jitter", 2, "profiles.prod.breaker.jitter",
         "must be <= 1"),
        ("[profiles.prod]\nmax_size = [1]\n", "max_size", [1], "profiles.prod.max_size",
         "must be an integer"),
    ],
)  # fmt: skip
def test_bad_value_names_file_key_field_and_value(
    toml: Any, text: str, field: str, value: Any, key: str, reason: str
) -> None:
    """Every profile is checked, not only the chosen one: a typo in prod fails in dev already."""
    path = toml(text)
    with pytest.raises(ConfigError) as info:
        PoolConfig.from_file(path, "")
    err = info.value
    assert (err.field, err.value, err.source) == (field, value, f"file {path}, key {key}")
    assert reason in str(err) and path in str(err) and repr(value) in str(err)


def test_limits_out_of_order_within_a_profile_name_both_keys(toml: Any) -> None:
    path = toml("min_size = 10\n[profiles.small]\nmax_size = 5\n")
    with pytest.raises(ConfigError) as info:
        PoolConfig.from_file(path, "")
    assert info.value.source == f"file {path}, key min_size"
    assert f"max_size is from file {path}, key profiles.small.max_size" in str(info.value)


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        ("breaker = 3\n", "breaker", "must be a table"),
        ("profiles = 3\n", "profiles", "must be a table of profiles"),
        ("[profiles]\nprod = 3\n", "profiles.prod", "must be a table"),
        ("breaker_jitter = 0.1\n[breaker]\njitter = 0.2\n", "breaker_jitter", "given twice"),
    ],
)
def test_malformed_tables(toml: Any, text: str, field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        PoolConfig.from_file(toml(text), "")
    assert info.value.field == field and reason in str(info.value)


def test_invalid_toml_and_missing_file(toml: Any, tmp_path: Path) -> None:
    path = toml("max_size = = 3\n")
    with pytest.raises(ConfigError) as info:
        PoolConfig.from_file(path, "")
    assert (info.value.field, info.value.value) == ("config_file", path)
    assert "is not valid TOML" in str(info.value) and "line 1" in str(info.value)
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as info:
        from_pool_arguments(None, {}, {}, environ={"SMARTPOOL_CONFIG_FILE": missing})
    err = info.value
    assert (err.field, err.value, err.source) == (
        "config_file",
        missing,
        "environment variable SMARTPOOL_CONFIG_FILE",
    )
    assert "cannot be read: No such file or directory" in str(err)


def test_profile_without_a_file_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        from_pool_arguments(None, {}, {}, environ={"SMARTPOOL_PROFILE": "prod"})
    assert (info.value.field, info.value.value) == ("profile", "prod")
    assert "SMARTPOOL_CONFIG_FILE is not set" in str(info.value)


def test_file_settings_carry_their_sources(toml: Any) -> None:
    path = toml(FILE)
    got = file_settings(path, "prod")
    assert got["max_size"] == (200, f"file {path}, key profiles.prod.max_size")
    assert got["breaker_failure_threshold"] == (3, f"file {path}, key breaker.failure_threshold")
    assert got["acquire_timeout"] == (5, f"file {path}, key acquire_timeout")


# -- the file among the layers --------------------------------------------------------------


def test_file_sits_above_code_and_below_environment_and_url(toml: Any) -> None:
    path = toml("acquire_timeout = 2\nidle_timeout = 20\nconnect_timeout = 3\nmax_waiting = 7\n")
    env = {"SMARTPOOL_CONFIG_FILE": path, "SMARTPOOL_IDLE_TIMEOUT": "200", "SMARTPOOL_CONNECT_TIMEOUT": "30"}
    config = from_pool_arguments(
        PoolConfig(max_waiting=1, name="base"),
        {"acquire_timeout": 1, "validation_timeout": 9},
        {"timeout": 1},
        environ=env,
        url_query={"smartpool_connect_timeout": "300"},
    )
    assert (config.name, config.validation_timeout) == ("base", 9)  # code where nobody else spoke
    assert (config.acquire_timeout, config.max_waiting) == (2, 7)  # file > keyword, SA args, pool_config
    assert (config.idle_timeout, config.connect_timeout) == (200, 300)  # env > file, URL > env


def test_file_settles_a_conflict_in_code(toml: Any) -> None:
    env = {"SMARTPOOL_CONFIG_FILE": toml("min_size = 6\n")}
    assert from_pool_arguments(None, {"min_size": 3}, {"pool_size": 4}, environ=env).min_size == 6


def test_keyword_and_file_limits_in_conflict_name_both(toml: Any) -> None:
    path = toml("max_size = 3\n")
    with pytest.raises(ConfigError) as info:
        from_pool_arguments(None, {"min_size": 5}, {}, environ={"SMARTPOOL_CONFIG_FILE": path})
    assert info.value.source == "keyword"
    assert f"max_size is from file {path}, key max_size" in str(info.value)


def test_every_pool_reads_the_file_and_environment(
    toml: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = toml("max_size = 9\nidle_timeout = 9\n[profiles.prod]\nacquire_timeout = 9\n")
    monkeypatch.setenv("SMARTPOOL_CONFIG_FILE", path)
    monkeypatch.setenv("SMARTPOOL_PROFILE", "prod")
    monkeypatch.setenv("SMARTPOOL_IDLE_TIMEOUT", "99")
    db = f"sqlite:///{tmp_path / 'x.db'}"
    configs = {
        "plugin": create_engine(db + "?plugin=smartpool", max_size=1).pool.config,  # type: ignore[attr-defined]
        "SmartPool": create_engine(db, poolclass=SmartPool, max_size=1).pool.config,  # type: ignore[attr-defined]
        "AsyncSmartPool": AsyncSmartPool(_creator, max_size=1).config,
        "SmartRedisPool": SmartRedisPool(max_size=1).config,
        "split_kwargs": split_kwargs({"max_size": 1}, environ=os.environ)[0],
    }
    for kind, config in configs.items():
        assert (config.max_size, config.acquire_timeout, config.idle_timeout) == (9, 9, 99), kind


def test_environ_keyword_replaces_or_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTPOOL_MAX_SIZE", "9")
    assert SmartPool(_creator).config.max_size == 9
    assert SmartPool(_creator, environ={}).config.max_size == 100
    assert SmartPool(_creator, environ={"SMARTPOOL_MAX_SIZE": "3"}).config.max_size == 3
    assert SmartRedisPool(environ={}).config.max_size == 100
    assert split_kwargs({})[0].max_size == 100  # the function itself reads no environment


def test_dispose_keeps_the_merged_config_even_if_the_file_changes(
    toml: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Engine.dispose() builds a new pool from the merged config: settings are read once, at
    create_engine, and the URL stays above the environment and file on the way."""
    path = toml("max_size = 9\nidle_timeout = 8\n")
    monkeypatch.setenv("SMARTPOOL_CONFIG_FILE", path)
    monkeypatch.setenv("SMARTPOOL_IDLE_TIMEOUT", "70")
    engine = create_engine(
        f"sqlite:///{tmp_path / 'x.db'}?plugin=smartpool&smartpool_idle_timeout=7", pool_size=2
    )
    try:
        Path(path).write_text("max_size = 3\n")
        engine.dispose()
        config = engine.pool.config  # type: ignore[attr-defined]
        assert (config.min_size, config.max_size, config.idle_timeout) == (2, 9, 7)
    finally:
        engine.dispose()
    Path(path).write_text("max_size = 9\n")
    engine = create_engine(f"sqlite:///{tmp_path / 'y.db'}", poolclass=SmartPool, pool_size=2)
    try:
        Path(path).write_text("max_size = 3\n")
        engine.dispose()
        config = engine.pool.config  # type: ignore[attr-defined]
        assert (config.min_size, config.max_size, config.idle_timeout) == (2, 9, 70)
    finally:
        engine.dispose()


# -- per-backend defaults -----------------------------------------------------------------


def _pool_config(url: str, **kwargs: Any) -> PoolConfig:
    """create_engine builds the pool without connecting (nothing listens at these hosts)."""
    engine = create_engine(url, poolclass=SmartPool, **kwargs)
    try:
        config: PoolConfig = engine.pool.config  # type: ignore[attr-defined]
        return config
    finally:
        engine.dispose()


def test_sqlite_defaults(tmp_path: Path) -> None:
    config = _pool_config(f"sqlite:///{tmp_path / 'x.db'}")
    assert (config.min_size, config.max_size, config.max_lifetime) == (5, 15, None)
    assert config.replace(min_size=1) == PoolConfig(min_size=1, max_size=15, max_lifetime=None)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg2://u@127.0.0.1:1/x",
        "mysql+pymysql://u@127.0.0.1:1/x",
        "mariadb+pymysql://u@127.0.0.1:1/x",
    ],
)
def test_server_backends_keep_the_built_in_defaults(url: str) -> None:
    assert _pool_config(url) == PoolConfig()
    assert SmartRedisPool(environ={}).config == PoolConfig()
    assert all(not BACKEND_DEFAULTS[b] for b in ("postgresql", "mysql", "mariadb", "redis"))


def test_backend_defaults_are_defaults_and_yield_to_everything(tmp_path: Path, toml: Any) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    assert (_pool_config(url, min_size=20).max_size, _pool_config(url, max_size=3).min_size) == (20, 3)
    assert _pool_config(url, pool_size=3).max_size == 13  # QueuePool's 3 + 10, as the app had
    assert _pool_config(url, pool_recycle=60).max_lifetime == 60
    env = {"SMARTPOOL_MAX_LIFETIME": "1800", "SMARTPOOL_CONFIG_FILE": toml("max_size = 100\n")}
    config = _pool_config(url, environ=env)
    assert (config.max_size, config.max_lifetime) == (100, 1800)  # the built-in values, given again
    # pool_config= is a whole config: the backend's defaults do not apply to it
    assert _pool_config(url, pool_config=PoolConfig(name="x")).max_size == 100


def test_a_followed_default_returns_to_its_own_origin(tmp_path: Path) -> None:
    """sqlite's max_size 15 followed min_size=20 up; with min_size back at 2 it is 15 again, not 100."""
    config = _pool_config(f"sqlite:///{tmp_path / 'x.db'}", min_size=20)
    assert config.replace(min_size=2).max_size == 15
    engine = create_engine(f"sqlite:///{tmp_path / 'y.db'}?plugin=smartpool", pool_size=3)
    try:  # was 100: the plugin's merged config lost QueuePool's derived ceiling, and so did dispose()
        assert engine.pool.config.max_size == 13  # type: ignore[attr-defined]
        engine.dispose()
        assert engine.pool.config.max_size == 13  # type: ignore[attr-defined]
    finally:
        engine.dispose()


# -- precedence, as a property ----------------------------------------------------------------

LAYERS = ("pool_config", "sa", "keyword", "file", "profile", "env", "url")
FIELDS = ("acquire_timeout", "idle_timeout", "validation_timeout", "max_waiting")
OPERATOR = ("file", "profile", "env", "url")


def _value(layer: str, field: str) -> float | int:
    n = LAYERS.index(layer) * 10 + FIELDS.index(field) + 1
    return n if field == "max_waiting" else float(n)


NOT_SA = tuple(x for x in LAYERS if x != "sa")  # SQLAlchemy's arguments map only pool_timeout here


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries(
        {f: st.sets(st.sampled_from(LAYERS if f == "acquire_timeout" else NOT_SA)) for f in FIELDS}
    )
)
def test_precedence_property(assignment: dict[str, set[str]]) -> None:
    """Each field ends up with the value of the highest layer that set it (defaults if none), and a
    keyword and a SQLAlchemy argument that disagree fail unless an operator layer sets the field."""
    chosen: dict[str, dict[str, Any]] = {
        layer: {f: _value(layer, f) for f, layers in assignment.items() if layer in layers}
        for layer in LAYERS
    }
    sa = {"timeout": chosen["sa"]["acquire_timeout"]} if "acquire_timeout" in chosen["sa"] else {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s.toml")
        lines = [f"{k} = {v}" for k, v in chosen["file"].items()]
        lines += ["[profiles.p]", *(f"{k} = {v}" for k, v in chosen["profile"].items())]
        Path(path).write_text("\n".join(lines) + "\n")
        environ = {"SMARTPOOL_CONFIG_FILE": path, "SMARTPOOL_PROFILE": "p"}
        environ.update({f"SMARTPOOL_{k.upper()}": str(v) for k, v in chosen["env"].items()})
        args = (
            PoolConfig(**chosen["pool_config"]) if chosen["pool_config"] else None,
            chosen["keyword"],
            sa,
        )
        url = {f"smartpool_{k}": str(v) for k, v in chosen["url"].items()}
        conflict = (
            "sa" in assignment["acquire_timeout"]
            and "keyword" in assignment["acquire_timeout"]
            and not assignment["acquire_timeout"] & set(OPERATOR)
        )
        if conflict:
            with pytest.raises(ConfigError, match="conflicts with create_engine argument pool_timeout"):
                from_pool_arguments(*args, environ=environ, url_query=url)
            return
        config = from_pool_arguments(*args, environ=environ, url_query=url)
    for field, layers in assignment.items():
        top = max(layers, key=LAYERS.index, default=None)
        expected = getattr(PoolConfig(), field) if top is None else _value(top, field)
        assert getattr(config, field) == expected, (field, sorted(layers, key=LAYERS.index))

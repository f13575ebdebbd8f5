"""``{env:NAME}`` / ``{file:PATH}`` placeholders: resolution, errors, URL parsing, and the hooks
that resolve them at every connect (SQLAlchemy's do_connect, the Redis backend's open).

SQLAlchemy connects here go to SQLite files (no server); the real PostgreSQL and
Redis runs are in tests/integration/test_settings_secrets.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from sqlalchemy_smartpool import SmartPool, urltemplate
from sqlalchemy_smartpool.errors import ConfigError, SecretError
from sqlalchemy_smartpool.plugin import parse_url, smartpool_url
from sqlalchemy_smartpool.redis_pool import SmartRedisPool, TemplatedCredentials, _SyncBackend

pytestmark = pytest.mark.usefixtures("clean_smartpool_env")




@pytest.fixture
def secret(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "secret"
    path.write_text("s3cret\n")
    yield path


# -- resolution ---------------------------------------------------------------------------


def test_env_and_file_placeholders(secret: Path) -> None:
    env = {"DB_USER": "app"}
    text = f"{{env:DB_USER}}:{{file:{secret}}}@x"
    assert urltemplate.resolve(text, where="w", environ=env) == "app:s3cret@x"  # trailing newline dropped
    assert urltemplate.placeholders(text) == ["{env:DB_USER}", f"{{file:{secret}}}"]
    assert urltemplate.has_placeholders(text) and not urltemplate.has_placeholders("plain {x} %41")
    assert not urltemplate.has_placeholders(5)


def test_percent_encoded_placeholders(secret: Path) -> None:
    encoded = "%7Benv%3ADB_HOST%7D:%7bfile%3a" + str(secret).replace("/", "%2F") + "%7d"
    assert urltemplate.has_placeholders(encoded)
    assert urltemplate.resolve(encoded, where="w", environ={"DB_HOST": "db"}) == "db:s3cret"


def test_a_file_is_read_anew_each_time(secret: Path) -> None:
    text = f"{{file:{secret}}}"
    assert urltemplate.resolve(text, where="w") == "s3cret"
    secret.write_text("rotated")
    assert urltemplate.resolve(text, where="w") == "rotated"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{env:NOPE_NOT_SET}", "environment variable NOPE_NOT_SET is not set"),
        ("{env:no-dash}", "not an environment variable name"),
        ("{file:}", "no file path"),
        ("{file:/nonexistent/dir/pw}", "file /nonexistent/dir/pw cannot be read: No such file or directory"),
    ],
)
def test_errors_name_placeholder_and_spot(text: str, reason: str) -> None:
    with pytest.raises(SecretError) as info:
        urltemplate.resolve(f"a{text}b", where="the URL's password", environ={})
    err = info.value
    assert isinstance(err, ConfigError)  # fails construction like any bad setting
    assert (err.field, err.value, err.reason) == ("the URL's password", text, reason)
    assert str(err) == f"{text} in the URL's password: {reason}"


def test_binary_file_error_quotes_no_bytes(tmp_path: Path) -> None:
    path = tmp_path / "bin"
    path.write_bytes(b"\xffSECRETBYTES\xfe")
    with pytest.raises(SecretError) as info:
        urltemplate.resolve(f"{{file:{path}}}", where="w")
    assert "not UTF-8 text" in str(info.value) and "SECRET" not in str(info.value)
    assert "0xff" not in str(info.value) and info.value.__suppress_context__


def test_secret_error_pickles() -> None:
    import pickle

    err = SecretError("w", "{env:X}", "is not set", source="s")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is SecretError and str(again) == str(err) and again.source == "s"


def test_protect_round_trip_through_both_url_parsers() -> None:
    url = "redis://{env:U}:{file:/run/pw}@{env:RedisHost}:6379/0?client_name={env:N}"
    safe, restore = urltemplate.protect(url)
    assert "{" not in safe
    parsed = redis.connection.parse_url(safe)  # type: ignore[no-untyped-call]
    assert restore(parsed["host"]) == "{env:RedisHost}"  # redis-py lowercases host names; the token survives
    assert (restore(parsed["username"]), restore(parsed["password"])) == ("{env:U}", "{file:/run/pw}")
    assert restore(parsed["client_name"]) == "{env:N}"
    u = make_url(urltemplate.protect("postgresql://{env:U}@{env:H}/db")[0])
    assert u.host and u.username and u.port is None
    assert urltemplate.protect("no placeholders")[0] == "no placeholders"


# -- SQLAlchemy: the URL and the do_connect hook ---------------------------------------------


def test_parse_url_accepts_placeholders_in_every_part() -> None:
    u = parse_url("postgresql+psycopg2://{env:U}:{file:/run/pw}@{env:H}:5433/{env:DB}?sslmode={env:M}")
    assert (u.username, u.password, u.host, u.port) == ("{env:U}", "{file:/run/pw}", "{env:H}", 5433)
    assert (u.database, u.query["sslmode"]) == ("{env:DB}", "{env:M}")


def test_parse_url_error_never_quotes_the_text() -> None:
    with pytest.raises(SecretError) as info:
        parse_url("postgresql+psycopg2://u:hunter2@h:notaport/db")
    assert "hunter2" not in str(info.value) and "not a valid SQLAlchemy URL" in str(info.value)


def test_smartpool_url_fails_early_naming_the_placeholder() -> None:
    with pytest.raises(SecretError) as info:
        smartpool_url("postgresql://app:{env:NOPE_PW}@db/app")
    assert str(info.value) == "{env:NOPE_PW} in the URL's password: environment variable NOPE_PW is not set"


def _count_db(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        conn.commit()
        return int(conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one())


@pytest.mark.parametrize("how", ["plugin", "poolclass"])
def test_each_connect_resolves_anew(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """The database file's name comes from a variable; the next physical connect follows its new value."""
    monkeypatch.setenv("SP_TEST_DB", "one.db")
    template = f"sqlite:///{tmp_path}/{{env:SP_TEST_DB}}"
    if how == "plugin":
        engine = sa.create_engine(template + "?plugin=smartpool", min_size=0)
    else:
        engine = sa.create_engine(smartpool_url(template), poolclass=SmartPool, min_size=0)
    try:
        assert engine.url.database is not None and engine.url.database.endswith("/{env:SP_TEST_DB}")
        assert _count_db(engine) == 1
        monkeypatch.setenv("SP_TEST_DB", "two.db")
        assert _count_db(engine) == 2  # the same connection, reused
        engine.dispose()
        assert _count_db(engine) == 1  # a new connect: the new file
        assert (tmp_path / "two.db").exists()
        monkeypatch.delenv("SP_TEST_DB")
        engine.dispose()
        with pytest.raises(SecretError, match=r"\{env:SP_TEST_DB\} in connect argument #1"):
            engine.connect()
    finally:
        engine.dispose()


def test_plugin_fails_at_create_engine_naming_the_placeholder() -> None:
    with pytest.raises(SecretError) as info:
        sa.create_engine("sqlite:///{env:SP_NOT_SET}?plugin=smartpool")
    assert str(info.value).startswith("{env:SP_NOT_SET} in the URL's database:")


def test_plugin_hook_serves_other_pool_classes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SP_TEST_DB", "n.db")
    url = f"sqlite:///{tmp_path}/{{env:SP_TEST_DB}}?plugin=smartpool"
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        assert _count_db(engine) == 1 and (tmp_path / "n.db").exists()
    finally:
        engine.dispose()


def test_hook_keeps_the_template_when_the_argument_dict_is_shared(secret: Path, tmp_path: Path) -> None:
    """SQLAlchemy 2.0 passes one dict to every connect: the second connect must not reuse the first value."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}", poolclass=SmartPool, min_size=0)
    try:
        hooks = list(engine.dialect.dispatch.do_connect)
        cparams: dict[str, Any] = {"password": f"{{file:{secret}}}", "plain": "x"}
        cargs: list[Any] = [f"dsn {{file:{secret}}}"]
        for expected in ("s3cret", "rotated"):
            for hook in hooks:
                hook(engine.dialect, None, cargs, cparams)
            assert (cparams["password"], cargs[0], cparams["plain"]) == (expected, f"dsn {expected}", "x")
            secret.write_text("rotated")
        engine.dispose()  # a new pool on the same dialect: no second hook
        assert len(list(engine.dialect.dispatch.do_connect)) == len(hooks)
    finally:
        engine.dispose()


# -- Redis: kwargs, credentials, the backend's open ---------------------------------------------


def test_redis_from_url_fails_early_naming_the_placeholder(secret: Path) -> None:
    with pytest.raises(SecretError) as info:
        SmartRedisPool.from_url(f"redis://{{env:SP_RUSER}}:{{file:{secret}}}@127.0.0.1:1/0")
    assert str(info.value) == (
        "{env:SP_RUSER} in redis connection argument username: environment variable SP_RUSER is not set"
    )


def test_redis_provider_reads_at_every_auth(secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SP_RUSER", "app")
    pool = SmartRedisPool.from_url(f"redis://{{env:SP_RUSER}}:{{file:{secret}}}@127.0.0.1:1/0")
    try:
        kw = pool.connection_kwargs
        assert "password" not in kw and "username" not in kw
        provider = kw["credential_provider"]
        assert isinstance(provider, TemplatedCredentials)
        assert provider.get_credentials() == ("app", "s3cret")
        secret.write_text("rotated\n")
        assert provider.get_credentials() == ("app", "rotated")
        assert repr(provider) == "<TemplatedCredentials>" and "rotated" not in repr(pool)
        only_pw = TemplatedCredentials(None, f"{{file:{secret}}}")
        assert only_pw.get_credentials() == ("rotated",)
    finally:
        pool.close()


def test_redis_construction_fails_early_naming_the_placeholder() -> None:
    with pytest.raises(SecretError) as info:
        SmartRedisPool(host="{env:SP_NO_HOST}", environ={})
    assert str(info.value) == (
        "{env:SP_NO_HOST} in redis connection argument host: environment variable SP_NO_HOST is not set"
    )
    with pytest.raises(SecretError, match="in redis connection argument password"):
        SmartRedisPool(password="{file:/nonexistent/pw}")


def test_redis_backend_resolves_the_host_at_each_open(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[dict[str, Any]] = []

    class Recorder:
        socket_timeout = None
        socket_connect_timeout = None

        def __init__(self, **kwargs: Any) -> None:
            opened.append(kwargs)
            self._sock = object()

        def connect(self) -> None:
            pass

    monkeypatch.setenv("SP_RHOST", "10.0.0.1")
    backend = _SyncBackend(Recorder, {"host": "{env:SP_RHOST}", "port": 1})
    backend.open()
    monkeypatch.setenv("SP_RHOST", "10.0.0.2")
    backend.open()
    assert [k["host"] for k in opened] == ["10.0.0.1", "10.0.0.2"]
    assert backend._kwargs["host"] == "{env:SP_RHOST}"  # the template is kept
    monkeypatch.delenv("SP_RHOST")
    with pytest.raises(SecretError, match="in redis connection argument host"):
        backend.open()

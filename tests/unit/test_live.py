"""live.py and the adapters' live verbs without a server: credentials, settings reload, SIGHUP, swap.

SQLAlchemy pools run on SQLite files (no password, real connections); the
credential hook is driven directly with a fake record and argument dict, and
:func:`~sqlalchemy_smartpool.drivers.credential_keys` is asked of each
dialect. Background effects are awaited with a bound, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from sqlalchemy_smartpool import AsyncSmartPool, SmartPool, drivers, live
from sqlalchemy_smartpool.errors import ConfigError

from .conftest import FakeClock

SECRET = "s3cr3t-Pa55"
AUDIT = "sqlalchemy_smartpool.audit"


def until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(0.005)
    return True


# -- CredentialSource --------------------------------------------------------------------


def test_the_callable_is_cached_for_ttl_and_called_again_after_invalidate(clock: FakeClock) -> None:
    values = iter(["a", "b", "c"])
    source = live.CredentialSource(lambda: next(values), ttl=10, clock=clock)
    first = source.get()
    assert first[0].password == "a" and first[2] is True
    assert source.get()[0].password == "a" and source.get()[2] is False and source.calls == 1
    clock.advance(10)
    assert source.get()[0].password == "b" and source.calls == 2
    source.invalidate()
    assert source.get()[0].password == "c" and source.calls == 3


def test_ttl_zero_calls_it_for_every_connection(clock: FakeClock) -> None:
    source = live.CredentialSource(lambda: "tok", ttl=0, clock=clock)
    for _ in range(3):
        assert source.get()[2] is True
    assert source.calls == 3


@pytest.mark.parametrize(
    ("result", "user", "password"),
    [
        ("token-1", None, "token-1"),
        ({"user": "u", "password": SECRET}, "u", SECRET),
        ({"username": "u", "token": "token-2"}, "u", "token-2"),
        ({"password": SECRET}, None, SECRET),
        (("u", SECRET), "u", SECRET),
    ],
)
def test_what_a_callable_may_return(result: Any, user: str | None, password: str) -> None:
    creds = live.CredentialSource(lambda: result, ttl=0).get()[0]
    assert (creds.user, creds.password) == (user, password)
    assert password not in repr(creds)


@pytest.mark.parametrize(
    ("result", "match"),
    [
        (None, "returned a NoneType"),
        ("", "empty string"),
        ({"user": "u"}, "without a non-empty str password"),
        ({"pasword": SECRET}, "key 'pasword'"),
        ({"user": 3, "password": SECRET}, "user is not a str"),
        ({"password": SECRET, "token": SECRET}, "two keys"),
        ((SECRET,), "returned a tuple"),
    ],
)
def test_a_bad_result_is_a_config_error_that_never_quotes_it(result: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        live.CredentialSource(lambda: result, ttl=0).get()
    assert info.value.field == "credentials" and info.value.source == "credentials callable"
    assert SECRET not in str(info.value)


def test_a_failing_callable_is_a_transient_connect_error_with_its_message_redacted() -> None:
    def provider() -> str:
        raise RuntimeError(f"vault said no to password={SECRET}")

    with pytest.raises(live.CredentialsUnavailable, match="vault said no") as info:
        live.CredentialSource(provider).get()
    assert isinstance(info.value, OSError) and SECRET not in str(info.value)


def test_bad_keywords() -> None:
    with pytest.raises(ConfigError, match=r"credentials=.*must be a callable"):
        live.CredentialSource(SECRET)
    for ttl in (-1, "60", float("nan"), True):
        with pytest.raises(ConfigError, match="credentials_ttl"):
            live.CredentialSource(lambda: "x", ttl=ttl)


def test_an_async_callable_is_awaited_by_aget_and_refused_by_a_sync_get() -> None:
    async def provider() -> dict[str, str]:
        await asyncio.sleep(0)
        return {"user": "u", "password": "p"}

    source = live.CredentialSource(provider, ttl=0)
    assert source.is_async
    creds, _, fresh = asyncio.run(source.aget())
    assert (creds.user, creds.password, fresh) == ("u", "p", True)
    with pytest.raises(ConfigError, match="needs an asyncio pool"):
        source.get()


def test_a_refused_cached_value_is_forgotten_and_worth_one_retry(clock: FakeClock) -> None:
    values = iter(["old", "new"])
    source = live.CredentialSource(lambda: next(values), ttl=60, clock=clock)
    _, version, fresh = source.get()
    assert not source.refused(version, fresh), "fetched for this very connect: a real refusal"
    _, version, fresh = source.get()  # a cached one now
    assert not fresh and source.refused(version, fresh)
    assert source.get()[0].password == "new"
    _, later, _ = source.get()
    assert source.refused(later - 1, True), "a newer value exists: retry with it"


# -- the SQLAlchemy connect hook ---------------------------------------------------------


class FakeRecord:
    def __init__(self, pool: Any) -> None:
        self._ConnectionRecord__pool = pool
        self.info: dict[str, Any] = {}


class FakePool:
    def __init__(self, source: live.CredentialSource | None) -> None:
        self.source = source

    def _credentials_for_connect(self) -> Any:
        return None if self.source is None else self.source.get()


def test_the_hook_sets_user_and_password_and_puts_the_urls_back_for_a_pool_without() -> None:
    hook = drivers.credentials_hook("user", "passwd")
    cparams: dict[str, Any] = {"user": "url-user", "passwd": "url-pw", "host": "h"}  # one dict (SA 2.0)
    rec = FakeRecord(FakePool(live.CredentialSource(lambda: {"user": "iam", "password": "tok"}, ttl=0)))
    hook(None, rec, [], cparams)
    assert cparams == {"user": "iam", "passwd": "tok", "host": "h"}
    assert rec.info[drivers.CREDENTIALS_USED][1] is True
    hook(None, FakeRecord(FakePool(None)), [], cparams)
    assert cparams == {"user": "url-user", "passwd": "url-pw", "host": "h"}
    token_only = FakeRecord(FakePool(live.CredentialSource(lambda: "tok2", ttl=0)))
    hook(None, token_only, [], cparams)
    assert cparams["user"] == "url-user" and cparams["passwd"] == "tok2"


@pytest.mark.parametrize(
    ("url", "keys"),
    [
        ("postgresql+psycopg2://", ("user", "password")),
        ("postgresql+psycopg://", ("user", "password")),
        ("mysql+mysqldb://", ("user", "passwd")),
        ("mysql+pymysql://", ("user", "password")),
        ("postgresql+asyncpg://", ("user", "password")),
    ],
)
def test_each_dialect_names_user_and_password_its_way(url: str, keys: tuple[str, str]) -> None:
    dialect = sa.make_url(url).get_dialect()()
    assert drivers.credential_keys(dialect) == keys


def test_pool_keywords_are_checked_at_construction(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"

    async def provider() -> str:
        return "x"

    with pytest.raises(ConfigError, match="needs AsyncSmartPool"):
        sa.create_engine(url, poolclass=SmartPool, credentials=provider, environ={})
    with pytest.raises(ConfigError, match=r"credentials_ttl.*needs credentials="):
        sa.create_engine(url, poolclass=SmartPool, credentials_ttl=5, environ={})


# -- the verbs on a real (SQLite) SmartPool ------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    made = sa.create_engine(
        f"sqlite:///{tmp_path / 'live.db'}", poolclass=SmartPool, min_size=1, max_size=4, environ={}
    )
    yield made
    made.pool.close()  # type: ignore[attr-defined]
    made.dispose()


def pool_of(engine: sa.Engine) -> SmartPool:
    pool = engine.pool
    assert isinstance(pool, SmartPool)
    return pool


def test_reconfigure_and_resize_update_the_pools_view(engine: sa.Engine) -> None:
    pool = pool_of(engine)
    assert pool.resize(max_size=6) == {"max_size": (4, 6)}
    assert pool.config.max_size == 6 and pool.timeout() == 30.0 and "max_size=6" in pool.status()
    pool.reconfigure(acquire_timeout=3.0, leak_detection_threshold=5.0)
    assert pool.timeout() == 3.0
    with pytest.raises(ConfigError, match="from reconfigure"):
        pool.reconfigure(min_size=-1)
    assert engine.dispose() is None and pool_of(engine).config.max_size == 6, "dispose() keeps live changes"


def test_drain_and_pause_on_sqlite(engine: sa.Engine) -> None:
    pool = pool_of(engine)
    with engine.connect() as conn:
        first = conn.connection.dbapi_connection
    assert pool.drain() == 1
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection is not first
    pool.reconfigure(acquire_timeout=0.3)
    pool.pause()
    with pytest.raises(sa.exc.TimeoutError, match="paused"):
        engine.connect()
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(engine.connect()))
    t.start()
    assert until(lambda: pool.stats().requests_waiting == 1)
    pool.resume()
    t.join(5)
    assert got and not pool.paused
    got[0].close()
    pool._engine.check_invariants()


def test_swap_pool_puts_in_a_new_pool_and_the_old_one_closes_once_returned(
    engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, AUDIT)
    conn = engine.connect()
    old = live.swap_pool(engine, {"max_size": 2})
    new = pool_of(engine)
    assert new is not old and new.config.max_size == 2 and old.config.max_size == 4
    with engine.connect() as c2:
        c2.exec_driver_sql("select 1")
    assert not old.stats().closed, "a checkout is still out"
    conn.close()
    assert until(lambda: old.stats().closed)
    assert old.stats().pool_size == 0
    events = [getattr(r, "event", None) for r in caplog.records if r.name == AUDIT]
    assert "pool_swapped" in events and "pool_retired" in events
    assert events.index("pool_swapped") < events.index("pool_retired")
    with pytest.raises(TypeError, match="Engine/AsyncEngine or a redis client"):
        live.swap_pool(object())


def test_swap_pool_with_a_given_pool_and_a_config(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'swap.db'}"
    engine = sa.create_engine(url, poolclass=SmartPool, max_size=3, environ={})
    try:
        old = live.swap_pool(engine, pool_of(engine).config.replace(max_size=5))
        assert pool_of(engine).config.max_size == 5 and old.stats().closed
        other = sa.create_engine(url, poolclass=SmartPool, max_size=7, environ={}).pool
        live.swap_pool(engine, other)
        assert engine.pool is other
        with engine.connect() as conn:
            conn.exec_driver_sql("select 1")
    finally:
        engine.pool.close()  # type: ignore[attr-defined]


def test_the_async_pools_verbs_are_awaitable(tmp_path: Path) -> None:
    async def scenario() -> None:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", poolclass=AsyncSmartPool,
                                     max_size=3, environ={})  # fmt: skip
        pool = engine.sync_engine.pool
        assert isinstance(pool, AsyncSmartPool)
        async with engine.connect() as conn:
            await conn.exec_driver_sql("select 1")
        assert (await pool.resize(max_size=2))["max_size"] == (3, 2)
        assert await pool.drain() >= 1
        assert await pool.rotate_credentials() == 0
        pool.pause()
        pool.resume()
        old = live.swap_pool(engine, {"max_size": 4})
        async with engine.connect() as conn:
            await conn.exec_driver_sql("select 1")
        assert engine.sync_engine.pool.config.max_size == 4  # type: ignore[attr-defined]
        for _ in range(500):  # closed at a housekeeping tick once nothing is out (bounded wait)
            if old.stats().closed:
                break
            await asyncio.sleep(0.01)
        assert old.stats().closed
        await engine.dispose()

    asyncio.run(scenario())


# -- settings file reload ----------------------------------------------------------------


def write(path: Path, text: str) -> None:
    """Write and move the mtime on, as an editor saving a second later would."""
    path.write_text(text)
    st = path.stat()
    bump = getattr(write, "bump", 0) + 1
    write.bump = bump  # type: ignore[attr-defined]
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 1_000_000_000))


def test_watch_applies_the_file_now_and_each_change_as_a_restart_would(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, AUDIT)
    settings = tmp_path / "smartpool.toml"
    write(settings, "max_size = 6\nacquire_timeout = 7\n[profiles.prod]\nmax_size = 9\n")
    engine = sa.create_engine(
        f"sqlite:///{tmp_path / 'w.db'}",
        poolclass=SmartPool,
        max_size=3,
        housekeeping_interval=0.02,
        environ={"SMARTPOOL_ACQUIRE_TIMEOUT": "11"},  # the environment beats the file, as at start
    )
    try:
        pool = pool_of(engine)
        watch = live.watch_settings(engine, settings)
        assert pool.config.max_size == 6 and pool.config.acquire_timeout == 11
        pool.reconfigure(idle_timeout=42.0)  # by hand, a setting the file does not name
        with engine.connect():
            pass  # the pool runs: it is watched from its housekeeping timer
        write(settings, "max_size = 8\nacquire_timeout = 7\nbreaker.failure_threshold = 2\n")
        assert until(lambda: pool.config.max_size == 8)
        assert pool.config.breaker.failure_threshold == 2 and pool.config.idle_timeout == 42.0
        assert pool.config.acquire_timeout == 11
        write(settings, "max_size = 'lots'\n")
        assert until(lambda: watch.failures == 1)
        assert pool.config.max_size == 8, "a bad file changes nothing"
        failed = [r for r in caplog.records if getattr(r, "event", None) == "config_reload_failed"]
        assert failed and "max_size='lots'" in failed[0].getMessage()
        write(settings, "acquire_timeout = 7\n")  # max_size gone from the file: back to the code's 3
        assert until(lambda: pool.config.max_size == 3)
        engine.dispose()  # the recreated pool keeps the watch
        new = pool_of(engine)
        assert new is not pool and new._settings_watch is watch
        with engine.connect():
            pass
        write(settings, "max_size = 5\n")
        assert until(lambda: new.config.max_size == 5)
        changed = [r for r in caplog.records if getattr(r, "event", None) == "config_changed"]
        sources = {getattr(r, "source", None) for r in changed}
        assert f"settings file {settings}" in sources
        watch.stop()
    finally:
        engine.pool.close()  # type: ignore[attr-defined]


def test_a_reload_through_the_plugin_keeps_the_urls_settings_on_top(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("SMARTPOOL_")]:
        monkeypatch.delenv(key)
    settings = tmp_path / "s.toml"
    write(settings, "max_size = 9\nacquire_timeout = 4\n")
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'p.db'}?plugin=smartpool&smartpool_max_size=4"
                              "&smartpool_housekeeping_interval=0.02")  # fmt: skip
    try:
        pool = pool_of(engine)
        live.watch_settings(engine, settings)
        assert pool.config.max_size == 4, "the URL beats the file, as at start"
        assert pool.config.acquire_timeout == 4
        with engine.connect():
            pass
        write(settings, "max_size = 9\nacquire_timeout = 6\n")
        assert until(lambda: pool.config.acquire_timeout == 6)
        assert pool.config.max_size == 4
    finally:
        pool_of(engine).close()


def test_a_bad_file_fails_watch_settings_at_once(tmp_path: Path, engine: sa.Engine) -> None:
    settings = tmp_path / "bad.toml"
    settings.write_text("max_size = 0\n")
    with pytest.raises(ConfigError, match="max_size=0"):
        live.watch_settings(engine, settings)
    settings.write_text("name = 'renamed'\n")
    with pytest.raises(ConfigError, match="cannot change while the pool runs"):
        live.watch_settings(engine, settings)
    assert pool_of(engine).config.max_size == 4


def test_an_unused_pool_is_not_watched(tmp_path: Path) -> None:
    settings = tmp_path / "s.toml"
    write(settings, "max_size = 6\n")
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'u.db'}", poolclass=SmartPool, environ={},
                              housekeeping_interval=0.02)  # fmt: skip
    try:
        watch = live.watch_settings(engine, settings)
        pool = pool_of(engine)
        assert pool.config.max_size == 6 and pool._engine._rt is None, "nothing started for it"
        write(settings, "max_size = 7\n")
        with engine.connect():
            pass
        assert until(lambda: pool.config.max_size == 7), "seen once the pool runs"
        watch.stop()
    finally:
        pool_of(engine).close()


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_reloads_every_watched_file(tmp_path: Path) -> None:
    settings = tmp_path / "s.toml"
    write(settings, "max_size = 6\n")
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'h.db'}", poolclass=SmartPool, environ={},
                              housekeeping_interval=0.02)  # fmt: skip
    called: list[int] = []
    before = signal.signal(signal.SIGHUP, lambda signum, frame: called.append(signum))
    try:
        watch = live.watch_settings(engine, settings)
        with engine.connect():
            pass
        pool = pool_of(engine)
        # the same size and mtime: only SIGHUP can make it read the file again
        st = settings.stat()
        settings.write_text("max_size = 9\n")
        os.utime(settings, ns=(st.st_atime_ns, st.st_mtime_ns))
        watch._signature = live._signature(str(settings))
        previous = live.install_sighup_reload()
        assert callable(previous)
        os.kill(os.getpid(), signal.SIGHUP)
        assert until(lambda: pool.config.max_size == 9)
        assert called == [signal.SIGHUP], "the handler installed before still runs"
        watch.stop()
    finally:
        signal.signal(signal.SIGHUP, before)
        pool_of(engine).close()


# -- Redis pools (no server needed to build one) -------------------------------------------


def test_redis_credentials_become_a_provider_that_shows_nothing() -> None:
    pytest.importorskip("redis")
    from sqlalchemy_smartpool.redis_pool import PoolCredentials, SmartRedisPool

    pool = SmartRedisPool(host="127.0.0.1", port=1, username="app", credentials=lambda: SECRET, environ={})
    provider = pool.connection_kwargs["credential_provider"]
    assert isinstance(provider, PoolCredentials)
    assert provider.get_credentials() == ("app", SECRET)
    bound = provider.bound()
    assert bound.get_credentials() == ("app", SECRET) and bound.used is not None
    assert SECRET not in repr(pool) and SECRET not in repr(provider)
    with pytest.raises(ConfigError, match="either credentials= or password="):
        SmartRedisPool(password="x", credentials=lambda: "y", environ={})

    async def provider_fn() -> str:
        return "x"

    with pytest.raises(ConfigError, match="needs AsyncSmartRedisPool"):
        SmartRedisPool(credentials=provider_fn, environ={})
    assert pool.resize(max_size=3)["max_size"] == (100, 3) and pool.max_connections == 3
    pool.close()


def test_swap_pool_on_a_redis_client() -> None:
    redis = pytest.importorskip("redis")
    from sqlalchemy_smartpool.redis_pool import SmartRedisPool

    pool = SmartRedisPool(host="127.0.0.1", port=1, max_size=4, environ={})
    client = redis.Redis(connection_pool=pool)
    old = live.swap_pool(client, {"max_size": 2})
    assert old is pool and isinstance(client.connection_pool, SmartRedisPool)
    assert client.connection_pool.max_connections == 2 and old.stats().closed
    client.connection_pool.close()


def test_the_async_redis_pools_verbs_are_awaitable() -> None:
    pytest.importorskip("redis")
    from sqlalchemy_smartpool.redis_pool import AsyncSmartRedisPool

    async def token() -> str:
        return SECRET

    async def scenario() -> None:
        pool = AsyncSmartRedisPool(host="127.0.0.1", port=1, max_size=4, credentials=token, environ={})
        assert (await pool.resize(max_size=2))["max_size"] == (4, 2)
        assert await pool.drain() == 0 and await pool.rotate_credentials() == 0
        pool.pause()
        assert pool.paused
        pool.resume()
        provider = pool.connection_kwargs["credential_provider"]
        assert await provider.get_credentials_async() == (SECRET,)
        await pool.aclose()

    asyncio.run(scenario())

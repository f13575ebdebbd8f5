"""One known password, every feature of the settings work, and nowhere may it show up.

The password is made at run time (so no source line in a traceback holds it)
and is a real credential: a PostgreSQL role of this test's own logs in with it
(through an encrypted URL and through a password file), and a redis-server of
this test's own requires it. With every logger at DEBUG and SQLAlchemy's echo
on, the test collects each log record (message, arguments, formatted
traceback), stdout and stderr, every repr, every exception (message, repr,
traceback), ``status()``, ``stats()``, ``health()``, the Prometheus page and
what StatsD would be sent, and asserts that neither the password, nor the
URL key, nor the encrypted token appears in any of it.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from sqlalchemy_smartpool import SmartPool, SmartRedisPool
from sqlalchemy_smartpool.cli import main
from sqlalchemy_smartpool.config import ENV_PREFIX
from sqlalchemy_smartpool.metrics import PrometheusCollector, StatsdMetrics, health
from sqlalchemy_smartpool.plugin import smartpool_url
from sqlalchemy_smartpool.urlcrypt import encrypt_url, generate_key

from ._secrets import LockedRedis, Role, login_roles
from ._services import HOST, POSTGRES_PORT
from .conftest import PgAdmin, wait_until

pytestmark = pytest.mark.integration

SECRET = f"Redact-{uuid.uuid4().hex}"


class Seen:
    """Everything a user, an operator or a log collector could get to see."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def add(self, *items: Any) -> None:
        for item in items:
            self.texts.append(item if isinstance(item, str) else repr(item))

    def error(self, fn: Callable[[], Any]) -> BaseException:
        """Run ``fn``, which must raise; keep its message, repr and full traceback (chain included)."""
        try:
            fn()
        except Exception as err:
            self.add(str(err), repr(err), "".join(traceback.format_exception(err)))
            return err
        raise AssertionError("expected an error")


class Recorder:
    """A StatsD client that keeps what it would send."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def gauge(self, *args: Any, **kw: Any) -> None:
        self.sent.append(repr((args, kw)))

    incr = timing = gauge


def observe_engine(seen: Seen, engine: sa.Engine) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    pool = engine.pool
    registry = CollectorRegistry()
    collector = PrometheusCollector(engine, registry=registry)
    recorder = Recorder()
    with StatsdMetrics(engine, recorder, gauge_interval=60) as statsd:
        statsd.flush()
    seen.add(engine, engine.url, str(engine.url), pool, pool.status())
    seen.add(getattr(pool, "config", None), getattr(pool, "stats", lambda: None)())
    seen.add(json.dumps(health(engine), default=repr), generate_latest(registry).decode(), *recorder.sent)
    collector.unregister()


@pytest.fixture
def role(pg_admin: PgAdmin) -> Iterator[Role]:
    with login_roles(pg_admin, "sp_red", 1, password=SECRET) as made:
        yield made[0]


@pytest.fixture
def locked_redis() -> Iterator[LockedRedis]:
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not on PATH")
    server = LockedRedis(SECRET)
    try:
        yield server
    finally:
        server.stop()


def test_the_password_key_and_token_never_show(
    role: Role,
    locked_redis: LockedRedis,
    tmp_path: Path,
    app_name: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in [k for k in list(__import__("os").environ) if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    caplog.set_level(logging.DEBUG)
    seen = Seen()
    key = generate_key()
    pg = f"postgresql+psycopg2://{role.name}:{SECRET}@{HOST}:{POSTGRES_PORT}/test?application_name={app_name}"
    token = encrypt_url(pg, key=key)
    monkeypatch.setenv("SMARTPOOL_URL_KEY", key)
    engines: list[sa.Engine] = []

    def engine(url: Any, **kw: Any) -> sa.Engine:
        made = sa.create_engine(url, echo="debug", echo_pool="debug", **kw)
        engines.append(made)
        return made

    try:
        # 1. an encrypted URL through the plugin's stub: connect, query, look at everything
        monkeypatch.setenv("SMARTPOOL_URL_ENCRYPTED", token)
        enc = engine("smartpool://?plugin=smartpool&smartpool_min_size=1&smartpool_max_size=2")
        with enc.connect() as conn:
            assert conn.exec_driver_sql("SELECT current_user").scalar_one() == role.name
        assert isinstance(enc.pool, SmartPool)
        enc.pool.wait(5)
        observe_engine(seen, enc)

        # 2. the password from a file, through smartpool_url(); then the file disappears
        pw_file = tmp_path / "pw"
        pw_file.write_text(SECRET + "\n")
        template = f"postgresql+psycopg2://{role.name}:{{file:{pw_file}}}@{HOST}:{POSTGRES_PORT}/test"
        tpl = engine(
            smartpool_url(template + f"?application_name={app_name}"), poolclass=SmartPool, min_size=0
        )
        with tpl.connect() as conn:
            assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
        observe_engine(seen, tpl)
        pw_file.unlink()
        tpl.dispose()
        seen.error(tpl.connect)

        # 3. errors on the way in: wrong key, corrupt token, bad settings next to the password
        monkeypatch.setenv("SMARTPOOL_URL_KEY", generate_key())
        seen.error(lambda: sa.create_engine("smartpool://?plugin=smartpool"))
        monkeypatch.setenv("SMARTPOOL_URL_KEY", key)
        monkeypatch.setenv("SMARTPOOL_URL_ENCRYPTED", token[:-10])
        seen.error(lambda: sa.create_engine("smartpool://?plugin=smartpool"))
        monkeypatch.setenv("SMARTPOOL_URL_ENCRYPTED", encrypt_url(pg + "&smartpool_max_size=x", key=key))
        seen.error(lambda: sa.create_engine("smartpool://?plugin=smartpool"))
        seen.error(lambda: sa.create_engine(pg + "&plugin=smartpool&smartpool_max_siz=3"))
        seen.error(lambda: smartpool_url(pg.replace(SECRET, SECRET + "@@:x:y")))
        monkeypatch.setenv("SMARTPOOL_URL_ENCRYPTED", token)

        # 4. a server that is not there: the pool logs the connect failure, the caller gets the error
        dead = pg.replace(f":{POSTGRES_PORT}/", f":{_closed_port()}/") + "&plugin=smartpool"
        down = engine(dead, acquire_timeout=2, retry_attempts=0, min_size=0)
        seen.error(down.connect)
        observe_engine(seen, down)

        # 5. the commands
        assert main(["decrypt-url", "--check"]) == 0
        monkeypatch.setattr(sys, "stdin", io.StringIO(pg + "\n"))
        assert main(["encrypt-url"]) == 0  # prints a new token of its own (not scanned for)
        monkeypatch.setenv("SMARTPOOL_URL_KEY", generate_key())
        assert main(["decrypt-url", "--check"]) == 2

        # 6. Redis: the password in the URL, and from a file; a wrong one
        for url in (
            f"redis://:{SECRET}@{HOST}:{locked_redis.port}/0",
            f"redis://:{{file:{tmp_path}/rpw}}@{HOST}:{locked_redis.port}/0",
        ):
            (tmp_path / "rpw").write_text(SECRET)
            pool = SmartRedisPool.from_url(url, min_size=0, max_size=2)
            client = redis.Redis(connection_pool=pool)
            try:
                assert client.ping()
                conn = pool.get_connection()
                seen.add(
                    conn,
                    pool,
                    client,
                    pool.stats(),
                    json.dumps(health(pool), default=repr),
                )
                pool.release(conn)
                (tmp_path / "rpw").write_text("wrong")
                pool.disconnect()
                if "{file:" in url:
                    seen.error(client.ping)
            finally:
                pool.close()
    finally:
        for made in engines:
            made.dispose()

    out = capsys.readouterr()
    seen.add(out.out, out.err)
    for record in caplog.records:
        seen.add(record.getMessage(), record.args, record.exc_text or "", record.stack_info or "")
    seen.add(caplog.text)
    everything = "\n".join(seen.texts)
    # the scan is not vacuous: the SQL echo, the pool's log, the connect failure, the redacted URL are in it
    assert "SELECT current_user" in everything and "connect failed" in everything
    assert f"{role.name}:***@" in everything and "cannot be decrypted" in everything
    assert "WRONGPASS" in everything or "invalid username-password" in everything
    for name, secret in (("password", SECRET), ("key", key), ("token", token), ("token part", token[:40])):
        where = [t for t in seen.texts if secret in t]
        assert not where, f"the {name} shows in: {where[0][:300]!r}"


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def test_the_scan_would_see_a_leak(caplog: pytest.LogCaptureFixture) -> None:
    """The check above works: a message that carries the password is found."""
    caplog.set_level(logging.DEBUG)
    logging.getLogger("sqlalchemy_smartpool.test").debug("oops %s", SECRET)
    assert any(SECRET in r.getMessage() for r in caplog.records)
    assert wait_until(lambda: SECRET in caplog.text, 1)

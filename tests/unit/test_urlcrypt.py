"""Encrypted connection URLs: keys, tokens, errors that show neither, the CLI, and the plugin's stub.

Every error test asserts that the token, the key and the URL's password are
absent from the message, the repr and the formatted traceback.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import sqlalchemy as sa

from sqlalchemy_smartpool import SmartPool
from sqlalchemy_smartpool.cli import main
from sqlalchemy_smartpool.config import ENV_PREFIX
from sqlalchemy_smartpool.errors import ConfigError, SecretError
from sqlalchemy_smartpool.plugin import smartpool_url
from sqlalchemy_smartpool.urlcrypt import decrypt_url, encrypt_url, generate_key

PASSWORD = "Pa55-w0rd-for-urlcrypt"

pytestmark = pytest.mark.usefixtures("clean_smartpool_env")




@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    k = generate_key()
    monkeypatch.setenv("SMARTPOOL_URL_KEY", k)
    return k


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'enc.db'}?smartpool_max_size=3"


def assert_hides(err: BaseException, *secrets: str) -> None:
    """Not in the message, the repr, nor any exception a traceback of it would print."""
    shown = ""
    chain: BaseException | None = err
    while chain is not None:
        shown += str(chain) + repr(chain) + "".join(traceback.format_exception_only(chain))
        chain = chain.__cause__ or (None if chain.__suppress_context__ else chain.__context__)
    for secret in secrets:
        assert secret not in shown, f"{secret[:6]}... leaked: {shown}"


# -- the API ----------------------------------------------------------------------------


def test_round_trip_with_each_key_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"postgresql+psycopg2://app:{PASSWORD}@db/app"
    k = generate_key()
    token = encrypt_url(url, key=k)
    assert PASSWORD not in token and token != encrypt_url(url, key=k)  # fresh IV every time
    assert decrypt_url(token, key=k) == url
    key_file = tmp_path / "key"
    key_file.write_text(k + "\n")
    assert decrypt_url(token, key_file=str(key_file)) == url
    assert decrypt_url(token, environ={"SMARTPOOL_URL_KEY_FILE": str(key_file)}) == url
    monkeypatch.setenv("SMARTPOOL_URL_KEY", k)
    monkeypatch.setenv("SMARTPOOL_URL_ENCRYPTED", token)
    assert decrypt_url() == url


def test_key_rotation_decrypts_with_any_and_encrypts_with_the_first() -> None:
    old, new = generate_key(), generate_key()
    token = encrypt_url("redis://:pw@h/0", key=old)
    assert decrypt_url(token, key=f"{new},{old}") == "redis://:pw@h/0"
    fresh = encrypt_url("redis://:pw@h/0", key=f"{new}\n{old}")
    assert decrypt_url(fresh, key=new) == "redis://:pw@h/0"
    with pytest.raises(SecretError):
        decrypt_url(fresh, key=old)


def test_wrong_key_names_the_key_source_and_hides_token_and_key(key: str, tmp_path: Path) -> None:
    token = encrypt_url(f"postgresql://u:{PASSWORD}@h/d")
    other = generate_key()
    key_file = tmp_path / "other.key"
    key_file.write_text(other)
    with pytest.raises(SecretError) as info:
        decrypt_url(token, environ={"SMARTPOOL_URL_KEY_FILE": str(key_file)})
    err = info.value
    assert isinstance(err, ConfigError)
    assert str(err) == (
        f"the token: cannot be decrypted with SMARTPOOL_URL_KEY_FILE={key_file}: "
        "wrong key, or a corrupt or truncated token"
    )
    assert_hides(err, token, other, key, PASSWORD)


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty-ish"])
def test_corrupt_token(key: str, damage: str) -> None:
    token = encrypt_url(f"postgresql://u:{PASSWORD}@h/d")
    bad = {
        "flip": token[:20] + ("A" if token[20] != "A" else "B") + token[21:],
        "truncate": token[: len(token) // 2],
        "garbage": "not a token at all \u00e9",
        "empty-ish": "   x",
    }[damage]
    with pytest.raises(
        SecretError, match="cannot be decrypted with environment variable SMARTPOOL_URL_KEY"
    ) as info:
        decrypt_url(bad)
    assert_hides(info.value, bad.strip(), token, key)


@pytest.mark.parametrize(
    ("environ", "reason"),
    [
        ({}, "no key: set SMARTPOOL_URL_KEY or SMARTPOOL_URL_KEY_FILE"),
        ({"SMARTPOOL_URL_KEY": "short-and-wrong"}, "the key is not a Fernet key"),
        ({"SMARTPOOL_URL_KEY": " , "}, "is empty"),
        ({"SMARTPOOL_URL_KEY_FILE": "/nonexistent/key"}, "cannot be read: No such file or directory"),
        ({"SMARTPOOL_URL_KEY": "a", "SMARTPOOL_URL_KEY_FILE": "/k"}, "both SMARTPOOL_URL_KEY and"),
    ],
)
def test_key_errors(environ: dict[str, str], reason: str) -> None:
    with pytest.raises(SecretError, match=reason) as info:
        decrypt_url("gAAAAA-token", environ=environ)
    assert_hides(info.value, "short-and-wrong", "gAAAAA-token")


def test_second_of_two_keys_is_bad() -> None:
    with pytest.raises(SecretError, match="key 2 of 2 is not a Fernet key") as info:
        encrypt_url("sqlite://", key=f"{generate_key()},nope-not-a-key")
    assert_hides(info.value, "nope-not-a-key")


def test_not_a_url_either_way(key: str) -> None:
    with pytest.raises(SecretError, match="is not a URL"):
        encrypt_url(f"user:{PASSWORD}@host")
    from cryptography.fernet import Fernet

    token = Fernet(key.encode()).encrypt(f"just {PASSWORD}".encode()).decode()
    with pytest.raises(SecretError, match="decrypts to something that is not a URL") as info:
        decrypt_url(token)
    assert_hides(info.value, PASSWORD, token)
    with pytest.raises(SecretError, match="SMARTPOOL_URL_ENCRYPTED: is not set"):
        decrypt_url()


# -- the plugin and smartpool_url() ------------------------------------------------------------


def test_plugin_stub_takes_the_encrypted_url(
    key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMARTPOOL_URL_ENCRYPTED", encrypt_url(sqlite_url(tmp_path)))
    engine = sa.create_engine("smartpool://?plugin=smartpool&smartpool_min_size=0", pool_size=2)
    try:
        assert isinstance(engine.pool, SmartPool)
        assert engine.url.database == str(tmp_path / "enc.db") and not engine.url.query
        assert (engine.pool.config.min_size, engine.pool.config.max_size) == (0, 3)  # both URLs' keys
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
    finally:
        engine.dispose()


def test_a_real_url_ignores_the_variable(key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTPOOL_URL_ENCRYPTED", encrypt_url("postgresql://u:p@elsewhere/db"))
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'own.db'}?plugin=smartpool")
    try:
        assert engine.url.database == str(tmp_path / "own.db")
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("stub", "reason"),
    [
        ("smartpool://h/db?plugin=smartpool", r"may hold only \?plugin=smartpool and smartpool_\* keys"),
        ("smartpool://?plugin=smartpool&sslmode=x", "may hold only"),
        ("smartpool://?plugin=smartpool&smartpool_max_size=4", "smartpool_max_size is in both"),
    ],
)
def test_stub_errors(
    key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stub: str, reason: str
) -> None:
    monkeypatch.setenv("SMARTPOOL_URL_ENCRYPTED", encrypt_url(sqlite_url(tmp_path)))
    with pytest.raises(SecretError, match=reason):
        sa.create_engine(stub)


def test_stub_without_the_variable_or_with_a_wrong_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(SecretError, match="smartpool:// needs SMARTPOOL_URL_ENCRYPTED, which is not set"):
        sa.create_engine("smartpool://?plugin=smartpool")
    token = encrypt_url(f"postgresql://u:{PASSWORD}@h/d", key=generate_key())
    wrong = generate_key()
    monkeypatch.setenv("SMARTPOOL_URL_ENCRYPTED", token)
    monkeypatch.setenv("SMARTPOOL_URL_KEY", wrong)
    with pytest.raises(SecretError, match="SMARTPOOL_URL_ENCRYPTED: cannot be decrypted") as info:
        sa.create_engine("smartpool://?plugin=smartpool")
    assert_hides(info.value, token, wrong, PASSWORD)


def test_encrypted_url_with_a_bad_setting_names_the_key_not_the_url(
    key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "SMARTPOOL_URL_ENCRYPTED", encrypt_url(f"postgresql://u:{PASSWORD}@h/d?smartpool_max_size=x")
    )
    with pytest.raises(ConfigError) as info:
        sa.create_engine("smartpool://?plugin=smartpool")
    assert info.value.source == "URL parameter smartpool_max_size"
    assert_hides(info.value, PASSWORD)


def test_smartpool_url_for_code(key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTPOOL_URL_ENCRYPTED", encrypt_url(f"postgresql://u:{PASSWORD}@h/d"))
    url = smartpool_url()
    assert (url.host, url.password) == ("h", PASSWORD)
    assert PASSWORD not in repr(url)  # SQLAlchemy hides it


# -- the commands -------------------------------------------------------------------------


def test_gen_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["gen-key"]) == 0
    k = capsys.readouterr().out.strip()
    assert decrypt_url(encrypt_url("sqlite://", key=k), key=k) == "sqlite://"
    out = tmp_path / "k"
    assert main(["gen-key", "--out", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and len(out.read_text().strip()) == 44
    assert main(["gen-key", "--out", str(out)]) == 2  # never overwrites a key
    assert "File exists" in capsys.readouterr().err


def test_encrypt_then_check(
    key: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"postgresql+psycopg2://app:{PASSWORD}@db:5432/app"
    monkeypatch.setattr(sys, "stdin", io.StringIO(url + "\n"))
    assert main(["encrypt-url"]) == 0
    captured = capsys.readouterr()
    token = captured.out.strip()
    assert PASSWORD not in captured.out + captured.err and decrypt_url(token) == url
    monkeypatch.setenv("SMARTPOOL_URL_ENCRYPTED", token)
    assert main(["decrypt-url", "--check"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == "postgresql+psycopg2://app:***@db:5432/app"
    monkeypatch.delenv("SMARTPOOL_URL_ENCRYPTED")
    monkeypatch.setattr(sys, "stdin", io.StringIO(token))
    assert main(["decrypt-url"]) == 0  # the token on stdin; redacted by default
    assert capsys.readouterr().out.strip() == "postgresql+psycopg2://app:***@db:5432/app"
    monkeypatch.setattr(sys, "stdin", io.StringIO(token))
    assert main(["decrypt-url", "--reveal"]) == 0
    assert capsys.readouterr().out.strip() == url


def test_encrypt_from_argv_warns(key: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["encrypt-url", "--url", "redis://:pw@h/0"]) == 0
    err = capsys.readouterr().err
    assert "shell history" in err and "pw@" not in err


def test_commands_fail_cleanly(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    token = encrypt_url(f"postgresql://u:{PASSWORD}@h/d", key=generate_key())
    wrong = generate_key()
    monkeypatch.setenv("SMARTPOOL_URL_KEY", wrong)
    monkeypatch.setenv("SMARTPOOL_URL_ENCRYPTED", token)
    assert main(["decrypt-url", "--check"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "cannot be decrypted" in captured.err
    for secret in (token, wrong, PASSWORD):
        assert secret not in captured.err
    monkeypatch.setattr(sys, "stdin", io.StringIO("not a url\n"))
    assert main(["encrypt-url"]) == 2
    assert "is not a URL" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["decrypt-url", "--check", "--reveal"])


def test_commands_in_a_subprocess(tmp_path: Path) -> None:
    """The real entry point: the URL through a pipe, the key from a key file."""
    key_file = tmp_path / "key"
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    cmd = [sys.executable, "-m", "sqlalchemy_smartpool.cli"]
    subprocess.run([*cmd, "gen-key", "--out", str(key_file)], env=env, check=True, capture_output=True)
    url = f"mysql+pymysql://root:{PASSWORD}@127.0.0.1:3306/test"
    env["SMARTPOOL_URL_KEY_FILE"] = str(key_file)
    enc = subprocess.run(
        [*cmd, "encrypt-url"], input=url, env=env, capture_output=True, text=True, check=True
    )
    token = enc.stdout.strip()
    assert PASSWORD not in enc.stdout + enc.stderr
    env["SMARTPOOL_URL_ENCRYPTED"] = token
    check = subprocess.run([*cmd, "decrypt-url", "--check"], env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "mysql+pymysql://root:***@127.0.0.1:3306/test"
    env["SMARTPOOL_URL_ENCRYPTED"] = token[:-8]
    bad = subprocess.run([*cmd, "decrypt-url", "--check"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == "" and token[:-8] not in bad.stderr


def test_helpers_are_exported_lazily() -> None:
    import sqlalchemy_smartpool

    assert sqlalchemy_smartpool.decrypt_url is decrypt_url
    assert sqlalchemy_smartpool.smartpool_url is smartpool_url
    assert sqlalchemy_smartpool.encrypt_url is encrypt_url

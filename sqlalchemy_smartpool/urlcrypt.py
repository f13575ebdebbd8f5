"""Connection URLs stored encrypted (Fernet); ``smartpool encrypt-url`` / ``decrypt-url`` / ``gen-key``.

An encrypted URL can sit in a config map, a ``.env`` file or a CI variable
without giving away the password; only a process holding the key can use it.
The key comes from ``SMARTPOOL_URL_KEY`` or from the file named by
``SMARTPOOL_URL_KEY_FILE`` (a mounted secret); several keys, separated by
commas or newlines, decrypt with any and encrypt with the first, so a key can
be rotated without a flag day. Errors say what failed and where the key came
from, and never print the token, the key or the URL (a
:class:`~.errors.SecretError`). Needs ``cryptography`` (the ``crypto``
extra), imported only when a URL is encrypted or decrypted. This module
imports neither SQLAlchemy nor redis.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import SecretError, redact

#: holds the encrypted URL, read by the ``smartpool`` engine plugin and :func:`decrypt_url`
ENV_URL_ENCRYPTED = "SMARTPOOL_URL_ENCRYPTED"
#: the key (or keys), as text
ENV_URL_KEY = "SMARTPOOL_URL_KEY"
#: a file holding the key (or keys)
ENV_URL_KEY_FILE = "SMARTPOOL_URL_KEY_FILE"

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_NEEDS = "needs the cryptography package: pip install 'sqlalchemy-smartpool[crypto]'"


def _fernet_module() -> Any:
    try:
        import cryptography.fernet as fernet
    except ImportError:
        raise SecretError("encrypted URL", None, _NEEDS) from None
    return fernet


def generate_key() -> str:
    """A new random Fernet key (url-safe base64 text, 44 characters)."""
    key: bytes = _fernet_module().Fernet.generate_key()
    return key.decode("ascii")


def _read_keys(
    environ: Mapping[str, str], key: str | bytes | None, key_file: str | None
) -> tuple[list[bytes], str]:
    """The keys, and a description of where they came from (for errors: never the key itself)."""
    if key is not None:
        text, source = (key.decode("ascii", "replace") if isinstance(key, bytes) else key), "the key argument"
    elif key_file is not None:
        text, source = _read_key_file(key_file, f"key file {key_file}"), f"key file {key_file}"
    else:
        inline, path = environ.get(ENV_URL_KEY), environ.get(ENV_URL_KEY_FILE)
        if inline and path:
            raise SecretError("URL key", None, f"both {ENV_URL_KEY} and {ENV_URL_KEY_FILE} are set; set one")
        if inline:
            text, source = inline, f"environment variable {ENV_URL_KEY}"
        elif path:
            source = f"{ENV_URL_KEY_FILE}={path}"
            text = _read_key_file(path, source)
        else:
            raise SecretError("URL key", None, f"no key: set {ENV_URL_KEY} or {ENV_URL_KEY_FILE}")
    keys = [k.encode("ascii", "replace") for k in re.split(r"[\s,]+", text) if k]
    if not keys:
        raise SecretError("URL key", None, "is empty", source=source)
    return keys, source


def _read_key_file(path: str, source: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii")
    except OSError as err:
        raise SecretError(
            "URL key", None, f"cannot be read: {err.strerror or 'error'}", source=source
        ) from None
    except UnicodeDecodeError:
        raise SecretError("URL key", None, "is not a Fernet key (not ASCII text)", source=source) from None


def _fernet(keys: list[bytes], source: str) -> Any:
    fernet = _fernet_module()
    made = []
    for n, k in enumerate(keys, 1):
        try:
            made.append(fernet.Fernet(k))
        except (ValueError, TypeError):  # the message says nothing of the key; drop the chain anyway
            which = f"key {n} of {len(keys)}" if len(keys) > 1 else "the key"
            reason = f"{which} is not a Fernet key (32 url-safe base64 bytes; `smartpool gen-key` makes one)"
            raise SecretError("URL key", None, reason, source=source) from None
    return fernet.MultiFernet(made)


def encrypt_url(
    url: str,
    *,
    key: str | bytes | None = None,
    key_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The Fernet token of ``url`` (encrypted with the first key)."""
    if not isinstance(url, str) or not _URL.match(url.strip()):
        raise SecretError("URL", None, "is not a URL (scheme://...)")
    keys, source = _read_keys(os.environ if environ is None else environ, key, key_file)
    token: bytes = _fernet(keys, source).encrypt(url.strip().encode("utf-8"))
    return token.decode("ascii")


def decrypt_url(
    token: str | None = None,
    *,
    key: str | bytes | None = None,
    key_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The URL a token holds; ``token`` defaults to ``SMARTPOOL_URL_ENCRYPTED``.

    Raises :class:`~.errors.SecretError` for a missing token or key, a wrong
    key and a corrupt token, naming neither the token nor the key.
    """
    env = os.environ if environ is None else environ
    what = "the token" if token is not None else ENV_URL_ENCRYPTED
    if token is None:
        token = env.get(ENV_URL_ENCRYPTED)
        if not token:
            raise SecretError(ENV_URL_ENCRYPTED, None, "is not set")
    keys, source = _read_keys(env, key, key_file)
    fernet = _fernet(keys, source)
    try:
        plain: bytes = fernet.decrypt(token.strip().encode("ascii", "replace"))
    except Exception:  # InvalidToken (wrong key, corrupt, truncated), or a token that is not base64
        raise SecretError(
            what, None, f"cannot be decrypted with {source}: wrong key, or a corrupt or truncated token"
        ) from None
    try:
        url = plain.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(what, None, "decrypts to something that is not text") from None
    if not _URL.match(url):
        raise SecretError(what, None, "decrypts to something that is not a URL (scheme://...)")
    return url


# ---------------------------------------------------------------------------- commands


def _key_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key-file", help=f"file holding the key (default: ${ENV_URL_KEY} or ${ENV_URL_KEY_FILE})"
    )


def _read_secret_line(prompt: str) -> str:
    """One line from stdin, or from a prompt that does not echo when stdin is a terminal."""
    if sys.stdin is not None and sys.stdin.isatty():
        return getpass.getpass(prompt)
    line = sys.stdin.readline() if sys.stdin is not None else ""
    return line.strip()


def encrypt_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="smartpool encrypt-url",
        description="Encrypt a connection URL read from stdin (or a prompt that does not echo); "
        f"prints the token for {ENV_URL_ENCRYPTED}.",
    )
    parser.add_argument("--url", help="the URL as an argument (lands in your shell history; prefer stdin)")
    _key_args(parser)
    args = parser.parse_args(argv)
    if args.url is not None:
        print("warning: a URL given with --url is in your shell history and process list", file=sys.stderr)
        url = args.url
    else:
        url = _read_secret_line("URL to encrypt: ")
    try:
        print(encrypt_url(url, key_file=args.key_file))
    except SecretError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def decrypt_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="smartpool decrypt-url",
        description=f"Check that a token (${ENV_URL_ENCRYPTED}, else stdin) decrypts with the key; "
        "prints the URL with its password hidden.",
    )
    parser.add_argument(
        "--check", action="store_true", help="validate and print the redacted URL (the default)"
    )
    parser.add_argument(
        "--reveal", action="store_true", help="print the whole URL, password included (to re-encrypt it)"
    )
    _key_args(parser)
    args = parser.parse_args(argv)
    if args.check and args.reveal:
        parser.error("--check and --reveal exclude each other")
    token = None if os.environ.get(ENV_URL_ENCRYPTED) else _read_secret_line("token: ")
    try:
        url: str = decrypt_url(token, key_file=args.key_file)
    except SecretError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(url if args.reveal else redact(url))
    return 0


def gen_key_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="smartpool gen-key", description=f"Print a new key for {ENV_URL_KEY} (or write a key file)."
    )
    parser.add_argument("--out", help="write the key to this new file (mode 0600) instead of stdout")
    args = parser.parse_args(argv)
    try:
        key = generate_key()
    except SecretError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out is None:
        print(key)
        return 0
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as err:
        print(f"error: {args.out}: {err.strerror}", file=sys.stderr)
        return 2
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key + "\n")
    print(f"wrote a new key to {args.out}; point {ENV_URL_KEY_FILE} at it", file=sys.stderr)
    return 0


COMMANDS = {"encrypt-url": encrypt_command, "decrypt-url": decrypt_command, "gen-key": gen_key_command}

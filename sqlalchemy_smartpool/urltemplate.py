"""``{env:NAME}`` and ``{file:PATH}`` placeholders in connection URLs, resolved at every connect.

A URL such as ``postgresql://app:{file:/run/secrets/db}@db/app`` keeps its
secret out of the code, the environment dump and the engine's URL: the pool
resolves each placeholder when it opens a physical connection, so a rotated
secret file is used by the next connect without a restart. A missing
variable or unreadable file is a :class:`~.errors.SecretError` naming the
placeholder -- once at construction (fail early) and again at a connect if
the secret disappeared since. Nothing here logs, and no error carries a
resolved value.

Where the URL syntax itself has no room for ``{``, ``:`` or ``/`` (the user
name and host of a SQLAlchemy URL string), write the placeholder
percent-encoded (``%7Benv%3ADB_HOST%7D``); :func:`protect` lets a parser
accept them raw. This module imports neither SQLAlchemy nor redis.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

from .errors import SecretError

_RAW = re.compile(r"\{(env|file):([^{}]*)\}")
_ENCODED = re.compile(r"%7B(env|file)%3A(.*?)%7D", re.IGNORECASE)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _decode(text: str) -> str:
    """Percent-encoded placeholders (``%7Benv%3AX%7D``) as raw ones (``{env:X}``)."""
    if "%" not in text:
        return text
    return _ENCODED.sub(lambda m: "{" + m[1].lower() + ":" + unquote(m[2]) + "}", text)


def has_placeholders(value: Any) -> bool:
    """Is ``value`` a string with at least one placeholder (raw or percent-encoded)?"""
    if not isinstance(value, str) or ("{" not in value and "%" not in value):
        return False
    return _RAW.search(_decode(value)) is not None


def placeholders(text: str) -> list[str]:
    """The placeholders of ``text`` as written raw (``{file:/run/pw}``), in order."""
    return [m[0] for m in _RAW.finditer(_decode(text))]


def _lookup(kind: str, arg: str, placeholder: str, where: str, environ: Mapping[str, str]) -> str:
    if kind == "env":
        if not _ENV_NAME.match(arg):
            raise SecretError(where, placeholder, "not an environment variable name")
        value = environ.get(arg)
        if value is None:
            raise SecretError(where, placeholder, f"environment variable {arg} is not set")
        return value
    if not arg:
        raise SecretError(where, placeholder, "no file path")
    try:
        with open(arg, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise SecretError(
            where, placeholder, f"file {arg} cannot be read: {err.strerror or 'error'}"
        ) from None
    except UnicodeDecodeError:  # its message would quote bytes of the secret
        raise SecretError(where, placeholder, f"file {arg} is not UTF-8 text") from None
    return text.rstrip("\r\n")  # the newline editors and `echo` add is not part of the secret


def resolve(text: str, *, where: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with every placeholder replaced by its variable's value or file's content.

    ``where`` names the spot for errors (``the URL's password``). A file's
    trailing newline is dropped. Raises :class:`~.errors.SecretError`.
    """
    env = os.environ if environ is None else environ
    decoded = _decode(text)
    return _RAW.sub(lambda m: _lookup(m[1], m[2], m[0], where, env), decoded)


def check(text: str, *, where: str, environ: Mapping[str, str] | None = None) -> None:
    """Resolve once and forget the result: a missing secret fails now, not at the first connect."""
    if has_placeholders(text):
        resolve(text, where=where, environ=environ)


def templated_keys(kwargs: Mapping[str, Any]) -> list[str]:
    """The keys of ``kwargs`` whose values hold placeholders."""
    return [k for k, v in kwargs.items() if has_placeholders(v)]


def resolve_kwargs(
    kwargs: Mapping[str, Any],
    *,
    where: str = "connection argument {key}",
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A copy of ``kwargs`` with the placeholders of its string values resolved (``where`` gets ``{key}``)."""
    out = dict(kwargs)
    for key in templated_keys(kwargs):
        out[key] = resolve(out[key], where=where.format(key=key), environ=environ)
    return out


def protect(url: str) -> tuple[str, Callable[[str], str]]:
    """``url`` with each raw placeholder swapped for a plain token, and the function that swaps back.

    URL parsers split on ``:`` and ``/`` and lowercase host names, so
    ``redis://{env:REDIS_HOST}:6379`` cannot be parsed as it is; the token
    (lowercase letters and digits) survives any parser, and ``restore``
    puts the placeholder back into each parsed part.
    """
    text = _decode(url)
    found = _RAW.findall(text)
    if not found:
        return url, lambda part: part
    marker = "smartpoolph"
    while marker in text:
        marker += "x"
    tokens: dict[str, str] = {}

    def swap(m: re.Match[str]) -> str:
        token = f"{marker}{len(tokens)}q"
        tokens[token] = m[0]
        return token

    safe = _RAW.sub(swap, text)
    pattern = re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))

    def restore(part: str) -> str:
        return pattern.sub(lambda m: tokens[m[0]], part) if marker in part else part

    return safe, restore

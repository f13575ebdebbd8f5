"""``?plugin=smartpool``: switch an existing app to SmartPool without a code change.

The settings file (``SMARTPOOL_CONFIG_FILE``, profile ``SMARTPOOL_PROFILE``),
``SMARTPOOL_<FIELD>`` environment variables and the URL (``smartpool_<field>``
query keys) are the operator's knobs, so they win over what the code says:
defaults < per-backend defaults < ``pool_config=`` < SQLAlchemy pool arguments
(``pool_size=``, ...) < SmartPool keywords < file < environment < URL (see
:func:`~sqlalchemy_smartpool.config.from_pool_arguments`). The plugin strips
its keys from the URL so the driver never sees them.

It also resolves ``{env:NAME}`` / ``{file:PATH}`` placeholders in the URL at
every connect (checking them once at ``create_engine``), and takes the whole
URL from ``SMARTPOOL_URL_ENCRYPTED`` when the app's URL is the stub
``smartpool://?plugin=smartpool``. :func:`smartpool_url` does both for code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import CreateEnginePlugin, Engine
from sqlalchemy.engine.url import URL, make_url

from . import drivers, urltemplate
from .config import ENV_PREFIX, POOL_KEYWORDS, SA_POOL_ARGUMENTS, URL_PREFIX, from_pool_arguments
from .errors import ConfigError, SecretError
from .pool import AsyncSmartPool, SmartPool
from .urlcrypt import ENV_URL_ENCRYPTED, decrypt_url

#: the drivername of the stub URL that stands for ``SMARTPOOL_URL_ENCRYPTED``
STUB_SCHEME = "smartpool"


class SmartPoolPlugin(CreateEnginePlugin):
    """The ``sqlalchemy.plugins`` entry point named ``smartpool``."""

    def __init__(self, url: URL, kwargs: dict[str, Any]) -> None:
        super().__init__(url, kwargs)
        self._environ = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
        self._url = _from_stub(url, self._environ) if url.drivername == STUB_SCHEME else None
        real = self._url or url
        self._query = {k: v for k, v in real.query.items() if k.startswith(URL_PREFIX)}
        #: the pool's name unless the code gives one (a placeholder is learnt resolved, at the first connect)
        self._database = None if urltemplate.has_placeholders(real.database) else real.database
        check_placeholders(real)  # a missing secret fails at create_engine, naming the placeholder
        self._guard = _guard_settings(self._query, self._environ)  # takes its keys out of both
        # fail now, at create_engine(), even if the app then picks another pool class
        from_pool_arguments(
            None, {}, {}, environ=self._environ, url_query=self._query, backend=_backend_name(real)
        )
        # create_async_engine() passes _is_async; an async driver in a sync URL is async too
        is_async = bool(kwargs.get("_is_async")) or _dialect_is_async(real)
        kwargs.setdefault("poolclass", AsyncSmartPool if is_async else SmartPool)

    def update_url(self, url: URL) -> URL:
        return (self._url or url).difference_update_query([*self._query, *GUARD_URL_KEYS])

    def handle_pool_kwargs(self, pool_cls: type, pool_args: dict[str, Any]) -> None:
        """Merge code, file, environment and URL into the final ``pool_config``, consuming the keys merged."""
        if not (isinstance(pool_cls, type) and issubclass(pool_cls, SmartPool)):
            return
        given = {k: pool_args.pop(k) for k in POOL_KEYWORDS if k in pool_args}
        sa_given = {k: pool_args.pop(k) for k in SA_POOL_ARGUMENTS if k in pool_args}
        dialect = pool_args.get("dialect")
        drivers.note_database(dialect, self._database)
        pool_args["pool_config"] = from_pool_arguments(
            pool_args.pop("pool_config", None),
            given,
            sa_given,
            environ=self._environ,
            url_query=self._query,
            backend=getattr(dialect, "name", None),
        )
        pool_args["environ"] = {}  # merged here, with the URL on top: the pool must not re-read it

    def engine_created(self, engine: Engine) -> None:
        # for any pool class: SmartPool installs the same hook itself (once per dialect)
        drivers.install_url_templates(engine.dialect)
        # smartpool_statement_guard=detect|enforce (URL) or SMARTPOOL_STATEMENT_GUARD: docs/guard.md
        mode, allowlist, source = self._guard
        if mode != "off":
            from .guard import install_guard

            install_guard(engine, mode, allowlist, source=source)


def _backend_name(url: URL) -> str | None:
    try:
        return url.get_backend_name()
    except Exception:
        return None


def _dialect_is_async(url: URL) -> bool:
    try:
        return bool(url.get_dialect().is_async)
    except Exception:  # an unknown dialect fails later, in create_engine, with SQLAlchemy's error
        return False


#: the statement guard's settings: URL query keys and environment variables (URL wins)
GUARD_URL_KEYS = (f"{URL_PREFIX}statement_guard", f"{URL_PREFIX}statement_guard_allowlist")
GUARD_ENV_KEYS = (f"{ENV_PREFIX}STATEMENT_GUARD", f"{ENV_PREFIX}STATEMENT_GUARD_ALLOWLIST")


def _guard_settings(query: dict[str, Any], environ: dict[str, str]) -> tuple[str, str | None, str]:
    """Pop the guard's keys (they are no pool settings) and validate them now: a typo fails at
    ``create_engine()``. Returns (mode, allow-list path, where the mode came from)."""
    from .guard import settings_from_text

    found: dict[str, tuple[str, str]] = {}
    for name, env_key, url_key in zip(
        ("statement_guard", "statement_guard_allowlist"), GUARD_ENV_KEYS, GUARD_URL_KEYS, strict=True
    ):
        if env_key in environ:
            found[name] = (environ.pop(env_key), f"environment variable {env_key}")
        if url_key in query:
            raw, source = query.pop(url_key), f"URL parameter {url_key}"
            if not isinstance(raw, str):
                raise ConfigError(name, raw, "given more than once in the URL", source=source)
            found[name] = (raw, source)
    mode, path = settings_from_text(found)
    return mode, path, found.get("statement_guard", ("", "default"))[1]


def _from_stub(stub: URL, environ: Mapping[str, str]) -> URL:
    """The URL ``SMARTPOOL_URL_ENCRYPTED`` holds, with the stub's ``smartpool_*`` keys added."""
    extra = [k for k in stub.query if not k.startswith(URL_PREFIX) and k not in ("plugin", "plugins")]
    if stub.host or stub.database or stub.username or stub.password or stub.port or extra:
        raise SecretError(
            "URL",
            None,
            f"the stub {STUB_SCHEME}:// stands for the whole URL in {ENV_URL_ENCRYPTED}: it may hold "
            f"only ?plugin=smartpool and smartpool_* keys (put everything else into the encrypted URL)",
        )
    if not environ.get(ENV_URL_ENCRYPTED):
        raise SecretError("URL", None, f"{STUB_SCHEME}:// needs {ENV_URL_ENCRYPTED}, which is not set")
    url = parse_url(decrypt_url(environ=environ), what=ENV_URL_ENCRYPTED)
    url = url.difference_update_query(["plugin", "plugins"])
    for key, value in stub.query.items():
        if key in ("plugin", "plugins"):
            continue
        if key in url.query:
            raise SecretError(
                "URL", None, f"{key} is in both the stub URL and {ENV_URL_ENCRYPTED}; give it once"
            )
        url = url.update_query_dict({key: value})
    return url


def parse_url(text: str, *, what: str = "the URL") -> URL:
    """A SQLAlchemy URL from text that may hold raw placeholders anywhere (``{env:DB_HOST}``).

    A parse error never quotes the text (it may hold a password).
    """
    safe, restore = urltemplate.protect(text)
    try:
        parsed = make_url(safe)
    except Exception:
        reason = "is not a valid SQLAlchemy URL (dialect+driver://user:password@host/db)"
        raise SecretError(what, None, reason) from None
    if safe == text:
        return parsed

    def back(part: str | None) -> str | None:
        return None if part is None else restore(part)

    query: dict[str, str | tuple[str, ...]] = {}
    for key, value in parsed.query.items():
        query[restore(key)] = tuple(restore(v) for v in value) if isinstance(value, tuple) else restore(value)
    return URL.create(
        parsed.drivername,
        username=back(parsed.username),
        password=back(parsed.password),
        host=back(parsed.host),
        port=parsed.port,
        database=back(parsed.database),
        query=query,
    )


def check_placeholders(url: URL) -> None:
    """Resolve every placeholder of ``url`` once (and forget the values): fail early, naming it."""
    parts = {
        "the URL's user name": url.username,
        "the URL's password": url.password,
        "the URL's host": url.host,
        "the URL's database": url.database,
    }
    for key, value in url.query.items():
        for v in value if isinstance(value, tuple) else (value,):
            parts[f"the URL's query parameter {key}"] = v
    for where, part in parts.items():
        if isinstance(part, str):
            urltemplate.check(part, where=where)


def smartpool_url(url: str | URL | None = None) -> URL:
    """The URL to give ``create_engine``, for code: from ``SMARTPOOL_URL_ENCRYPTED`` when ``url`` is
    None, else ``url`` parsed with placeholders allowed in every part (the user name and host too).

    Placeholders are checked now (a missing secret fails here) and stay in
    the URL, to be resolved by SmartPool at every connect.
    """
    if url is None:
        parsed = parse_url(decrypt_url(), what=ENV_URL_ENCRYPTED)
    elif isinstance(url, URL):
        parsed = url
    else:
        parsed = parse_url(url)
    check_placeholders(parsed)
    return parsed

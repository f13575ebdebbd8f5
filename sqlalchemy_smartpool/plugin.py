"""``?plugin=smartpool``: switch an existing app to SmartPool without a code change.

The URL (``smartpool_<field>`` query keys) and ``SMARTPOOL_<FIELD>``
environment variables are the operator's knobs, so they win over what the
code says: defaults < ``pool_config=`` < SQLAlchemy pool arguments
(``pool_size=``, ...) < SmartPool keywords < environment < URL (see
:func:`~sqlalchemy_smartpool.config.from_pool_arguments`). The plugin strips
its keys from the URL so the driver never sees them.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy.engine import CreateEnginePlugin
from sqlalchemy.engine.url import URL

from .config import ENV_PREFIX, POOL_KEYWORDS, SA_POOL_ARGUMENTS, URL_PREFIX, from_pool_arguments
from .errors import ConfigError
from .pool import AsyncSmartPool, SmartPool


class SmartPoolPlugin(CreateEnginePlugin):
    """The ``sqlalchemy.plugins`` entry point named ``smartpool``."""

    def __init__(self, url: URL, kwargs: dict[str, Any]) -> None:
        super().__init__(url, kwargs)
        self._query = {k: v for k, v in url.query.items() if k.startswith(URL_PREFIX)}
        self._environ = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
        self._guard = _guard_settings(self._query, self._environ)  # takes its keys out of both
        # fail now, at create_engine(), even if the app then picks another pool class
        from_pool_arguments(None, {}, {}, environ=self._environ, url_query=self._query)
        # create_async_engine() passes _is_async; an async driver in a sync URL is async too
        is_async = bool(kwargs.get("_is_async")) or _dialect_is_async(url)
        kwargs.setdefault("poolclass", AsyncSmartPool if is_async else SmartPool)

    def update_url(self, url: URL) -> URL:
        return url.difference_update_query([*self._query, *GUARD_URL_KEYS])

    def engine_created(self, engine: Any) -> None:
        """``smartpool_statement_guard=detect|enforce`` (URL) or ``SMARTPOOL_STATEMENT_GUARD``:
        install the statement guard (docs/guard.md) on the new engine."""
        mode, allowlist, source = self._guard
        if mode != "off":
            from .guard import install_guard

            install_guard(engine, mode, allowlist, source=source)

    def handle_pool_kwargs(self, pool_cls: type, pool_args: dict[str, Any]) -> None:
        """Merge code, environment and URL into the final ``pool_config``, consuming the keys merged."""
        if not (isinstance(pool_cls, type) and issubclass(pool_cls, SmartPool)):
            return
        given = {k: pool_args.pop(k) for k in POOL_KEYWORDS if k in pool_args}
        sa_given = {k: pool_args.pop(k) for k in SA_POOL_ARGUMENTS if k in pool_args}
        pool_args["pool_config"] = from_pool_arguments(
            pool_args.pop("pool_config", None),
            given,
            sa_given,
            environ=self._environ,
            url_query=self._query,
        )


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

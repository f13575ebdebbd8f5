"""``?plugin=smartpool``: switch an existing app to SmartPool without a code change.

Settings come from ``SMARTPOOL_<FIELD>`` environment variables, then from
``smartpool_<field>`` URL query keys (which win), then from explicit
``create_engine`` keywords (which win over both). The plugin strips its keys
from the URL so the driver never sees them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import CreateEnginePlugin
from sqlalchemy.engine.url import URL

from .config import URL_PREFIX, PoolConfig
from .errors import ConfigError
from .pool import SmartPool


class SmartPoolPlugin(CreateEnginePlugin):
    """The ``sqlalchemy.plugins`` entry point named ``smartpool``."""

    def __init__(self, url: URL, kwargs: dict[str, Any]) -> None:
        super().__init__(url, kwargs)
        self._keys = [k for k in url.query if k.startswith(URL_PREFIX)]
        settings: dict[str, str] = {}
        for key in self._keys:
            value = url.query[key]
            if not isinstance(value, str):
                raise ConfigError(key, value, "given more than once in the URL")
            settings[key[len(URL_PREFIX) :]] = value
        self._settings = settings
        self._env = PoolConfig.from_env()
        PoolConfig.from_strings(settings, base=self._env)  # fail now, at create_engine()
        kwargs.setdefault("poolclass", SmartPool)

    def update_url(self, url: URL) -> URL:
        return url.difference_update_query(self._keys)

    def handle_pool_kwargs(self, pool_cls: type, pool_args: dict[str, Any]) -> None:
        if not (isinstance(pool_cls, type) and issubclass(pool_cls, SmartPool)):
            return
        base = pool_args.get("pool_config") or self._env
        pool_args["pool_config"] = PoolConfig.from_strings(self._settings, base=base)

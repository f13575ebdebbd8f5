"""pytest plugin (``-p smartpool_sa_plugin``): SmartPool wherever SQLAlchemy would pick QueuePool,
AsyncSmartPool wherever it would pick AsyncAdaptedQueuePool.

SQLAlchemy's test suite makes its engines with plain ``create_engine(url)``
(``testing_engine``, ``config.db``), and an engine's URL no longer carries
``?plugin=`` once created -- so a ``--dburi ...?plugin=smartpool`` would
reach only the suite's first engine. Swapping the dialect's *default* pool
class instead reaches every engine the suite builds, and leaves alone the
tests that ask for a pool class explicitly.

``SMARTPOOL_SUITE_MIN_SIZE`` (default 0) is the pool's ``min_size`` unless a
test passes ``pool_size``: QueuePool opens connections lazily, and many of
the suite's tests count connects or connect events, so a prewarmed pool
would fail them for a reason that is no bug.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import pool
from sqlalchemy.engine import default

from sqlalchemy_smartpool import AsyncSmartPool, SmartPool

_MIN_SIZE = int(os.environ.get("SMARTPOOL_SUITE_MIN_SIZE", "0"))
#: set to compare with SQLAlchemy's pre_ping, which pings on every checkout (no bypass window)
_VALIDATION_INTERVAL = os.environ.get("SMARTPOOL_SUITE_VALIDATION_INTERVAL")


def _suite_defaults(kw: dict[str, Any]) -> dict[str, Any]:
    if "pool_size" not in kw and "pool_config" not in kw:
        kw.setdefault("min_size", _MIN_SIZE)
    if _VALIDATION_INTERVAL is not None and "pool_config" not in kw:
        kw.setdefault("validation_interval", float(_VALIDATION_INTERVAL))
    return kw


class SuiteSmartPool(SmartPool):
    """SmartPool, lazy like QueuePool unless the test sizes it."""

    made = 0

    def __init__(self, creator: Any, **kw: Any) -> None:
        super().__init__(creator, **_suite_defaults(kw))
        SuiteSmartPool.made += 1


class SuiteAsyncSmartPool(AsyncSmartPool):
    """AsyncSmartPool, lazy like AsyncAdaptedQueuePool unless the test sizes it."""

    made = 0

    def __init__(self, creator: Any, **kw: Any) -> None:
        super().__init__(creator, **_suite_defaults(kw))
        SuiteAsyncSmartPool.made += 1


_SWAP: dict[type[pool.Pool], type[pool.Pool]] = {
    pool.QueuePool: SuiteSmartPool,
    pool.AsyncAdaptedQueuePool: SuiteAsyncSmartPool,
}


_original = default.DefaultDialect.get_dialect_pool_class


def _smartpool_instead(self: Any, url: Any) -> type[pool.Pool]:
    cls = _original(self, url)
    return _SWAP.get(cls, cls)


default.DefaultDialect.get_dialect_pool_class = _smartpool_instead  # type: ignore[method-assign]


def pytest_report_header(config: Any) -> str:
    return (
        "smartpool_sa_plugin: QueuePool -> SmartPool, AsyncAdaptedQueuePool -> AsyncSmartPool "
        f"(default min_size={_MIN_SIZE}, "
        f"validation_interval={_VALIDATION_INTERVAL or 'default'})"
    )


def pytest_collection_modifyitems(session: Any, config: Any, items: list[Any]) -> None:
    """test/engine/test_pool.py builds its pools directly; route its QueuePool fixture here too."""
    import sys

    mod = sys.modules.get("test.engine.test_pool")
    if mod is None:
        return
    base = mod.PoolTestBase
    original = base._queuepool_dbapi_fixture

    def _smartpool_dbapi_fixture(self: Any, **kw: Any) -> Any:
        if kw.get("_is_asyncio") or kw.get("_has_terminate"):
            return original(self, **kw)  # asyncio pools are out of SmartPool's scope
        kw.pop("_is_asyncio", None)
        kw.pop("_has_terminate", None)
        dbapi = mod.MockDBAPI()
        return dbapi, SuiteSmartPool(creator=lambda: dbapi.connect("foo.db"), **kw)

    base._queuepool_dbapi_fixture = _smartpool_dbapi_fixture


def _queue_pool_like(self: Any) -> Any:
    """``requires.queue_pool``: SmartPool too. The tests behind it check what any sized
    pool must do (pool_size/max_overflow/pool_timeout honoured, dispose, invalidate,
    exhaustion raising TimeoutError); their QueuePool internals sit behind isinstance()."""
    from sqlalchemy.testing import exclusions

    return exclusions.only_if(lambda config: isinstance(config.db.pool, (pool.QueuePool, SmartPool)))


def pytest_configure(config: Any) -> None:
    from sqlalchemy.testing import requirements

    requirements.SuiteRequirements.queue_pool = property(_queue_pool_like)  # type: ignore[assignment,method-assign]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Proof that the swap happened: how many pools of each kind this session made."""
    terminalreporter.write_line(
        f"smartpool_sa_plugin: pools made: SmartPool {SuiteSmartPool.made}, "
        f"AsyncSmartPool {SuiteAsyncSmartPool.made}"
    )

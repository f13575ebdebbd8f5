"""A bounded in-memory log handler: the recent audit events of each pool, for the status page."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from typing import Any

from ..errors import redact
from ..logs import AUDIT_LOGGER

__all__ = ["AUDIT_LOGGER", "RecentEvents"]

#: attributes every LogRecord has; anything else on a record came in through ``extra=``
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
#: shown in columns of their own, not among the other fields
_SHOWN = ("pool", "event")
_MAX_TEXT = 500
_MAX_FIELDS = 20


def _text(value: Any) -> str:
    text = redact(str(value))
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "..."


def _field(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _text(value)


class RecentEvents(logging.Handler):
    """Keeps the last ``capacity`` records of each pool (by the record's ``pool`` field,
    as the audit logger sets it) and of records without one; nothing is written anywhere.

    Memory is bounded: ``capacity`` entries for each of at most ``max_pools``
    pool names (the least recently logged name is forgotten first). Entries are
    plain dicts, their text redacted (no passwords), ready for JSON.
    """

    def __init__(self, capacity: int = 20, *, max_pools: int = 64, level: int = logging.NOTSET) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity!r}")
        super().__init__(level)
        self.capacity = capacity
        self.max_pools = max_pools
        self._by_pool: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()
        self._shared: deque[dict[str, Any]] = deque(maxlen=capacity)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = self._entry(record)
        except Exception:
            self.handleError(record)
            return
        pool = getattr(record, "pool", None)
        if pool is None:
            self._shared.append(entry)
            return
        key = str(pool)
        ring = self._by_pool.get(key)
        if ring is None:
            ring = self._by_pool[key] = deque(maxlen=self.capacity)
            while len(self._by_pool) > self.max_pools:
                self._by_pool.popitem(last=False)
        else:
            self._by_pool.move_to_end(key)
        ring.append(entry)

    def recent(self, *names: str) -> list[dict[str, Any]]:
        """The last ``capacity`` entries for any of ``names`` and those without a pool, oldest first."""
        with self._guard():
            entries = list(self._shared)
            for name in dict.fromkeys(names):
                ring = self._by_pool.get(name)
                if ring is not None:
                    entries.extend(ring)
        entries.sort(key=lambda e: e["time"])
        return entries[-self.capacity :]

    def _guard(self) -> threading.RLock:
        lock = self.lock  # created by logging.Handler.__init__ (createLock)
        assert lock is not None
        return lock

    def _entry(self, record: logging.LogRecord) -> dict[str, Any]:
        extra = {k: v for k, v in record.__dict__.items() if k not in _STANDARD and k not in _SHOWN}
        fields = {k: _field(v) for k, v in list(extra.items())[:_MAX_FIELDS]}
        event = getattr(record, "event", None)
        return {
            "time": record.created,
            "level": record.levelname,
            "event": _text(event) if event is not None else None,
            "pool": _text(pool) if (pool := getattr(record, "pool", None)) is not None else None,
            "message": _text(record.getMessage()),
            "fields": fields,
        }

"""JSON Schemas (draft 2020-12) of ``/health`` and ``/status.json``, as documented in
docs/observability.md; the tests validate every response against them."""

from __future__ import annotations

from typing import Any

from ..health import PROBE_FAILED, PROBE_OK, PROBE_SKIPPED, PROBE_TIMEOUT, STATUS_RANK

_STATUS: dict[str, Any] = {"enum": list(STATUS_RANK)}
_SECONDS: dict[str, Any] = {"type": "number", "minimum": 0}
_COUNT: dict[str, Any] = {"type": "integer", "minimum": 0}

PROBE_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "required": ["outcome", "method", "seconds", "detail"],
    "properties": {
        "outcome": {"enum": [PROBE_OK, PROBE_FAILED, PROBE_TIMEOUT, PROBE_SKIPPED]},
        "method": {"enum": ["ping", "connect", "none"]},
        "seconds": _SECONDS,
        "detail": {"type": "string"},
    },
    "additionalProperties": False,
}

POOL_HEALTH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "name",
        "status",
        "reasons",
        "pool",
        "pool_class",
        "pool_kind",
        "breaker_state",
        "probe",
        "saturation",
        "suspected_leaks",
        "stats",
        "checked_at",
        "age",
    ],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "status": _STATUS,
        "reasons": {"type": "array", "items": {"type": "string"}},
        "pool": {"type": ["string", "null"]},
        "pool_class": {"type": "string"},
        "pool_kind": {"type": "string"},
        "breaker_state": {"enum": ["closed", "open", "half_open", None]},
        "probe": PROBE_SCHEMA,
        "saturation": {
            "type": ["object", "null"],
            "required": ["in_use", "max_size", "waiting", "wait_p99", "acquire_timeout"],
            "properties": {
                "in_use": _COUNT,
                "max_size": _COUNT,
                "waiting": _COUNT,
                "wait_p99": _SECONDS,
                "acquire_timeout": {"type": ["number", "null"], "minimum": 0},
            },
        },
        "suspected_leaks": _COUNT,
        "stats": {
            "type": "object",
            "properties": {
                "pool_size": _COUNT,
                "pool_idle": _COUNT,
                "pool_in_use": _COUNT,
                "requests_waiting": _COUNT,
            },
        },
        "checked_at": {"type": "number"},
        "age": _SECONDS,
    },
}

HEALTH_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "smartpool /health",
    "type": "object",
    "required": ["status", "checked_at", "pools"],
    "properties": {
        "status": _STATUS,
        "checked_at": {"type": "number"},
        "pools": {"type": "object", "minProperties": 1, "additionalProperties": POOL_HEALTH_SCHEMA},
    },
    "additionalProperties": False,
}

_SAMPLE: dict[str, Any] = {
    "type": "array",
    "prefixItems": [{"type": "number"}, _COUNT, _COUNT, _COUNT, _COUNT],
    "minItems": 5,
    "maxItems": 5,
}

STATUS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "smartpool /status.json",
    "type": "object",
    "required": ["generated_at", "refresh", "status", "pools"],
    "properties": {
        "generated_at": {"type": "number"},
        "refresh": {"type": "number", "exclusiveMinimum": 0},
        "status": _STATUS,
        "pools": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "name", "target", "health", "stats", "samples", "leaks", "events", "top_holders"
                ],
                "properties": {
                    "name": {"type": "string"},
                    "target": {"type": ["string", "null"]},
                    "health": POOL_HEALTH_SCHEMA,
                    "stats": {"type": "object"},
                    "samples": {"type": "array", "items": _SAMPLE},
                    "leaks": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["connection_id", "thread", "held_for", "stack", "last_statement"],
                        },
                    },
                    "events": {
                        "type": "array",
                        "items": {"type": "object", "required": ["time", "level", "event", "message"]},
                    },
                    "top_holders": {},
                },
            },
        },
    },
}

"""The JSON Schema of a workflow spec (served as-is in the OpenAPI description), and the
validator the platform checks its own documents with: whole numbers for integers. What a
spec means once valid is engine.specs."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator, validators

# "$(?!\n)": Python's "$" also matches before a newline that ends the text.
_NAME = r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$(?!\n)"
_RETRY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100},
        "backoff_s": {"type": "number", "minimum": 0},
        "max_backoff_s": {"type": "number", "minimum": 0},
    },
}
_TIMEOUT = {"type": "number", "exclusiveMinimum": 0}
# Versions are a 32-bit INTEGER column on PostgreSQL.
MAX_VERSION = 2**31 - 1
VERSION = {"type": "integer", "minimum": 1, "maximum": MAX_VERSION}
CONCURRENCY = {"type": "integer", "minimum": 1, "maximum": MAX_VERSION}
_QUEUE = {"type": "string", "pattern": r"^[A-Za-z0-9_.-]{1,100}$(?!\n)"}
SPEC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "version", "steps"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": _NAME},
        "version": VERSION,
        "description": {"type": "string"},
        "params": {"type": "object"},
        # The most runs of the workflow (every version) active at once (engine.concurrency).
        "concurrency": CONCURRENCY,
        "defaults": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"retry": _RETRY, "timeout_s": _TIMEOUT, "queue": _QUEUE},
        },
        "steps": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "action"],
                "additionalProperties": False,
                "properties": {
                    "id": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_-]{0,99}$(?!\n)"},
                    "action": {"type": "string", "minLength": 1},
                    "needs": {"type": "array", "items": {"type": "string"}},
                    "when": {"type": "string", "minLength": 1},
                    "with": {},
                    "retry": _RETRY,
                    "timeout_s": _TIMEOUT,
                    "queue": _QUEUE,
                    "description": {"type": "string"},
                },
            },
        },
    },
}


def _whole_number(_checker: Any, instance: Any) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


# JSON Schema counts 1.0 as an integer. The platform's own fields (versions, priorities,
# attempts, counts) are kept and echoed as sent, so they take whole numbers as written: a
# version 1.0 was served as 1.0, and its Location (?version=1.0) was then refused.
PlatformValidator = validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _whole_number),
)
SPEC_VALIDATOR = PlatformValidator(SPEC_SCHEMA)

"""Request bodies and query strings, checked with JSON Schema; 422 names the field."""

from __future__ import annotations

from typing import Any

from flask import request
from jsonschema import Draft202012Validator

from engine.errors import InvalidInput

SUBMIT_RUN = {
    "type": "object",
    "required": ["workflow"],
    "additionalProperties": False,
    "properties": {
        "workflow": {"type": "string", "minLength": 1, "maxLength": 100},
        "version": {"type": "integer", "minimum": 1},
        "params": {"type": "object"},
        "priority": {"type": "integer", "minimum": 0, "maximum": 9},
    },
}
PLAN = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"params": {"type": "object"}, "version": {"type": "integer", "minimum": 1}},
}


def check(schema: dict[str, Any], body: Any, what: str = "body") -> dict[str, Any]:
    """Validate `body` against `schema`; every problem is listed with its field."""
    errors = [
        {
            "field": ".".join(map(str, error.absolute_path))
            or (error.path and str(error.path[-1]))
            or what,
            "message": error.message,
        }
        for error in Draft202012Validator(schema).iter_errors(body)
    ]
    if errors:
        raise InvalidInput(f"the request {what} is invalid", errors=errors)
    return body


def json_body(schema: dict[str, Any], *, default: Any = None) -> dict[str, Any]:
    """The request's JSON body, validated; malformed JSON is a 400 (BadRequest)."""
    body = request.get_json(force=True) if request.get_data() else default
    if body is None:
        raise InvalidInput(
            "a JSON object body is required",
            errors=[{"field": "body", "message": "expected a JSON object"}],
        )
    return check(schema, body)


def query_int(name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise InvalidInput(
            f"{name} must be an integer", errors=[{"field": name, "message": "not an integer"}]
        ) from exc
    if value < minimum:
        raise InvalidInput(
            f"{name} must be at least {minimum}",
            errors=[{"field": name, "message": f"minimum is {minimum}"}],
        )
    return min(value, maximum)

"""Request bodies and query strings, checked with JSON Schema; 422 names the field."""

from __future__ import annotations

from typing import Any

from flask import request
from jsonschema import Draft202012Validator
from werkzeug.exceptions import BadRequest

from engine import nesting
from engine.errors import InvalidInput
from engine.specs import VERSION, error_path

SUBMIT_RUN = {
    "type": "object",
    "required": ["workflow"],
    "additionalProperties": False,
    "properties": {
        "workflow": {"type": "string", "minLength": 1, "maxLength": 100},
        "version": VERSION,
        "params": {"type": "object"},
        "priority": {"type": "integer", "minimum": 0, "maximum": 9},
    },
}
PLAN = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"params": {"type": "object"}, "version": VERSION},
}
# Each schema's validator (see _validator).
_VALIDATORS: dict[int, tuple[dict[str, Any], Draft202012Validator]] = {}


def check(schema: dict[str, Any], body: Any, what: str = "body") -> dict[str, Any]:
    """Validate `body` against `schema`; every problem is listed with its field."""
    errors = [
        {
            "field": ".".join(map(str, error_path(error))) or what,
            "message": error.message,
        }
        for error in _validator(schema).iter_errors(body)
    ]
    if errors:
        raise InvalidInput(f"the request {what} is invalid", errors=errors)
    return body


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    """The schema's validator, made once: the schemas are module constants, each kept here
    beside its validator (so its id is never another's)."""
    kept = _VALIDATORS.get(id(schema))
    if kept is None or kept[0] is not schema:
        kept = _VALIDATORS[id(schema)] = (schema, Draft202012Validator(schema))
    return kept[1]


def parse_json(default: Any = None) -> Any:
    """The request body as JSON, whatever its content type; malformed JSON is a 400, JSON
    nested too deep (engine.nesting) a 422 naming the member."""
    data = request.get_data()
    if not data:
        return default
    try:
        return nesting.loads(data)
    except ValueError as exc:
        raise BadRequest("the request body is not valid JSON") from exc


def json_body(schema: dict[str, Any], *, default: Any = None) -> dict[str, Any]:
    """The request's JSON body, validated; malformed JSON is a 400 (BadRequest)."""
    body = parse_json(default)
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

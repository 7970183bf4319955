"""Request bodies and query strings, checked with JSON Schema, engine.payloads' limits and
for NUL characters; 422 names the field."""

from __future__ import annotations

from typing import Any

from flask import request
from jsonschema import Draft202012Validator
from werkzeug.exceptions import BadRequest

from engine import payloads
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
NUL = "\x00"
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
    nested too deep (engine.payloads) or text with a NUL character a 422 naming the member."""
    data = request.get_data()
    if not data:
        return default
    try:
        body = payloads.loads(data)
    except ValueError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from exc
    if b"\x00" not in data and b"\\u0000" not in data:
        return body  # no NUL character can be in it: JSON writes one as \u0000 or as is
    members = body.items() if isinstance(body, dict) else [("body", body)]
    for name, member in members:
        if _holds_nul(name) or _holds_nul(member):
            raise _nul_refused(str(name))
    return body


def refuse_nul_in_url() -> None:
    """(before each request) PostgreSQL's text cannot hold a NUL character, so a path or a
    query string with one is refused, on SQLite alike, before it reaches a statement."""
    if NUL in request.path:
        raise _nul_refused("path")
    for name, value in request.args.items(multi=True):
        if NUL in name or NUL in value:
            raise _nul_refused(name)


def _holds_nul(value: Any) -> bool:
    """Whether a JSON value has a NUL character in any of its strings or keys (a JSON
    object's keys are strings)."""
    return any(
        NUL in item if isinstance(item, str) else isinstance(item, dict) and NUL in "".join(item)
        for item in payloads.values_within(value)
    )


def _nul_refused(field: str) -> InvalidInput:
    return InvalidInput(
        f"{field} contains a NUL character (U+0000), which the API does not accept",
        errors=[{"field": field, "message": "holds a NUL character"}],
    )


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

"""Request bodies and query strings, checked with JSON Schema, engine.payloads' limits and
for text no column can store; 422 names the field."""

from __future__ import annotations

import re
from typing import Any

from flask import request
from jsonschema import Draft202012Validator, ValidationError
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

from engine import payloads
from engine.errors import InvalidInput
from engine.models import WEBHOOK_URL_MAX
from engine.spec_schema import VERSION, PlatformValidator
from engine.step_checks import error_path

SUBMIT_RUN = {
    "type": "object",
    "required": ["workflow"],
    "additionalProperties": False,
    "properties": {
        "workflow": {"type": "string", "minLength": 1, "maxLength": 100},
        "version": VERSION,
        "params": {"type": "object"},
        "priority": {"type": "integer", "minimum": 0, "maximum": 9},
        # Checked further by engine.webhooks.check_url (scheme, host, outbound policy).
        "webhook_url": {"type": "string", "minLength": 1, "maxLength": WEBHOOK_URL_MAX},
        # An RFC 3339 time with its offset; checked further by engine.delayed.parse (an
        # offset, a real time) and engine.runs.submit (at most RUN_DELAY_MAX_S ahead).
        "not_before": {"type": "string", "format": "date-time", "minLength": 1, "maxLength": 64},
    },
}
CREATE_SCHEDULE: dict[str, Any] = {
    "type": "object",
    "required": ["name", "workflow", "cron"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 100},
        "workflow": {"type": "string", "minLength": 1, "maxLength": 100},
        "version": VERSION,
        "cron": {"type": "string", "minLength": 1, "maxLength": 200},
        "timezone": {"type": "string", "minLength": 1, "maxLength": 64},
        "params": {"type": "object"},
        "priority": {"type": "integer", "minimum": 0, "maximum": 9},
        "enabled": {"type": "boolean"},
    },
}
# A JSON merge patch (RFC 7396) of a schedule: the fields given change; a null version
# means the latest. engine.schedules.edit.FIELDS names the same fields.
PATCH_SCHEDULE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": CREATE_SCHEDULE["properties"]["name"],
        "version": {**VERSION, "type": ["integer", "null"]},
        "cron": CREATE_SCHEDULE["properties"]["cron"],
        "timezone": CREATE_SCHEDULE["properties"]["timezone"],
        "params": {"type": "object"},
        "priority": CREATE_SCHEDULE["properties"]["priority"],
    },
}
PAUSE_WORKFLOW = {
    "type": "object",
    "required": ["reason"],
    "additionalProperties": False,
    "properties": {
        "reason": {"type": "string", "minLength": 1, "maxLength": 500},
        "cancel_running": {"type": "boolean"},
    },
}
PLAN = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"params": {"type": "object"}, "version": VERSION},
}
# A body whose bytes hold none of these holds no text engine.payloads.unstorable refuses:
# JSON writes a NUL as is or as \u0000, and a lone surrogate as a \uD800-\uDFFF escape or
# as the three bytes UTF-8 would give it (which Python's parser lets through).
_MAYBE_UNSTORABLE = re.compile(rb"\x00|\xed[\xa0-\xbf]|\\u(?:0000|[dD][89a-fA-F])")
JSON_TYPE = "application/json"
# What a body may be declared as besides application/json (parameters such as charset aside).
JSON_SUFFIX = "+json"
# Each schema's validator (see _validator).
_VALIDATORS: dict[int, tuple[dict[str, Any], Draft202012Validator]] = {}


def check(schema: dict[str, Any], body: Any, what: str = "body") -> dict[str, Any]:
    """Validate `body` against `schema`; every problem is listed with its field (each
    unexpected member of an object on its own)."""
    errors = [
        {"field": ".".join(map(str, path)) or what, "message": message}
        for error in _validator(schema).iter_errors(body)
        for path, message in _located(error)
    ]
    if errors:
        raise InvalidInput(f"the request {what} is invalid", errors=errors)
    return body


def _located(error: ValidationError) -> list[tuple[list[str | int], str]]:
    """(path, message) of each problem one schema error stands for."""
    simple = error.validator_value is False and "patternProperties" not in error.schema
    if error.validator == "additionalProperties" and simple and isinstance(error.instance, dict):
        known = error.schema.get("properties", {})
        unexpected = sorted(str(key) for key in error.instance if key not in known)
        if unexpected:
            where = list(error.absolute_path)
            return [([*where, key], "not a field this request takes") for key in unexpected]
    return [(error_path(error), error.message)]


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    """The schema's validator, made once: the schemas are module constants, each kept here
    beside its validator (so its id is never another's)."""
    kept = _VALIDATORS.get(id(schema))
    if kept is None or kept[0] is not schema:
        kept = _VALIDATORS[id(schema)] = (schema, PlatformValidator(schema))
    return kept[1]


def body_bytes() -> bytes:
    """The request body. Werkzeug stops reading a body sent without a Content-Length
    (chunked) at MAX_CONTENT_LENGTH without a word; reading one byte more raises its 413.
    So a chunked body of exactly the limit is refused too: nothing tells it from a longer one."""
    data = request.get_data()
    limit = request.max_content_length
    if limit is not None and len(data) >= limit:
        request.stream.read(1)
    return data


class UnacceptedType(UnsupportedMediaType):
    """415: the body is declared as a type this endpoint does not read; says which it reads."""

    def __init__(self, declared: str, also: tuple[str, ...]) -> None:
        accepted = ", ".join((JSON_TYPE, f"*/*{JSON_SUFFIX}", *also))
        super().__init__(f"a body of type {declared} is not accepted; send one of: {accepted}")
        self.errors = [{"field": "Content-Type", "message": f"one of: {accepted}"}]


def media_type(also: tuple[str, ...] = ()) -> str:
    """The body's declared media type (lower case, without parameters), JSON when none is
    declared: a client that names no type sends what this API reads. A type that is not
    application/json, nor another +json type, nor one of `also`, is a 415 (UnacceptedType)."""
    declared = request.content_type
    if not declared or declared == JSON_TYPE:  # most requests: no parsing
        return JSON_TYPE
    mimetype = declared.partition(";")[0].strip().lower()
    if mimetype == JSON_TYPE or mimetype.endswith(JSON_SUFFIX) or mimetype in also:
        return mimetype
    raise UnacceptedType(mimetype or declared, also)


def parse_json(default: Any = None) -> Any:
    """The request body as JSON; a body declared as another type is a 415 (media_type),
    malformed JSON a 400, JSON nested too deep (engine.payloads) or text no column can
    store a 422 naming the member."""
    media_type()
    data = body_bytes()
    if not data:
        return default
    try:
        body = payloads.loads(data)
    except ValueError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from exc
    if _MAYBE_UNSTORABLE.search(data) is None:
        return body
    members = body.items() if isinstance(body, dict) else [("body", body)]
    for name, member in members:
        problem = payloads.unstorable(str(name)) or payloads.unstorable_within(member)
        if problem:
            raise unstorable_refused(str(name), problem)
    return body


def refuse_unstorable_in_url() -> None:
    """(before each request) A path or a query string holding text no column can store
    (engine.payloads.unstorable) is refused before it reaches a statement."""
    problem = payloads.unstorable(request.path)
    if problem:
        raise unstorable_refused("path", problem)
    for name, value in request.args.items(multi=True):
        problem = payloads.unstorable(name + value)
        if problem:
            raise unstorable_refused(name, problem)


def unstorable_refused(field: str, problem: str) -> InvalidInput:
    """The 422 for text engine.payloads.unstorable refuses, naming `field`."""
    return InvalidInput(
        f"{field} {problem}, which the API does not accept",
        errors=[{"field": field, "message": problem}],
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


def idempotency_key(maximum: int) -> str | None:
    """The request's Idempotency-Key header, if any: 1 to `maximum` characters, else a 422
    naming it."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 0 < len(key) <= maximum:
        raise InvalidInput(
            f"Idempotency-Key must be 1 to {maximum} characters",
            errors=[{"field": "Idempotency-Key", "message": "bad length"}],
        )
    return key

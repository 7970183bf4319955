"""How deep the JSON values callers send may nest: run params, workflow specs, request
bodies, replacement inputs.

Python's parsers and encoders recurse once per level, and the stack left to them differs
by process: a value the API could parse might fail in the worker that plans its run. So
every value is refused at the door beyond MAX_DEPTH levels of objects and arrays, a limit
far below what any part of the platform can handle and far above what business data needs.
"""

from __future__ import annotations

import json
from typing import Any

from engine.errors import InvalidInput

MAX_DEPTH = 64
TOO_DEEP = f"nested more than {MAX_DEPTH} levels deep"


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether `value` holds objects or arrays more than `limit` levels deep (no recursion)."""
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def check(value: Any, field: str = "", error: type[InvalidInput] = InvalidInput) -> None:
    """Refuse `value`, the value of `field` ("params"), when it nests more than MAX_DEPTH
    levels. With no field, `value` is a whole request body or spec: each of its members is
    checked as the field of its key, so the error names it as the body's other errors do."""
    if field:
        if too_deep(value):
            raise _refusal(field, error)
    elif isinstance(value, dict):
        for key, member in value.items():
            check(member, str(key), error)
    elif too_deep(value):
        raise _refusal("body", error)


def loads(text: str | bytes, field: str = "") -> Any:
    """json.loads, refusing a value nested too deep (`field` as for check), also one too deep
    for the parser itself; text that is not JSON raises ValueError, as json.loads does."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise too_deep_to_parse(field) from None
    check(value, field)
    return value


def too_deep_to_parse(field: str = "") -> InvalidInput:
    """The error for text whose parser ran out of stack: it nests far beyond MAX_DEPTH."""
    return _refusal(field or "body")


def _refusal(field: str, error: type[InvalidInput] = InvalidInput) -> InvalidInput:
    return error(f"{field} is {TOO_DEEP}", errors=[{"field": field, "message": TOO_DEEP}])

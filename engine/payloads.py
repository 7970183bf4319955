"""The shape of the JSON values callers send (run params, workflow specs, request bodies,
replacement inputs): how deep they may nest, and how many values they may hold.

Python's parsers and encoders recurse once per level, and the stack left to them differs
by process: a value the API could parse might fail in the worker that plans its run. So a
value nested more than MAX_DEPTH levels of objects and arrays is refused at the door, a
limit far below what any part of the platform can handle and far above what business data
needs. A YAML spec can also be small as text and huge as data (aliases to aliases to
lists): a value holding more than MAX_VALUES values is refused too. Both are judged by one
walk that does not recurse and stops at the first excess, so a value of any depth or size
is judged quickly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from engine.errors import InvalidInput

MAX_DEPTH = 64
# Far more than a 1 MiB JSON body can hold; only aliases in YAML come near it.
MAX_VALUES = 1_000_000
TOO_DEEP = f"nested more than {MAX_DEPTH} levels deep"
TOO_LARGE = f"more than {MAX_VALUES:,} values"


def excess(value: Any) -> str | None:
    """What exceeds the limits in `value` (TOO_DEEP or TOO_LARGE), or None."""
    return _walk([(value, 0, "")])[0]


def check(value: Any, field: str = "", error: type[InvalidInput] = InvalidInput) -> None:
    """Refuse `value`, the value of `field` ("params"), when it exceeds the limits. With no
    field, `value` is a whole request body or spec: its own level is not counted, and the
    error names the member at fault by its key, as the body's other errors do."""
    if field or not isinstance(value, dict):
        start = [(value, 0, field or "body")]
    else:
        start = [(member, 0, str(key)) for key, member in value.items()]
    problem, where = _walk(start)
    if problem:
        raise _refusal(where, problem, error)


def values_within(value: Any) -> Iterator[Any]:
    """`value` and every value inside it (not the keys), depth first, without recursion."""
    pending = [value]
    while pending:
        item = pending.pop()
        yield item
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def _walk(pending: list[tuple[Any, int, str]]) -> tuple[str | None, str]:
    """The first excess among these (value, depth, member) and the member it is in. One
    budget of MAX_VALUES for them all; no recursion."""
    seen = 0
    while pending:
        item, depth, member = pending.pop()
        seen += 1
        if seen > MAX_VALUES:
            return TOO_LARGE, member
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= MAX_DEPTH:
            return TOO_DEEP, member
        pending.extend((child, depth + 1, member) for child in children)
    return None, ""


def loads(text: str | bytes, field: str = "") -> Any:
    """json.loads, refusing a value beyond the limits (`field` as for check), also one too
    deep for the parser itself; text that is not JSON (NaN and Infinity included) raises
    ValueError, as json.loads does."""
    try:
        value = json.loads(text, parse_constant=_not_json)
    except RecursionError:
        raise too_deep_to_parse(field) from None
    check(value, field)
    return value


def _not_json(name: str) -> Any:
    """Python's parser takes NaN and Infinity; JSON (and PostgreSQL's json type) does not."""
    raise ValueError(f"{name} is not a JSON value")


def too_deep_to_parse(field: str = "") -> InvalidInput:
    """The error for text whose parser ran out of stack: it nests far beyond MAX_DEPTH."""
    return _refusal(field or "body", TOO_DEEP)


def _refusal(field: str, problem: str, error: type[InvalidInput] = InvalidInput) -> InvalidInput:
    return error(f"{field}: {problem}", errors=[{"field": field, "message": problem}])

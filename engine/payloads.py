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
import math
import re
from collections.abc import Iterator
from typing import Any

from engine.errors import InvalidInput

MAX_DEPTH = 64
# Far more than a 1 MiB JSON body can hold; only aliases in YAML come near it.
MAX_VALUES = 1_000_000
TOO_DEEP = f"nested more than {MAX_DEPTH} levels deep"
TOO_LARGE = f"more than {MAX_VALUES:,} values"
# Text no column can store: a NUL character (PostgreSQL's text and jsonb refuse it, so it is
# refused on SQLite alike), and a lone UTF-16 surrogate, which is not a character at all
# (JSON's "\ud800" escape makes one) and which UTF-8, so either driver, cannot encode.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


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


def unstorable(text: str) -> str | None:
    """What makes `text` impossible to store (see _UNSTORABLE), or None."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "holds a NUL character (U+0000)"
    return f"holds a lone surrogate (U+{ord(found.group()):04X}), which is not a character"


def unstorable_within(value: Any) -> str | None:
    """unstorable for the first string or object key within a JSON value that fails it."""
    for item in values_within(value):
        if isinstance(item, str):
            problem = unstorable(item)
        elif isinstance(item, dict):
            problem = unstorable("".join(map(str, item)))
        else:
            continue
        if problem:
            return problem
    return None


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
    ValueError, as json.loads does, and so does a number beyond a float's range."""
    try:
        value = json.loads(text, parse_constant=_not_json, parse_float=_finite)
    except RecursionError:
        raise too_deep_to_parse(field) from None
    check(value, field)
    return value


def _not_json(name: str) -> Any:
    """Python's parser takes NaN and Infinity; JSON (and PostgreSQL's json type) does not."""
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    """A JSON number as a float; 1e400 would be infinity, served back as `Infinity`."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:40]} is beyond the range of a 64-bit float")
    return value


def too_deep_to_parse(field: str = "") -> InvalidInput:
    """The error for text whose parser ran out of stack: it nests far beyond MAX_DEPTH."""
    return _refusal(field or "body", TOO_DEEP)


def _refusal(field: str, problem: str, error: type[InvalidInput] = InvalidInput) -> InvalidInput:
    return error(f"{field}: {problem}", errors=[{"field": field, "message": problem}])

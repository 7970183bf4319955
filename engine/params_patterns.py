"""The validator of a workflow's params schema: JSON Schema draft 2020-12, its two
regular-expression keywords (`pattern`, `patternProperties`) run within a time budget.

They are the workflow author's regular expressions, run on every submitter's params, in
the API and in the worker that plans the run. Python's re backtracks without bound:
`(a|aa)+$` against a crafted string pins a thread for hours. They run on the regex module,
and all the searches of one check of a run's params share PATTERN_BUDGET_S (each thread
its own deadline: `pattern_budget()` around the check)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import regex
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError

PATTERN_BUDGET_S = 0.25
_deadline = threading.local()


@contextmanager
def pattern_budget() -> Iterator[None]:
    """The searches within this block share PATTERN_BUDGET_S."""
    _deadline.at = time.monotonic() + PATTERN_BUDGET_S
    try:
        yield
    finally:
        _deadline.at = None


def _search(pattern: str, text: str) -> bool | str:
    """Whether `pattern` matches in `text`, or why it could not be told (a message)."""
    at = getattr(_deadline, "at", None)
    left = PATTERN_BUDGET_S if at is None else at - time.monotonic()
    try:
        if left <= 0:
            raise TimeoutError
        return regex.search(pattern, text, timeout=left) is not None
    except TimeoutError:
        return f"the params' patterns took longer than {PATTERN_BUDGET_S:g} s to match"
    except regex.error as exc:
        return f"{pattern!r} is not a pattern this platform can run: {exc}"


def _pattern(validator: Any, pattern: str, instance: Any, _schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string"):
        matched = _search(pattern, instance)
        if isinstance(matched, str):
            yield ValidationError(matched)
        elif not matched:
            yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, _schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            matched = _search(pattern, key)
            if isinstance(matched, str):
                yield ValidationError(matched, path=[key])
            elif matched:
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


# Draft 2020-12, its two regular-expression keywords run within PATTERN_BUDGET_S.
ParamsValidator = validators.extend(
    Draft202012Validator, {"pattern": _pattern, "patternProperties": _pattern_properties}
)

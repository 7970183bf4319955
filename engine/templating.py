"""Step inputs rendered from params and upstream outputs in Jinja2's sandbox (never eval)."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import InvalidInput

_ENVIRONMENT = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
_WHOLE_EXPRESSION = re.compile(r"^\{\{(?P<expr>(?:(?!\}\}).)*)\}\}$", re.DOTALL)


@lru_cache(maxsize=4096)
def _compile_expression(source: str) -> Any:
    return _ENVIRONMENT.compile_expression(source, undefined_to_none=False)


@lru_cache(maxsize=4096)
def _compile_template(source: str) -> Any:
    return _ENVIRONMENT.from_string(source)


def is_template(value: str) -> bool:
    return "{{" in value or "{%" in value


def evaluate(expression: str, context: dict[str, Any]) -> Any:
    """Evaluate one sandboxed expression to a native value."""
    try:
        value = _compile_expression(expression)(**context)
        if isinstance(value, Undefined):
            str(value)  # a lone missing or unsafe name raises only when used: use it here
    except TemplateError as exc:
        raise InvalidInput(f"expression {expression!r}: {exc}") from exc
    return value


def render(value: Any, context: dict[str, Any]) -> Any:
    """Render every template string inside `value`; a lone `{{ expr }}` keeps its type."""
    if isinstance(value, str):
        if not is_template(value):
            return value
        whole = _WHOLE_EXPRESSION.match(value.strip())
        if whole:
            return evaluate(whole.group("expr"), context)
        try:
            return _compile_template(value).render(**context)
        except TemplateError as exc:
            raise InvalidInput(f"template {value!r}: {exc}") from exc
    if isinstance(value, dict):
        return {key: render(item, context) for key, item in value.items()}
    if isinstance(value, list):
        return [render(item, context) for item in value]
    return value


def check_syntax(value: Any) -> list[str]:
    """Syntax errors in the templates inside `value` (empty when all compile)."""
    problems: list[str] = []
    if isinstance(value, str) and is_template(value):
        try:
            whole = _WHOLE_EXPRESSION.match(value.strip())
            if whole:
                _compile_expression(whole.group("expr"))
            else:
                _compile_template(value)
        except TemplateError as exc:
            problems.append(f"{value!r}: {exc}")
    elif isinstance(value, dict):
        for item in value.values():
            problems.extend(check_syntax(item))
    elif isinstance(value, list):
        for item in value:
            problems.extend(check_syntax(item))
    return problems

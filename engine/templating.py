"""Step inputs rendered from params and upstream outputs in Jinja2's sandbox (never eval)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Any, cast

from jinja2 import StrictUndefined, TemplateError, Undefined, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import InvalidInput

_ENVIRONMENT = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
_WHOLE_EXPRESSION = re.compile(r"^\{\{(?P<expr>(?:(?!\}\}).)*)\}\}$", re.DOTALL)
# What a lone expression may yield as it is: what a JSON column stores.
_SCALARS = (str, int, float, bool, type(None))
# What a template can raise on its own (a missing name, unsafe access, 1 / 0, "a" + 1, a
# range too big): not Exception, so a step's soft time limit is not taken for one.
_FAILURES = (
    TemplateError,
    InvalidInput,
    ArithmeticError,
    LookupError,
    TypeError,
    ValueError,
    AttributeError,
    NameError,
    RuntimeError,
)


@lru_cache(maxsize=4096)
def _compile_expression(source: str) -> Any:
    return _ENVIRONMENT.compile_expression(source, undefined_to_none=False)


@lru_cache(maxsize=4096)
def _compile_template(source: str) -> Any:
    return _ENVIRONMENT.from_string(source)


def is_template(value: str) -> bool:
    return "{{" in value or "{%" in value


def evaluate(expression: str, context: dict[str, Any]) -> Any:
    """Evaluate one sandboxed expression to a native JSON value. Whatever goes wrong (a
    missing name, unsafe access, 1 / 0, a value JSON cannot hold) is InvalidInput: the same
    inputs would fail the same way again."""
    try:
        value = _compile_expression(expression)(**context)
        if isinstance(value, Undefined):
            str(value)  # a lone missing or unsafe name raises only when used: use it here
        if not isinstance(value, _SCALARS) or isinstance(value, float):
            problem = _not_json(value)
            if problem:
                raise InvalidInput(f"yields {problem}")
    except _FAILURES as exc:
        raise InvalidInput(f"expression {expression!r}: {exc}") from exc
    return value


def _not_json(value: Any) -> str | None:
    """What in `value` a JSON column cannot store (a function, an undefined name, NaN), or
    None. Walked only when a lone expression yields more than a scalar."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return f"{item!r}, which JSON cannot hold"
        elif isinstance(item, Undefined):
            str(item)  # raises, naming what is undefined
        elif isinstance(item, dict):
            if not all(isinstance(key, _SCALARS) for key in item):
                return "a mapping whose keys JSON cannot hold"
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
        elif not isinstance(item, _SCALARS):
            return f"a {type(item).__name__}, which JSON cannot hold"
    return None


def render(value: Any, context: dict[str, Any], field: str = "with") -> Any:
    """Render every template string inside `value`; a lone `{{ expr }}` keeps its type. A
    failure is InvalidInput naming where in `value` it is (`with.url`, `with.ids[0]`)."""
    try:
        return _render(value, context)
    except _FAILURES as exc:
        where, problem = _first_failure(value, context, field)
        raise InvalidInput(
            f"{where}: {problem or exc}", errors=[{"field": where, "message": problem or str(exc)}]
        ) from exc


def _render(value: Any, context: dict[str, Any]) -> Any:
    if isinstance(value, str):
        if not is_template(value):
            return value
        whole = _WHOLE_EXPRESSION.match(value.strip())
        if whole:
            return evaluate(whole.group("expr"), context)
        try:
            return _compile_template(value).render(**context)
        except _FAILURES as exc:
            raise InvalidInput(f"template {value!r}: {exc}") from exc
    if isinstance(value, dict):
        return {key: _render(item, context) for key, item in value.items()}
    if isinstance(value, list):
        return [_render(item, context) for item in value]
    return value


def _first_failure(value: Any, context: dict[str, Any], field: str) -> tuple[str, str | None]:
    """Where rendering `value` fails, and why (rendered again leaf by leaf: the sandbox
    changes nothing, so this only runs once a render has failed)."""
    for where, leaf in template_leaves(value, field):
        try:
            _render(leaf, context)
        except _FAILURES as exc:
            return where, str(exc)
    return field, None


def template_leaves(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """Each template string inside `value`, with its path (`with.a.b[0]`)."""
    if isinstance(value, str):
        if is_template(value):
            yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from template_leaves(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from template_leaves(item, f"{where}[{index}]")


def template_paths(value: Any) -> list[tuple[str | int, ...]]:
    """The path (keys and indexes) of every template string inside `value`."""
    found: list[tuple[str | int, ...]] = []
    pending: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while pending:
        item, path = pending.pop()
        if isinstance(item, str) and is_template(item):
            found.append(path)
        elif isinstance(item, dict):
            pending.extend((member, (*path, key)) for key, member in item.items())
        elif isinstance(item, list):
            pending.extend((member, (*path, index)) for index, member in enumerate(item))
    return found


@lru_cache(maxsize=4096)
def _parse(source: str, expression: bool) -> nodes.Template:
    if expression:
        source = f"{{{{ {source} }}}}"
    return _ENVIRONMENT.parse(source)


def check(value: Any, field: str = "with") -> tuple[list[tuple[str, str]], set[str]]:
    """Check the templates inside `value` before anything runs: the syntax errors, each
    with where it is, and the ids of the steps they read (`steps.x`, `steps['x']`)."""
    problems: list[tuple[str, str]] = []
    steps: set[str] = set()
    for where, template in template_leaves(value, field):
        whole = _WHOLE_EXPRESSION.match(template.strip())
        source = whole.group("expr") if whole else template
        problem = _check_source(source, bool(whole), steps)
        if problem:
            problems.append((where, f"{template!r}: {problem}"))
    return problems, steps


def check_expression(source: str, steps: set[str]) -> str | None:
    """The syntax error of one sandboxed expression (None when it compiles); the ids of the
    steps it reads are added to `steps`."""
    return _check_source(source, True, steps)


def _check_source(source: str, expression: bool, steps: set[str]) -> str | None:
    try:
        if expression:
            _compile_expression(source)
        else:
            _compile_template(source)
        tree = _parse(source, expression)
    except TemplateError as exc:
        return str(exc)
    for node in _lookups(tree):
        base = node.node
        if isinstance(base, nodes.Name) and base.name == "steps":
            if isinstance(node, nodes.Getattr):
                steps.add(node.attr)
            elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                steps.add(node.arg.value)
    return None


def secrets_read(
    value: Any, field: str = "with"
) -> tuple[dict[str, frozenset[str]], list[tuple[str, str]]]:
    """Where inside `value` templates read secrets, with the names each reads (`secrets.x`,
    `secrets['x']`); and each template that reads `secrets` otherwise (as a whole, by a
    computed key), with where it is: the names a step reads must be known before it runs.
    Templates that do not compile are left to `check`."""
    read: dict[str, frozenset[str]] = {}
    problems: list[tuple[str, str]] = []
    for where, template in template_leaves(value, field):
        whole = _WHOLE_EXPRESSION.match(template.strip())
        try:
            found, dynamic = _secrets_in(whole.group("expr") if whole else template, bool(whole))
        except TemplateError:
            continue
        if found or dynamic:
            read[where] = frozenset(found)
        if dynamic:
            problems.append(
                (
                    where,
                    f"{template!r} reads secrets other than by name: write secrets.name "
                    "(or secrets['name'])",
                )
            )
    return read, problems


def expression_secrets(source: str) -> bool:
    """Whether the sandboxed expression `source` reads `secrets` (False if it does not parse)."""
    try:
        found, dynamic = _secrets_in(source, True)
    except TemplateError:
        return False
    return bool(found) or dynamic


def _lookups(tree: nodes.Node) -> Iterator[nodes.Getattr | nodes.Getitem]:
    """Every `a.b` and `a[b]` in a parsed template or expression."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        yield cast(nodes.Getattr | nodes.Getitem, node)


def _secrets_in(source: str, expression: bool) -> tuple[set[str], bool]:
    """The secret names `source` reads by name, and whether it reads `secrets` otherwise."""
    tree = _parse(source, expression)
    names: set[str] = set()
    by_name = 0
    for node in _lookups(tree):
        base = node.node
        if not (isinstance(base, nodes.Name) and base.name == "secrets"):
            continue
        if isinstance(node, nodes.Getattr):
            names.add(node.attr)
            by_name += 1
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            names.add(node.arg.value)
            by_name += 1
    uses = sum(1 for node in tree.find_all(nodes.Name) if node.name == "secrets")
    return names, uses > by_name


def names_read(template: str, expression: bool = False) -> set[str]:
    """The names a template (with `expression`, a bare sandboxed expression) reads from its
    context: neither the sandbox's globals (range, dict...) nor the names it sets itself (a
    loop's, a `set`'s). Empty when it does not parse, which `check` reports."""
    whole = None if expression else _WHOLE_EXPRESSION.match(template.strip())
    source = whole.group("expr") if whole else template
    try:
        return set(meta.find_undeclared_variables(_parse(source, expression or bool(whole))))
    except TemplateError:
        return set()


def check_syntax(value: Any) -> list[str]:
    """Syntax errors in the templates inside `value` (empty when all compile)."""
    return [problem for _, problem in check(value)[0]]

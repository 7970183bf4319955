"""What registering a workflow checks in each step's `with` and `when`, beyond the spec's
schema: the templates and the condition compile, read only names a step's context holds
(engine.run_context) and only the steps the step needs, and the inputs can pass the action's
schema whatever the templates render to. A stored version is checked for their syntax alone
(engine.specs.compile_spec)."""

from __future__ import annotations

from typing import Any

from jsonschema.exceptions import ValidationError

from engine import actions, run_context, secret_store, templating


def _problem(field: str, message: str) -> dict[str, str]:
    return {"field": field, "message": message}


def error_path(error: ValidationError) -> list[str | int]:
    """The path of a JSON Schema error; a missing or unexpected key is named at its end."""
    path: list[str | int] = list(error.absolute_path)
    if error.validator == "required":
        path += [k for k in error.validator_value if f"{k!r} is a required" in error.message][:1]
    elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {})
        path += sorted(k for k in error.instance if k not in known)[:1]
    return path


# Keywords whose errors at an object or array hold whatever its templates render to: they
# judge its keys or its length, which templates inside it do not change.
_SHAPE_KEYWORDS = frozenset(
    {
        "type",
        "required",
        "additionalProperties",
        "minProperties",
        "maxProperties",
        "dependentRequired",
        "propertyNames",
        "minItems",
        "maxItems",
    }
)


def input_errors(
    action: actions.Action, inputs: Any, step_id: str, where: str
) -> list[dict[str, str]]:
    """What the action's input schema refuses in a step's `with` whatever its templates
    render to: a constant value, a missing required key. What depends on a template is
    left to the run (a step without `with` gets null)."""
    if action.validator is None:
        return []
    templates = templating.template_paths(inputs)
    found = []
    for error in action.validator.iter_errors(inputs):
        path = tuple(error.absolute_path)
        rendered = any(t[: len(path)] == path for t in templates)
        if rendered and (error.validator not in _SHAPE_KEYWORDS or path in templates):
            continue
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error_path(error))
        found.append(
            _problem(
                f"{where}.with{field}",
                f"step {step_id!r}: the inputs of action {action.name!r} can never pass its "
                f"schema: {error.message}",
            )
        )
    return found


def syntax_errors(inputs: Any, step_id: str, where: str) -> list[dict[str, str]]:
    """The templates in a step's `with` that do not compile."""
    problems, _ = templating.check(inputs, f"{where}.with")
    return [_problem(field, f"step {step_id!r}: template {problem}") for field, problem in problems]


def template_errors(
    action: actions.Action | None, inputs: Any, step_id: str, needs: tuple[str, ...], where: str
) -> list[dict[str, str]]:
    """Templates (and the action's constant expressions) that do not compile, and those
    that read a step this one does not need: a step sees the outputs of its needs only."""
    found = syntax_errors(inputs, step_id, where)
    _, read = templating.check(inputs, f"{where}.with")
    for name in action.expressions if action is not None and isinstance(inputs, dict) else ():
        source = inputs.get(name)
        if isinstance(source, str) and not templating.is_template(source):
            problem = templating.check_expression(source, read)
            if problem:
                found.append(
                    _problem(
                        f"{where}.with.{name}",
                        f"step {step_id!r}: expression {source!r}: {problem}",
                    )
                )
    for other in sorted(read - set(needs)):
        found.append(
            _problem(
                f"{where}.with",
                f"step {step_id!r} reads steps.{other} but does not need {other!r}: "
                "a step sees the outputs of the steps in its needs only",
            )
        )
    return found + root_errors(action, inputs, step_id, where)


def root_errors(
    action: actions.Action | None, inputs: Any, step_id: str, where: str
) -> list[dict[str, str]]:
    """Templates in a step's `with`, and the action's constant expressions, that read a name
    no step's context holds (a misspelt `parms`, Airflow's `ds`): a template sees params,
    steps, run and secrets; an expression, params, steps, run and the action's inputs."""
    found = []
    for field, template in templating.template_leaves(inputs, f"{where}.with"):
        read = templating.names_read(template)
        found += _unknown(field, step_id, f"template {template!r}", read, run_context.WITH_ROOTS)
    for name in action.expressions if action is not None and isinstance(inputs, dict) else ():
        source = inputs.get(name)
        if isinstance(source, str) and not templating.is_template(source):
            # secrets is refused by secret_errors, with its own reason.
            read = templating.names_read(source, expression=True) - {"secrets"}
            what = f"expression {source!r}"
            found += _unknown(
                f"{where}.with.{name}", step_id, what, read, run_context.EXPRESSION_ROOTS
            )
    return found


def _unknown(
    field: str, step_id: str, what: str, read: set[str], known: frozenset[str]
) -> list[dict[str, str]]:
    unknown = sorted(read - known)
    if not unknown:
        return []
    return [
        _problem(
            field,
            f"step {step_id!r}: {what} reads {', '.join(unknown)}, which no step's context "
            f"holds: it holds {', '.join(sorted(known))}",
        )
    ]


def secret_errors(
    action: actions.Action | None, inputs: Any, step_id: str, where: str
) -> list[dict[str, str]]:
    """Secrets read where their value would be stored: in a step whose action echoes its
    inputs into its output (`echo`, `transform`), or in an action's expression (evaluated
    into the output). And secrets read other than by a valid name."""
    read, problems = templating.secrets_read(inputs, f"{where}.with")
    found = [_problem(where_, f"step {step_id!r}: template {why}") for where_, why in problems]
    for field, names in read.items():
        for name in sorted(n for n in names if not secret_store.NAME.match(n)):
            found.append(
                _problem(
                    field,
                    f"step {step_id!r} reads secret {name!r}: a secret's name is a letter or "
                    "_ then letters, digits or _",
                )
            )
        if action is not None and action.echoes_inputs:
            found.append(
                _problem(
                    field,
                    f"step {step_id!r} reads a secret in the inputs of action {action.name!r}, "
                    "whose output holds them: outputs are stored, secrets never are",
                )
            )
    for name in action.expressions if action is not None and isinstance(inputs, dict) else ():
        source = inputs.get(name)
        if isinstance(source, str) and templating.expression_secrets(source):
            found.append(
                _problem(
                    f"{where}.with.{name}",
                    f"step {step_id!r}: expression {source!r} reads secrets: its value is the "
                    "step's output, which is stored, and secrets never are",
                )
            )
    return found


def when_errors(
    when: str, step_id: str, needs: tuple[str, ...], where: str, registering: bool = True
) -> list[dict[str, str]]:
    """What is wrong with a step's `when` (a sandboxed expression, as `transform`'s): it does
    not compile; and, registering, it reads a step this one does not need, secrets (there
    are none in its context) or a name its context lacks (it holds params, steps and run). A
    stored version is checked for its syntax alone."""
    field = f"{where}.when"
    read: set[str] = set()
    problem = templating.check_expression(when, read)
    if problem and templating.is_template(when):
        problem += "; write the expression bare, without {{ }}"
    found = [_problem(field, f"step {step_id!r}: when {when!r}: {problem}")] if problem else []
    if not registering:
        return found
    for other in sorted(read - set(needs)):
        found.append(
            _problem(
                field,
                f"step {step_id!r}: when reads steps.{other} but the step does not need "
                f"{other!r}: a step sees the outputs of the steps in its needs only",
            )
        )
    if templating.expression_secrets(when):
        found.append(
            _problem(
                field,
                f"step {step_id!r}: when {when!r} reads secrets: a condition sees params, "
                "the run and the outputs of the steps it needs only",
            )
        )
    # secrets is refused above, with its own reason.
    read = templating.names_read(when, expression=True) - {"secrets"}
    return found + _unknown(field, step_id, f"when {when!r}", read, run_context.ROOTS)

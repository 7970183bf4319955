"""What a workflow spec is: parsing (YAML or JSON), validation with errors that name the
field (its JSON Schema is engine.spec_schema), and the compiled form that planning and
execution use. Registering and looking up versions is engine.workflows."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError

from engine import actions, payloads, planner, step_checks, templating
from engine.config import Settings
from engine.errors import InvalidParams, InvalidSpec
from engine.params_patterns import ParamsValidator, pattern_budget
from engine.retry import RetryPolicy
from engine.spec_schema import SPEC_VALIDATOR
from engine.step_checks import error_path


@dataclass(frozen=True)
class StepSpec:
    id: str
    action: str
    needs: tuple[str, ...]
    template: Any
    retry: RetryPolicy
    timeout_s: float
    queue: str
    # The secrets its templates read (engine.secret_store): empty for most steps, which
    # render their inputs once; a step that reads some renders them twice.
    secrets: frozenset[str] = frozenset()
    # The step's condition (a sandboxed expression): falsy when its attempt starts, the step
    # is skipped instead of run (engine.execution). None: it always runs.
    when: str | None = None


@dataclass(frozen=True)
class CompiledWorkflow:
    name: str
    version: int
    params_schema: dict[str, Any]
    steps: dict[str, StepSpec]
    children: dict[str, list[str]]
    # At most this many runs of the workflow (by name, every version) active at once; a run
    # of this version beyond it waits queued, unsent (engine.concurrency). None: no limit.
    concurrency: int | None = None

    @cached_property
    def params_validator(self) -> Draft202012Validator:
        # Built once per compiled workflow: building it cost more than checking the params
        # (check_params runs at every submit and every plan).
        return ParamsValidator(self.params_schema)

    def check_params(self, params: Any) -> None:
        """Validate run params against the workflow's JSON Schema; 422 names the field."""
        payloads.check(params, "params", InvalidParams)
        validator = self.params_validator
        with pattern_budget():
            if validator.is_valid(params):
                return
            errors = [
                {
                    "field": ".".join(["params", *map(str, error_path(error))]),
                    "message": error.message,
                }
                for error in validator.iter_errors(params)
            ]
        if errors:
            raise InvalidParams(f"params do not match workflow {self.name!r}", errors=errors)

    @cached_property
    def leaves(self) -> int:
        """How many steps no other step needs."""
        return sum(1 for step_id in self.steps if not self.children.get(step_id))

    def stages(self) -> list[list[str]]:
        return planner.stages({step.id: step.needs for step in self.steps.values()})

    def conditions(self) -> dict[str, str]:
        """The `when` of each step that has one, by step id."""
        return {step.id: step.when for step in self.steps.values() if step.when is not None}


def _remote_refs(schema: Any) -> list[str]:
    """The $ref and $dynamicRef of a params schema that point outside it: validating against
    one would make the API fetch a URL (the spec is already within engine.payloads' limits)."""
    return [
        item[key]
        for item in payloads.values_within(schema)
        if isinstance(item, dict)
        for key in ("$ref", "$dynamicRef")
        if isinstance(item.get(key), str) and not item[key].startswith("#")
    ]


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _error(field: str, message: str) -> dict[str, str]:
    return {"field": field, "message": message}


def _field(error: ValidationError) -> str:
    """Where a spec error is, as `steps[0].action`."""
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error_path(error))
    return text.lstrip(".") or "spec"


def compile_spec(spec: Any, settings: Settings, *, registering: bool = True) -> CompiledWorkflow:
    """Check a spec completely and return its compiled form; InvalidSpec lists every problem.
    `registering=False` compiles a stored version: what only registration checks (which
    steps templates read, inputs the action's schema refuses whatever the templates render
    to) was not checked when older versions were registered, and their runs go on. Nor are
    its actions looked up: a worker without one of them (its plugin not deployed there)
    fails only the steps that use it, as dead letters to replay once it is."""
    payloads.check(spec, error=InvalidSpec)
    errors = [_error(_field(e), e.message) for e in SPEC_VALIDATOR.iter_errors(spec)]
    if errors:
        raise InvalidSpec("the workflow spec is invalid", errors=errors)
    defaults = spec.get("defaults", {})
    default_retry = RetryPolicy(
        settings.retry_max_attempts, settings.retry_backoff_s, settings.retry_max_backoff_s
    )
    try:
        default_retry = RetryPolicy.from_spec(
            defaults.get("retry"), default_retry, "defaults.retry", settings.retry_max_backoff_s
        )
    except InvalidSpec as exc:  # reported with the others; the steps are checked on the settings'
        errors.extend(exc.errors)
    default_timeout = defaults.get("timeout_s", settings.step_timeout_s)
    params_schema = spec.get("params") or {"type": "object"}
    try:
        Draft202012Validator.check_schema(params_schema)
    except SchemaError as exc:
        errors.append(_error("params", f"not a valid JSON Schema: {exc.message}"))
    if _remote_refs(params_schema):
        errors.append(_error("params", "a $ref must point into the schema itself (#...)"))

    steps: dict[str, StepSpec] = {}
    indexes: dict[str, int] = {}  # where each step is in the spec, compiled or not
    for index, raw in enumerate(spec["steps"]):
        where = f"steps[{index}]"
        step_id = raw["id"]
        if step_id in indexes:
            errors.append(_error(f"{where}.id", f"duplicate step id {step_id!r}"))
            continue
        indexes[step_id] = index
        needs = tuple(raw.get("needs", ()))
        if step_id in needs:
            errors.append(_error(f"{where}.needs", f"step {step_id!r} needs itself"))
        if len(set(needs)) != len(needs):
            errors.append(_error(f"{where}.needs", f"step {step_id!r} lists a need twice"))
        action = actions.get(raw["action"])
        if registering and action is None:
            errors.append(
                _error(f"{where}.action", f"step {step_id!r} uses unknown action {raw['action']!r}")
            )
        elif registering and action is not None:
            errors.extend(step_checks.input_errors(action, raw.get("with"), step_id, where))
        timeout = raw.get("timeout_s", default_timeout)
        if timeout > settings.step_timeout_max_s:
            # Named where it is written: a step's own, or the defaults' (once for all).
            owner, field = (
                (f"step {step_id!r}", f"{where}.timeout_s")
                if "timeout_s" in raw
                else ("defaults", "defaults.timeout_s")
            )
            error = _error(
                field,
                f"{owner}: timeout_s exceeds STEP_TIMEOUT_MAX_S ({settings.step_timeout_max_s:g})",
            )
            if error not in errors:
                errors.append(error)
        if registering:
            errors.extend(
                step_checks.template_errors(action, raw.get("with"), step_id, needs, where)
            )
            errors.extend(step_checks.secret_errors(action, raw.get("with"), step_id, where))
        else:
            errors.extend(step_checks.syntax_errors(raw.get("with"), step_id, where))
        if "when" in raw:
            errors.extend(step_checks.when_errors(raw["when"], step_id, needs, where, registering))
        try:
            retry = RetryPolicy.from_spec(
                raw.get("retry"), default_retry, f"{where}.retry", settings.retry_max_backoff_s
            )
        except InvalidSpec as exc:
            errors.extend(exc.errors)
            continue
        steps[step_id] = StepSpec(
            step_id,
            raw["action"],
            needs,
            raw.get("with"),
            retry,
            float(timeout),
            raw.get("queue", defaults.get("queue", "steps")),
            frozenset().union(*templating.secrets_read(raw.get("with"))[0].values()),
            raw.get("when"),
        )

    for step_id, index in indexes.items():
        for need in spec["steps"][index].get("needs", ()):
            if need not in indexes:
                errors.append(
                    _error(f"steps[{index}].needs", f"step {step_id!r} needs unknown step {need!r}")
                )
    if not errors:
        graph = {step.id: step.needs for step in steps.values()}
        cycle = planner.find_cycle(graph)
        if cycle:
            errors.append(_error("steps", "the steps form a cycle: " + " -> ".join(cycle)))
    if errors:
        raise InvalidSpec("the workflow spec is invalid", errors=errors)
    return CompiledWorkflow(
        spec["name"],
        spec["version"],
        params_schema,
        steps,
        planner.dependents({step.id: step.needs for step in steps.values()}),
        spec.get("concurrency"),
    )

"""Workflow specs: parsing, validation, registration and the compiled form runs use."""

from __future__ import annotations

import hashlib
import json
import logging
import weakref
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError
from sqlalchemy import bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine import actions, planner, templating
from engine.config import Settings
from engine.errors import Conflict, InvalidInput, InvalidParams, InvalidSpec, NotFound
from engine.models import Workflow
from engine.retry import RetryPolicy

log = logging.getLogger(__name__)

_NAME = r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$"
_RETRY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100},
        "backoff_s": {"type": "number", "minimum": 0},
        "max_backoff_s": {"type": "number", "minimum": 0},
    },
}
_TIMEOUT = {"type": "number", "exclusiveMinimum": 0}
_QUEUE = {"type": "string", "pattern": r"^[A-Za-z0-9_.-]{1,100}$"}
SPEC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "version", "steps"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": _NAME},
        "version": {"type": "integer", "minimum": 1},
        "description": {"type": "string"},
        "params": {"type": "object"},
        "defaults": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"retry": _RETRY, "timeout_s": _TIMEOUT, "queue": _QUEUE},
        },
        "steps": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "action"],
                "additionalProperties": False,
                "properties": {
                    "id": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_-]{0,99}$"},
                    "action": {"type": "string", "minLength": 1},
                    "needs": {"type": "array", "items": {"type": "string"}},
                    "with": {},
                    "retry": _RETRY,
                    "timeout_s": _TIMEOUT,
                    "queue": _QUEUE,
                    "description": {"type": "string"},
                },
            },
        },
    },
}
_SPEC_VALIDATOR = Draft202012Validator(SPEC_SCHEMA)


@dataclass(frozen=True)
class StepSpec:
    id: str
    action: str
    needs: tuple[str, ...]
    template: Any
    retry: RetryPolicy
    timeout_s: float
    queue: str


@dataclass(frozen=True)
class CompiledWorkflow:
    name: str
    version: int
    params_schema: dict[str, Any]
    steps: dict[str, StepSpec]
    children: dict[str, list[str]]

    @cached_property
    def params_validator(self) -> Draft202012Validator:
        # Built once per compiled workflow: building it cost more than checking the params
        # (check_params runs at every submit and every plan).
        return Draft202012Validator(self.params_schema)

    def check_params(self, params: Any) -> None:
        """Validate run params against the workflow's JSON Schema; 422 names the field."""
        validator = self.params_validator
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


def parse_text(text: str | bytes) -> Any:
    """Parse a spec written as YAML or JSON (JSON is YAML)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"the spec is not valid YAML or JSON: {exc}") from exc


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _error(field: str, message: str) -> dict[str, str]:
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


def _field(error: ValidationError) -> str:
    """Where a spec error is, as `steps[0].action`."""
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error_path(error))
    return text.lstrip(".") or "spec"


def compile_spec(spec: Any, settings: Settings) -> CompiledWorkflow:
    """Check a spec completely and return its compiled form; InvalidSpec lists every problem."""
    errors = [_error(_field(e), e.message) for e in _SPEC_VALIDATOR.iter_errors(spec)]
    if errors:
        raise InvalidSpec("the workflow spec is invalid", errors=errors)
    defaults = spec.get("defaults", {})
    default_retry = RetryPolicy.from_spec(
        defaults.get("retry"),
        RetryPolicy(
            settings.retry_max_attempts, settings.retry_backoff_s, settings.retry_max_backoff_s
        ),
        "defaults.retry",
        settings.retry_max_backoff_s,
    )
    default_timeout = defaults.get("timeout_s", settings.step_timeout_s)
    params_schema = spec.get("params") or {"type": "object"}
    try:
        Draft202012Validator.check_schema(params_schema)
    except SchemaError as exc:
        errors.append(_error("params", f"not a valid JSON Schema: {exc.message}"))

    steps: dict[str, StepSpec] = {}
    for index, raw in enumerate(spec["steps"]):
        where = f"steps[{index}]"
        step_id = raw["id"]
        if step_id in steps:
            errors.append(_error(f"{where}.id", f"duplicate step id {step_id!r}"))
            continue
        needs = tuple(raw.get("needs", ()))
        if step_id in needs:
            errors.append(_error(f"{where}.needs", f"step {step_id!r} needs itself"))
        if len(set(needs)) != len(needs):
            errors.append(_error(f"{where}.needs", f"step {step_id!r} lists a need twice"))
        if actions.get(raw["action"]) is None:
            errors.append(
                _error(f"{where}.action", f"step {step_id!r} uses unknown action {raw['action']!r}")
            )
        timeout = raw.get("timeout_s", default_timeout)
        if timeout > settings.step_timeout_max_s:
            errors.append(
                _error(
                    f"{where}.timeout_s",
                    f"step {step_id!r}: timeout_s exceeds STEP_TIMEOUT_MAX_S "
                    f"({settings.step_timeout_max_s:g})",
                )
            )
        for problem in templating.check_syntax(raw.get("with")):
            errors.append(_error(f"{where}.with", f"step {step_id!r}: template {problem}"))
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
        )

    for index, step in enumerate(steps.values()):
        for need in step.needs:
            if need not in steps and need != step.id:
                errors.append(
                    _error(f"steps[{index}].needs", f"step {step.id!r} needs unknown step {need!r}")
                )
    if not errors:
        needs = {step.id: step.needs for step in steps.values()}
        cycle = planner.find_cycle(needs)
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
    )


def register(session: Session, spec: Any, settings: Settings) -> tuple[Workflow, bool]:
    """Register a workflow version; the same spec again is a no-op, another spec a 409."""
    compile_spec(spec, settings)
    digest = spec_hash(spec)
    key = (spec["name"], spec["version"])
    existing = session.get(Workflow, key)
    if existing is None:
        workflow = Workflow(name=key[0], version=key[1], spec=spec, spec_hash=digest)
        try:
            with session.begin_nested():
                session.add(workflow)
            return workflow, True
        except IntegrityError:
            # A concurrent request registered this version first: answer as a repeat would.
            existing = session.get(Workflow, key)
            if existing is None:
                raise
    if existing.spec_hash == digest:
        return existing, False
    raise Conflict(
        f"workflow {key[0]!r} version {key[1]} is already registered with "
        "another spec; versions are immutable, register a new version"
    )


def get(session: Session, name: str, version: int | None = None) -> Workflow:
    """A workflow version, or the latest one when `version` is None."""
    query = select(Workflow).where(Workflow.name == name)
    if version is not None:
        query = query.where(Workflow.version == version)
    workflow = session.scalars(query.order_by(Workflow.version.desc()).limit(1)).first()
    if workflow is None:
        suffix = f" version {version}" if version is not None else ""
        raise NotFound(f"workflow {name!r}{suffix} does not exist")
    return workflow


def list_latest(session: Session) -> list[Workflow]:
    """The latest version of every workflow, by name."""
    latest = (
        select(Workflow.name, func.max(Workflow.version).label("version"))
        .group_by(Workflow.name)
        .subquery()
    )
    query = (
        select(Workflow)
        .join(latest, (Workflow.name == latest.c.name) & (Workflow.version == latest.c.version))
        .order_by(Workflow.name)
    )
    return list(session.scalars(query))


def list_versions(session: Session, name: str) -> list[Workflow]:
    rows = list(
        session.scalars(select(Workflow).where(Workflow.name == name).order_by(Workflow.version))
    )
    if not rows:
        raise NotFound(f"workflow {name!r} does not exist")
    return rows


_COMPILED: dict[tuple[str, str, int], CompiledWorkflow] = {}
# The database URL of each engine, rendered once: rendering it cost more than the lookup.
_DATABASES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _database(session: Session) -> str:
    bind = session.get_bind()
    try:
        return _DATABASES[bind]
    except KeyError:
        found = _DATABASES[bind] = str(bind.url)
        return found


def compiled(session: Session, settings: Settings, name: str, version: int) -> CompiledWorkflow:
    """The compiled workflow, cached per database: registered versions never change."""
    key = (_database(session), name, version)
    found = _COMPILED.get(key)
    if found is None:
        found = _COMPILED[key] = compile_spec(get(session, name, version).spec, settings)
    return found


_WORKFLOWS = Workflow.__table__
# On the table, not the model: an ORM-enabled select cost twice as much per submit.
_LATEST_VERSION = select(func.max(_WORKFLOWS.c.version)).where(
    _WORKFLOWS.c.name == bindparam("b_name", type_=_WORKFLOWS.c.name.type)
)


def compiled_for_submit(
    session: Session, settings: Settings, name: str, version: int | None = None
) -> CompiledWorkflow:
    """The compiled form of a version (the latest when `version` is None), NotFound when it
    does not exist. A cached version needs no read; the latest costs one indexed read."""
    if version is None:
        latest = session.execute(_LATEST_VERSION, {"b_name": name}).scalar()
        if latest is None:
            raise NotFound(f"workflow {name!r} does not exist")
        version = latest
    return compiled(session, settings, name, version)


def plan_stages(
    session: Session, settings: Settings, name: str, params: Any, version: int | None = None
) -> list[list[str]]:
    """The dry-run plan: stages of steps that can run in parallel. Writes nothing."""
    workflow = get(session, name, version)
    compiled_workflow = compiled(session, settings, workflow.name, workflow.version)
    compiled_workflow.check_params(params)
    return compiled_workflow.stages()


def register_directory(session: Session, settings: Settings) -> list[str]:
    """Register the built-in specs under settings.workflows_dir; returns what was added."""
    added: list[str] = []
    directory = Path(settings.workflows_dir)
    if not directory.is_dir():
        return added
    for path in sorted(directory.glob("*.y*ml")) + sorted(directory.glob("*.json")):
        try:
            workflow, created = register(session, parse_text(path.read_text()), settings)
        except (InvalidInput, Conflict) as exc:
            log.error("workflow file %s not registered: %s %s", path, exc.detail, exc.errors)
            continue
        if created:
            added.append(f"{workflow.name}@{workflow.version}")
    return added

"""The actions registry: callables registered by name, built-ins plus plugins.

An action is `fn(inputs, context) -> JSON-serialisable output`. Plugins register through
the `engine.actions` entry-point group or a module named in ENGINE_ACTION_MODULES.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from sqlalchemy.orm import Session, sessionmaker

from engine.config import Settings
from engine.errors import ConfigError, InvalidInput

BUILTIN_MODULES = ("engine.actions.builtin", "engine.actions.http", "engine.actions.life")


@dataclass(frozen=True)
class ActionContext:
    """What an action knows besides its inputs. `sessions` is the worker's session factory,
    for actions that keep data (domain actions): each `with sessions.begin()` is a short
    transaction of its own, between the step's claim and the record of its outcome, so
    what it writes must be keyed to be written once (delivery is at least once).
    `timeout_s` is the step's time limit, `settings` the worker's, `run` what its templates
    see of the run (engine.run_context: id, workflow, version, created_at, scheduled_for)."""

    run_id: str
    step_id: str
    attempt: int
    params: dict[str, Any]
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: sessionmaker[Session] | None = None
    timeout_s: float | None = None
    settings: Settings | None = None
    run: dict[str, Any] = field(default_factory=dict)


ActionFunction = Callable[[Any, ActionContext], Any]


@dataclass(frozen=True)
class Action:
    """`expressions` names the inputs that hold a sandboxed expression (as `transform`'s
    `expression`): a spec's constant one is checked when the workflow is registered.
    `echoes_inputs`: its output may hold its inputs as they are (as `echo`'s and
    `transform`'s do); outputs are stored, so its `with` may not read a secret."""

    name: str
    function: ActionFunction
    schema: dict[str, Any] | None = None
    expressions: tuple[str, ...] = ()
    echoes_inputs: bool = False
    # The schema's validator, built once: every step of the action checks its inputs.
    validator: Draft202012Validator | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        checker = Draft202012Validator(self.schema) if self.schema is not None else None
        object.__setattr__(self, "validator", checker)

    def check_inputs(self, inputs: Any, field_prefix: str = "inputs") -> None:
        """Validate rendered inputs against the action's schema; 422 names the field."""
        if self.validator is None:
            return
        errors = [
            {
                "field": ".".join([field_prefix, *map(str, error.absolute_path)]),
                "message": error.message,
            }
            for error in self.validator.iter_errors(inputs)
        ]
        if errors:
            raise InvalidInput(f"inputs of action {self.name!r} are invalid", errors=errors)


_REGISTRY: dict[str, Action] = {}
_loaded = False


def register(
    name: str,
    schema: dict[str, Any] | None = None,
    expressions: tuple[str, ...] = (),
    echoes_inputs: bool = False,
) -> Callable[[ActionFunction], ActionFunction]:
    """Decorator: register `fn` as the action `name`."""

    if schema is not None:
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise ConfigError(
                f"action {name!r}: its schema is not a valid JSON Schema: {exc.message}"
            ) from None

    def decorate(function: ActionFunction) -> ActionFunction:
        known = _REGISTRY.get(name)
        if known is not None and _origin(known.function) != _origin(function):
            # Two plugins (or a plugin and a built-in) under one name: whichever was imported
            # last would run, depending on the order of the entry points.
            raise ConfigError(
                f"action {name!r} is registered twice: by {_origin(known.function)} and by "
                f"{_origin(function)}"
            )
        _REGISTRY[name] = Action(name, function, schema, expressions, echoes_inputs)
        return function

    return decorate


def _origin(function: ActionFunction) -> str:
    """Where a function is defined: the same one imported again registers as itself."""
    return f"{function.__module__}.{getattr(function, '__qualname__', function)}"


def load_plugins(modules: Iterable[str] = ()) -> None:
    """Import the built-ins, entry-point plugins and the named modules (once each). A plugin
    that cannot be imported is a ConfigError naming it and why: the API, a worker or the
    `engine` command refuses to start rather than refuse its actions' workflows later."""
    global _loaded
    if not _loaded:
        for builtin in BUILTIN_MODULES:
            importlib.import_module(builtin)
        for entry in entry_points(group="engine.actions"):
            try:
                entry.load()
            except Exception as exc:
                raise ConfigError(
                    f"the action plugin {entry.name!r} of the engine.actions entry points "
                    f"({entry.value}) cannot be loaded: {type(exc).__name__}: {exc}"
                ) from exc
        _loaded = True
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise ConfigError(
                f"ENGINE_ACTION_MODULES names {module!r}, which cannot be imported: "
                f"{type(exc).__name__}: {exc}"
            ) from exc


def get(name: str) -> Action | None:
    load_plugins()
    return _REGISTRY.get(name)


def names() -> list[str]:
    load_plugins()
    return sorted(_REGISTRY)

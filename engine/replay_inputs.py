"""What the edited inputs of a replay (engine.replay) may hold. They replace the step's
rendered inputs as given, so they pass the action's input schema as rendered ones do. A
`[SECRET:name]` in them, what the step's stored inputs show for a secret, stands for that
secret: the worker puts its value in place as the step runs (engine.secret_store.resolve),
so it must name a secret the step's templates read; the API never reads one. A `[REDACTED]`,
what a failure or a replay's record shows for a value it hides, stands for nothing that can
be recovered: the operator writes the value, or the secret's placeholder, instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine import actions, secret_store, workflows
from engine.config import Settings
from engine.errors import InvalidInput, InvalidTransition
from engine.logs import REDACTED
from engine.models import DeadLetter, Run, Step

steps = Step.__table__


def check(session: Session, settings: Settings, letter: DeadLetter, inputs: Any) -> None:
    """Refuse edited inputs for `letter`'s step that its action would refuse, that hold a
    `[REDACTED]`, or that name a secret the step does not read; 422 names each field."""
    if letter.step_id is None:
        raise InvalidInput(
            "this dead letter is a run's planning; it takes no inputs",
            errors=[{"field": "inputs", "message": "only a step's dead letter takes inputs"}],
        )
    name = session.scalar(
        select(steps.c.action).where(
            steps.c.run_id == letter.run_id, steps.c.step_id == letter.step_id
        )
    )
    run = session.get(Run, letter.run_id)
    if name is None or run is None:
        raise InvalidTransition(f"step {letter.step_id!r} of run {letter.run_id} is gone")
    spec = workflows.compiled(session, settings, run.workflow, run.version).steps.get(
        letter.step_id
    )
    readable = spec.secrets if spec is not None else frozenset()
    errors = [
        {"field": field, "message": message}
        for field, text in _strings(inputs, ("inputs",))
        for message in _problems(text, letter.step_id, readable)
    ]
    if errors:
        raise InvalidInput(f"inputs: {errors[0]['message']}", errors=errors)
    actions.load_plugins(settings.action_modules)
    action = actions.get(name)
    if action is None:
        raise InvalidInput(
            f"unknown action {name!r}",
            errors=[{"field": "inputs", "message": f"action {name!r} is not installed here"}],
        )
    action.check_inputs(inputs)


def _problems(text: str, step_id: str, readable: frozenset[str]) -> Iterator[str]:
    if REDACTED in text:
        yield (
            f"holds {REDACTED}, which hides a value that cannot be recovered: write the "
            "value, or [SECRET:name] for one of the step's secrets"
        )
    for name in sorted(set(secret_store.PLACEHOLDER.findall(text)) - readable):
        reads = ", ".join(sorted(readable)) or "none"
        yield (
            f"names secret {name!r}, which step {step_id!r} does not read (its templates "
            f"read: {reads}): a replay's inputs may name only those"
        )


def _strings(document: Any, path: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """Each string in `document`, keys included, with its field (`inputs.headers.X`)."""
    if isinstance(document, str):
        yield ".".join(path), document
    elif isinstance(document, dict):
        for key, item in document.items():
            yield ".".join((*path, str(key))), str(key)
            yield from _strings(item, (*path, str(key)))
    elif isinstance(document, list):
        for index, item in enumerate(document):
            yield from _strings(item, (*path, str(index)))

"""Pausing a workflow: while paused (every version of it), no new run of it is submitted, by a
client, the CLI or a schedule; runs already submitted go on, and a resume or retry of one of
them is still allowed (an operator's deliberate act). The refusal costs a submission nothing:
its run's INSERT is guarded by `not_paused` in the same statement (engine.runs)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, delete, exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine import audit, workflows
from engine.errors import InvalidInput, WorkflowPaused
from engine.models import WorkflowPause, timestamp, utcnow

MAX_REASON = 500
pauses = WorkflowPause.__table__


def not_paused(name: Any) -> ColumnElement[bool]:
    """A condition, true while the workflow `name` (an SQL expression) is not paused."""
    return ~exists().where(pauses.c.workflow == name)


def pause(session: Session, name: str, reason: Any, actor: str) -> tuple[WorkflowPause, bool]:
    """Pause a workflow: its pause, and whether it was paused now (False when it already
    was: that pause, its reason and author, stay as they were). NotFound for a workflow
    that was never registered."""
    if not isinstance(reason, str) or not 0 < len(reason.strip()) <= MAX_REASON:
        raise InvalidInput(
            f"reason must be 1 to {MAX_REASON} characters",
            errors=[{"field": "reason", "message": "a string of 1 to 500 characters"}],
        )
    workflows.get(session, name)
    existing = session.get(WorkflowPause, name)
    if existing is not None:
        return existing, False
    found = WorkflowPause(workflow=name, reason=reason.strip(), paused_by=actor, paused_at=utcnow())
    try:
        with session.begin_nested():
            session.add(found)
    except IntegrityError:
        # Paused by another request a moment ago: that pause stands.
        existing = session.get(WorkflowPause, name)
        if existing is None:
            raise
        return existing, False
    audit.record(
        session, actor=actor, action="workflow.pause", target=f"workflow:{name}", reason=reason
    )
    return found, True


def resume(session: Session, name: str, actor: str) -> bool:
    """Resume a workflow: True when it was paused. NotFound for one never registered."""
    workflows.get(session, name)
    resumed = session.execute(
        delete(pauses).where(pauses.c.workflow == name).returning(pauses.c.reason)
    ).first()
    if resumed is None:
        return False
    audit.record(
        session,
        actor=actor,
        action="workflow.resume",
        target=f"workflow:{name}",
        detail={"paused_for": resumed.reason},
    )
    return True


def paused(session: Session, names: Iterable[str]) -> dict[str, WorkflowPause]:
    """The pauses of those of `names` that are paused, by name."""
    wanted = list(names)
    if not wanted:
        return {}
    rows = session.scalars(select(WorkflowPause).where(WorkflowPause.workflow.in_(wanted)))
    return {row.workflow: row for row in rows}


def refusal(session: Session, name: str) -> WorkflowPaused:
    """The error of a submission refused because `name` is paused."""
    found = session.get(WorkflowPause, name)
    why = (
        f": {found.reason} (paused by {found.paused_by} at {timestamp(found.paused_at)})"
        if found is not None
        else ""
    )
    return WorkflowPaused(
        f"workflow {name!r} is paused{why}; no new run of it is taken until it is resumed",
        errors=[{"field": "workflow", "message": f"{name} is paused"}],
    )

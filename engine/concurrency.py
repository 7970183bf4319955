"""A workflow's concurrency limit: a version's spec may set `concurrency`, the most runs of
the workflow (by name, every version) active at once. Active: planning or running, or queued
with its plan message sent. A run of a version with a limit that would exceed it is stored
queued, unsent, with waiting = 'concurrency', until a slot frees (engine.admission admits
the waiting runs, in priority order, then oldest first).

The database is the record of who holds a slot: the runs themselves, counted. Counting and
taking a slot are serialised per workflow: on PostgreSQL by a transaction-level advisory lock
keyed by the workflow's name, taken only for workflows with a limit; SQLite's writers
already take turns (BEGIN IMMEDIATE). A workflow without a limit never reaches this module.
"""

from __future__ import annotations

import zlib
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, text, update
from sqlalchemy.orm import Session

from engine import workflows
from engine.config import Settings
from engine.db import changed
from engine.errors import InvalidSpec, InvalidTransition
from engine.models import HELD, Run, Step, utcnow
from engine.state import RunStatus

runs = Run.__table__
steps = Step.__table__
FIELD = "concurrency"
# Why a run waits (its JSON's `waiting`, the runs_waiting gauge's reason).
REASON = "concurrency"
NOT_BEFORE = "not_before"
REASONS = (REASON, NOT_BEFORE)
# The first key of the advisory locks (the second is the workflow's name, hashed), so that
# they never collide with another use of advisory locks in the same database.
_LOCK_SPACE = 0x0C0C
_LOCK = text("SELECT pg_advisory_xact_lock(:space, :key)")

# Waiting for a slot: ix_runs_waiting's terms, as text so that both databases read it there.
WAITING = text(HELD)

# Waiting for its not_before (engine.delayed.WAITING, negated here so that this module stays
# below it): a delayed run holds no slot until it is sent.
_NOT_DELAYED = or_(
    runs.c.not_before.is_(None),
    runs.c.created_at >= runs.c.not_before,
    runs.c.dispatched_at > runs.c.not_before,
)
ACTIVE: ColumnElement[bool] = or_(
    runs.c.status.in_((RunStatus.PLANNING, RunStatus.RUNNING)),
    and_(runs.c.status == RunStatus.QUEUED, runs.c.waiting.is_(None), _NOT_DELAYED),
)


def limit_of(session: Session, settings: Settings, name: str, version: int) -> int | None:
    """The concurrency of a version; None for none, or for one this process cannot compile
    (its plan then fails the run, naming why, which frees the slot)."""
    try:
        return workflows.compiled(session, settings, name, version).concurrency
    except InvalidSpec:
        return None


def lock(session: Session, name: str) -> None:
    """Serialise the slots of workflow `name` until the transaction ends (PostgreSQL; a no-op
    on SQLite, whose writers take turns). Taken again in the same transaction, it is held."""
    if session.get_bind().dialect.name != "postgresql":
        return
    key = zlib.crc32(name.encode()) - 2**31  # a signed 32-bit int, the same in every process
    session.execute(_LOCK, {"space": _LOCK_SPACE, "key": key})


def active(session: Session, name: str) -> int:
    """How many runs of workflow `name` hold a slot (live runs only: ix_runs_status_…)."""
    query = select(func.count()).select_from(runs).where(runs.c.workflow == name, ACTIVE)
    return int(session.scalar(query) or 0)


def slot_free(session: Session, name: str, limit: int | None) -> bool:
    """Whether a run of workflow `name` brought back (a retry of a failed run) takes a slot
    of `limit` now: always without one. The workflow's lock is held from here to the commit."""
    if limit is None:
        return True
    lock(session, name)
    return active(session, name) < limit


def wait_for_slot(
    session: Session, run: Run, step_ids: list[str], inputs_override: dict[str, Any] | None
) -> None:
    """A failed run brought back while its workflow's limit has no slot free waits queued,
    unsent, as a new run would: engine.admission resumes it at its failed steps (or plans it,
    when its planning had failed) once admitted. Edited inputs are stored on their steps."""
    if not changed(
        session.execute(
            update(runs)
            .where(runs.c.id == run.id, runs.c.status == RunStatus.FAILED)
            .values(
                status=RunStatus.QUEUED,
                waiting=REASON,
                error=None,
                finished_at=None,
                plan_deliveries=0,
                dispatched_at=utcnow(),
            )
        )
    ):
        raise InvalidTransition(f"run {run.id} changed while it was being retried; try again")
    for step_id, inputs in (inputs_override or {}).items():
        if step_id in step_ids:
            session.execute(
                update(steps)
                .where(steps.c.run_id == run.id, steps.c.step_id == step_id)
                .values(inputs_override=inputs)
            )
    session.refresh(run)


def waiting(session: Session, name: str | None = None) -> int:
    """How many runs wait for a slot: of workflow `name`, or of every workflow."""
    query = select(func.count()).select_from(runs).where(WAITING)
    if name is not None:
        query = query.where(runs.c.workflow == name)
    return int(session.scalar(query) or 0)


def usage(session: Session, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A workflow's limit as a version's spec sets it (null: none), and how many of its runs
    hold a slot and wait for one (GET /workflows/{name}, engine workflows show)."""
    return {
        "limit": spec.get(FIELD),
        "active": active(session, name),
        "waiting": waiting(session, name),
    }


def waits_for(row: Any) -> str | None:
    """Why a run (a row or a Run) waits unsent: 'concurrency', 'not_before', or None."""
    if row.status != RunStatus.QUEUED:
        return None
    if getattr(row, "waiting", None):
        return str(row.waiting)
    not_before = row.not_before
    if (
        not_before is not None
        and row.dispatched_at is not None
        and row.created_at < not_before
        and row.dispatched_at <= not_before
    ):
        return NOT_BEFORE
    return None

"""Run use cases: submit, read, list. Cancelling is engine.cancels; planning is
engine.planning; resuming or retrying a failed run is engine.resume. Callers commit, then
dispatch."""

from __future__ import annotations

import hashlib
import json
from collections import namedtuple
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    and_,
    bindparam,
    insert,
    or_,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine import cursors, pauses, workflows
from engine.auth import Caller
from engine.config import Settings
from engine.db import changed, statement_by_statement
from engine.errors import Conflict, InvalidInput, NotFound
from engine.models import Run, Step, in_utc, new_id, utcnow
from engine.state import RunStatus
from engine.work import (
    Work,
    plan_dispatch,
)

steps = Step.__table__
runs = Run.__table__

# Every run's INSERT is one statement guarded by its workflow not being paused
# (engine.pauses): a paused workflow's INSERT writes nothing, and costs no read to find out.
# A run of the latest version is also inserted only while its version is still the latest:
# the submitting process takes the latest version from memory (engine.workflows), and this
# one statement replaces the read of it.
_RUN_VALUES = {column.key: bindparam(column.key, type_=column.type) for column in runs.columns}


def _guarded_insert(condition: ColumnElement[bool]) -> Any:
    return (
        insert(runs)
        .from_select(list(_RUN_VALUES), select(*_RUN_VALUES.values()).where(condition))
        # SQLAlchemy keeps an INSERT's rowcount only when asked (psycopg's would be lost).
        .execution_options(preserve_rowcount=True)
    )


_INSERT_RUN = _guarded_insert(pauses.not_paused(_RUN_VALUES["workflow"]))
_INSERT_RUN_OF_LATEST = _guarded_insert(
    and_(
        workflows.latest_version_is(_RUN_VALUES["workflow"], _RUN_VALUES["version"]),
        pauses.not_paused(_RUN_VALUES["workflow"]),
    )
)


@dataclass(frozen=True)
class SubmitRun:
    workflow: str
    params: dict[str, Any]
    version: int | None = None
    priority: int = 0
    idempotency_key: str | None = None
    webhook_url: str | None = None

    def digest(self) -> str:
        body = [self.workflow, self.version, self.params, self.priority]
        if self.webhook_url is not None:  # runs submitted without one keep their digest
            body.append(self.webhook_url)
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def submit(
    session: Session,
    settings: Settings,
    request: SubmitRun,
    caller: Caller,
    *,
    remembered: bool = True,
) -> tuple[Any, Work, bool]:
    """Insert a queued run: returns it (a Run for a repeat with an idempotency key, else a
    row of the values inserted, its attributes named as the model's), its work, and whether
    it was created; WorkflowPaused while its workflow is paused (engine.pauses). With an
    idempotency key, a repeat returns the first run (created=False), even while paused; the
    same key with another body is a Conflict. Without a version, the
    latest this process remembers is tried first (`remembered`), then read again when a
    newer one was registered since. Without a key, in a session that has not begun, the
    run's INSERT is a transaction of its own on PostgreSQL (engine.db.statement_by_statement):
    the run is committed when this returns."""
    if request.idempotency_key:
        existing = session.scalars(
            select(Run).where(
                Run.created_by == caller.sub, Run.idempotency_key == request.idempotency_key
            )
        ).first()
        if existing is not None:
            if existing.request_hash != request.digest():
                raise Conflict("this Idempotency-Key was used with another request body")
            return existing, Work(), False
    if request.idempotency_key is None:
        # Reads, then one INSERT: the INSERT can be a transaction of its own.
        statement_by_statement(session)
    remembered = remembered and request.version is None and request.idempotency_key is None
    workflow = workflows.compiled_for_submit(
        session, settings, request.workflow, request.version, remembered=remembered
    )
    workflow.check_params(request.params)
    now = utcnow()
    values = {
        "id": new_id(),
        "workflow": workflow.name,
        "version": workflow.version,
        "params": request.params,
        "status": RunStatus.QUEUED,
        "priority": request.priority,
        "created_by": caller.sub,
        "created_scopes": list(caller.scopes),
        "idempotency_key": request.idempotency_key,
        "request_hash": request.digest(),
        "created_at": now,
        "dispatched_at": now,
        "leaves_left": workflow.leaves,
        "plan_deliveries": 0,
        "error": None,
        "started_at": None,
        "finished_at": None,
        "webhook_url": request.webhook_url,
        "webhook_event_at": None,
        "webhook_status": None,
    }
    if request.idempotency_key is None:
        # Nothing unique to race on: no SAVEPOINT, and a Core INSERT of the values instead of
        # the ORM's flush (the unit of work cost about a third of a submit). The run returned
        # is a row of the values as inserted (attributes named as the model's), not in the
        # session.
        if not remembered:
            if changed(session.execute(_INSERT_RUN, values)) != 1:
                raise pauses.refusal(session, workflow.name)
        elif changed(session.execute(_INSERT_RUN_OF_LATEST, values)) != 1:
            # A newer version was registered since this process read the latest, or the
            # workflow is paused: the read of the latest tells which.
            return submit(session, settings, request, caller, remembered=False)
        run: Any = _RunRow(**values)
    else:
        try:
            with session.begin_nested():
                inserted = changed(session.execute(_INSERT_RUN, values))
        except IntegrityError:
            # Another request with the same key won the race; answer as a repeat would.
            return submit(session, settings, request, caller)
        if inserted != 1:
            raise pauses.refusal(session, workflow.name)
        run = _RunRow(**values)
    work = Work([plan_dispatch(run.id, workflow, settings, run.priority)])
    return run, work, True


def get_run(session: Session, run_id: str, caller: Caller) -> Run:
    """A run the caller may see; another caller's run is NotFound, like a missing one."""
    return _visible(session.get(Run, run_id), run_id, caller)


def submitter(db: Session | Connection, run_id: str) -> Caller:
    """Who submitted a run, with the scopes it held then (none for a run submitted before
    they were recorded); NotFound for a run that does not exist."""
    row = db.execute(
        select(runs.c.created_by, runs.c.created_scopes).where(runs.c.id == run_id)
    ).first()
    if row is None:
        raise NotFound(f"run {run_id} does not exist")
    return Caller(row.created_by, tuple(row.created_scopes or ()))


def _visible(run: Any, run_id: str, caller: Caller) -> Any:
    if run is None or (run.created_by != caller.sub and not caller.sees_all_runs):
        raise NotFound(f"run {run_id} does not exist")
    return run


# Reads for answers: Core rows (attribute access like the models) cost a third of the ORM's.
# A run with its steps is one statement: both as of one moment, and on PostgreSQL one round
# trip where two cost about 0.2 ms of CPU more.
_READ_RUN_WITH_STEPS = (
    select(*runs.columns, *[column.label(f"step_{column.key}") for column in steps.columns])
    .select_from(runs.outerjoin(steps, steps.c.run_id == runs.c.id))
    .where(runs.c.id == bindparam("b_run_id", type_=runs.c.id.type))
    .order_by(steps.c.position)
)
# Its rows split in two, each with attribute access like the models'.
_RunRow = namedtuple("_RunRow", [column.key for column in runs.columns])  # type: ignore[misc]
_StepRow = namedtuple("_StepRow", [column.key for column in steps.columns])  # type: ignore[misc]
_RUN_WIDTH = len(runs.columns)
_READ_STEPS = (
    select(steps)
    .where(steps.c.run_id == bindparam("b_run_id", type_=steps.c.run_id.type))
    .order_by(steps.c.position)
)


def read_run_with_steps(
    db: Session | Connection, run_id: str, caller: Caller
) -> tuple[Any, list[Any]]:
    """get_run and its steps in plan order, read-only: their rows (attributes named as the
    models' are), NotFound under the same rule. A session or a bare connection will do."""
    rows = db.execute(_READ_RUN_WITH_STEPS, {"b_run_id": run_id}).all()
    run = _visible(_RunRow._make(rows[0][:_RUN_WIDTH]) if rows else None, run_id, caller)
    # A run without steps (not planned yet) has one row, its step columns all NULL.
    return run, [_StepRow._make(row[_RUN_WIDTH:]) for row in rows if row.step_step_id is not None]


def run_steps(session: Session, run_id: str) -> list[Row[Any]]:
    """The rows of a run's steps in plan order (read-only)."""
    return list(session.execute(_READ_STEPS, {"b_run_id": run_id}).all())


def encode_cursor(created_at: datetime, row_id: str) -> str:
    return cursors.encode(created_at.isoformat(), row_id)


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    stamp, row_id = cursors.decode(cursor, 2)
    try:
        return in_utc(datetime.fromisoformat(stamp)), str(row_id)
    except (ValueError, TypeError, OverflowError) as exc:
        raise cursors.invalid() from exc


def list_runs(
    db: Session | Connection,
    caller: Caller,
    *,
    limit: int,
    cursor: str | None = None,
    status: str | None = None,
    workflow: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[Row[Any]], str | None]:
    """The caller's runs (all runs for an admin), newest first, one page at a time: their
    rows (attributes named as the models' are), submitted at or after `since` and before
    `until` when given. A session or a bare connection will do."""
    query = select(*runs.columns)
    if not caller.sees_all_runs:
        query = query.where(runs.c.created_by == caller.sub)
    if status:
        if status not in RunStatus.__members__.values():
            raise InvalidInput(
                "unknown status",
                errors=[{"field": "status", "message": f"one of {', '.join(RunStatus)}"}],
            )
        query = query.where(runs.c.status == status)
    if workflow:
        query = query.where(runs.c.workflow == workflow)
    if since is not None:
        query = query.where(runs.c.created_at >= since)
    if until is not None:
        query = query.where(runs.c.created_at < until)
    if cursor:
        at, row_id = decode_cursor(cursor)
        query = query.where(
            or_(runs.c.created_at < at, and_(runs.c.created_at == at, runs.c.id < row_id))
        )
    rows = list(
        db.execute(query.order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit + 1))
    )
    following = (
        encode_cursor(rows[limit - 1].created_at, rows[limit - 1].id) if len(rows) > limit else None
    )
    return rows[:limit], following

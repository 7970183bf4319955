"""Run use cases: submit. Reading and listing runs is engine.run_query; cancelling is
engine.cancels; planning is engine.planning; resuming or retrying a failed run is
engine.resume. Callers commit, then dispatch."""

from __future__ import annotations

import hashlib
import json
from dataclasses import KW_ONLY, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine import admission, concurrency, delayed, pauses, workflows
from engine.auth import Caller
from engine.config import Settings
from engine.db import changed, one_transaction_from_here, statement_by_statement
from engine.errors import Conflict
from engine.models import Run, in_utc, new_id, utcnow
from engine.run_query import RunRow
from engine.state import RunStatus
from engine.work import Work, plan_dispatch, plan_task_id

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
    # The two times are named where given: both are datetimes, and one in the other's place
    # would go unnoticed.
    _: KW_ONLY
    # The fire time a schedule submits it for (engine.schedules): not part of the digest, so
    # a repeated key answers the first run whenever it is asked again.
    scheduled_for: datetime | None = None
    # Not started before this time (engine.delayed); in UTC.
    not_before: datetime | None = None

    def digest(self) -> str:
        body: list[Any] = [self.workflow, self.version, self.params, self.priority]
        # Runs submitted without these keep their digest.
        if self.webhook_url is not None:
            body.append(self.webhook_url)
        if self.not_before is not None:  # the instant, however its offset was written
            body.append({delayed.FIELD: in_utc(self.not_before).isoformat()})
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
    it was created; WorkflowPaused while its workflow is paused (engine.pauses). A run whose
    not_before is ahead is stored unsent, its work empty (engine.delayed); so is a run of a
    workflow whose concurrency limit has no slot free (engine.concurrency). With an
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
    # Waits for its not_before (engine.delayed): stamped sent then, and not sent now.
    waits = request.not_before is not None and request.not_before > now
    if request.not_before is not None:
        delayed.check_ahead(request.not_before, settings, now)
    # A workflow with a concurrency limit: the run is inserted waiting for a slot, then
    # admitted if one is free, under the workflow's lock (engine.admission), in one
    # transaction. A delayed run is not: the delay tick sets it waiting once it is due.
    limited = workflow.concurrency is not None and not waits
    if limited:
        one_transaction_from_here(session)
        concurrency.lock(session, workflow.name)
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
        "dispatched_at": request.not_before if waits else now,
        "leaves_left": workflow.leaves,
        "plan_deliveries": 0,
        "error": None,
        "started_at": None,
        "finished_at": None,
        "webhook_url": request.webhook_url,
        "webhook_event_at": None,
        "webhook_status": None,
        "scheduled_for": request.scheduled_for,
        "not_before": request.not_before,
        "waiting": concurrency.REASON if limited else None,
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
        run: Any = RunRow(**values)
    else:
        try:
            with session.begin_nested():
                inserted = changed(session.execute(_INSERT_RUN, values))
        except IntegrityError:
            # Another request with the same key won the race; answer as a repeat would.
            return submit(session, settings, request, caller)
        if inserted != 1:
            raise pauses.refusal(session, workflow.name)
        run = RunRow(**values)
    if waits:
        return run, Work(), True
    if limited:
        work = admission.admit(session, settings, workflow.name)
        if any(dispatch.task_id == plan_task_id(run.id) for dispatch in work.dispatches):
            run = run._replace(waiting=None)
        return run, work, True
    work = Work([plan_dispatch(run.id, workflow, settings, run.priority)])
    return run, work, True

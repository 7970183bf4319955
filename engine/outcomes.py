"""Recording an attempt's outcome (engine.execution ran it): a success is written, its run
counted down when the step is a leaf, and the steps it unblocked released; a step skipped by
its `when` is recorded the same way, by the same statements, as `skipped` with a null
output; a failure goes to engine.failures.

Each write is one short transaction of Core statements on the steps and runs tables whose
WHERE clause states what the writer expects; the row count says whether it won.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import and_, bindparam, case, select, update
from sqlalchemy.exc import DataError, DBAPIError, StatementError
from sqlalchemy.orm import Session

from engine import admission, dlq, metrics
from engine.attempts import B_NOW, B_RUN_ID, MINE, RUN_IS_RUNNING, Claim, Outcome, Result
from engine.config import Settings
from engine.db import changed, statement_by_statement
from engine.errors import EngineError, InvalidInput
from engine.failures import fail_attempt
from engine.models import Run, Step, utcnow
from engine.redaction import failure_redactor
from engine.state import RunStatus, StepStatus
from engine.work import step_dispatch

log = logging.getLogger(__name__)
steps = Step.__table__
runs = Run.__table__

# `b_status`: succeeded, or skipped when its `when` was falsy (downstream, it counts as done).
_SUCCEEDED = {
    "status": bindparam("b_status", type_=steps.c.status.type),
    "output": bindparam("b_output", type_=steps.c.output.type),
    "inputs": bindparam("b_inputs", type_=steps.c.inputs.type),
    "error": None,
    "error_type": None,
    "finished_at": B_NOW,
    "lease_expires_at": None,
}
# A step with children first takes a shared lock on its run row (PostgreSQL; SQLite runs one
# writer at a time anyway): a resume of the run (resume.resume, bulk replay) updates that row
# before it reads which steps succeeded, so the two are ordered and a child that the resume
# turns from skipped back to pending cannot miss this step's release. Shared, so the
# branches of a fan-out do not wait for each other; leaves update the run row instead.
_RUN_ROW_SHARED = select(runs.c.id).where(runs.c.id == B_RUN_ID).with_for_update(read=True)
_SUCCEED_STEP = {
    True: update(steps).where(MINE, _RUN_ROW_SHARED.exists()).values(**_SUCCEEDED),
    False: update(steps).where(MINE).values(**_SUCCEEDED),
}
# Only a leaf's success touches the run row (see Run.leaves_left): in a fan-out, the
# branches' transactions do not queue on it.
_RUN_COMPLETES = and_(runs.c.leaves_left == 1, runs.c.status == RunStatus.RUNNING)
_COUNT_DOWN_RUN = (
    update(runs)
    .where(runs.c.id == B_RUN_ID)
    .values(
        leaves_left=runs.c.leaves_left - 1,
        status=case((_RUN_COMPLETES, RunStatus.SUCCEEDED), else_=runs.c.status),
        finished_at=case((_RUN_COMPLETES, B_NOW), else_=runs.c.finished_at),
    )
    .returning(runs.c.status, runs.c.leaves_left)
)
# PostgreSQL records a leaf's success and counts it down on its run in one statement (a
# data-modifying CTE): one round trip instead of two. No row back: the attempt was not ours.
_SUCCEEDED_LEAF = (
    update(steps).where(MINE).values(**_SUCCEEDED).returning(steps.c.run_id).cte("succeeded")
)
_SUCCEED_LEAF = _COUNT_DOWN_RUN.where(runs.c.id.in_(select(_SUCCEEDED_LEAF.c.run_id))).add_cte(
    _SUCCEEDED_LEAF
)
# Children are released only while the run is running.
_RELEASE = and_(steps.c.pending_deps == 1, RUN_IS_RUNNING)
_RELEASE_CHILDREN = (
    update(steps)
    .where(
        steps.c.run_id == B_RUN_ID,
        steps.c.step_id.in_(bindparam("b_children", expanding=True)),
        steps.c.status == StepStatus.PENDING,
    )
    .values(
        pending_deps=steps.c.pending_deps - 1,
        status=case((_RELEASE, StepStatus.QUEUED), else_=steps.c.status),
        dispatched_at=case((_RELEASE, B_NOW), else_=steps.c.dispatched_at),
    )
    .returning(steps.c.step_id, steps.c.status, steps.c.attempts)
)


def _unstorable_output(exc: Exception, output: Any) -> str | None:
    """Why the output could not be written, when that is what `exc` says, else None. An
    output JSON cannot hold (a set, a datetime) fails as the statement's parameters are
    encoded (by SQLAlchemy on SQLite, by the driver on PostgreSQL); one the database
    refuses (a NaN in jsonb), as it runs. Either way it would fail alike every time."""
    if isinstance(exc, DataError):
        return str(exc.orig).splitlines()[0]
    if isinstance(exc, DBAPIError):
        return None
    try:
        json.dumps(output)
    except (TypeError, ValueError) as cause:
        return str(cause)
    return None


def finish_attempt(session: Session, settings: Settings, claim: Claim, result: Result) -> Outcome:
    """Record the attempt's outcome and release the steps it unblocked."""
    if result.error is not None:
        error_type, message, trace = dlq.describe(result.error)
        redactor = failure_redactor(
            settings,
            claim.params,
            claim.upstream,
            result.inputs,
            secrets=(result.secrets or {}).values(),
        )
        message, trace = redactor.redact(message), redactor.redact(trace)
        retryable = getattr(result.error, "retryable", True) and not isinstance(
            result.error, EngineError
        )
        return fail_attempt(
            session,
            settings,
            claim.run_id,
            claim.step_id,
            task_id=claim.task_id,
            attempt=claim.attempt,
            error_type=error_type,
            message=message,
            trace=trace,
            retryable=retryable,
            inputs=result.inputs,
            retry_after_s=getattr(result.error, "retry_after_s", None),
        )
    now = utcnow()
    children = claim.workflow.children.get(claim.step_id, ())
    status = StepStatus.SKIPPED if result.skipped else StepStatus.SUCCEEDED
    values = {
        "b_status": status,
        "b_run_id": claim.run_id,
        "b_step_id": claim.step_id,
        "b_task_id": claim.task_id,
        "b_attempt": claim.attempt,
        "b_output": result.output,
        "b_inputs": result.inputs,
        "b_now": now,
    }
    run = None
    try:
        # A workflow with a concurrency limit admits its next waiting run in the transaction
        # that finishes a run (engine.admission): no one-statement transaction for it.
        limited = claim.workflow.concurrency is not None
        if not children and not limited and session.get_bind().dialect.name == "postgresql":
            statement_by_statement(session)  # the one statement needs no transaction around it
            run = session.execute(_SUCCEED_LEAF, values).first()
            won = run is not None
        else:
            won = bool(changed(session.execute(_SUCCEED_STEP[bool(children)], values)))
    except (StatementError, TypeError, ValueError) as exc:
        problem = _unstorable_output(exc, result.output)
        if problem is None:
            raise
        session.rollback()
        result.error = InvalidInput(
            f"the output of action {claim.spec.action!r} cannot be stored: {problem}"
        )
        result.output = None
        return finish_attempt(session, settings, claim, result)
    if not won:
        log.warning(
            "run %s step %s: attempt %s lost its lease; outcome dropped",
            claim.run_id,
            claim.step_id,
            claim.attempt,
        )
        return Outcome("lost")
    metrics.steps_total.labels(action=claim.spec.action, status=status).inc()
    if result.skipped:
        log.info(
            "run %s step %s: skipped, its when %r is false",
            claim.run_id,
            claim.step_id,
            claim.spec.when,
        )
    outcome = Outcome(status)
    if not children:
        if run is None:
            run = session.execute(_COUNT_DOWN_RUN, {"b_run_id": claim.run_id, "b_now": now}).first()
        if run is not None and run.status == RunStatus.SUCCEEDED and run.leaves_left == 0:
            metrics.runs_total.labels(workflow=claim.workflow.name, status="succeeded").inc()
            if limited:  # its slot is free: the next waiting run takes it
                outcome.work.extend(admission.admit(session, settings, claim.workflow.name))
    else:
        released = session.execute(
            _RELEASE_CHILDREN,
            {"b_run_id": claim.run_id, "b_children": list(children), "b_now": now},
        ).all()
        for row in released:
            if row.status == StepStatus.QUEUED:
                spec = claim.workflow.steps[row.step_id]
                outcome.work.dispatches.append(
                    step_dispatch(
                        claim.run_id,
                        row.step_id,
                        row.attempts + 1,
                        spec.queue,
                        spec.timeout_s,
                        settings,
                        priority=claim.priority,
                    )
                )
    return outcome

"""Dead steps: a step recorded dead gets its dead letter (engine.dlq) and its run fails,
the run's steps that have not started skipped; a waiting step whose workflow version this
process cannot compile is buried the same way. Each writes the runs, steps and dead-letter
tables in the caller's transaction. Deciding that an attempt's failure is final is
engine.failures'."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import and_, update
from sqlalchemy.orm import Session

from engine import dlq, metrics
from engine.attempts import RUN_IS_RUNNING, Outcome
from engine.db import changed
from engine.models import Run, Step, utcnow
from engine.state import RunStatus, StepStatus
from engine.work import STEP_TASK, Work

log = logging.getLogger(__name__)
steps = Step.__table__
runs = Run.__table__
# The steps of a run that have not started an attempt: a failed run skips them.
NOT_STARTED = (StepStatus.PENDING, StepStatus.QUEUED, StepStatus.RETRYING)


def bury_step(
    session: Session,
    workflow_name: str,
    run_id: str,
    step_id: str,
    *,
    action: str,
    queue: str,
    task_id: str,
    attempts: int,
    failure: tuple[str, str, str],
    failed_at: datetime,
) -> Outcome:
    """A step recorded dead (by its caller): its dead letter, the run failed, in the
    caller's transaction. `failure` is (exception type, message, traceback)."""
    error_type, message, trace = failure
    work = Work()
    letter_id = dlq.record(
        session,
        work,
        task_name=STEP_TASK,
        task_id=task_id,
        queue=queue,
        args=[run_id, step_id],
        run_id=run_id,
        step_id=step_id,
        workflow=workflow_name,
        exception_type=error_type,
        message=message,
        trace=trace,
        attempts=attempts,
        failed_at=failed_at,
    )
    work.count(metrics.steps_total.labels(action=action, status="dead"))
    summary = f"step {step_id!r} failed after {attempts} attempt(s): {error_type}: {message}"
    work.extend(fail_run(session, workflow_name, run_id, summary[:2000]))
    log.error(
        "run %s step %s: dead after %s attempt(s): %s: %s (dead letter %s)",
        run_id,
        step_id,
        attempts,
        error_type,
        message,
        letter_id,
    )
    return Outcome("dead", work, dead_letter_id=letter_id, error=message)


def fail_run(session: Session, workflow_name: str, run_id: str, error: str) -> Work:
    """Fail the run, in the caller's transaction: every step of it that has not started
    (pending, queued, or waiting to retry), on the dead step's branch or another, is
    skipped, so the finished run shows no step waiting; a message already sent for one
    finds it skipped and runs nothing. Steps running now finish and are recorded, but
    release nothing into the failed run. A replay brings the skipped steps back
    (engine.resume)."""
    # The run row first, as a resume does: a step succeeding now holds a shared lock on it
    # until it has released its children, which are then skipped here with the others.
    failed = changed(
        session.execute(
            update(runs)
            .where(runs.c.id == run_id, runs.c.status == RunStatus.RUNNING)
            .values(status=RunStatus.FAILED, error=error, finished_at=utcnow())
        )
    )
    session.execute(
        update(steps)
        .where(steps.c.run_id == run_id, steps.c.status.in_(NOT_STARTED))
        .values(status=StepStatus.SKIPPED, next_attempt_at=None)
    )
    work = Work()
    if failed:
        work.count(metrics.runs_total.labels(workflow=workflow_name, status="failed"))
    return work


def bury_uncompilable(
    session: Session,
    run_id: str,
    workflow_name: str,
    step_id: str,
    *,
    task_id: str,
    previous: int | None,
    error: Exception,
) -> Outcome | None:
    """Dead-letter a waiting step whose workflow version this process cannot compile (its
    settings, STEP_TIMEOUT_MAX_S or RETRY_MAX_BACKOFF_S, were lowered below what the version
    uses): no attempt of it can run here, and a dropped message would only be sent again.
    One attempt is counted and the run fails, naming why; replay it once the settings allow
    the version again. None when the step was not this message's to take (a claim would
    have refused it)."""
    error_type, message, trace = dlq.describe(error)
    message = f"workflow {workflow_name!r} cannot be compiled here: {message}"[:10_000]
    now = utcnow()
    waiting = and_(
        steps.c.run_id == run_id,
        steps.c.step_id == step_id,
        steps.c.status.in_((StepStatus.QUEUED, StepStatus.RETRYING)),
        RUN_IS_RUNNING,
    )
    if previous is not None:
        waiting = and_(waiting, steps.c.attempts == previous)
    buried = session.execute(
        update(steps)
        .where(waiting)
        .values(
            status=StepStatus.DEAD,
            attempts=steps.c.attempts + 1,
            task_id=task_id,
            error=message,
            error_type=error_type,
            started_at=now,
            finished_at=now,
            next_attempt_at=None,
            lease_expires_at=None,
        )
        .returning(steps.c.attempts, steps.c.queue, steps.c.action),
        {"b_run_id": run_id},
    ).first()
    if buried is None:
        return None
    return bury_step(
        session,
        workflow_name,
        run_id,
        step_id,
        action=buried.action,
        queue=buried.queue,
        task_id=task_id,
        attempts=buried.attempts,
        failure=(error_type, message, trace),
        failed_at=now,
    )

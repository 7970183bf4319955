"""Failed step attempts: retry as the step's policy says, or bury the step in the
dead-letter queue and fail its run. Each is a compare-and-set on the attempt, in the
caller's transaction. Attempts whose worker died are engine.lost_attempts'."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import Update, and_, bindparam, select, update
from sqlalchemy.orm import Session

from engine import dlq, metrics
from engine.attempts import B_NOW, B_RUN_ID, MINE, RUN_IS_RUNNING, Outcome
from engine.config import Settings
from engine.db import changed
from engine.models import Run, Step, utcnow
from engine.state import RunStatus, StepStatus
from engine.work import STEP_TASK, Work, step_dispatch
from engine.workflows import compiled

log = logging.getLogger(__name__)
steps = Step.__table__
runs = Run.__table__
# The steps of a run that have not started an attempt: a failed run skips them.
NOT_STARTED = (StepStatus.PENDING, StepStatus.QUEUED, StepStatus.RETRYING)

_SELECT_RUN_FOR_FAILURE = select(
    runs.c.workflow, runs.c.version, runs.c.priority, runs.c.status
).where(runs.c.id == B_RUN_ID)


@cache
def _fail_update(retrying: bool | None, with_inputs: bool) -> Update:
    """The UPDATE recording a failed attempt: retrying (next attempt due at `b_next`), dead,
    or (None) skipped, its run failed meanwhile."""
    values: dict[str, Any] = {
        "error": bindparam("b_error", type_=steps.c.error.type),
        "error_type": bindparam("b_error_type", type_=steps.c.error_type.type),
        "lease_expires_at": None,
    }
    if with_inputs:
        values["inputs"] = bindparam("b_inputs", type_=steps.c.inputs.type)
    if retrying is None:
        values.update(status=StepStatus.SKIPPED, next_attempt_at=None)
    elif retrying:
        values.update(
            status=StepStatus.RETRYING,
            next_attempt_at=bindparam("b_next", type_=steps.c.next_attempt_at.type),
            dispatched_at=B_NOW,
        )
    else:
        values.update(status=StepStatus.DEAD, finished_at=B_NOW)
    return update(steps).where(MINE).values(**values)


def fail_attempt(
    session: Session,
    settings: Settings,
    run_id: str,
    step_id: str,
    *,
    task_id: str,
    attempt: int,
    error_type: str,
    message: str,
    trace: str = "",
    retryable: bool = True,
    inputs: Any = None,
    lost: bool = False,
    retry_after_s: float | None = None,
) -> Outcome:
    """Record a failed attempt: schedule the next one, or bury the step in the DLQ. A `lost`
    attempt (its worker died) is judged by the delivery cap instead of the step's retry
    policy: retried while the step's attempts are fewer than MAX_DELIVERIES, however few
    the policy allows. `retry_after_s` (what the action was told to wait) lengthens the
    backoff up to the step's max_backoff_s, which RETRY_MAX_BACKOFF_S bounds."""
    run = session.execute(_SELECT_RUN_FOR_FAILURE, {"b_run_id": run_id}).first()
    if run is None:
        return Outcome("lost")
    workflow = compiled(session, settings, run.workflow, run.version)
    spec = workflow.steps[step_id]
    now = utcnow()
    recorded = {
        "b_run_id": run_id,
        "b_step_id": step_id,
        "b_task_id": task_id,
        "b_attempt": attempt,
        "b_error": message[:10_000],
        "b_error_type": error_type,
        "b_inputs": inputs,
        "b_now": now,
    }
    allowed = settings.max_deliveries if lost else spec.retry.max_attempts
    if lost and attempt >= allowed:
        message += f"; the delivery cap MAX_DELIVERIES={settings.max_deliveries} is reached"
        recorded["b_error"] = message[:10_000]
    if retryable and attempt < allowed and run.status != RunStatus.RUNNING:
        # The run failed while this attempt ran: no next attempt into it. The step is
        # skipped, as the failed run's other waiting steps are; a replay brings it back.
        if not changed(session.execute(_fail_update(None, inputs is not None), recorded)):
            return Outcome("lost")
        log.info(
            "run %s step %s: attempt %s failed (%s) after its run ended; skipped",
            run_id,
            step_id,
            attempt,
            error_type,
        )
        return Outcome("skipped", error=message)
    if retryable and attempt < allowed:
        delay = spec.retry.delay(attempt)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, spec.retry.max_backoff_s))
        if not changed(
            session.execute(
                _fail_update(True, inputs is not None),
                {**recorded, "b_next": now + timedelta(seconds=delay)},
            )
        ):
            return Outcome("lost")
        metrics.steps_total.labels(action=spec.action, status="retrying").inc()
        metrics.task_retries_total.inc()
        log.info(
            "run %s step %s: attempt %s/%s failed (%s), retry in %.2f s",
            run_id,
            step_id,
            attempt,
            spec.retry.max_attempts,
            error_type,
            delay,
        )
        return Outcome(
            "retrying",
            Work(
                [
                    step_dispatch(
                        run_id,
                        step_id,
                        attempt + 1,
                        spec.queue,
                        spec.timeout_s,
                        settings,
                        countdown=delay,
                        priority=run.priority,
                    )
                ]
            ),
            retry_in_s=delay,
            error=message,
        )
    if not changed(session.execute(_fail_update(False, inputs is not None), recorded)):
        return Outcome("lost")
    return bury_step(
        session,
        workflow.name,
        run_id,
        step_id,
        action=spec.action,
        queue=spec.queue,
        task_id=task_id,
        attempts=attempt,
        failure=(error_type, message, trace),
        failed_at=now,
    )


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
    letter_id = dlq.record(
        session,
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
    metrics.steps_total.labels(action=action, status="dead").inc()
    summary = f"step {step_id!r} failed after {attempts} attempt(s): {error_type}: {message}"
    work = fail_run(session, workflow_name, run_id, summary[:2000])
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
    if failed:
        metrics.runs_total.labels(workflow=workflow_name, status="failed").inc()
    return Work()


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

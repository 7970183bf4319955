"""Failed step attempts: retry as the step's policy says, or bury the step in the
dead-letter queue and fail its run (engine.dead_steps). Each is a compare-and-set on the
attempt, in the caller's transaction. Attempts whose worker died are engine.lost_attempts'."""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import cache
from typing import Any

from sqlalchemy import Update, bindparam, select, update
from sqlalchemy.orm import Session

from engine import admission, metrics
from engine.attempts import B_NOW, B_RUN_ID, MINE, Outcome
from engine.config import Settings
from engine.db import changed
from engine.dead_steps import bury_step
from engine.models import Run, Step, utcnow
from engine.state import RunStatus, StepStatus
from engine.work import Work, step_dispatch
from engine.workflows import compiled

log = logging.getLogger(__name__)
steps = Step.__table__
runs = Run.__table__

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
        log.info(
            "run %s step %s: attempt %s/%s failed (%s), retry in %.2f s",
            run_id,
            step_id,
            attempt,
            spec.retry.max_attempts,
            error_type,
            delay,
        )
        work = Work(
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
        )
        work.count(metrics.steps_total.labels(action=spec.action, status="retrying"))
        work.count(metrics.task_retries_total)
        return Outcome("retrying", work, retry_in_s=delay, error=message)
    if not changed(session.execute(_fail_update(False, inputs is not None), recorded)):
        return Outcome("lost")
    buried = bury_step(
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
    if workflow.concurrency is not None:  # its run failed: the next waiting run takes its slot
        buried.work.extend(admission.admit(session, settings, workflow.name))
    return buried

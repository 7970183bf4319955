"""Step attempts whose worker died before recording an outcome (killed, out of memory,
host gone): recorded as a WorkerLostError failure, which engine.failures retries or
dead-letters. Found by the reconciler (a lease run out), by a claim (a redelivered message
whose attempt is still running), or by a redelivered carrier of inline steps."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.attempts import B_RUN_ID, INLINE_MARK, Outcome
from engine.config import Settings
from engine.failures import fail_attempt
from engine.models import Step
from engine.state import StepStatus

log = logging.getLogger(__name__)
steps = Step.__table__

LOST_ERROR_TYPE = "WorkerLostError"


def lost_attempt_message(attempt: int) -> str:
    """What a step's error says of an attempt whose worker died."""
    return f"the worker running attempt {attempt} died before recording an outcome"


def record_lost_attempt(
    session: Session,
    settings: Settings,
    run_id: str,
    step_id: str,
    *,
    task_id: str,
    attempt: int,
) -> Outcome:
    """Record an attempt whose worker died before it recorded an outcome (killed, out of
    memory, host gone) as a WorkerLostError failure: retried, whatever the step's retry
    policy, until MAX_DELIVERIES attempts, then dead-lettered, so a step that kills its
    worker every time cannot kill workers forever. A compare-and-set on the attempt:
    recorded once."""
    message = lost_attempt_message(attempt)
    log.warning("run %s step %s: %s", run_id, step_id, message)
    return fail_attempt(
        session,
        settings,
        run_id,
        step_id,
        task_id=task_id,
        attempt=attempt,
        error_type=LOST_ERROR_TYPE,
        message=message,
        lost=True,
    )


# A run has few steps running at once (one per worker process at most): they are filtered here.
_SELECT_RUNNING = select(
    steps.c.step_id, steps.c.task_id, steps.c.attempts, steps.c.worker, steps.c.delivery_tag
).where(steps.c.run_id == B_RUN_ID, steps.c.status == StepStatus.RUNNING)


def record_lost_inline(
    session: Session,
    settings: Settings,
    run_id: str,
    carrier_task_id: str,
    delivery: str | None,
) -> Outcome | None:
    """A redelivered message found its own work done: the step it was running inline when
    its previous delivery died is still `running` under its name and that delivery's tag
    (`delivery`). Record that attempt lost (retried, or dead-lettered at the delivery cap);
    None when there is none. A step another copy of the carrier's message runs inline (a
    resend has a tag of its own) is left to it."""
    if delivery is None:
        return None
    outcome: Outcome | None = None
    suffix = INLINE_MARK + carrier_task_id
    for row in session.execute(_SELECT_RUNNING, {"b_run_id": run_id}).all():
        if row.delivery_tag != delivery or not (row.worker or "").endswith(suffix):
            continue
        recorded = record_lost_attempt(
            session, settings, run_id, row.step_id, task_id=row.task_id, attempt=row.attempts
        )
        if outcome is None or outcome.status == "lost":
            outcome = recorded
        else:
            outcome.work.extend(recorded.work)
    return outcome

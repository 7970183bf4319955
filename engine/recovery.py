"""Recovery from lost work: the reconciler and attempts whose worker was killed.

The database is the record; the broker only carries work. The reconciler finds work the
database says is waiting but no message carries any more, and sends it again. Duplicate
messages are harmless: every claim is a compare-and-set.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from engine import workflows
from engine.config import Settings
from engine.execution import Outcome, fail_attempt, parse_task_id
from engine.models import Run, Step, utcnow
from engine.state import RunStatus, StepStatus
from engine.work import Work, plan_dispatch, step_dispatch

log = logging.getLogger(__name__)
steps = Step.__table__
runs = Run.__table__
SWEEP_LIMIT = 1000


def reconcile(session: Session, settings: Settings) -> Work:
    """Re-dispatch runs left queued and steps left queued, retrying or running past their
    lease. Each row is stamped when sent, so two sweeps at once send it once."""
    now = utcnow()
    stale = now - timedelta(seconds=settings.dispatch_grace_s)
    work = Work()
    run_ids = [
        row.id
        for row in session.execute(
            select(runs.c.id)
            .where(
                runs.c.status == RunStatus.QUEUED,
                or_(runs.c.dispatched_at.is_(None), runs.c.dispatched_at < stale),
            )
            .limit(SWEEP_LIMIT)
        )
    ]
    for run_id in run_ids:
        run = session.execute(
            update(runs)
            .where(
                runs.c.id == run_id,
                runs.c.status == RunStatus.QUEUED,
                or_(runs.c.dispatched_at.is_(None), runs.c.dispatched_at < stale),
            )
            .values(dispatched_at=now)
            .returning(runs.c.workflow, runs.c.version, runs.c.priority)
        ).first()
        if run is not None:
            workflow = workflows.compiled(session, settings, run.workflow, run.version)
            first = max((s.timeout_s for s in workflow.steps.values() if not s.needs), default=0)
            work.dispatches.append(plan_dispatch(run_id, first, settings, run.priority))

    waiting = or_(
        and_(steps.c.status == StepStatus.QUEUED, steps.c.dispatched_at < stale),
        and_(
            steps.c.status == StepStatus.RETRYING,
            steps.c.next_attempt_at < stale,
            steps.c.dispatched_at < stale,
        ),
        and_(
            steps.c.status == StepStatus.RUNNING,
            steps.c.lease_expires_at < now,
            or_(steps.c.dispatched_at.is_(None), steps.c.dispatched_at < stale),
        ),
    )
    keys = session.execute(
        select(steps.c.run_id, steps.c.step_id).where(waiting).limit(SWEEP_LIMIT)
    ).all()
    for key in keys:
        row = session.execute(
            update(steps)
            .where(steps.c.run_id == key.run_id, steps.c.step_id == key.step_id, waiting)
            .values(dispatched_at=now)
            .returning(steps.c.status, steps.c.attempts, steps.c.queue, steps.c.timeout_s)
        ).first()
        if row is None:
            continue
        # A queued step's message carries its next attempt; a running one lost its worker,
        # and the message for the attempt it held is the one to send again.
        attempt = row.attempts if row.status == StepStatus.RUNNING else row.attempts + 1
        work.dispatches.append(
            step_dispatch(
                key.run_id, key.step_id, max(1, attempt), row.queue, row.timeout_s, settings
            )
        )
    if work.dispatches:
        log.warning(
            "reconciler: re-dispatching %d message(s) the broker no longer carries",
            len(work.dispatches),
        )
    return work


def record_killed_attempt(
    session: Session, settings: Settings, task_id: str, error_type: str, message: str
) -> Outcome | None:
    """An attempt whose worker child was killed (hard time limit): record it as failed."""
    key = parse_task_id(task_id)
    if key is None:
        return None
    row = session.execute(
        select(steps.c.run_id, steps.c.step_id, steps.c.attempts).where(
            steps.c.run_id == key[0],
            steps.c.step_id == key[1],
            steps.c.task_id == task_id,
            steps.c.status == StepStatus.RUNNING,
        )
    ).first()
    if row is None:
        return None
    return fail_attempt(
        session,
        settings,
        row.run_id,
        row.step_id,
        task_id=task_id,
        attempt=row.attempts,
        error_type=error_type,
        message=message,
    )

"""Steps left live in a run that has ended, which the reconciler settles.

A failed run skips its steps that have not started (engine.dead_steps.fail_run) and a
cancelled run cancels every live step (engine.cancels.cancel). Two kinds escape that. A step
already running when its run failed, whose whole worker then died: nothing records that
attempt, and its lease runs out in a run the lost-lease sweep no longer looks at. And the
steps earlier versions left pending, queued or retrying in a failed run. Both are settled
as their run's other steps were: skipped in a failed run, so that a replay brings them back
(engine.resume), cancelled in a cancelled one. An attempt past its lease is recorded as
lost, as engine.failures records one, but no retry is sent and no dead letter written: the
run has ended already. No step outcome is counted, as none is for the steps fail_run skips.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import Session

from engine.db import changed
from engine.dead_steps import NOT_STARTED
from engine.lost_attempts import LOST_ERROR_TYPE, lost_attempt_message
from engine.models import Run, Step
from engine.state import RunStatus, StepStatus

log = logging.getLogger(__name__)
steps = Step.__table__
runs = Run.__table__
# What an ended run makes of the live steps it holds.
SETTLED = {RunStatus.FAILED: StepStatus.SKIPPED, RunStatus.CANCELLED: StepStatus.CANCELLED}


def settle_ended_runs(session: Session, now: datetime, limit: int) -> int:
    """Settle up to `limit` steps left live in failed or cancelled runs: those that have not
    started, and those running past their lease. The sweep locks the run rows too (a resume
    changes the run row first, then its steps) and skips rows another holds; each step is
    a compare-and-set UPDATE, so two sweeps at once settle it once. Returns how many."""
    leftover = or_(
        steps.c.status.in_(NOT_STARTED),
        and_(steps.c.status == StepStatus.RUNNING, steps.c.lease_expires_at < now),
    )
    found = session.execute(
        select(
            steps.c.run_id,
            steps.c.step_id,
            steps.c.status,
            steps.c.task_id,
            steps.c.attempts,
            runs.c.status.label("run_status"),
        )
        .where(runs.c.id == steps.c.run_id, runs.c.status.in_(list(SETTLED)), leftover)
        .order_by(steps.c.run_id, steps.c.step_id)
        .limit(limit)
        .with_for_update(of=[steps, runs], skip_locked=True)
    ).all()
    settled = 0
    for row in found:
        still_ended = exists().where(runs.c.id == row.run_id, runs.c.status == row.run_status)
        where = [
            steps.c.run_id == row.run_id,
            steps.c.step_id == row.step_id,
            steps.c.status == row.status,
            still_ended,
        ]
        values: dict[str, Any] = {
            "status": SETTLED[RunStatus(row.run_status)],
            "lease_expires_at": None,
            "next_attempt_at": None,
        }
        if row.run_status == RunStatus.CANCELLED:
            values["finished_at"] = now
        if row.status == StepStatus.RUNNING:
            where += [
                steps.c.task_id == row.task_id,
                steps.c.attempts == row.attempts,
                steps.c.lease_expires_at < now,
            ]
            values.update(error=lost_attempt_message(row.attempts), error_type=LOST_ERROR_TYPE)
        if not changed(session.execute(update(steps).where(*where).values(**values))):
            continue
        settled += 1
        if row.status == StepStatus.RUNNING:
            log.warning(
                "run %s step %s: %s after its run ended; %s",
                row.run_id,
                row.step_id,
                lost_attempt_message(row.attempts),
                values["status"],
            )
    if settled:
        log.warning("reconciler: %d step(s) left live in ended runs settled", settled)
    return settled

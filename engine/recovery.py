"""Recovery from lost work: the reconciler and attempts whose worker was killed.

The database is the record; the broker only carries work. The reconciler finds work the
database says is waiting but no message carries any more, and sends it again. Duplicate
messages are harmless: every claim is a compare-and-set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, and_, exists, or_, select, update
from sqlalchemy.orm import Session

from engine import concurrency, delayed, leftovers, metrics
from engine.attempts import Outcome, parse_task_id
from engine.config import Settings
from engine.db import changed
from engine.failures import fail_attempt
from engine.lost_attempts import record_lost_attempt
from engine.models import Run, Step, utcnow
from engine.state import STEP_LIVE, RunStatus, StepStatus
from engine.work import MANAGER_QUEUE, Work, step_dispatch

log = logging.getLogger(__name__)
steps = Step.__table__
runs = Run.__table__
SWEEP_LIMIT = 1000
# A reading of the broker: for each queue named, when its oldest waiting message was sent
# (epoch seconds), None for an empty queue; a queue it cannot tell about is left out.
OldestWaiting = Callable[[Sequence[str]], Mapping[str, float | None]]


def reconcile(
    session: Session, settings: Settings, oldest_waiting: OldestWaiting | None = None
) -> Work:
    """Send again the work the database says is waiting but no message carries: runs left
    queued, steps left queued or retrying past DISPATCH_GRACE_S, and record the attempts of
    steps left running past their lease as lost (their retry is sent, or they are buried).
    Steps left live in a failed or cancelled run are settled (engine.leftovers). With
    `oldest_waiting` (a reading of the broker), a row whose message may still wait in a
    backed-up queue is left alone (see _cutoffs).

    Each row is stamped, or its attempt recorded, by a conditional UPDATE, and the sweep
    skips rows another sweep holds, so two sweeps at once send each message once."""
    now = utcnow()
    grace = timedelta(seconds=settings.dispatch_grace_s)
    stale = now - grace
    cutoffs = _cutoffs(session, stale, grace, oldest_waiting)
    work = Work()
    unsent = and_(
        or_(
            runs.c.dispatched_at.is_(None),
            runs.c.dispatched_at < cutoffs.get(MANAGER_QUEUE, stale),
        ),
        # A delayed run waits with its not_before as its dispatched_at (engine.delayed), so
        # the cutoff keeps it out until it is due; said here too, whatever that stamp says.
        or_(runs.c.not_before.is_(None), runs.c.not_before <= now),
        # A run waiting for a slot of its workflow's concurrency limit was never sent, and
        # is not to be: engine.admission sends it once admitted.
        runs.c.waiting.is_(None),
    )
    # A delayed run that no tick sent (beat down), read before the UPDATE below stamps it.
    due_unsent = and_(*delayed.WAITING[1:]).label("delayed")
    queued = session.execute(
        select(runs.c.id, due_unsent)
        .where(runs.c.status == RunStatus.QUEUED, unsent)
        .order_by(runs.c.id)
        .limit(SWEEP_LIMIT)
        .with_for_update(skip_locked=True)
    ).all()
    for run_id, was_delayed in queued:
        run = session.execute(
            update(runs)
            .where(runs.c.id == run_id, runs.c.status == RunStatus.QUEUED, unsent)
            .values(dispatched_at=now)
            .returning(runs.c.workflow, runs.c.version, runs.c.priority)
        ).first()
        if (
            run is not None
            and was_delayed
            and concurrency.limit_of(session, settings, run.workflow, run.version) is not None
        ):
            # Of a workflow with a concurrency limit: it waits for a slot, as the tick would
            # have set it (engine.delayed.hold), admitted by the next tick or finish.
            delayed.hold(session, [run_id])
        elif run is not None:
            work.dispatches.append(
                delayed.plan_message(
                    session, settings, run_id, run.workflow, run.version, run.priority
                )
            )

    # A step's message carries its next attempt; only steps of running runs are claimable.
    waiting = or_(
        and_(
            steps.c.status == StepStatus.QUEUED,
            or_(steps.c.dispatched_at.is_(None), _dispatched_before(cutoffs, stale)),
        ),
        and_(
            steps.c.status == StepStatus.RETRYING,
            steps.c.next_attempt_at < stale,
            or_(steps.c.dispatched_at.is_(None), steps.c.dispatched_at < stale),
        ),
    )
    live = and_(runs.c.id == steps.c.run_id, runs.c.status == RunStatus.RUNNING)
    keys = session.execute(
        select(steps.c.run_id, steps.c.step_id, runs.c.priority)
        .where(live, waiting)
        .order_by(steps.c.run_id, steps.c.step_id)
        .limit(SWEEP_LIMIT)
        .with_for_update(of=steps, skip_locked=True)
    ).all()
    for key in keys:
        row = session.execute(
            update(steps)
            .where(steps.c.run_id == key.run_id, steps.c.step_id == key.step_id, waiting)
            .values(dispatched_at=now)
            .returning(steps.c.attempts, steps.c.queue, steps.c.timeout_s)
        ).first()
        if row is not None:
            work.dispatches.append(
                step_dispatch(
                    key.run_id,
                    key.step_id,
                    row.attempts + 1,
                    row.queue,
                    row.timeout_s,
                    settings,
                    priority=key.priority,
                )
            )

    # Past its lease (the hard time limit plus LEASE_GRACE_S) an attempt's worker is gone:
    # killed with its whole host, or its message is held by a dead worker until the broker's
    # visibility timeout. Record the attempt as lost; its retry goes out with the work.
    lost = session.execute(
        select(steps.c.run_id, steps.c.step_id, steps.c.task_id, steps.c.attempts)
        .where(live, steps.c.status == StepStatus.RUNNING, steps.c.lease_expires_at < now)
        .order_by(steps.c.run_id, steps.c.step_id)
        .limit(SWEEP_LIMIT)
        .with_for_update(of=steps, skip_locked=True)
    ).all()
    recorded = 0
    for row in lost:
        outcome = record_lost_attempt(
            session,
            settings,
            row.run_id,
            row.step_id,
            task_id=row.task_id,
            attempt=row.attempts,
        )
        if outcome.status != "lost":
            recorded += 1
            work.extend(outcome.work)
    leftovers.settle_ended_runs(session, now, SWEEP_LIMIT)
    fail_stalled_runs(session, stale, work)
    if work.dispatches or recorded:
        log.warning(
            "reconciler: %d message(s) the broker no longer carries sent again, "
            "%d attempt(s) past their lease recorded as lost",
            len(work.dispatches),
            recorded,
        )
    return work


def _cutoffs(
    session: Session, stale: datetime, grace: timedelta, oldest_waiting: OldestWaiting | None
) -> dict[str, datetime]:
    """Per queue, the time before which a waiting row's dispatch counts as lost. A queue
    hands out its messages oldest first: while its oldest waiting message was sent after a
    row was dispatched (give or take DISPATCH_GRACE_S for the send), that row's message may
    still wait behind it, and sending it again would only lengthen a backed-up queue. An
    empty queue, or one the reading leaves out, keeps DISPATCH_GRACE_S alone; so does every
    queue when the broker cannot be read."""
    if oldest_waiting is None:
        return {}
    queues = set(
        session.scalars(
            select(steps.c.queue)
            .where(steps.c.status == StepStatus.QUEUED, steps.c.dispatched_at < stale)
            .distinct()
        )
    )
    try:
        reading = oldest_waiting(sorted(queues | {MANAGER_QUEUE}))
    except Exception as exc:  # the broker is down: every stale row is sent again
        log.warning("reconciler: the broker's queues could not be read (%s)", exc)
        return {}
    return {
        queue: min(stale, datetime.fromtimestamp(sent, UTC) - grace)
        for queue, sent in reading.items()
        if sent is not None
    }


def _dispatched_before(cutoffs: dict[str, datetime], stale: datetime) -> ColumnElement[bool]:
    """A queued step dispatched before its queue's cutoff (stale for any other queue)."""
    column = steps.c.dispatched_at
    if not cutoffs:
        return column < stale
    return or_(
        *(and_(steps.c.queue == queue, column < cutoff) for queue, cutoff in cutoffs.items()),
        and_(steps.c.queue.not_in(list(cutoffs)), column < stale),
    )


def fail_stalled_runs(session: Session, stale: object, work: Work) -> list[str]:
    """Fail runs shown `running` with no step left that can run: a replay of one dead step
    finished while another of the run's steps is still dead. Replaying that one resumes it.
    Each is counted in `work`, once the caller committed."""
    now = utcnow()
    no_live_step = ~exists().where(steps.c.run_id == runs.c.id, steps.c.status.in_(STEP_LIVE))
    stalled = session.execute(
        select(runs.c.id, runs.c.workflow)
        .where(runs.c.status == RunStatus.RUNNING, runs.c.started_at < stale, no_live_step)
        .limit(SWEEP_LIMIT)
    ).all()
    failed = []
    for run in stalled:
        dead = session.scalars(
            select(steps.c.step_id).where(
                steps.c.run_id == run.id, steps.c.status == StepStatus.DEAD
            )
        ).all()
        error = f"step(s) {', '.join(dead) or '?'} still dead; replay them to finish the run"
        if changed(
            session.execute(
                update(runs)
                .where(runs.c.id == run.id, runs.c.status == RunStatus.RUNNING, no_live_step)
                .values(status=RunStatus.FAILED, finished_at=now, error=error)
            )
        ):
            work.count(metrics.runs_total.labels(workflow=run.workflow, status="failed"))
            failed.append(run.id)
    if failed:
        log.warning("reconciler: %d run(s) with no step left to run marked failed", len(failed))
    return failed


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

"""The periodic tick: submit one run for each due schedule, then advance it.

Each fire's run carries an idempotency key made of the schedule's id and the fire time,
under the schedule's creator, so a tick repeated (a second beat, a redelivered message)
finds the run already there instead of submitting another (and so does a backfill of that
time, engine.schedules.backfill); the run's scheduled_for is its fire time. Fire times
missed while nothing ticked are skipped but the latest (like Airflow's catchup=False); a
backfill submits them later. A due schedule whose token was revoked is paused instead
(engine.schedules.tokens)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine import metrics, runs
from engine.auth import Caller
from engine.config import Settings
from engine.errors import EngineError, WorkflowPaused
from engine.models import in_utc, timestamp
from engine.schedules import timing, tokens
from engine.schedules.models import Schedule
from engine.work import Work

log = logging.getLogger(__name__)


@dataclass
class Fired:
    """What a tick did: the work to send once committed (its messages and its counts), the
    runs per schedule name, and the schedules it paused because their token was revoked."""

    work: Work = field(default_factory=Work)
    runs: dict[str, str] = field(default_factory=dict)
    skipped: int = 0
    revoked: list[str] = field(default_factory=list)


def idempotency_key(schedule_id: str, fire_at: datetime) -> str:
    """The key of a schedule's run for one fire time: the same from every tick."""
    return f"schedule:{schedule_id}:{timestamp(in_utc(fire_at))}"


def lag_seconds(session: Session, now: datetime) -> float:
    """How long the most overdue enabled schedule has waited past its fire time (0 when
    none is due). A tick every SCHEDULE_TICK_S keeps it near 0; it grows while nothing
    fires: beat down, no worker on the manager queue, or a tick that keeps failing."""
    oldest = session.scalar(
        select(func.min(Schedule.next_fire_at)).where(Schedule.enabled.is_(True))
    )
    if oldest is None:
        return 0.0
    return max(0.0, (in_utc(now) - in_utc(oldest)).total_seconds())


def fire_due(session: Session, settings: Settings, now: datetime) -> Fired:
    """Submit a run for each enabled schedule due at `now` (at most SCHEDULE_BATCH of them,
    the longest overdue first; the next tick takes the rest) and move each to its next
    fire time after now. On PostgreSQL rows another tick holds are skipped (SKIP LOCKED);
    SQLite's writers take turns. One whose token was revoked is paused instead (one query
    looks up the revocations of them all). The caller commits, then sends `work`."""
    now = in_utc(now)
    due = session.scalars(
        select(Schedule)
        .where(Schedule.enabled.is_(True), Schedule.next_fire_at <= now)
        .order_by(Schedule.next_fire_at)
        .limit(settings.schedule_batch)
        .with_for_update(skip_locked=True)
    ).all()
    revoked = tokens.revocations(session, (schedule.created_jti for schedule in due))
    fired = Fired()
    for schedule in due:
        revocation = revoked.get(schedule.created_jti or "")
        if revocation is not None:
            tokens.stop(session, schedule, revocation, now, fired.work)
            fired.revoked.append(schedule.name)
        else:
            _fire(session, settings, schedule, now, fired)
    return fired


def _fire(
    session: Session, settings: Settings, schedule: Schedule, now: datetime, fired: Fired
) -> None:
    assert schedule.next_fire_at is not None
    step = timing.due(schedule.cron, schedule.timezone, schedule.next_fire_at, now)
    if step.skipped:
        more = "+" if step.skipped >= timing.MAX_COUNTED else ""
        log.warning(
            "schedule %s (%s): %d%s missed fire time(s) skipped; one run for %s",
            schedule.id,
            schedule.name,
            step.skipped,
            more,
            timestamp(step.fire_at),
        )
        fired.work.count(metrics.schedule_fires_skipped_total, step.skipped)
        fired.skipped += step.skipped
    request = runs.SubmitRun(
        schedule.workflow,
        schedule.params,
        schedule.version,
        schedule.priority,
        idempotency_key(schedule.id, step.fire_at),
        scheduled_for=step.fire_at,
    )
    creator = Caller(schedule.created_by, tuple(schedule.created_scopes or ()))
    try:
        run, work, created = runs.submit(session, settings, request, creator)
    except WorkflowPaused as exc:
        # An operator stopped the workflow: this fire time passes without a run (it is not
        # made up on resume), and the schedule says why; not counted as refused, which alerts.
        log.info("schedule %s (%s): no run submitted: %s", schedule.id, schedule.name, exc)
        fired.work.count(metrics.schedule_fires_total.labels(outcome="paused"))
        schedule.last_error = f"{type(exc).__name__}: {exc}"
    except EngineError as exc:
        # The workflow (or its version) is gone, or its latest version wants other params:
        # this fire submits nothing, and the schedule says why until a fire succeeds.
        log.error("schedule %s (%s): no run submitted: %s", schedule.id, schedule.name, exc)
        fired.work.count(metrics.schedule_fires_total.labels(outcome="refused"))
        schedule.last_error = f"{type(exc).__name__}: {exc}"
    else:
        outcome = "submitted" if created else "duplicate"
        fired.work.count(metrics.schedule_fires_total.labels(outcome=outcome))
        fired.work.extend(work)
        fired.runs[schedule.name] = run.id
        schedule.last_run_id = run.id
        schedule.last_error = None
        log.info(
            "schedule %s (%s): run %s for %s",
            schedule.id,
            schedule.name,
            run.id,
            timestamp(step.fire_at),
        )
    schedule.last_fired_at = step.fire_at
    schedule.next_fire_at = step.next_fire_at
    schedule.updated_at = now

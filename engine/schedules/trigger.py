"""Running a schedule now, outside its cron times: an operator checks a fix, or a day's run
is wanted early (Airflow's "Trigger DAG", sidekiq-cron's "Enqueue now").

The run is the one the schedule's next fire would submit: its workflow, version, params and
priority, submitted as its owner with the scopes of the token it acts with, through the same
use case as `POST /runs` (a paused workflow refuses it); its scheduled_for is the moment of
the trigger, as a fire's is its fire time. Its cron times stay as they were,
paused or not; the schedule's `last_run_id` names the run. Who may see the schedule may
trigger it (its owner, or admin.schedules, audited then), since the schedule, not the caller,
says what the run does; but not while the token it acts with is revoked. An Idempotency-Key
from the caller makes a repeated trigger answer the first run.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from engine import audit, runs
from engine.auth import Caller
from engine.config import Settings
from engine.models import Run, utcnow
from engine.schedules import manage, tokens
from engine.work import Work

# The caller's key is kept under the schedule's id in the owner's keys (runs are unique by
# owner and key): what is left of the 200 characters a key may have.
KEY_PREFIX = "trigger:"
KEY_MAX = 200 - len(KEY_PREFIX) - 36 - 1


def trigger(
    session: Session,
    settings: Settings,
    ref: str,
    caller: Caller,
    key: str | None = None,
) -> tuple[Run, Work, bool]:
    """Submit the run the schedule's next fire would, now: (the run, the work to send once
    committed, whether it is new; a repeated key answers the first run)."""
    schedule = manage.get(session, ref, caller)
    tokens.check_can_submit(session, schedule, "triggered")
    request = runs.SubmitRun(
        schedule.workflow,
        schedule.params,
        schedule.version,
        schedule.priority,
        f"{KEY_PREFIX}{schedule.id}:{key}" if key is not None else None,
        scheduled_for=utcnow(),
    )
    owner = Caller(schedule.created_by, tuple(schedule.created_scopes or ()))
    run, work, created = runs.submit(session, settings, request, owner)
    if created:
        schedule.last_run_id = run.id
        schedule.updated_at = utcnow()
        if caller.sub != schedule.created_by:
            audit.record(
                session,
                actor=caller.sub,
                action="schedule.trigger",
                target=f"schedule:{schedule.id}",
                detail={"name": schedule.name, "owner": schedule.created_by, "run_id": run.id},
            )
    return run, work, created

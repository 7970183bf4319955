"""Backfilling a schedule: one run for each of its fire times in a past window (Airflow's
`dags backfill`), as the tick would have submitted it, after an outage in which the tick
submitted only the latest missed time, or for times before the schedule existed.

Each run goes through the same use case as a fire's (engine.runs.submit), as the schedule's
owner with the scopes of the token it acts with, under the fire's own idempotency key
(firing.idempotency_key): a fire time that has its run already (from a tick, or an earlier
backfill) is answered by that run, never a second one. Its scheduled_for is its fire time.
The schedule's next fire and last run stay as they were, and a paused schedule may be
backfilled. The protocol is bulk replay's (engine.bulk_replay): a dry run names the fire
times and how many have their run; the real call confirms that count (a Conflict when it
changed) with a reason, is audited as schedule.backfill, and submits every run in the
caller's transaction; the caller commits, then sends the work. Who may see the schedule may
backfill it (its owner, or admin.schedules), but not while the token it acts with is
revoked or its workflow is paused."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine import audit, pauses, runs
from engine.auth import Caller
from engine.config import Settings
from engine.errors import Conflict, InvalidInput
from engine.models import Run, timestamp, utcnow
from engine.replay import require_reason
from engine.schedules import firing, manage, timing, tokens
from engine.schedules.models import Schedule
from engine.work import Work

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """A backfill's window, its fire times in order, and the runs those that have one have
    already, by fire time."""

    schedule: Schedule
    since: datetime
    until: datetime
    fire_times: list[datetime]
    existing: dict[datetime, str]


@dataclass
class Backfilled:
    """What a backfill did: each fire time's run and whether it was submitted now, and the
    work to send once committed."""

    plan: Plan
    runs: list[tuple[datetime, str, bool]] = field(default_factory=list)
    work: Work = field(default_factory=Work)

    @property
    def submitted(self) -> int:
        return sum(1 for _, _, created in self.runs if created)

    @property
    def existing(self) -> int:
        return len(self.runs) - self.submitted


def plan(
    session: Session,
    settings: Settings,
    ref: str,
    caller: Caller,
    since: str | None,
    until: str | None,
    now: datetime | None = None,
) -> Plan:
    """The dry run: the fire times of the schedule `ref` from `since` (included) to `until`
    (excluded; ISO 8601, UTC without an offset), and those with a run already. InvalidInput
    names `since` or `until` when missing or unreadable, `until` when not after `since`, in
    the future, or when the window holds more than SCHEDULE_BACKFILL_MAX fire times."""
    schedule = manage.get(session, ref, caller)
    _check_can_submit(session, settings, schedule)
    start, end = _window(since, until, now or utcnow())
    limit = settings.schedule_backfill_max
    try:
        times = timing.between(schedule.cron, schedule.timezone, start, end, limit + 1)
    except OverflowError as exc:  # the window begins at the very start of year 1
        raise InvalidInput(
            "since is too early for the schedule's timezone",
            errors=[{"field": "since", "message": "a time after the year 1"}],
        ) from exc
    if len(times) > limit:
        raise InvalidInput(
            f"more than {limit} fire times of {schedule.name!r} fall in the window; one "
            "backfill submits at most SCHEDULE_BACKFILL_MAX runs",
            errors=[{"field": "until", "message": f"narrow the window to {limit} fire times"}],
        )
    return Plan(schedule, start, end, times, _runs_of(session, schedule, times))


def backfill(
    session: Session,
    settings: Settings,
    ref: str,
    caller: Caller,
    since: str | None,
    until: str | None,
    *,
    confirm_count: int | None,
    reason: str | None,
    now: datetime | None = None,
) -> Backfilled:
    """Submit the run of each fire time in the window that has none, as its fire would
    have: `confirm_count` must be the number of fire times the dry run gave (else Conflict
    naming it). Audited as schedule.backfill; the caller commits, then sends the work."""
    missing = [
        name
        for name, value in (("confirm_count", confirm_count), ("reason", reason))
        if value is None
    ]
    if missing:
        raise InvalidInput(
            "a backfill needs confirm_count and reason (or dry_run: true)",
            errors=[{"field": name, "message": "required unless dry_run"} for name in missing],
        )
    reason = require_reason(reason)
    found = plan(session, settings, ref, caller, since, until, now)
    if confirm_count != len(found.fire_times):
        raise Conflict(
            f"confirm_count is {confirm_count} but the window holds {len(found.fire_times)} "
            "fire times now; run the dry run again",
            errors=[
                {
                    "field": "confirm_count",
                    "message": f"{len(found.fire_times)} fire times, {confirm_count} given",
                }
            ],
        )
    schedule = found.schedule
    owner = Caller(schedule.created_by, tuple(schedule.created_scopes or ()))
    done = Backfilled(found)
    for fire_at in found.fire_times:
        if fire_at in found.existing:
            done.runs.append((fire_at, found.existing[fire_at], False))
            continue
        request = runs.SubmitRun(
            schedule.workflow,
            schedule.params,
            schedule.version,
            schedule.priority,
            firing.idempotency_key(schedule.id, fire_at),
            scheduled_for=fire_at,
        )
        run, work, created = runs.submit(session, settings, request, owner)
        done.work.extend(work)
        done.runs.append((fire_at, run.id, created))
    audit.record(
        session,
        actor=caller.sub,
        action="schedule.backfill",
        target=f"schedule:{schedule.id}",
        reason=reason,
        detail={
            "name": schedule.name,
            "owner": schedule.created_by,
            "since": timestamp(found.since),
            "until": timestamp(found.until),
            "count": len(found.fire_times),
            "submitted": done.submitted,
            "existing": done.existing,
        },
    )
    log.info(
        "schedule %s (%s): backfilled %s to %s: %d run(s) submitted, %d there already",
        schedule.id,
        schedule.name,
        timestamp(found.since),
        timestamp(found.until),
        done.submitted,
        done.existing,
    )
    return done


def _check_can_submit(session: Session, settings: Settings, schedule: Schedule) -> None:
    """ScheduleTokenRevoked or WorkflowPaused (both 409) when the schedule's runs would be
    refused now; InvalidInput naming the field when its workflow no longer takes them."""
    tokens.check_can_submit(session, schedule, "backfilled")
    if pauses.paused(session, [schedule.workflow]):
        raise pauses.refusal(session, schedule.workflow)
    manage.check_submission(session, settings, schedule.workflow, schedule.version, schedule.params)


def _window(since: str | None, until: str | None, now: datetime) -> tuple[datetime, datetime]:
    """The window's bounds, both required, `until` after `since` and not after `now`."""
    start, end = audit.parse_window(since, until)
    for name, bound in (("since", start), ("until", end)):
        if bound is None:
            raise InvalidInput(
                f"a backfill needs {name}",
                errors=[{"field": name, "message": "required: an ISO 8601 time"}],
            )
    assert start is not None and end is not None
    if end > now:
        raise InvalidInput(
            "until is in the future: a backfill submits fire times that have passed (the "
            "tick submits the others)",
            errors=[{"field": "until", "message": f"must not be after now ({timestamp(now)})"}],
        )
    return start, end


def _runs_of(session: Session, schedule: Schedule, times: list[datetime]) -> dict[datetime, str]:
    """The runs of those of `times` that have one (submitted under their fire's key)."""
    if not times:
        return {}
    keys = {firing.idempotency_key(schedule.id, moment): moment for moment in times}
    found = session.execute(
        select(Run.idempotency_key, Run.id).where(
            Run.created_by == schedule.created_by, Run.idempotency_key.in_(list(keys))
        )
    )
    return {keys[key]: run_id for key, run_id in found if key is not None}

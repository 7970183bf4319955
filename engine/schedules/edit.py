"""Changing a schedule in place (PATCH): its id, last fire and last run stay.

Only its owner may change it, even a caller who sees every schedule (admin.schedules): its
runs act as its owner, with the owner's scopes, and letting another decide what they do
would lend that other the owner's authority. An administrator pauses or deletes another's
schedule instead. The owner's edit also binds it to the token that made it (its scopes, and
its revocation stops the schedule: engine.schedules.tokens): the runs carry the authority
of whoever last said what they do, never more."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from engine import audit
from engine.auth import Caller
from engine.config import Settings
from engine.errors import PermissionDenied
from engine.models import utcnow
from engine.schedules import manage, timing, tokens
from engine.schedules.models import Schedule

# What a change may name; `None` for version means the latest. The workflow stays (another
# workflow is another schedule), and pause/resume switch it off and on.
FIELDS = ("name", "cron", "timezone", "version", "params", "priority")
_TIMING = frozenset({"cron", "timezone"})
_SUBMISSION = frozenset({"version", "params"})


def change(
    session: Session,
    settings: Settings,
    ref: str,
    changes: Mapping[str, Any],
    caller: Caller,
    now: datetime | None = None,
) -> Schedule:
    """Apply the fields `changes` gives (a JSON merge patch), checked as on create: a new
    cron or timezone fires next at its first time after now (nothing missed is made up); a
    new version or params are checked against the workflow's params schema. Audited as
    schedule.update with each field's old and new value, and `jti` (from, to) when the
    change binds it to another token; a change that changes nothing is neither stored nor
    audited."""
    schedule = manage.get(session, ref, caller, lock=True)
    if schedule.created_by != caller.sub:
        raise PermissionDenied(
            f"only its owner ({schedule.created_by}) may change schedule {schedule.name!r}, "
            "whose runs act as them: pause or delete it instead"
        )
    manage.check_can_submit(caller)
    wanted = {
        field: changes[field]
        for field in FIELDS
        if field in changes and changes[field] != getattr(schedule, field)
    }
    if not wanted:
        return schedule
    merged = {field: wanted.get(field, getattr(schedule, field)) for field in FIELDS}
    if "name" in wanted:
        manage.check_name(merged["name"])
    if wanted.keys() & _TIMING:
        timing.check_cron(merged["cron"])
        timing.zone(merged["timezone"])
    if wanted.keys() & _SUBMISSION:
        manage.check_submission(
            session, settings, schedule.workflow, merged["version"], merged["params"]
        )
    now = now or utcnow()
    before = {field: getattr(schedule, field) for field in wanted}
    for field, value in wanted.items():
        setattr(schedule, field, value)
    if wanted.keys() & _TIMING and schedule.enabled:
        schedule.next_fire_at = timing.next_after(schedule.cron, schedule.timezone, now)
    moved = tokens.bind(schedule, caller)
    schedule.updated_at = now
    with manage.name_taken_as_conflict(schedule.name):
        with session.begin_nested():
            session.flush()
    detail: dict[str, Any] = {
        "name": schedule.name,
        "owner": schedule.created_by,
        "changed": {field: {"from": before[field], "to": wanted[field]} for field in wanted},
    }
    if moved:
        detail["jti"] = moved  # bound to another token: from which, to which
    audit.record(
        session,
        actor=caller.sub,
        action="schedule.update",
        target=f"schedule:{schedule.id}",
        detail=detail,
    )
    return schedule

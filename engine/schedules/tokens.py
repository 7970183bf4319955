"""Which token a schedule acts with, and what revoking that token does to it.

A schedule's runs act as its owner, with the scopes of one of the owner's tokens: the one
that created it, or the one its owner last resumed or changed it with (`bind`). Once that
token is revoked (engine.tokens.revoke), the schedule's next fire submits nothing: the tick
pauses it instead, says why in `last_error`, audits the pause and counts the fire as
`revoked` (`stop`). Its owner carries on by resuming it (or changing it) with a valid
token, which binds it to that token. An administrator may pause such a schedule, or delete
it, but not resume it (`check_not_revoked`): its runs would go on with the scopes of a
token that was revoked, and binding it to the administrator's would make them act with
authority the owner never gave.

A token that merely expires stops nothing: a schedule outlives its token's expiry, as it
outlives a session of its owner. A schedule made before revision 0010 remembers no token
and goes on as before, until its owner resumes or changes it."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine import audit, metrics
from engine.auth import Caller
from engine.errors import ScheduleTokenRevoked
from engine.models import RevokedToken
from engine.schedules.models import Schedule
from engine.work import Work

log = logging.getLogger(__name__)

REVOKED = "the token that created this schedule was revoked"
# The audit trail's actor for a pause the tick decides: the beat task (engine.work).
TICK_ACTOR = "schedules.fire"


def bind(schedule: Schedule, caller: Caller) -> None:
    """From now on the schedule's runs act with the caller's token: its scopes, and its
    revocation stops them."""
    schedule.created_scopes = list(caller.scopes)
    schedule.created_jti = caller.jti


def revocations(session: Session, jtis: Iterable[str | None]) -> dict[str, RevokedToken]:
    """The revocations of those of `jtis` that were revoked, by jti: one query for all.
    Expired or not: a revoked token stays revoked once it has expired too."""
    wanted = sorted({jti for jti in jtis if jti})
    if not wanted:
        return {}
    found = session.scalars(select(RevokedToken).where(RevokedToken.jti.in_(wanted)))
    return {row.jti: row for row in found}


def stop(
    session: Session, schedule: Schedule, revocation: RevokedToken, now: datetime, work: Work
) -> None:
    """Pause a due schedule whose token was revoked, instead of firing it: no run, the fire
    time passes (it is not made up on resume), and `last_error` says why; counted in `work`
    once the caller committed."""
    schedule.enabled = False
    schedule.next_fire_at = None
    schedule.last_error = (
        f"paused: {REVOKED} (jti {revocation.jti}, revoked by {revocation.revoked_by}); "
        f"its owner {schedule.created_by} resumes it with a valid token"
    )
    schedule.updated_at = now
    audit.record(
        session,
        actor=TICK_ACTOR,
        action="schedule.pause",
        target=f"schedule:{schedule.id}",
        reason=REVOKED,
        detail={
            "name": schedule.name,
            "owner": schedule.created_by,
            "jti": revocation.jti,
            "revoked_by": revocation.revoked_by,
        },
    )
    work.count(metrics.schedule_fires_total.labels(outcome="revoked"))
    log.warning(
        "schedule %s (%s): paused, no run submitted: %s (jti %s)",
        schedule.id,
        schedule.name,
        REVOKED,
        revocation.jti,
    )


def is_revoked(session: Session, schedule: Schedule) -> bool:
    """Whether the token the schedule acts with was revoked (one with no token: never)."""
    return bool(schedule.created_jti and revocations(session, [schedule.created_jti]))


def check_not_revoked(session: Session, schedule: Schedule) -> None:
    """ScheduleTokenRevoked when the token the schedule acts with was revoked: only its
    owner may resume it then (binding it to the owner's valid token)."""
    if is_revoked(session, schedule):
        raise ScheduleTokenRevoked(
            f"{REVOKED} (jti {schedule.created_jti}): only its owner "
            f"({schedule.created_by}) may resume {schedule.name!r}, with a valid token that "
            "its runs then act with"
        )

"""Which token a schedule acts with, and what revoking that token does to it.

A schedule's runs act as its owner, with the scopes of one of the owner's tokens: the one
that created it, or the one its owner last resumed or changed it with (`bind`). Revoking
that token (engine.tokens.revoke) pauses the schedule in the same transaction
(`pause_bound`): `last_error` says why, the pause is audited and counted as `revoked`
(`stop`). A tick that finds an enabled schedule whose token is revoked (a revocation from
before revocations paused schedules, or one a restore brought back) pauses it the same way
instead of firing it. Its owner carries on by resuming it with a valid token, which binds
it to that token (a change binds it too, and leaves it paused). An administrator may pause
such a schedule, or delete it, but not resume it (`check_not_revoked`): its runs would go
on with the scopes of a token that was revoked, and binding it to the administrator's would
make them act with authority the owner never gave.

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


def bind(schedule: Schedule, caller: Caller) -> dict[str, str | None] | None:
    """From now on the schedule's runs act with the caller's token: its scopes, and its
    revocation stops them. When that is another token than before, the move for the audit
    event of the change that bound it: {"from": old jti, "to": new jti}; else None."""
    moved = None
    if schedule.created_jti != caller.jti:
        moved = {"from": schedule.created_jti, "to": caller.jti}
    schedule.created_scopes = list(caller.scopes)
    schedule.created_jti = caller.jti
    return moved


def revocations(session: Session, jtis: Iterable[str | None]) -> dict[str, RevokedToken]:
    """The revocations of those of `jtis` that were revoked, by jti: one query for all.
    Expired or not: a revoked token stays revoked once it has expired too."""
    wanted = sorted({jti for jti in jtis if jti})
    if not wanted:
        return {}
    found = session.scalars(select(RevokedToken).where(RevokedToken.jti.in_(wanted)))
    return {row.jti: row for row in found}


def pause_bound(
    session: Session, revocation: RevokedToken, actor: str, now: datetime, work: Work
) -> list[Schedule]:
    """Pause every enabled schedule that acts with the revoked token, as `stop` does, the
    pause audited as `actor`'s (who revoked it); the schedules paused, by name."""
    bound = session.scalars(
        select(Schedule)
        .where(Schedule.created_jti == revocation.jti, Schedule.enabled.is_(True))
        .order_by(Schedule.name)
        .with_for_update()
    ).all()
    for schedule in bound:
        stop(session, schedule, revocation, now, work, actor=actor)
    return list(bound)


def stop(
    session: Session,
    schedule: Schedule,
    revocation: RevokedToken,
    now: datetime,
    work: Work,
    *,
    actor: str = TICK_ACTOR,
) -> None:
    """Pause a schedule whose token was revoked: at the revocation, or at a fire (no run,
    the fire time passes and is not made up on resume). `last_error` says why, the pause is
    audited as `actor`'s, and counted in `work` once the caller committed."""
    schedule.enabled = False
    schedule.next_fire_at = None
    schedule.last_error = (
        f"paused: {REVOKED} (jti {revocation.jti}, revoked by {revocation.revoked_by}); "
        f"its owner {schedule.created_by} resumes it with a valid token"
    )
    schedule.updated_at = now
    audit.record(
        session,
        actor=actor,
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
        "schedule %s (%s): paused, it submits no run: %s (jti %s)",
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


def check_can_submit(session: Session, schedule: Schedule, doing: str) -> None:
    """ScheduleTokenRevoked when the token the schedule acts with was revoked: its runs
    cannot be submitted (`doing`: "triggered", "backfilled") until its owner binds it to a
    valid token by resuming or changing it."""
    if is_revoked(session, schedule):
        raise ScheduleTokenRevoked(
            f"{REVOKED} (jti {schedule.created_jti}): its owner "
            f"({schedule.created_by}) binds {schedule.name!r} to a valid token by resuming or "
            f"changing it, before it can be {doing}"
        )

"""The audit trail: who did what to which run or dead letter, and why.

Events are written in the caller's transaction, so an audit line exists exactly when the
change it describes was committed.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from engine import cursors
from engine.errors import InvalidInput
from engine.models import AuditEvent, in_utc, utcnow

events = AuditEvent.__table__
# Event ids are 64-bit integers on both backends; a larger number in a cursor is not ours.
MAX_EVENT_ID = 2**63 - 1
# A "+" left unescaped in a query string arrives as a space: "...T12:00:00 00:00".
_OFFSET_AS_SPACE = re.compile(r"(T[\d:.]+) (\d{2}:?\d{2})$")


def parse_time(value: str | None, field: str) -> datetime | None:
    """An ISO 8601 time in UTC (a missing offset means UTC); InvalidInput names `field`,
    also for a time that has no UTC within the years 1 to 9999 (0001-01-01T00:00+05:00)."""
    if value is None or value == "":
        return None
    try:
        return in_utc(datetime.fromisoformat(_OFFSET_AS_SPACE.sub(r"\1+\2", value.strip())))
    except (ValueError, OverflowError) as exc:
        raise InvalidInput(
            f"{field} is not an ISO 8601 time within the years 1 to 9999",
            errors=[{"field": field, "message": "expected ISO 8601, e.g. 2024-05-01T12:00:00Z"}],
        ) from exc


def parse_window(
    since: str | None, until: str | None, prefix: str = ""
) -> tuple[datetime | None, datetime | None]:
    """`since` and `until` parsed as parse_time does; InvalidInput names `<prefix>until` when
    it is not after `since`."""
    start = parse_time(since, prefix + "since")
    end = parse_time(until, prefix + "until")
    if start is not None and end is not None and end <= start:
        raise InvalidInput(
            "until must be after since",
            errors=[{"field": prefix + "until", "message": "must be after since"}],
        )
    return start, end


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    target: str,
    reason: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Add one event to the caller's transaction."""
    session.execute(
        insert(events).values(
            actor=actor,
            action=action,
            target=target,
            reason=reason,
            detail=detail,
            at=utcnow(),
        )
    )


def list_events(
    session: Session,
    *,
    limit: int,
    cursor: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[AuditEvent], str | None]:
    """Events newest first (by id), filtered by exact actor, action and target."""
    query = select(AuditEvent)
    if actor:
        query = query.where(AuditEvent.actor == actor)
    if action:
        query = query.where(AuditEvent.action == action)
    if target:
        query = query.where(AuditEvent.target == target)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if until is not None:
        query = query.where(AuditEvent.at < until)
    if cursor:
        query = query.where(AuditEvent.id < _decode_cursor(cursor))
    rows = list(session.scalars(query.order_by(AuditEvent.id.desc()).limit(limit + 1)))
    following = cursors.encode(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], following


# Events are ordered by their id alone, so the cursor is the last id seen.
def _decode_cursor(cursor: str) -> int:
    (event_id,) = cursors.decode(cursor, 1)
    if type(event_id) is not int or not 0 < event_id <= MAX_EVENT_ID:
        raise cursors.invalid()
    return event_id

"""Reads of the life module: a subject's daily summary, who may read it, and what a day is."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.orm import Session

from engine.auth import ADMIN_LIFE_SCOPE, Caller
from engine.errors import InvalidInput, PermissionDenied
from engine.life.models import DailySummary
from engine.models import timestamp

# Reading another subject's summary, or recording its check-ins (a caller always reads its
# own with life.read, and records its own through a run it submits).
ANY_SUBJECT_SCOPE = ADMIN_LIFE_SCOPE
SUBJECT_MAX = getattr(DailySummary.__table__.c.subject.type, "length", None) or 200
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_summaries = DailySummary.__table__
_READ_SUMMARY = select(*_summaries.columns).where(
    _summaries.c.subject == bindparam("b_subject", type_=_summaries.c.subject.type),
    _summaries.c.day == bindparam("b_day", type_=_summaries.c.day.type),
)


@dataclass(frozen=True)
class Summary:
    """A subject's day; zero entries and no measures when nothing was recorded yet."""

    subject: str
    day: date
    entries: int = 0
    sleep_hours_avg: float | None = None
    steps_total: int | None = None
    mood_avg: float | None = None
    computed_at: datetime | None = None


def summary_json(summary: Summary) -> dict[str, Any]:
    """A summary as JSON: the summarising step's output and the API's answer alike."""
    return {
        "subject": summary.subject,
        "day": summary.day.isoformat(),
        "entries": summary.entries,
        "sleep_hours_avg": summary.sleep_hours_avg,
        "steps_total": summary.steps_total,
        "mood_avg": summary.mood_avg,
        "computed_at": timestamp(summary.computed_at),
    }


def parse_day(value: Any, field: str = "day") -> date:
    """A calendar day written YYYY-MM-DD; anything else is InvalidInput naming `field`."""
    message = "expected a date written YYYY-MM-DD"
    if isinstance(value, str) and _DAY.match(value):
        try:
            return date.fromisoformat(value)
        except ValueError as exc:  # 2026-02-30
            message = str(exc)
    raise InvalidInput(
        f"{field} must be a calendar day (YYYY-MM-DD)",
        errors=[{"field": field, "message": message}],
    )


def today() -> date:
    """Today in UTC: the day a summary is read for when none is named."""
    return datetime.now(UTC).date()


def subject_for(
    caller: Caller, requested: str | None, doing: str = "reading another subject's summary"
) -> str:
    """Whose data the caller reads or records: its own (the token's sub), or with
    admin.life any subject named by `requested`; `doing` names the act in the refusal."""
    if requested is None or requested == caller.sub:
        return caller.sub
    if not 0 < len(requested) <= SUBJECT_MAX:
        raise InvalidInput(
            f"subject must be 1 to {SUBJECT_MAX} characters",
            errors=[{"field": "subject", "message": "bad length"}],
        )
    if not caller.can(ANY_SUBJECT_SCOPE):
        raise PermissionDenied(
            f"{doing} needs the scope {ANY_SUBJECT_SCOPE}",
            errors=[{"field": "scopes", "message": f"missing {ANY_SUBJECT_SCOPE}"}],
        )
    return requested


def daily_summary(db: Session | Connection, subject: str, day: date) -> Summary:
    """The stored summary of a subject's day, or an empty one. A session or a connection."""
    row = db.execute(_READ_SUMMARY, {"b_subject": subject, "b_day": day}).first()
    if row is None:
        return Summary(subject, day)
    return Summary(
        row.subject,
        row.day,
        row.entries,
        row.sleep_hours_avg,
        row.steps_total,
        row.mood_avg,
        row.computed_at,
    )

"""The writes of the life module's workflow steps: record a check-in, summarise a day.

Each runs in the caller's transaction, and each is safe to run again: a step is delivered
at least once, so the same step may record or summarise twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Table, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from engine.life.models import DailySummary, WellnessEntry
from engine.life.queries import Summary
from engine.models import new_id, utcnow

MEASURES = ("sleep_hours", "steps", "mood", "note")
_entries = WellnessEntry.__table__
_summaries = DailySummary.__table__


@dataclass(frozen=True)
class Entry:
    """A recorded check-in; `created` is False when its step had recorded it before."""

    id: str
    subject: str
    day: date
    recorded_at: datetime
    created: bool


def record_entry(
    session: Session,
    subject: str,
    day: date,
    measures: dict[str, Any],
    *,
    run_id: str,
    step_id: str,
) -> Entry:
    """Record a check-in, once per workflow step: the step run again (a redelivery, a retry
    after its write) finds its entry and returns it as first recorded."""
    values = {name: measures.get(name) for name in MEASURES}
    inserted = session.execute(
        _insert(session, _entries)
        .values(
            id=new_id(),
            subject=subject,
            day=day,
            recorded_at=utcnow(),
            run_id=run_id,
            step_id=step_id,
            **values,
        )
        .on_conflict_do_nothing(index_elements=["run_id", "step_id"])
        .returning(_entries.c.id)
    ).first()
    row = session.execute(
        select(_entries.c.id, _entries.c.subject, _entries.c.day, _entries.c.recorded_at).where(
            _entries.c.run_id == run_id, _entries.c.step_id == step_id
        )
    ).one()
    return Entry(row.id, row.subject, row.day, row.recorded_at, created=inserted is not None)


def summarise_day(session: Session, subject: str, day: date) -> Summary:
    """Compute a subject's summary of a day from its entries and store it (insert or
    replace). Running it again computes the same summary, or a newer one."""
    now = utcnow()
    # First write the summary's row (or touch it): that locks it until the commit, so two
    # summaries of one day are computed one after the other and the later one reads every
    # entry the earlier one read. Under READ COMMITTED each statement below sees what was
    # committed before it began, so a summary computed late never overwrites a newer one
    # with fewer entries. (SQLite's writers take the database's write lock at BEGIN.)
    touch = _insert(session, _summaries).values(
        subject=subject, day=day, entries=0, computed_at=now
    )
    session.execute(
        touch.on_conflict_do_update(
            index_elements=["subject", "day"], set_={"computed_at": touch.excluded.computed_at}
        )
    )
    count, sleep_hours, steps, mood = session.execute(
        select(
            func.count(),
            func.avg(_entries.c.sleep_hours),
            func.sum(_entries.c.steps),
            func.avg(_entries.c.mood),
        ).where(_entries.c.subject == subject, _entries.c.day == day)
    ).one()
    summary = Summary(
        subject,
        day,
        entries=count,
        sleep_hours_avg=_rounded(sleep_hours),
        steps_total=None if steps is None else int(steps),
        mood_avg=_rounded(mood),
        computed_at=now,
    )
    session.execute(
        update(_summaries)
        .where(_summaries.c.subject == subject, _summaries.c.day == day)
        .values(
            entries=summary.entries,
            sleep_hours_avg=summary.sleep_hours_avg,
            steps_total=summary.steps_total,
            mood_avg=summary.mood_avg,
            computed_at=now,
        )
    )
    return summary


def _insert(session: Session, table: Table) -> Any:
    """An INSERT that takes ON CONFLICT clauses, in the session's dialect."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def _rounded(value: Any) -> float | None:
    """An average as a float with two decimals (PostgreSQL's avg is a Decimal)."""
    return None if value is None else round(float(value), 2)

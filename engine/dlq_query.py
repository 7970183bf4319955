"""The dead-letter queue, read side: which letters (a filter), listing, grouping, counting.

Shared by the admin API, the CLI and bulk replay (engine.bulk_replay), which replays the open
letters a filter matches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from engine import audit, run_query
from engine.attempts import INLINE_MARK
from engine.errors import InvalidInput, NotFound
from engine.models import DeadLetter, Step

letters = DeadLetter.__table__
OPEN, REPLAYED, DISCARDED = "open", "replayed", "discarded"
STATUSES = (OPEN, REPLAYED, DISCARDED)
FILTER_FIELDS = (
    "status",
    "workflow",
    "step",
    "exception_type",
    "fingerprint",
    "run_id",
    "since",
    "until",
)


@dataclass(frozen=True)
class LetterFilter:
    """Which dead letters: every field optional; no status means every status."""

    status: str | None = None
    workflow: str | None = None
    step: str | None = None
    exception_type: str | None = None
    fingerprint: str | None = None
    run_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any], prefix: str = "") -> LetterFilter:
        """From query arguments or a JSON object; InvalidInput names `<prefix><field>`."""
        values = {name: str(raw[name]) for name in FILTER_FIELDS if raw.get(name) not in (None, "")}
        status = values.get("status")
        if status is not None and status not in STATUSES:
            raise InvalidInput(
                "unknown dead-letter status",
                errors=[{"field": prefix + "status", "message": f"one of {', '.join(STATUSES)}"}],
            )
        since, until = audit.parse_window(
            values.pop("since", None), values.pop("until", None), prefix
        )
        return cls(since=since, until=until, **values)

    def clauses(self) -> list[ColumnElement[bool]]:
        exact = {
            letters.c.status: self.status,
            letters.c.workflow: self.workflow,
            letters.c.step_id: self.step,
            letters.c.exception_type: self.exception_type,
            letters.c.fingerprint: self.fingerprint,
            letters.c.run_id: self.run_id,
        }
        where = [column == value for column, value in exact.items() if value is not None]
        if self.since is not None:
            where.append(letters.c.failed_at >= self.since)
        if self.until is not None:
            where.append(letters.c.failed_at < self.until)
        return where

    def describe(self) -> dict[str, str]:
        """The filter as JSON, for the audit trail."""
        return {
            name: value.isoformat() if isinstance(value, datetime) else value
            for name in FILTER_FIELDS
            if (value := getattr(self, name)) is not None
        }


@dataclass(frozen=True)
class Group:
    fingerprint: str
    exception_type: str
    count: int
    last_failed_at: datetime


def get_letter(session: Session, letter_id: str) -> DeadLetter:
    letter = session.get(DeadLetter, letter_id)
    if letter is None:
        raise NotFound(f"dead letter {letter_id} does not exist")
    return letter


def carriers(session: Session, letters: list[DeadLetter]) -> dict[str, str]:
    """The Celery task that carried each letter's failed attempt, by letter id, where that
    is not the attempt's own task: a step run inline (by plan_run, or after the step before
    it in a chain) ran inside its carrier's task, the one Flower knows. Read from the step
    while that attempt is still its latest; one statement for a page of letters."""
    wanted: dict[tuple[str, str], list[DeadLetter]] = {}
    for letter in letters:
        if letter.run_id and letter.step_id and letter.task_id:
            wanted.setdefault((letter.run_id, letter.step_id), []).append(letter)
    if not wanted:
        return {}
    steps = Step.__table__
    rows = session.execute(
        select(steps.c.run_id, steps.c.step_id, steps.c.task_id, steps.c.worker).where(
            or_(*(and_(steps.c.run_id == run, steps.c.step_id == step) for run, step in wanted))
        )
    )
    found = {}
    for row in rows:
        if not row.worker or INLINE_MARK not in row.worker:
            continue
        for letter in wanted[row.run_id, row.step_id]:
            if letter.task_id == row.task_id:
                found[letter.id] = row.worker.split(INLINE_MARK, 1)[1]
    return found


def list_letters(
    session: Session, where: LetterFilter, *, limit: int, cursor: str | None = None
) -> tuple[list[DeadLetter], str | None]:
    """Dead letters newest first, one page at a time (the cursor of GET /runs)."""
    query = select(DeadLetter).where(*where.clauses())
    if cursor:
        at, row_id = run_query.decode_cursor(cursor)
        query = query.where(
            or_(
                DeadLetter.failed_at < at,
                and_(DeadLetter.failed_at == at, DeadLetter.id < row_id),
            )
        )
    rows = list(
        session.scalars(
            query.order_by(DeadLetter.failed_at.desc(), DeadLetter.id.desc()).limit(limit + 1)
        )
    )
    following = None
    if len(rows) > limit:
        following = run_query.encode_cursor(rows[limit - 1].failed_at, rows[limit - 1].id)
    return rows[:limit], following


def group_letters(session: Session, where: LetterFilter, limit: int = 100) -> list[Group]:
    """Counts by fingerprint over the whole filter (not one page), largest first."""
    count = func.count().label("count")
    query = (
        select(
            letters.c.fingerprint,
            letters.c.exception_type,
            count,
            func.max(letters.c.failed_at).label("last_failed_at"),
        )
        .where(*where.clauses())
        .group_by(letters.c.fingerprint, letters.c.exception_type)
        .order_by(count.desc(), letters.c.fingerprint)
        .limit(limit)
    )
    return [Group(*row) for row in session.execute(query)]

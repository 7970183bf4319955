"""Retention: delete finished runs older than a cutoff, with their steps and resolved dead
letters, a bounded batch per short transaction, so neither SQLite's write lock nor
PostgreSQL's row locks are held long while workers run.

Kept whatever their age: a run that is not finished, one with a step still live (a failed
run's other branch may still be running), and one with an open dead letter (an operator
still has to decide on it). A resolved (replayed or discarded) letter goes with its run: the
audit trail keeps who resolved it, when and why, and a letter pointing at a run that is
gone could be neither replayed nor followed. A resolved letter whose run is gone already,
or that had none, goes once resolved before the cutoff; an open one stays, whatever its
age. A run whose webhook event is still to be recorded or delivered is kept too; its
delivered or failed events go with it. Audit events are kept unless AUDIT_RETENTION_DAYS
says otherwise. Domain tables (life) keep their rows: they name the run that wrote them,
without a foreign key, and are the user's records, not bookkeeping.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, exists, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from engine import audit, metrics
from engine.config import Settings
from engine.db import changed
from engine.dlq_query import DISCARDED, OPEN, REPLAYED
from engine.errors import InvalidInput
from engine.models import AuditEvent, DeadLetter, Run, Step, WebhookDelivery, utcnow
from engine.state import RUN_TERMINAL, STEP_LIVE

log = logging.getLogger(__name__)
runs, steps, letters, events, deliveries = (
    Run.__table__,
    Step.__table__,
    DeadLetter.__table__,
    AuditEvent.__table__,
    WebhookDelivery.__table__,
)
_AGE = re.compile(r"^(?P<amount>\d+)\s*(?P<unit>[smhdw]?)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "": 86400}
MAX_AGE = timedelta(days=36_500)


@dataclass(frozen=True)
class Pruned:
    """What a prune deleted (or, for a dry run, would delete)."""

    runs: int = 0
    steps: int = 0
    dead_letters: int = 0
    audit_events: int = 0

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def parse_age(text: str, field: str = "older_than") -> timedelta:
    """An age such as '30d', '12h', '2w' or '90' (days); InvalidInput names `field`."""
    match = _AGE.match(text.strip().lower())
    age = timedelta(seconds=int(match["amount"]) * _UNIT_S[match["unit"]]) if match else None
    if age is None or not timedelta(0) < age <= MAX_AGE:
        raise InvalidInput(
            f"invalid {field}",
            errors=[{"field": field, "message": "use e.g. 30d, 12h or 2w (up to 100 years)"}],
        )
    return age


def cutoff_for(days: float, now: datetime | None = None) -> datetime | None:
    """The moment before which rows are old enough to go; None when `days` is 0 (forever)."""
    return (now or utcnow()) - timedelta(days=days) if days > 0 else None


def _prunable(cutoff: datetime) -> list[ColumnElement[bool]]:
    """A run that retention may delete. Stated again in the DELETE itself, so a run that
    changed since it was picked (a retry, a replay) stays."""
    return [
        runs.c.finished_at < cutoff,
        runs.c.status.in_(sorted(RUN_TERMINAL)),
        ~exists().where(letters.c.run_id == runs.c.id, letters.c.status == OPEN),
        ~exists().where(steps.c.run_id == runs.c.id, steps.c.status.in_(sorted(STEP_LIVE))),
        # Its run.finished event recorded (engine.webhooks) and no longer being delivered.
        or_(runs.c.webhook_url.is_(None), runs.c.webhook_event_at == runs.c.finished_at),
        ~exists().where(deliveries.c.run_id == runs.c.id, deliveries.c.status == "pending"),
    ]


def _orphaned(cutoff: datetime) -> list[ColumnElement[bool]]:
    """A resolved dead letter with no run to go with: its run is gone, or it had none.
    failed_at comes before resolved_at: stated too, so ix_dead_letters_status_failed_at
    narrows the search."""
    return [
        letters.c.status.in_((REPLAYED, DISCARDED)),
        letters.c.failed_at < cutoff,
        letters.c.resolved_at < cutoff,
        or_(letters.c.run_id.is_(None), ~exists().where(runs.c.id == letters.c.run_id)),
    ]


def count_prunable(session: Session, cutoff: datetime) -> Pruned:
    """What a prune with this cutoff would delete now (a dry run: nothing changes)."""
    chosen = select(runs.c.id).where(*_prunable(cutoff)).scalar_subquery()
    with_runs = select(func.count()).where(letters.c.run_id.in_(chosen), letters.c.status != OPEN)
    return Pruned(
        runs=session.scalar(select(func.count()).select_from(runs).where(*_prunable(cutoff))) or 0,
        steps=session.scalar(select(func.count()).where(steps.c.run_id.in_(chosen))) or 0,
        dead_letters=(session.scalar(with_runs) or 0)
        + (session.scalar(select(func.count()).where(*_orphaned(cutoff))) or 0),
    )


def prune_batch(session: Session, cutoff: datetime, limit: int) -> tuple[int, Pruned]:
    """Delete up to `limit` prunable runs in the caller's transaction; how many were picked,
    and what was deleted. On PostgreSQL the picked rows are locked, skipping those another
    transaction holds (a second prune, a step recording its outcome), so two prunes at once
    take different runs; SQLite's BEGIN IMMEDIATE lets one writer in at a time."""
    picked = list(
        session.scalars(
            select(runs.c.id)
            .where(*_prunable(cutoff))
            .limit(limit)
            .with_for_update(of=runs, skip_locked=True)
        )
    )
    if not picked:
        return 0, Pruned()
    step_counts: dict[str, int] = dict(
        session.execute(  # type: ignore[arg-type]
            select(steps.c.run_id, func.count())
            .where(steps.c.run_id.in_(picked))
            .group_by(steps.c.run_id)
        ).all()
    )
    # The steps go with their run: fk_steps_run_id_runs is ON DELETE CASCADE (SQLite's
    # connections enforce foreign keys, engine.db).
    deleted = list(
        session.scalars(
            delete(runs).where(runs.c.id.in_(picked), *_prunable(cutoff)).returning(runs.c.id)
        )
    )
    resolved = 0
    if deleted:
        resolved = changed(
            session.execute(
                delete(letters).where(letters.c.run_id.in_(deleted), letters.c.status != OPEN)
            )
        )
    return len(picked), Pruned(
        runs=len(deleted),
        steps=sum(step_counts.get(run_id, 0) for run_id in deleted),
        dead_letters=resolved,
    )


def prune_orphaned_batch(session: Session, cutoff: datetime, limit: int) -> int:
    """Delete up to `limit` resolved dead letters resolved before `cutoff` whose run is
    gone (or that had none); how many. Picked as prune_batch picks runs."""
    picked = list(
        session.scalars(
            select(letters.c.id)
            .where(*_orphaned(cutoff))
            .limit(limit)
            .with_for_update(of=letters, skip_locked=True)
        )
    )
    if not picked:
        return 0
    return changed(
        session.execute(delete(letters).where(letters.c.id.in_(picked), *_orphaned(cutoff)))
    )


def count_audit(session: Session, cutoff: datetime) -> int:
    """How many audit events were recorded before `cutoff`."""
    return session.scalar(select(func.count()).where(events.c.at < cutoff)) or 0


def prune_audit_batch(session: Session, cutoff: datetime, limit: int) -> int:
    """Delete up to `limit` audit events recorded before `cutoff`; how many."""
    oldest = select(events.c.id).where(events.c.at < cutoff).order_by(events.c.id).limit(limit)
    return changed(session.execute(delete(events).where(events.c.id.in_(oldest))))


def prune(
    sessions: sessionmaker[Session],
    cutoff: datetime | None,
    batch_size: int,
    *,
    audit_cutoff: datetime | None = None,
    actor: str | None = None,
) -> Pruned:
    """Delete every prunable run finished before `cutoff` (None: none), the resolved dead
    letters with no run resolved before it, and the audit events before `audit_cutoff`,
    one transaction per batch; a batch committed stays deleted if a later one fails.
    `actor` (a manual prune) records an audit event of the totals."""
    total = Pruned()
    while cutoff is not None:
        with sessions.begin() as session:
            picked, done = prune_batch(session, cutoff, batch_size)
        metrics.runs_pruned_total.inc(done.runs)
        total += done
        if picked < batch_size or not done.runs:
            break
    while cutoff is not None:
        with sessions.begin() as session:
            removed = prune_orphaned_batch(session, cutoff, batch_size)
        total += Pruned(dead_letters=removed)
        if removed < batch_size:
            break
    while audit_cutoff is not None:
        with sessions.begin() as session:
            removed = prune_audit_batch(session, audit_cutoff, batch_size)
        total += Pruned(audit_events=removed)
        if removed < batch_size:
            break
    log.info(
        "prune: %d run(s), %d step(s), %d dead letter(s) deleted (finished before %s); "
        "%d audit event(s) (before %s)",
        total.runs,
        total.steps,
        total.dead_letters,
        cutoff.isoformat() if cutoff else "never",
        total.audit_events,
        audit_cutoff.isoformat() if audit_cutoff else "never",
    )
    if actor is not None:
        detail: dict[str, Any] = {
            **total.as_dict(),
            "finished_before": cutoff.isoformat() if cutoff else None,
        }
        with sessions.begin() as session:
            audit.record(session, actor=actor, action="db.prune", target="runs", detail=detail)
    return total


def prune_expired(sessions: sessionmaker[Session], settings: Settings) -> Pruned:
    """The periodic prune: what RUN_RETENTION_DAYS and AUDIT_RETENTION_DAYS let go."""
    now = utcnow()
    return prune(
        sessions,
        cutoff_for(settings.run_retention_days, now),
        settings.retention_batch_size,
        audit_cutoff=cutoff_for(settings.audit_retention_days, now),
    )

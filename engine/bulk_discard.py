"""Bulk discard: every open dead letter a filter matches, discarded at once (an operator
who decided none of them will be replayed: the cause is gone, or the work is obsolete).

It follows bulk replay's protocol (engine.bulk_replay.plan_bulk): a dry run counts and lists
the letters, and the real call confirms that count and gives a reason. Unlike a replay, a
discard touches only the letters: their runs stay failed, so the letters are discarded in
the confirming call's own transaction, with its one audit event (dlq.bulk_discard), a
set-based UPDATE per batch. A letter that stopped being open meanwhile is reported, not
discarded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import update
from sqlalchemy.orm import Session

from engine import metrics
from engine.auth import Caller
from engine.bulk_replay import BATCH_MAX, BulkPlan, plan_bulk
from engine.config import Settings
from engine.dlq_query import DISCARDED, OPEN, LetterFilter, letters
from engine.models import utcnow
from engine.replay import require_reason
from engine.work import Work


@dataclass(frozen=True)
class Discarded:
    """The letters the call discarded, those it found no longer open, and the work to send
    once the caller committed (their count)."""

    discarded: list[str]
    not_open: list[str]
    work: Work = field(default_factory=Work)


def dry_run(session: Session, settings: Settings, where: LetterFilter, caller: Caller) -> BulkPlan:
    """The open letters `where` matches, oldest first, as a dry run lists them."""
    return plan_bulk(session, settings, where, caller, action="discard")


def discard_matching(
    session: Session,
    settings: Settings,
    where: LetterFilter,
    caller: Caller,
    *,
    confirm_count: int,
    reason: str | None,
) -> Discarded:
    """Discard the open letters `where` matches, in the caller's transaction, once
    `confirm_count` is the number matching now (else Conflict). The caller commits, then
    sends the result's work."""
    reason = require_reason(reason)
    plan = plan_bulk(
        session,
        settings,
        where,
        caller,
        confirm_count=confirm_count,
        reason=reason,
        action="discard",
    )
    now = utcnow()
    resolution = {"reason": reason, "batch": plan.batch}
    discarded: set[str] = set()
    for start in range(0, len(plan.ids), BATCH_MAX):
        chunk = plan.ids[start : start + BATCH_MAX]
        discarded.update(
            session.execute(
                update(letters)
                .where(letters.c.id.in_(chunk), letters.c.status == OPEN)
                .values(
                    status=DISCARDED, resolved_by=caller.sub, resolved_at=now, resolution=resolution
                )
                .returning(letters.c.id)
            ).scalars()
        )
    work = Work()
    if discarded:
        work.count(metrics.dlq_events_total.labels(event="discarded"), len(discarded))
    return Discarded(
        [letter_id for letter_id in plan.ids if letter_id in discarded],
        [letter_id for letter_id in plan.ids if letter_id not in discarded],
        work,
    )

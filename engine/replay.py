"""The dead-letter queue, operator side: replay one letter into its run, or discard it.

A replay re-enters the dead letter's run at its step (engine.resume.resume). Who may act is
checked by the caller (scopes); every change here is audited in the same transaction. Listing
is engine.dlq_query; replaying many letters by filter is engine.bulk_replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from engine import audit, metrics, payloads, redaction, replay_inputs, resume
from engine.auth import Caller
from engine.config import Settings
from engine.db import changed
from engine.dlq_query import DISCARDED, OPEN, REPLAYED, get_letter, letters
from engine.errors import Conflict, InvalidInput, InvalidTransition
from engine.models import DeadLetter, Run, utcnow
from engine.work import Work


@dataclass
class Replayed:
    """A replayed letter; the caller commits, then sends `work`. `waiting`: why its run
    waits unsent (engine.concurrency: for a slot of its workflow's limit), else None."""

    letter: DeadLetter
    run_id: str
    work: Work
    waiting: str | None = None


def require_reason(reason: str | None) -> str:
    """The reason, stripped; a missing or blank one is InvalidInput naming `reason`."""
    if reason is None or not reason.strip():
        raise InvalidInput(
            "a reason is required", errors=[{"field": "reason", "message": "required, non-empty"}]
        )
    return reason.strip()


def replay(
    session: Session,
    settings: Settings,
    letter_id: str,
    caller: Caller,
    reason: str | None,
    inputs: dict[str, Any] | None = None,
    *,
    batch: str | None = None,
) -> Replayed:
    """Mark an open letter replayed (a conditional UPDATE: the loser of a race gets
    Conflict) and re-enter its run at its step, with `inputs` replacing the rendered ones."""
    reason = require_reason(reason)
    letter = get_letter(session, letter_id)
    if letter.status != OPEN:
        raise Conflict(f"dead letter {letter_id} is {letter.status}; only an open one is replayed")
    if letter.run_id is None:
        raise InvalidTransition(f"dead letter {letter_id} belongs to no run; discard it")
    if inputs is not None:
        payloads.check(inputs, "inputs")
        replay_inputs.check(session, settings, letter, inputs)
    # The step gets the inputs as given (its worker puts each named secret in place of its
    # `[SECRET:name]`); the records of the replay keep no secret-named value of them.
    recorded = redaction.masked(inputs)
    resolution: dict[str, Any] = {"reason": reason, "inputs": recorded}
    if batch:
        resolution["batch"] = batch
    if not changed(
        session.execute(
            update(letters)
            .where(letters.c.id == letter_id, letters.c.status == OPEN)
            .values(
                status=REPLAYED, resolved_by=caller.sub, resolved_at=utcnow(), resolution=resolution
            )
        )
    ):
        raise Conflict(f"dead letter {letter_id} was resolved by someone else just now")
    run = session.get(Run, letter.run_id)
    if run is None:
        raise InvalidTransition(f"run {letter.run_id} of dead letter {letter_id} is gone")
    if letter.step_id is None:
        work = resume.requeue_plan(session, settings, run)
    else:
        override = {letter.step_id: inputs} if inputs is not None else None
        work = resume.resume(session, settings, run, [letter.step_id], inputs_override=override)
    detail: dict[str, Any] = {"run_id": run.id, "step_id": letter.step_id}
    if inputs is not None:
        detail["inputs"] = recorded
    if batch:
        detail["batch"] = batch
    audit.record(
        session,
        actor=caller.sub,
        action="dlq.replay",
        target=f"dead_letter:{letter_id}",
        reason=reason,
        detail=detail,
    )
    session.refresh(letter)
    work.count(metrics.dlq_events_total.labels(event="replayed"))
    return Replayed(letter, run.id, work, run.waiting)


def discard(
    session: Session, letter_id: str, caller: Caller, reason: str | None
) -> tuple[DeadLetter, Work]:
    """Stop showing an open letter as open; the row stays for the audit trail. The caller
    commits, then sends the work (its count)."""
    reason = require_reason(reason)
    letter = get_letter(session, letter_id)
    if not changed(
        session.execute(
            update(letters)
            .where(letters.c.id == letter_id, letters.c.status == OPEN)
            .values(
                status=DISCARDED,
                resolved_by=caller.sub,
                resolved_at=utcnow(),
                resolution={"reason": reason},
            )
        )
    ):
        session.refresh(letter)
        raise Conflict(f"dead letter {letter_id} is {letter.status}; only an open one is discarded")
    audit.record(
        session,
        actor=caller.sub,
        action="dlq.discard",
        target=f"dead_letter:{letter_id}",
        reason=reason,
        detail={"run_id": letter.run_id, "step_id": letter.step_id},
    )
    session.refresh(letter)
    work = Work()
    work.count(metrics.dlq_events_total.labels(event="discarded"))
    return letter, work

"""One batch of a bulk replay in one transaction, with set-based statements.

A handful of statements per batch instead of about eight per letter: resolve the open letters
(a conditional UPDATE whose returned ids won), resume their steps as engine.resume.resume does
for one, audit each letter. Anything the batch cannot take as a whole raises Mismatch, and the
caller (engine.bulk_replay) replays that batch one letter per transaction instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import bindparam, insert, select, tuple_, update
from sqlalchemy.orm import Session

from engine import audit, workflows
from engine.auth import Caller
from engine.config import Settings
from engine.dlq_query import OPEN, REPLAYED, letters
from engine.models import Run, Step, utcnow
from engine.resume import RESUMABLE_STEP, leaves_to_run, requeued, stays_skipped
from engine.specs import CompiledWorkflow
from engine.state import RunStatus, StepStatus
from engine.work import Dispatch, Work, step_dispatch

steps = Step.__table__
runs = Run.__table__
# Failed (b_was) or running runs re-entered.
_REENTER = (
    update(runs)
    .where(runs.c.id.in_(bindparam("b_ids", expanding=True)), runs.c.status == bindparam("b_was"))
    .values(status=RunStatus.RUNNING, error=None, finished_at=None)
    .returning(runs.c.id, runs.c.workflow, runs.c.version, runs.c.priority, runs.c.leaves_left)
)
# A resumed run's leaves_left, where its leaves skipped by their `when` changed it.
_RECOUNT_LEAVES = (
    update(runs)
    .where(runs.c.id == bindparam("b_id", type_=runs.c.id.type))
    .values(leaves_left=bindparam("b_leaves_left", type_=runs.c.leaves_left.type))
)


@dataclass
class ItemResult:
    """One letter of a bulk replay: replayed (send `work`), conflict or error. A replayed
    letter's run may wait for a slot of its workflow's concurrency limit (`waiting`)."""

    id: str
    outcome: str
    detail: str | None = None
    run_id: str | None = None
    work: Work = field(default_factory=Work)
    waiting: str | None = None


class Mismatch(Exception):
    """A letter of the batch cannot be replayed the way the batch assumes."""


def replay_letters(
    session: Session,
    settings: Settings,
    ids: list[str],
    caller: Caller,
    reason: str,
    batch: str,
) -> tuple[dict[str, ItemResult], list[str]]:
    """Resolve the batch's open step letters (a conditional UPDATE: the returned ids won),
    resume their steps, audit each. Returns the results so far and the letters left for
    replay() one by one (open planning letters, letters of no run)."""
    now = utcnow()
    won = session.execute(
        update(letters)
        .where(
            letters.c.id.in_(ids),
            letters.c.status == OPEN,
            letters.c.run_id.is_not(None),
            letters.c.step_id.is_not(None),
        )
        .values(
            status=REPLAYED,
            resolved_by=caller.sub,
            resolved_at=now,
            resolution={"reason": reason, "inputs": None, "batch": batch},
        )
        .returning(letters.c.id, letters.c.run_id, letters.c.step_id)
    ).all()
    results: dict[str, ItemResult] = {}
    rest: list[str] = []
    lost = set(ids) - {row.id for row in won}
    if lost:
        status_of: dict[str, str] = {
            row.id: row.status
            for row in session.execute(
                select(letters.c.id, letters.c.status).where(letters.c.id.in_(lost))
            )
        }
        for letter_id in (letter_id for letter_id in ids if letter_id in lost):
            status = status_of.get(letter_id)
            if status == OPEN:
                rest.append(letter_id)
            elif status is None:
                detail = f"dead letter {letter_id} does not exist"
                results[letter_id] = ItemResult(letter_id, "conflict", detail)
            else:
                detail = f"dead letter {letter_id} is {status}; only an open one is replayed"
                results[letter_id] = ItemResult(letter_id, "conflict", detail)
    if not won:
        return results, rest
    targets = [(row.run_id, row.step_id) for row in won]
    own, released = _resume_steps(session, settings, targets, now)
    for row in won:
        work = Work([own[(row.run_id, row.step_id)]])
        work.dispatches.extend(released.pop(row.run_id, []))
        results[row.id] = ItemResult(row.id, "replayed", run_id=row.run_id, work=work)
    session.execute(
        insert(audit.events),
        [
            {
                "actor": caller.sub,
                "action": "dlq.replay",
                "target": f"dead_letter:{row.id}",
                "reason": reason,
                "detail": {"run_id": row.run_id, "step_id": row.step_id, "batch": batch},
                "at": now,
            }
            for row in won
        ],
    )
    return results, rest


def _resume_steps(
    session: Session, settings: Settings, targets: list[tuple[str, str]], now: datetime
) -> tuple[dict[tuple[str, str], Dispatch], dict[str, list[Dispatch]]]:
    """engine.resume.resume for many (run, step) pairs in a few statements: runs running again,
    the dead steps queued, a failed run's skipped steps pending on their unmet parents and
    its leaves_left recounted, children whose parents all succeeded released. Raises
    Mismatch if any pair cannot be resumed (the caller's transaction is then rolled back).
    Returns each pair's dispatch and, per run, the released children's dispatches."""
    run_ids = sorted({run_id for run_id, _ in targets})
    # Runs first, as resume.resume does: a step finishing concurrently updates its run too.
    # Failed ones first: only their skipped steps come back (resume.wake_skipped).
    resumed = list(session.execute(_REENTER, {"b_ids": run_ids, "b_was": RunStatus.FAILED}))
    failed = {row.id: row.leaves_left for row in resumed}
    if len(resumed) != len(run_ids):
        rest = [run_id for run_id in run_ids if run_id not in failed]
        resumed += session.execute(_REENTER, {"b_ids": rest, "b_was": RunStatus.RUNNING}).all()
    if len(resumed) != len(run_ids):
        raise Mismatch(f"{len(run_ids) - len(resumed)} run(s) are gone or not failed")
    compiled: dict[tuple[str, int], CompiledWorkflow] = {}
    run_of: dict[str, tuple[CompiledWorkflow, int]] = {}
    for row in resumed:
        key = (row.workflow, row.version)
        if key not in compiled:
            compiled[key] = workflows.compiled(session, settings, row.workflow, row.version)
        run_of[row.id] = (compiled[key], row.priority)

    def dispatch(run_id: str, step_id: str, attempts: int) -> Dispatch:
        workflow, priority = run_of[run_id]
        spec = workflow.steps.get(step_id)
        if spec is None:
            raise Mismatch(f"step {step_id!r} of run {run_id} is not in its workflow")
        return step_dispatch(
            run_id,
            step_id,
            attempts + 1,
            spec.queue,
            spec.timeout_s,
            settings,
            priority=priority,
        )

    queued = session.execute(
        update(steps)
        .where(
            tuple_(steps.c.run_id, steps.c.step_id).in_(targets),
            steps.c.status.in_(RESUMABLE_STEP),
        )
        .values(**requeued(now))
        .returning(steps.c.run_id, steps.c.step_id, steps.c.attempts)
    ).all()
    if len(queued) != len(targets):
        raise Mismatch(f"{len(targets) - len(queued)} step(s) are not dead")
    own = {(row.run_id, row.step_id): dispatch(*row) for row in queued}

    # As resume.wake_skipped does, for the runs that were failed.
    current = session.execute(
        select(steps.c.run_id, steps.c.step_id, steps.c.status, steps.c.depends_on).where(
            steps.c.run_id.in_(list(failed))
        )
    ).all()
    succeeded = {(row.run_id, row.step_id) for row in current if row.status == StepStatus.SUCCEEDED}
    done: dict[str, set[str]] = {}
    for run_id, step_id in succeeded:
        done.setdefault(run_id, set()).add(step_id)
    recounted = []
    for run_id, leaves_left in failed.items():
        left = leaves_to_run(run_of[run_id][0], done.get(run_id, set()))
        if left != leaves_left:
            recounted.append({"b_id": run_id, "b_leaves_left": left})
    if recounted:
        session.execute(_RECOUNT_LEAVES, recounted)
    waiting: dict[int, list[tuple[str, str]]] = {}
    for row in current:
        if row.status == StepStatus.SKIPPED and not stays_skipped(
            run_of[row.run_id][0], row.step_id, done.get(row.run_id, set())
        ):
            unmet = sum(1 for need in row.depends_on if (row.run_id, need) not in succeeded)
            waiting.setdefault(unmet, []).append((row.run_id, row.step_id))
    for unmet, skipped in waiting.items():
        session.execute(
            update(steps)
            .where(
                tuple_(steps.c.run_id, steps.c.step_id).in_(skipped),
                steps.c.status == StepStatus.SKIPPED,
            )
            .values(status=StepStatus.PENDING, pending_deps=unmet)
        )
    # Children whose parents all succeeded while the run was failed were never released.
    released: dict[str, list[Dispatch]] = {}
    for row in session.execute(
        update(steps)
        .where(
            steps.c.run_id.in_(run_ids),
            steps.c.status == StepStatus.PENDING,
            steps.c.pending_deps == 0,
        )
        .values(status=StepStatus.QUEUED, dispatched_at=now)
        .returning(steps.c.run_id, steps.c.step_id, steps.c.attempts)
    ):
        released.setdefault(row.run_id, []).append(dispatch(*row))
    return own, released

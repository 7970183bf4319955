"""Re-entering a failed run: resume it at its dead steps (their next attempt), send it back to
planning when planning failed, or retry it whole (`POST /runs/{id}/retry`, `engine retry`).
Dead-letter replay (engine.replay, engine.replay_batch) enters through the same door.
Callers commit, then dispatch."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from engine import audit, concurrency, metrics, workflows
from engine.auth import Caller
from engine.config import Settings
from engine.db import changed
from engine.errors import InvalidTransition
from engine.models import DeadLetter, Run, Step, utcnow
from engine.run_query import get_run, run_steps
from engine.specs import CompiledWorkflow
from engine.state import RunStatus, StepStatus
from engine.work import Work, plan_dispatch, step_dispatch

steps = Step.__table__
runs = Run.__table__


# A step in one of these states can be queued again for its next attempt.
RESUMABLE_STEP = (StepStatus.DEAD, StepStatus.FAILED)


def requeued(now: datetime) -> dict[str, Any]:
    """The column values of a step queued again for its next attempt (resume, bulk replay)."""
    return {
        "status": StepStatus.QUEUED,
        "dispatched_at": now,
        "finished_at": None,
        "error": None,
        "error_type": None,
        "lease_expires_at": None,
        "next_attempt_at": None,
    }


# A failed (b_was) or running run re-entered.
_REENTER = (
    update(runs)
    .where(runs.c.id == bindparam("b_run_id"), runs.c.status == bindparam("b_was"))
    .values(status=RunStatus.RUNNING, error=None, finished_at=None)
    .returning(runs.c.leaves_left)
)


def leaves_to_run(workflow: CompiledWorkflow, succeeded: set[str]) -> int:
    """A resumed failed run's leaves_left: its leaves that have not succeeded. A leaf skipped
    by its `when` was counted down, but comes back as pending with the other skipped steps
    and is counted down again when it skips again (or succeeds)."""
    return sum(
        1
        for step_id in workflow.steps
        if not workflow.children.get(step_id) and step_id not in succeeded
    )


def stays_skipped(workflow: CompiledWorkflow, step_id: str, succeeded: set[str]) -> bool:
    """Whether a skipped step of a resumed failed run stays skipped: one that has children,
    all of them succeeded. Only a step its `when` skipped can be so (a step a failure
    skipped has children that never ran), and evaluated again it would skip again; brought
    back, nothing would wait for it, and the run could succeed before it was evaluated,
    leaving it pending in a finished run."""
    children = workflow.children.get(step_id) or []
    return bool(children) and all(child in succeeded for child in children)


def wake_skipped(
    session: Session, workflow: CompiledWorkflow, run_id: str, leaves_left: int
) -> None:
    """Bring a failed run's skipped steps back as pending, each counting its needs that have
    not succeeded, and recount its leaves_left (read as the run was re-entered). Those a
    failure skipped run now; those their `when` skipped are evaluated again (and skip again:
    their params and needs' outputs are the same), but for those whose children all
    succeeded (stays_skipped). A running run's skipped steps (a second
    dead letter of it replayed) were all skipped by their `when`, and stay done: a replay
    of one had already brought the rest back."""
    current = session.execute(
        select(steps.c.step_id, steps.c.status, steps.c.depends_on).where(steps.c.run_id == run_id)
    ).all()
    succeeded = {row.step_id for row in current if row.status == StepStatus.SUCCEEDED}
    left = leaves_to_run(workflow, succeeded)
    if left != leaves_left:
        session.execute(update(runs).where(runs.c.id == run_id).values(leaves_left=left))
    waiting: dict[int, list[str]] = {}
    for row in current:
        if row.status == StepStatus.SKIPPED and not stays_skipped(workflow, row.step_id, succeeded):
            unmet = sum(1 for need in row.depends_on if need not in succeeded)
            waiting.setdefault(unmet, []).append(row.step_id)
    for unmet, skipped in waiting.items():
        session.execute(
            update(steps)
            .where(
                steps.c.run_id == run_id,
                steps.c.step_id.in_(skipped),
                steps.c.status == StepStatus.SKIPPED,
            )
            .values(status=StepStatus.PENDING, pending_deps=unmet)
        )


def resume(
    session: Session,
    settings: Settings,
    run: Run,
    step_ids: list[str],
    inputs_override: dict[str, Any] | None = None,
) -> Work:
    """Re-enter a failed run at the given dead steps (their next attempt): succeeded steps
    stay done, skipped steps wait for their parents again (wake_skipped), the run is
    running again. A failed run of a workflow whose concurrency limit has no slot free waits
    for one instead, queued, unsent (engine.concurrency), and nothing is sent.

    Every move is a conditional UPDATE, so two callers resuming one step cannot both win:
    the loser gets InvalidTransition and its transaction must be rolled back."""
    # A retried run that waited for a slot, now admitted (engine.admission).
    admitted = run.status == RunStatus.QUEUED and run.started_at is not None and not run.waiting
    if run.status not in (RunStatus.FAILED, RunStatus.RUNNING) and not admitted:
        raise InvalidTransition(f"run {run.id} is {run.status}; only a failed run resumes")
    workflow = workflows.compiled(session, settings, run.workflow, run.version)
    limit = workflow.concurrency
    if run.status == RunStatus.FAILED and not concurrency.slot_free(session, run.workflow, limit):
        concurrency.wait_for_slot(session, run, step_ids, inputs_override)
        return Work()
    now = utcnow()
    # The run row first: a step finishing concurrently updates it too, so that step either
    # committed before this statement (and is seen as succeeded below) or waits for us.
    # Failed first: only a failed run's skipped steps come back (see wake_skipped). A run
    # admitted to a slot after its retry waited for one (engine.admission) is as it failed.
    was = RunStatus.QUEUED if admitted else RunStatus.FAILED
    failed = session.execute(_REENTER, {"b_run_id": run.id, "b_was": was}).first()
    if (
        failed is None
        and session.execute(_REENTER, {"b_run_id": run.id, "b_was": RunStatus.RUNNING}).first()
        is None
    ):
        raise InvalidTransition(f"run {run.id} changed while it was being resumed; try again")
    work = Work()
    for step_id in step_ids:
        values = requeued(now)
        if inputs_override is not None and step_id in inputs_override:
            values["inputs_override"] = inputs_override[step_id]
        row = session.execute(
            update(steps)
            .where(
                steps.c.run_id == run.id,
                steps.c.step_id == step_id,
                steps.c.status.in_(RESUMABLE_STEP),
            )
            .values(**values)
            .returning(steps.c.attempts)
        ).first()
        spec = workflow.steps.get(step_id)
        if row is None or spec is None:
            raise InvalidTransition(f"step {step_id!r} of run {run.id} is not dead")
        work.dispatches.append(
            step_dispatch(
                run.id,
                step_id,
                row.attempts + 1,
                spec.queue,
                spec.timeout_s,
                settings,
                priority=run.priority,
            )
        )
    if failed is not None:
        wake_skipped(session, workflow, run.id, failed.leaves_left)
    # Children whose parents all succeeded while the run was failed were never released.
    released = session.execute(
        update(steps)
        .where(
            steps.c.run_id == run.id,
            steps.c.status == StepStatus.PENDING,
            steps.c.pending_deps == 0,
        )
        .values(status=StepStatus.QUEUED, dispatched_at=now)
        .returning(steps.c.step_id, steps.c.attempts)
    ).all()
    for row in released:
        spec = workflow.steps[row.step_id]
        work.dispatches.append(
            step_dispatch(
                run.id,
                row.step_id,
                row.attempts + 1,
                spec.queue,
                spec.timeout_s,
                settings,
                priority=run.priority,
            )
        )
    session.refresh(run)
    return work


def requeue_plan(session: Session, settings: Settings, run: Run) -> Work:
    """Send a run whose planning failed back to the manager: queued again, with its count
    of lost plan deliveries reset; waiting for a slot when its workflow's concurrency limit
    has none free."""
    workflow = workflows.compiled(session, settings, run.workflow, run.version)
    if not concurrency.slot_free(session, workflow.name, workflow.concurrency):
        concurrency.wait_for_slot(session, run, [], None)
        return Work()
    if not changed(
        session.execute(
            update(runs)
            .where(
                runs.c.id == run.id,
                runs.c.status == RunStatus.FAILED,
                runs.c.started_at.is_(None),
            )
            .values(
                status=RunStatus.QUEUED,
                error=None,
                finished_at=None,
                plan_deliveries=0,
                dispatched_at=utcnow(),
            )
        )
    ):
        raise InvalidTransition(f"run {run.id} is not a failed run waiting to be planned")
    session.refresh(run)
    return Work([plan_dispatch(run.id, workflow, settings, run.priority)])


def failed_steps(session: Session, run_id: str) -> list[str]:
    """The steps of a run a retry resumes at: those dead or failed."""
    return [step.step_id for step in run_steps(session, run_id) if step.status in RESUMABLE_STEP]


def retry_run(
    session: Session, settings: Settings, run_id: str, caller: Caller
) -> tuple[Run, Work]:
    """Resume a failed run from its failed steps (or re-plan it if planning failed); its
    open dead letters are resolved as replayed. Audited when the caller is not the owner
    or dead letters were resolved."""
    run = get_run(session, run_id, caller)
    if run.status != RunStatus.FAILED:
        raise InvalidTransition(f"run {run_id} is {run.status}; only a failed run is retried")
    failed = failed_steps(session, run_id)
    resolved = {
        "status": "replayed",
        "resolved_by": caller.sub,
        "resolved_at": utcnow(),
        "resolution": {"via": "run retry"},
    }
    letters = list(
        session.scalars(
            update(DeadLetter.__table__)
            .where(DeadLetter.run_id == run_id, DeadLetter.status == "open")
            .values(**resolved)
            .returning(DeadLetter.id)
        )
    )
    if caller.sub != run.created_by or letters:
        audit.record(
            session,
            actor=caller.sub,
            action="run.retry",
            target=f"run:{run_id}",
            detail={"owner": run.created_by, "steps": failed, "dead_letters": letters},
        )
    if not failed and run.started_at is None:
        work = requeue_plan(session, settings, run)
    else:
        work = resume(session, settings, run, failed)
    if letters:
        work.count(metrics.dlq_events_total.labels(event="replayed"), len(letters))
    return run, work

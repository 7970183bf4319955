"""Cancelling runs: one run (cancel), or every live run of a workflow a batch per
transaction (cancel_workflow_runs, an operator's emergency stop, usually right after a pause).

Both stop a run the same way (`_stop`): the run and its unfinished steps become cancelled in
the caller's transaction, and the tasks running its steps (or carrying them inline) are
revoked and terminated once it committed. A message still waiting for one of its steps is
refused when it arrives (its claim finds the step cancelled).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.orm import Session, sessionmaker

from engine import admission, audit, concurrency, metrics
from engine.attempts import INLINE_MARK
from engine.auth import ADMIN_RUNS_SCOPE, Caller
from engine.config import Settings
from engine.errors import Conflict, InvalidTransition, PermissionDenied
from engine.models import Run, Step, utcnow
from engine.run_query import get_run
from engine.state import RUN_LIVE, STEP_LIVE, RunStatus, StepStatus
from engine.work import Work, plan_task_id

runs = Run.__table__
steps = Step.__table__
# Runs per transaction when the caller names no batch size (Settings.bulk_cancel_batch).
BATCH_DEFAULT = 200


def cancel(session: Session, settings: Settings, run_id: str, caller: Caller) -> tuple[Run, Work]:
    """Cancel a live run the caller may see; another caller's run is audited (run.cancel).
    A run of a workflow with a concurrency limit gives its slot to the next waiting run in
    the same transaction (engine.admission)."""
    run = get_run(session, run_id, caller)
    if run.status not in RUN_LIVE:
        raise InvalidTransition(f"run {run_id} is {run.status} and cannot be cancelled")
    stopped = _stop(session, [run_id], "cancelled by " + caller.sub, utcnow()).get(run_id)
    if stopped is None:
        raise Conflict(f"run {run_id} changed while it was being cancelled; try again")
    if caller.sub != run.created_by:
        audit.record(
            session,
            actor=caller.sub,
            action="run.cancel",
            target=f"run:{run_id}",
            detail={"owner": run.created_by, "steps_cancelled": len(stopped)},
        )
    session.refresh(run)
    work = Work(revoke=_revocations(run_id, stopped))
    work.count(metrics.runs_total.labels(workflow=run.workflow, status="cancelled"))
    if concurrency.limit_of(session, settings, run.workflow, run.version):
        work.extend(admission.admit(session, settings, run.workflow))
    return run, work


def require_bulk_scope(caller: Caller) -> None:
    """PermissionDenied unless the caller may cancel every caller's runs (admin.runs)."""
    if not caller.can(ADMIN_RUNS_SCOPE):
        raise PermissionDenied(
            f"cancelling a workflow's live runs needs the scope {ADMIN_RUNS_SCOPE}",
            errors=[{"field": "scopes", "message": f"missing {ADMIN_RUNS_SCOPE}"}],
        )


@dataclass(frozen=True)
class Batch:
    """One committed batch of a bulk cancel: how many runs it cancelled, and the
    revocations to send now."""

    cancelled: int
    work: Work


def cancel_workflow_runs(
    sessions: sessionmaker[Session],
    workflow: str,
    caller: Caller,
    reason: str,
    *,
    batch_size: int = BATCH_DEFAULT,
) -> Iterator[Batch]:
    """Cancel every live run of `workflow`, `batch_size` runs per transaction (oldest
    first); yields each batch after its commit, for the caller to send its work. The caller
    needs admin.runs (check require_bulk_scope before anything else is done). One audit
    event (workflow.cancel_runs, with the count and the reason) is written in the last
    batch's transaction, instead of a run.cancel per run. A run that finished meanwhile is
    left as it finished. Call it after pausing the workflow, or new runs may keep coming."""
    require_bulk_scope(caller)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    reason = reason.strip()
    error = f"cancelled by {caller.sub}: {reason}"
    total = batches = 0
    last = False
    while not last:
        with sessions.begin() as session:
            ids = list(
                session.scalars(
                    select(runs.c.id)
                    .where(runs.c.workflow == workflow, runs.c.status.in_(RUN_LIVE))
                    .order_by(runs.c.created_at, runs.c.id)
                    .limit(batch_size)
                )
            )
            work = Work()
            stopped = _stop(session, ids, error, utcnow()) if ids else {}
            for run_id, run_steps in stopped.items():
                work.revoke.extend(_revocations(run_id, run_steps))
            cancelled = len(stopped)
            total += cancelled
            batches += 1
            # A short batch is the last: every live run left was in it.
            last = len(ids) < batch_size
            if last:
                audit.record(
                    session,
                    actor=caller.sub,
                    action="workflow.cancel_runs",
                    target=f"workflow:{workflow}",
                    reason=reason,
                    detail={"cancelled": total, "batches": batches},
                )
        if cancelled:
            metrics.runs_total.labels(workflow=workflow, status="cancelled").inc(cancelled)
        yield Batch(cancelled, work)


def _stop(
    session: Session, run_ids: list[str], error: str, now: datetime
) -> dict[str, list[Row[Any]]]:
    """Cancel those of the runs still live, and their unfinished steps, in two statements
    whatever their number: for each run cancelled, the steps stopped, with the task and
    worker of each. A run no longer live is left out."""
    cancelled = (
        session.execute(
            update(runs)
            .where(runs.c.id.in_(run_ids), runs.c.status.in_(RUN_LIVE))
            .values(status=RunStatus.CANCELLED, finished_at=now, error=error)
            .returning(runs.c.id)
        )
        .scalars()
        .all()
    )
    stopped: dict[str, list[Row[Any]]] = {run_id: [] for run_id in cancelled}
    if stopped:
        for row in session.execute(
            update(steps)
            .where(steps.c.run_id.in_(cancelled), steps.c.status.in_(STEP_LIVE))
            .values(status=StepStatus.CANCELLED, finished_at=now, lease_expires_at=None)
            .returning(steps.c.run_id, steps.c.task_id, steps.c.worker)
        ):
            stopped[row.run_id].append(row)
    return stopped


def _revocations(run_id: str, stopped: list[Row[Any]]) -> list[str]:
    # A step running inline is carried by another task (named in its worker label): stop
    # that one too, or the action would run on to its end.
    carriers = [
        row.worker.rsplit(INLINE_MARK, 1)[1] for row in stopped if INLINE_MARK in (row.worker or "")
    ]
    revoke = [row.task_id for row in stopped if row.task_id] + carriers + [plan_task_id(run_id)]
    return list(dict.fromkeys(revoke))

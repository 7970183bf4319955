"""Planning, the manager's work: a queued run becomes its steps, the roots are released and
the first one on the inline queue is claimed for the planner to run itself. A run that
cannot be planned is buried with a dead letter. Callers commit, then dispatch."""

from __future__ import annotations

import time

from sqlalchemy import bindparam, update
from sqlalchemy.orm import Session

from engine import dlq, metrics, workflows
from engine.attempts import Claim, lease_for
from engine.config import Settings
from engine.db import insert_rows
from engine.models import Run, Step, utcnow
from engine.state import RunStatus, StepStatus
from engine.work import MANAGER_QUEUE, PLAN_TASK, Work, plan_task_id, step_dispatch, step_task_id

steps = Step.__table__
runs = Run.__table__
# plan_run executes the first ready step on this queue itself instead of sending it.
INLINE_QUEUE = "steps"

# -- Statements built once ---------------------------------------------------------------------
# plan_run runs for every run; building its select()/update() objects on each call cost about
# half its time, so they are built here once with bind parameters (named `b_*`: an UPDATE
# reserves binds named after its columns; the date bind takes the column's type for UTC).
_B_RUN_ID = bindparam("b_run_id", type_=runs.c.id.type)
# Starts a queued run and reads what planning needs, in one statement. The run's count of
# leaf steps was set at submit.
_START_RUN = (
    update(runs)
    .where(runs.c.id == _B_RUN_ID, runs.c.status == RunStatus.QUEUED)
    .values(status=RunStatus.RUNNING, started_at=bindparam("b_now", type_=runs.c.started_at.type))
    .returning(runs.c.workflow, runs.c.version, runs.c.params, runs.c.priority, runs.c.leaves_left)
)
# A run submitted before runs counted their leaves at submit (every workflow has a leaf).
_COUNT_LEAVES = (
    update(runs)
    .where(runs.c.id == _B_RUN_ID)
    .values(leaves_left=bindparam("b_leaves_left", type_=runs.c.leaves_left.type))
)


def plan_run(session: Session, settings: Settings, run_id: str) -> Work:
    """Expand a queued run into its steps and release the roots. A second delivery finds the
    run no longer queued and creates nothing."""
    return plan_and_claim(session, settings, run_id)[0]


def plan_and_claim(
    session: Session, settings: Settings, run_id: str, worker: str | None = None
) -> tuple[Work, Claim | None]:
    """plan_run; with a `worker`, the first root step on the inline queue is inserted already
    claimed by it (running, attempt 1, its own task id and lease) and returned as a Claim
    instead of a message: the caller runs it (two statements fewer than claiming it after)."""
    started = time.perf_counter()
    now = utcnow()
    run = session.execute(_START_RUN, {"b_run_id": run_id, "b_now": now}).first()
    if run is None:  # planned already, cancelled, or gone
        return Work(), None
    workflow = workflows.compiled(session, settings, run.workflow, run.version)
    workflow.check_params(run.params)
    if run.leaves_left == 0:
        session.execute(_COUNT_LEAVES, {"b_run_id": run_id, "b_leaves_left": workflow.leaves})
    rows = []
    work = Work()
    claim: Claim | None = None
    for position, spec in enumerate(workflow.steps.values()):
        ready = not spec.needs
        row = {
            "run_id": run_id,
            "step_id": spec.id,
            "position": position,
            "action": spec.action,
            "queue": spec.queue,
            "depends_on": list(spec.needs),
            "pending_deps": len(spec.needs),
            "status": StepStatus.QUEUED if ready else StepStatus.PENDING,
            "attempts": 0,
            "max_attempts": spec.retry.max_attempts,
            "timeout_s": spec.timeout_s,
            "dispatched_at": now if ready else None,
            "task_id": None,
            "worker": None,
            "lease_expires_at": None,
            "started_at": None,
        }
        rows.append(row)
        if not ready:
            continue
        if claim is None and worker is not None and spec.queue == INLINE_QUEUE:
            task_id = step_task_id(run_id, spec.id, 1)
            row.update(
                status=StepStatus.RUNNING,
                attempts=1,
                task_id=task_id,
                worker=worker,
                lease_expires_at=now + lease_for(settings, spec.timeout_s),
                started_at=now,
            )
            claim = Claim(
                run_id, spec.id, task_id, 1, workflow, spec, run.priority, run.params, {}, None
            )
            continue
        work.dispatches.append(
            step_dispatch(
                run_id, spec.id, 1, spec.queue, spec.timeout_s, settings, priority=run.priority
            )
        )
    insert_rows(session, steps, rows)
    metrics.manager_planning_duration_seconds.observe(time.perf_counter() - started)
    return work, claim


def count_plan_redelivery(session: Session, settings: Settings, run_id: str) -> bool:
    """Count a redelivered plan_run; True when it is past the delivery cap (then buried)."""
    row = session.execute(
        update(runs)
        .where(runs.c.id == run_id, runs.c.status == RunStatus.QUEUED)
        .values(plan_deliveries=runs.c.plan_deliveries + 1)
        .returning(runs.c.plan_deliveries)
    ).first()
    if row is None or row.plan_deliveries < settings.max_deliveries:
        return False
    bury_plan(
        session,
        run_id,
        "WorkerLostError",
        f"the worker died while planning this run {row.plan_deliveries} time(s); "
        f"the delivery cap is {settings.max_deliveries}",
        "",
        row.plan_deliveries,
    )
    return True


def bury_plan(
    session: Session, run_id: str, error_type: str, message: str, trace: str, attempts: int = 1
) -> str | None:
    """A run that cannot be planned: dead letter plus failed run, in one transaction."""
    run = session.get(Run, run_id)
    if run is None or run.status not in (RunStatus.QUEUED, RunStatus.PLANNING):
        return None
    letter_id = dlq.record(
        session,
        task_name=PLAN_TASK,
        task_id=plan_task_id(run_id),
        queue=MANAGER_QUEUE,
        args=[run_id],
        run_id=run_id,
        step_id=None,
        workflow=run.workflow,
        exception_type=error_type,
        message=message,
        trace=trace,
        attempts=attempts,
    )
    run.status, run.error, run.finished_at = RunStatus.FAILED, f"{error_type}: {message}", utcnow()
    metrics.runs_total.labels(workflow=run.workflow, status="failed").inc()
    return letter_id


def first_inline_step(session: Session, settings: Settings, run_id: str) -> str | None:
    """The step plan_run executes itself: the first root step on the inline queue."""
    run = session.get(Run, run_id)
    if run is None or run.status != RunStatus.RUNNING:
        return None
    workflow = workflows.compiled(session, settings, run.workflow, run.version)
    return next(
        (s.id for s in workflow.steps.values() if not s.needs and s.queue == INLINE_QUEUE), None
    )

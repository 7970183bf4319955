"""Planning, the manager's work: a queued run becomes its steps, the roots are released and
the first one on the inline queue is claimed for the planner to run itself. On PostgreSQL a
small plan is written in one statement (engine.plan_statement). A run that cannot be planned
is buried by engine.plan_failures. Callers commit, then dispatch."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from sqlalchemy import Row, bindparam, update
from sqlalchemy.orm import Session

from engine import metrics, plan_statement, workflows
from engine.attempts import Claim, lease_for
from engine.config import Settings
from engine.db import COPY_MIN_ROWS, insert_rows, statement_by_statement
from engine.errors import NotFound
from engine.models import Run, Step, utcnow
from engine.run_context import run_facts
from engine.specs import CompiledWorkflow, StepSpec
from engine.state import RunStatus, StepStatus
from engine.work import Work, step_dispatch, step_task_id

steps = Step.__table__
runs = Run.__table__
# plan_run executes the first ready step on this queue itself instead of sending it.
INLINE_QUEUE = "steps"
# Who runs that step, and the tag of the plan message's delivery carrying it (plan_and_claim).
Carrier = tuple[str | None, str | None]

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
    .returning(
        runs.c.workflow,
        runs.c.version,
        runs.c.params,
        runs.c.priority,
        runs.c.leaves_left,
        runs.c.created_at,
        runs.c.scheduled_for,
    )
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
    session: Session,
    settings: Settings,
    run_id: str,
    worker: str | None = None,
    expected: tuple[str, int] | None = None,
    delivery: str | None = None,
) -> tuple[Work, Claim | None]:
    """plan_run; with a `worker`, the first root step on the inline queue is inserted already
    claimed by it (running, attempt 1, its own task id and lease, and `delivery`, the tag of
    the plan message's delivery carrying it: see claims.claim_step) and returned as a Claim
    instead of a message: the caller runs it (two statements fewer than claiming it after).
    `expected` is the run's workflow and version as its plan message names them: on
    PostgreSQL a plan of fewer than COPY_MIN_ROWS steps is then one statement that starts
    the run and writes its steps, outside any transaction in a session that has not begun
    one (engine.db.statement_by_statement). Otherwise the run is started, then its steps
    are written (by COPY from COPY_MIN_ROWS steps on), in the caller's transaction."""
    started = time.perf_counter()
    now = utcnow()  # the run's and its first steps' start, and the inline step's lease
    leased_at = time.monotonic()
    workflow = _one_statement_plan(session, settings, expected)
    if workflow is not None:
        planned = _start_and_plan(session, settings, run_id, now, (worker, delivery), workflow)
    else:
        planned = _start_then_plan(session, settings, run_id, now, (worker, delivery))
    if planned[1] is not None:
        planned[1].leased_at = leased_at
    metrics.manager_planning_duration_seconds.observe(time.perf_counter() - started)
    return planned


def _one_statement_plan(
    session: Session, settings: Settings, expected: tuple[str, int] | None
) -> CompiledWorkflow | None:
    """The workflow `expected` names, when the run can be planned by _start_and_plan."""
    if expected is None or session.get_bind().dialect.name != "postgresql":
        return None
    try:
        workflow = workflows.compiled(session, settings, *expected)
    except NotFound:  # a message naming a version that does not exist: go by the run
        return None
    return workflow if len(workflow.steps) < COPY_MIN_ROWS else None


def _start_then_plan(
    session: Session, settings: Settings, run_id: str, now: datetime, carrier: Carrier
) -> tuple[Work, Claim | None]:
    """Start the run (reading what planning needs), then insert its steps."""
    run = session.execute(_START_RUN, {"b_run_id": run_id, "b_now": now}).first()
    if run is None:  # planned already, cancelled, or gone
        return Work(), None
    workflow = workflows.compiled(session, settings, run.workflow, run.version)
    workflow.check_params(run.params)
    if run.leaves_left == 0:
        session.execute(_COUNT_LEAVES, {"b_run_id": run_id, "b_leaves_left": workflow.leaves})
    rows, inline = _step_rows(settings, workflow, run_id, now, carrier)
    insert_rows(session, steps, rows)
    return _released(settings, workflow, run_id, inline, run)


def _start_and_plan(
    session: Session,
    settings: Settings,
    run_id: str,
    now: datetime,
    carrier: Carrier,
    workflow: CompiledWorkflow,
) -> tuple[Work, Claim | None]:
    """PostgreSQL: start the run, if still queued as a run of `workflow`, and write its steps
    in one statement (engine.plan_statement). From here on every write is one statement, so
    the session may run each outside a transaction."""
    statement_by_statement(session)
    rows, inline = _step_rows(settings, workflow, run_id, now, carrier)
    run = plan_statement.write_plan(session, run_id, now, workflow, rows)
    if run is None:
        actual = plan_statement.queued_as(session, run_id)
        if actual is None or (actual.workflow, actual.version) == (workflow.name, workflow.version):
            return Work(), None  # planned already, cancelled, or gone
        # The message named another workflow than the run's: plan the run's own.
        workflow = workflows.compiled(session, settings, actual.workflow, actual.version)
        rows, inline = _step_rows(settings, workflow, run_id, now, carrier)
        run = plan_statement.write_plan(session, run_id, now, workflow, rows)
        if run is None:
            return Work(), None
    try:
        workflow.check_params(run.params)
    except Exception:
        # The plan is written already: take it back, so the run is buried as one that never
        # started (and can be planned again on replay).
        plan_statement.unplan(session, run_id)
        raise
    return _released(settings, workflow, run_id, inline, run)


def _step_rows(
    settings: Settings,
    workflow: CompiledWorkflow,
    run_id: str,
    now: datetime,
    carrier: Carrier,
) -> tuple[list[dict[str, Any]], StepSpec | None]:
    """The rows of a run's steps, the roots queued; with a worker in `carrier`, the first
    root on the inline queue already claimed by it and the carrying delivery (returned
    too)."""
    worker, delivery = carrier
    rows = []
    inline: StepSpec | None = None
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
            "delivery_tag": None,
            "lease_expires_at": None,
            "started_at": None,
        }
        rows.append(row)
        if ready and inline is None and worker is not None and spec.queue == INLINE_QUEUE:
            inline = spec
            row.update(
                status=StepStatus.RUNNING,
                attempts=1,
                task_id=step_task_id(run_id, spec.id, 1),
                worker=worker,
                delivery_tag=delivery,
                lease_expires_at=now + lease_for(settings, spec.timeout_s),
                started_at=now,
            )
    return rows, inline


def _released(
    settings: Settings,
    workflow: CompiledWorkflow,
    run_id: str,
    inline: StepSpec | None,
    run: Row[Any],
) -> tuple[Work, Claim | None]:
    """The messages of the planned run's root steps, and the claim of the inline one (`run`:
    the started run's params, priority, creation and fire time, as its start returned them)."""
    priority = run.priority
    work = Work()
    for spec in workflow.steps.values():
        if spec.needs or spec is inline:
            continue
        work.dispatches.append(
            step_dispatch(
                run_id, spec.id, 1, spec.queue, spec.timeout_s, settings, priority=priority
            )
        )
    if inline is None:
        return work, None
    task_id = step_task_id(run_id, inline.id, 1)
    seen = run_facts(run_id, workflow.name, workflow.version, run.created_at, run.scheduled_for)
    claim = Claim(
        run_id, inline.id, task_id, 1, workflow, inline, priority, run.params, {}, None, seen
    )
    return work, claim


def first_inline_step(session: Session, settings: Settings, run_id: str) -> str | None:
    """The step plan_run executes itself: the first root step on the inline queue."""
    run = session.get(Run, run_id)
    if run is None or run.status != RunStatus.RUNNING:
        return None
    workflow = workflows.compiled(session, settings, run.workflow, run.version)
    return next(
        (s.id for s in workflow.steps.values() if not s.needs and s.queue == INLINE_QUEUE), None
    )

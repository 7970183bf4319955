"""Step attempts: claim by compare-and-set, run the action, record the outcome, advance the run.

Each phase is one short transaction of Core statements whose WHERE clause states what the
writer expects; the row count says whether it won. The action runs between transactions.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from typing import Any

from sqlalchemy import Update, and_, bindparam, case, select, update
from sqlalchemy.orm import Session

from engine import actions, dlq, metrics, templating
from engine.actions import ActionContext
from engine.cache import LRUCache
from engine.config import Settings
from engine.errors import EngineError, InvalidInput, StepTimeout
from engine.models import Run, Step, utcnow
from engine.planner import descendants
from engine.state import RunStatus, StepStatus
from engine.work import STEP_TASK, Work, step_dispatch
from engine.workflows import CompiledWorkflow, StepSpec, compiled

log = logging.getLogger(__name__)
steps = Step.__table__
runs = Run.__table__

# -- Statements built once ---------------------------------------------------------------------
# The hot path (claim, finish, fail) runs the same few statements for every step. Building the
# update()/select() objects on each call cost about half the engine's time per step, so they are
# built here once with bind parameters and executed with the values. Bind names carry a `b_`
# prefix: an UPDATE reserves binds named after its columns. Dates and JSON binds take the
# column's type so the UTC conversion and JSON encoding still apply.
_B_RUN_ID = bindparam("b_run_id", type_=steps.c.run_id.type)
_B_STEP_ID = bindparam("b_step_id", type_=steps.c.step_id.type)
_B_TASK_ID = bindparam("b_task_id", type_=steps.c.task_id.type)
_B_ATTEMPT = bindparam("b_attempt", type_=steps.c.attempts.type)
_B_NOW = bindparam("b_now", type_=steps.c.finished_at.type)
_STEP_KEY = and_(steps.c.run_id == _B_RUN_ID, steps.c.step_id == _B_STEP_ID)
# The attempt a caller owns: the compare-and-set of finish and fail.
_MINE = and_(
    _STEP_KEY,
    steps.c.status == StepStatus.RUNNING,
    steps.c.task_id == _B_TASK_ID,
    steps.c.attempts == _B_ATTEMPT,
)

_SELECT_RUN = select(
    runs.c.workflow, runs.c.version, runs.c.params, runs.c.status, runs.c.priority
).where(runs.c.id == _B_RUN_ID)


# A run's workflow, version, params and priority never change, and a succeeded step's output
# never changes (only dead steps run again): each worker process keeps the ones it read, so
# the steps of a fan-out claim in one statement instead of three. Only a run's status
# changes, and the claim checks it in its own WHERE clause.
_RUN_FACTS: LRUCache[str, tuple[str, int, dict[str, Any], int]] = LRUCache(4096)
_OUTPUTS: LRUCache[tuple[str, str], Any] = LRUCache(4096)
_RUN_IS_RUNNING = (
    select(runs.c.id).where(runs.c.id == _B_RUN_ID, runs.c.status == RunStatus.RUNNING).exists()
)


def _claim_update(of_attempt: bool) -> Update:
    waiting = and_(steps.c.status.in_((StepStatus.QUEUED, StepStatus.RETRYING)), _RUN_IS_RUNNING)
    if of_attempt:
        waiting = and_(waiting, steps.c.attempts == bindparam("b_previous", type_=_B_ATTEMPT.type))
    return (
        update(steps)
        .where(_STEP_KEY, waiting)
        .values(
            status=StepStatus.RUNNING,
            attempts=steps.c.attempts + 1,
            task_id=_B_TASK_ID,
            worker=bindparam("b_worker", type_=steps.c.worker.type),
            lease_expires_at=bindparam("b_lease", type_=steps.c.lease_expires_at.type),
            started_at=_B_NOW,
            next_attempt_at=None,
        )
        .returning(steps.c.attempts, steps.c.inputs_override)
    )


# Keyed by whether the message names its attempt (a task id of the step form).
_CLAIM = {True: _claim_update(True), False: _claim_update(False)}
_SELECT_CLAIMED = select(
    steps.c.status, steps.c.attempts, steps.c.task_id, steps.c.lease_expires_at
).where(_STEP_KEY)
_SELECT_UPSTREAM = select(steps.c.step_id, steps.c.output).where(
    steps.c.run_id == _B_RUN_ID, steps.c.step_id.in_(bindparam("b_needs", expanding=True))
)
_SUCCEEDED = {
    "status": StepStatus.SUCCEEDED,
    "output": bindparam("b_output", type_=steps.c.output.type),
    "inputs": bindparam("b_inputs", type_=steps.c.inputs.type),
    "error": None,
    "error_type": None,
    "finished_at": _B_NOW,
    "lease_expires_at": None,
}
# A step with children first takes a shared lock on its run row (PostgreSQL; SQLite runs one
# writer at a time anyway): a resume of the run (runs.resume, bulk replay) updates that row
# before it reads which steps succeeded, so the two are ordered and a child that the resume
# turns from skipped back to pending cannot miss this step's release. Shared, so the
# branches of a fan-out do not wait for each other; leaves update the run row instead.
_RUN_ROW_SHARED = select(runs.c.id).where(runs.c.id == _B_RUN_ID).with_for_update(read=True)
_SUCCEED_STEP = {
    True: update(steps).where(_MINE, _RUN_ROW_SHARED.exists()).values(**_SUCCEEDED),
    False: update(steps).where(_MINE).values(**_SUCCEEDED),
}
# Only a leaf's success touches the run row (see Run.leaves_left): in a fan-out, the
# branches' transactions do not queue on it.
_RUN_COMPLETES = and_(runs.c.leaves_left == 1, runs.c.status == RunStatus.RUNNING)
_COUNT_DOWN_RUN = (
    update(runs)
    .where(runs.c.id == _B_RUN_ID)
    .values(
        leaves_left=runs.c.leaves_left - 1,
        status=case((_RUN_COMPLETES, RunStatus.SUCCEEDED), else_=runs.c.status),
        finished_at=case((_RUN_COMPLETES, _B_NOW), else_=runs.c.finished_at),
    )
    .returning(runs.c.status, runs.c.leaves_left)
)
# PostgreSQL records a leaf's success and counts it down on its run in one statement (a
# data-modifying CTE): one round trip instead of two. No row back: the attempt was not ours.
_SUCCEEDED_LEAF = (
    update(steps).where(_MINE).values(**_SUCCEEDED).returning(steps.c.run_id).cte("succeeded")
)
_SUCCEED_LEAF = _COUNT_DOWN_RUN.where(runs.c.id.in_(select(_SUCCEEDED_LEAF.c.run_id))).add_cte(
    _SUCCEEDED_LEAF
)
# Children are released only while the run is running (a read, no lock on the run row).
_RUN_IS_LIVE = (
    select(runs.c.id).where(runs.c.id == _B_RUN_ID, runs.c.status == RunStatus.RUNNING).exists()
)
_RELEASE = and_(steps.c.pending_deps == 1, _RUN_IS_LIVE)
_RELEASE_CHILDREN = (
    update(steps)
    .where(
        steps.c.run_id == _B_RUN_ID,
        steps.c.step_id.in_(bindparam("b_children", expanding=True)),
        steps.c.status == StepStatus.PENDING,
    )
    .values(
        pending_deps=steps.c.pending_deps - 1,
        status=case((_RELEASE, StepStatus.QUEUED), else_=steps.c.status),
        dispatched_at=case((_RELEASE, _B_NOW), else_=steps.c.dispatched_at),
    )
    .returning(steps.c.step_id, steps.c.status, steps.c.attempts)
)
_SELECT_RUN_FOR_FAILURE = select(runs.c.workflow, runs.c.version, runs.c.priority).where(
    runs.c.id == _B_RUN_ID
)


@cache
def _fail_update(retrying: bool, with_inputs: bool) -> Update:
    """The UPDATE recording a failed attempt: retrying (next attempt due at `b_next`) or dead."""
    values: dict[str, Any] = {
        "error": bindparam("b_error", type_=steps.c.error.type),
        "error_type": bindparam("b_error_type", type_=steps.c.error_type.type),
        "lease_expires_at": None,
    }
    if with_inputs:
        values["inputs"] = bindparam("b_inputs", type_=steps.c.inputs.type)
    if retrying:
        values.update(
            status=StepStatus.RETRYING,
            next_attempt_at=bindparam("b_next", type_=steps.c.next_attempt_at.type),
            dispatched_at=_B_NOW,
        )
    else:
        values.update(status=StepStatus.DEAD, finished_at=_B_NOW)
    return update(steps).where(_MINE).values(**values)


@dataclass
class Claim:
    """An attempt this caller owns until it records the outcome or its lease runs out."""

    run_id: str
    step_id: str
    task_id: str
    attempt: int
    workflow: CompiledWorkflow
    spec: StepSpec
    priority: int
    params: dict[str, Any]
    upstream: dict[str, dict[str, Any]]
    inputs_override: Any


@dataclass
class Result:
    output: Any = None
    inputs: Any = None
    error: BaseException | None = None
    duration_s: float = 0.0


@dataclass
class Outcome:
    """What recording an attempt decided; the caller commits, then sends `work`."""

    status: str
    work: Work = field(default_factory=Work)
    retry_in_s: float | None = None
    dead_letter_id: str | None = None
    error: str | None = None


def lease_for(settings: Settings, timeout_s: float) -> timedelta:
    return timedelta(seconds=settings.step_hard_limit(timeout_s) + settings.lease_grace_s)


def attempt_number(task_id: str, run_id: str, step_id: str) -> int | None:
    """The attempt a step message carries in its task id, None for a task id of another form."""
    key = parse_task_id(task_id)
    if key is None or key[0] != run_id or key[1] != step_id:
        return None
    return key[2]


def claim_step(
    session: Session,
    settings: Settings,
    run_id: str,
    step_id: str,
    *,
    task_id: str,
    worker: str,
    redelivered: bool = False,
) -> Claim | Outcome | None:
    """Own the attempt a message carries, or None when it is not ours to run (ack and stop).

    A message claims a step that waits for its next attempt (queued or retrying), and only
    the message of that attempt: a stale or duplicate message finds the attempt count moved
    on. A step found `running` under an attempt whose worker is gone (the broker redelivered
    this very message, so its worker died; or the attempt's lease ran out) has lost that
    attempt: it is recorded as WorkerLostError and retried as the step's policy says, or
    dead-lettered at the delivery cap; the returned Outcome says which.
    """
    facts = _RUN_FACTS.get(run_id)
    if facts is None:
        run = session.execute(_SELECT_RUN, {"b_run_id": run_id}).first()
        if run is None or run.status != RunStatus.RUNNING:
            return None
        facts = _RUN_FACTS[run_id] = (run.workflow, run.version, run.params, run.priority)
    workflow_name, version, params, priority = facts
    workflow = compiled(session, settings, workflow_name, version)
    spec = workflow.steps.get(step_id)
    if spec is None:
        return None
    now = utcnow()
    number = attempt_number(task_id, run_id, step_id)
    key = {"b_run_id": run_id, "b_step_id": step_id}
    values = {
        **key,
        "b_task_id": task_id,
        "b_worker": worker,
        "b_lease": now + lease_for(settings, spec.timeout_s),
        "b_now": now,
    }
    if number is not None:
        values["b_previous"] = number - 1
    claimed = session.execute(_CLAIM[number is not None], values).first()
    if claimed is None:
        run = session.execute(_SELECT_RUN, {"b_run_id": run_id}).first()
        if run is None or run.status != RunStatus.RUNNING:
            return None
        current = session.execute(_SELECT_CLAIMED, key).first()
        if (
            current is not None
            and current.status == StepStatus.RUNNING
            and (
                (redelivered and current.task_id == task_id)
                or (current.lease_expires_at is not None and current.lease_expires_at < now)
            )
        ):
            return record_lost_attempt(
                session,
                settings,
                run_id,
                step_id,
                task_id=current.task_id,
                attempt=current.attempts,
            )
        return None
    upstream: dict[str, dict[str, Any]] = {}
    missing = []
    for need_id in spec.needs:
        if (run_id, need_id) in _OUTPUTS:
            upstream[need_id] = {"output": _OUTPUTS[(run_id, need_id)]}
        else:
            missing.append(need_id)
    if missing:
        for need_id, output in session.execute(
            _SELECT_UPSTREAM, {"b_run_id": run_id, "b_needs": missing}
        ):
            upstream[need_id] = {"output": output}
            _OUTPUTS[(run_id, need_id)] = output
    return Claim(
        run_id,
        step_id,
        task_id,
        claimed.attempts,
        workflow,
        spec,
        priority,
        params,
        upstream,
        claimed.inputs_override,
    )


def attempt(claim: Claim, timeout_errors: tuple[type[BaseException], ...] = ()) -> Result:
    """Render the inputs and run the action. Never raises: the result carries the error."""
    started = time.perf_counter()
    result = Result()
    try:
        context = {"params": claim.params, "steps": claim.upstream}
        result.inputs = (
            claim.inputs_override
            if claim.inputs_override is not None
            else templating.render(claim.spec.template, context)
        )
        action = actions.get(claim.spec.action)
        if action is None:
            raise InvalidInput(f"unknown action {claim.spec.action!r}")
        action.check_inputs(result.inputs)
        result.output = action.function(
            result.inputs,
            ActionContext(claim.run_id, claim.step_id, claim.attempt, claim.params, claim.upstream),
        )
    except timeout_errors as exc:
        result.error = StepTimeout(
            f"step {claim.step_id!r} ran past its time limit of {claim.spec.timeout_s:g} s"
        )
        result.error.__cause__ = exc
    except Exception as exc:  # the action's failure is data: it is recorded, not lost
        result.error = exc
    result.duration_s = time.perf_counter() - started
    metrics.step_duration_seconds.labels(action=claim.spec.action).observe(result.duration_s)
    return result


def finish_attempt(session: Session, settings: Settings, claim: Claim, result: Result) -> Outcome:
    """Record the attempt's outcome and release the steps it unblocked."""
    if result.error is not None:
        error_type, message, trace = dlq.describe(result.error)
        retryable = getattr(result.error, "retryable", True) and not isinstance(
            result.error, EngineError
        )
        return fail_attempt(
            session,
            settings,
            claim.run_id,
            claim.step_id,
            task_id=claim.task_id,
            attempt=claim.attempt,
            error_type=error_type,
            message=message,
            trace=trace,
            retryable=retryable,
            inputs=result.inputs,
        )
    now = utcnow()
    children = claim.workflow.children.get(claim.step_id, ())
    values = {
        "b_run_id": claim.run_id,
        "b_step_id": claim.step_id,
        "b_task_id": claim.task_id,
        "b_attempt": claim.attempt,
        "b_output": result.output,
        "b_inputs": result.inputs,
        "b_now": now,
    }
    run = None
    if not children and session.get_bind().dialect.name == "postgresql":
        run = session.execute(_SUCCEED_LEAF, values).first()
        won = run is not None
    else:
        won = bool(session.execute(_SUCCEED_STEP[bool(children)], values).rowcount)
    if not won:
        log.warning(
            "run %s step %s: attempt %s lost its lease; outcome dropped",
            claim.run_id,
            claim.step_id,
            claim.attempt,
        )
        return Outcome("lost")
    metrics.steps_total.labels(action=claim.spec.action, status="succeeded").inc()
    outcome = Outcome("succeeded")
    if not children:
        if run is None:
            run = session.execute(_COUNT_DOWN_RUN, {"b_run_id": claim.run_id, "b_now": now}).first()
        if run is not None and run.status == RunStatus.SUCCEEDED and run.leaves_left == 0:
            metrics.runs_total.labels(workflow=claim.workflow.name, status="succeeded").inc()
    else:
        released = session.execute(
            _RELEASE_CHILDREN,
            {"b_run_id": claim.run_id, "b_children": list(children), "b_now": now},
        ).all()
        for row in released:
            if row.status == StepStatus.QUEUED:
                spec = claim.workflow.steps[row.step_id]
                outcome.work.dispatches.append(
                    step_dispatch(
                        claim.run_id,
                        row.step_id,
                        row.attempts + 1,
                        spec.queue,
                        spec.timeout_s,
                        settings,
                        priority=claim.priority,
                    )
                )
    return outcome


def fail_attempt(
    session: Session,
    settings: Settings,
    run_id: str,
    step_id: str,
    *,
    task_id: str,
    attempt: int,
    error_type: str,
    message: str,
    trace: str = "",
    retryable: bool = True,
    inputs: Any = None,
) -> Outcome:
    """Record a failed attempt: schedule the next one, or bury the step in the DLQ."""
    run = session.execute(_SELECT_RUN_FOR_FAILURE, {"b_run_id": run_id}).first()
    if run is None:
        return Outcome("lost")
    workflow = compiled(session, settings, run.workflow, run.version)
    spec = workflow.steps[step_id]
    now = utcnow()
    recorded = {
        "b_run_id": run_id,
        "b_step_id": step_id,
        "b_task_id": task_id,
        "b_attempt": attempt,
        "b_error": message[:10_000],
        "b_error_type": error_type,
        "b_inputs": inputs,
        "b_now": now,
    }
    if retryable and attempt < spec.retry.max_attempts:
        delay = spec.retry.delay(attempt)
        if not session.execute(
            _fail_update(True, inputs is not None),
            {**recorded, "b_next": now + timedelta(seconds=delay)},
        ).rowcount:
            return Outcome("lost")
        metrics.steps_total.labels(action=spec.action, status="retrying").inc()
        metrics.task_retries_total.inc()
        log.info(
            "run %s step %s: attempt %s/%s failed (%s), retry in %.2f s",
            run_id,
            step_id,
            attempt,
            spec.retry.max_attempts,
            error_type,
            delay,
        )
        return Outcome(
            "retrying",
            Work(
                [
                    step_dispatch(
                        run_id,
                        step_id,
                        attempt + 1,
                        spec.queue,
                        spec.timeout_s,
                        settings,
                        countdown=delay,
                        priority=run.priority,
                    )
                ]
            ),
            retry_in_s=delay,
            error=message,
        )
    if not session.execute(_fail_update(False, inputs is not None), recorded).rowcount:
        return Outcome("lost")
    letter_id = dlq.record(
        session,
        task_name=STEP_TASK,
        task_id=task_id,
        queue=spec.queue,
        args=[run_id, step_id],
        run_id=run_id,
        step_id=step_id,
        workflow=workflow.name,
        exception_type=error_type,
        message=message,
        trace=trace,
        attempts=attempt,
        failed_at=now,
    )
    metrics.steps_total.labels(action=spec.action, status="dead").inc()
    work = fail_run(
        session,
        workflow,
        run_id,
        step_id,
        f"step {step_id!r} failed after {attempt} attempt(s): {error_type}: {message}"[:2000],
    )
    log.error(
        "run %s step %s: dead after %s attempt(s): %s: %s (dead letter %s)",
        run_id,
        step_id,
        attempt,
        error_type,
        message,
        letter_id,
    )
    return Outcome("dead", work, dead_letter_id=letter_id, error=message)


def record_lost_attempt(
    session: Session,
    settings: Settings,
    run_id: str,
    step_id: str,
    *,
    task_id: str,
    attempt: int,
) -> Outcome:
    """Record an attempt whose worker died before it recorded an outcome (killed, out of
    memory, host gone) as a WorkerLostError failure: retried like any failure until
    MAX_DELIVERIES attempts, then dead-lettered, so a step that kills its worker every time
    cannot kill workers forever. A compare-and-set on the attempt: recorded once."""
    capped = attempt >= settings.max_deliveries
    message = f"the worker running attempt {attempt} died before recording an outcome"
    if capped:
        message += f"; the delivery cap MAX_DELIVERIES={settings.max_deliveries} is reached"
    log.warning("run %s step %s: %s", run_id, step_id, message)
    return fail_attempt(
        session,
        settings,
        run_id,
        step_id,
        task_id=task_id,
        attempt=attempt,
        error_type="WorkerLostError",
        message=message,
        retryable=not capped,
    )


def fail_run(
    session: Session, workflow: CompiledWorkflow, run_id: str, step_id: str, error: str
) -> Work:
    """Skip what depends on a dead step and fail the run, in the caller's transaction."""
    downstream = descendants(workflow.children, step_id)
    if downstream:
        session.execute(
            update(steps)
            .where(
                steps.c.run_id == run_id,
                steps.c.step_id.in_(downstream),
                steps.c.status == StepStatus.PENDING,
            )
            .values(status=StepStatus.SKIPPED)
        )
    failed = session.execute(
        update(runs)
        .where(runs.c.id == run_id, runs.c.status == RunStatus.RUNNING)
        .values(status=RunStatus.FAILED, error=error, finished_at=utcnow())
    ).rowcount
    if failed:
        metrics.runs_total.labels(workflow=workflow.name, status="failed").inc()
    return Work()


# A step run inline, inside another step's (or plan_run's) task, names that task in its
# `worker`: "celery@host inline in <task id>". The step keeps its own row, attempt and task id;
# this says which Celery task (the one Flower shows) carried it.
INLINE_MARK = " inline in "
_WORKER_LENGTH = steps.c.worker.type.length or 200


def inline_worker(worker: str, carrier_task_id: str) -> str:
    """The worker label of a step run inline inside the task `carrier_task_id`."""
    suffix = INLINE_MARK + carrier_task_id
    return worker[: max(0, _WORKER_LENGTH - len(suffix))] + suffix


# A run has few steps running at once (one per worker process at most): they are filtered here.
_SELECT_RUNNING = select(steps.c.step_id, steps.c.task_id, steps.c.attempts, steps.c.worker).where(
    steps.c.run_id == _B_RUN_ID, steps.c.status == StepStatus.RUNNING
)


def record_lost_inline(
    session: Session, settings: Settings, run_id: str, carrier_task_id: str
) -> Outcome | None:
    """A redelivered message found its own work done: the step it was running inline when
    its previous delivery died is still `running` under its name. Record that attempt lost
    (retried, or dead-lettered at the delivery cap); None when there is none."""
    outcome: Outcome | None = None
    suffix = INLINE_MARK + carrier_task_id
    for row in session.execute(_SELECT_RUNNING, {"b_run_id": run_id}).all():
        if not (row.worker or "").endswith(suffix):
            continue
        recorded = record_lost_attempt(
            session, settings, run_id, row.step_id, task_id=row.task_id, attempt=row.attempts
        )
        if outcome is None or outcome.status == "lost":
            outcome = recorded
        else:
            outcome.work.extend(recorded.work)
    return outcome


def parse_task_id(task_id: str) -> tuple[str, str, int] | None:
    """(run_id, step_id, attempt) of a step task id, None for any other task id."""
    parts = task_id.rsplit(":", 2)
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    return parts[0], parts[1], int(parts[2])

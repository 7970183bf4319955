"""Claiming a step attempt: a message owns the attempt it carries, by compare-and-set on its
step row. On PostgreSQL, in a session that has not begun, that is one statement outside any
transaction; otherwise it runs in the caller's transaction (on SQLite a short one of its
own; in an inline chain, the one that recorded the step before). engine.execution runs what
was claimed.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Update, and_, bindparam, select, update
from sqlalchemy.orm import Session

from engine.attempts import (
    B_ATTEMPT,
    B_NOW,
    B_RUN_ID,
    B_TASK_ID,
    MINE,
    RUN_IS_RUNNING,
    STEP_KEY,
    Claim,
    Outcome,
    attempt_number,
    lease_for,
)
from engine.cache import LRUCache
from engine.config import Settings
from engine.db import changed, one_transaction_from_here, statement_by_statement
from engine.dead_steps import bury_uncompilable
from engine.errors import InvalidSpec
from engine.lost_attempts import record_lost_attempt
from engine.models import Run, Step, utcnow
from engine.run_context import run_facts
from engine.state import RunStatus, StepStatus
from engine.workflows import compiled

steps = Step.__table__
runs = Run.__table__

# Statements built once (see engine.attempts).
_SELECT_RUN = select(
    runs.c.workflow,
    runs.c.version,
    runs.c.params,
    runs.c.status,
    runs.c.priority,
    runs.c.created_at,
    runs.c.scheduled_for,
).where(runs.c.id == B_RUN_ID)


# A run's workflow, version, params, priority, creation and fire time never change, and a
# succeeded step's output never changes (only dead steps run again): each worker process
# keeps the ones it read, so the steps of a fan-out claim in one statement instead of three.
# Only a run's status changes, and the claim checks it in its own WHERE clause.
_RUN_FACTS: LRUCache[str, tuple[str, int, dict[str, Any], int, dict[str, Any]]] = LRUCache(4096)
_OUTPUTS: LRUCache[tuple[str, str], Any] = LRUCache(4096)


def _claim_update(of_attempt: bool) -> Update:
    waiting = and_(steps.c.status.in_((StepStatus.QUEUED, StepStatus.RETRYING)), RUN_IS_RUNNING)
    if of_attempt:
        waiting = and_(waiting, steps.c.attempts == bindparam("b_previous", type_=B_ATTEMPT.type))
    return (
        update(steps)
        .where(STEP_KEY, waiting)
        .values(
            status=StepStatus.RUNNING,
            attempts=steps.c.attempts + 1,
            task_id=B_TASK_ID,
            worker=bindparam("b_worker", type_=steps.c.worker.type),
            delivery_tag=bindparam("b_delivery", type_=steps.c.delivery_tag.type),
            lease_expires_at=bindparam("b_lease", type_=steps.c.lease_expires_at.type),
            started_at=B_NOW,
            next_attempt_at=None,
        )
        .returning(steps.c.attempts, steps.c.inputs_override)
    )


# Keyed by whether the message names its attempt (a task id of the step form).
_CLAIM = {True: _claim_update(True), False: _claim_update(False)}
_SELECT_CLAIMED = select(
    steps.c.status,
    steps.c.attempts,
    steps.c.task_id,
    steps.c.delivery_tag,
    steps.c.lease_expires_at,
).where(STEP_KEY)
_SELECT_UPSTREAM = select(steps.c.step_id, steps.c.output).where(
    steps.c.run_id == B_RUN_ID, steps.c.step_id.in_(bindparam("b_needs", expanding=True))
)


_RENEW_LEASE = (
    update(steps)
    .where(MINE)
    .values(lease_expires_at=bindparam("b_lease", type_=steps.c.lease_expires_at.type))
)


def renew_lease(session: Session, settings: Settings, claim: Claim) -> bool:
    """Stamp the lease of an attempt whose action is about to start, long after its claim:
    the step plan_run runs itself is claimed as the run is planned, and planning, or sending
    the run's other root steps, may have taken much of its lease. False when the attempt is
    no longer this caller's (its lease ran out and it was recorded lost): do not run it."""
    now = utcnow()
    renewed = changed(
        session.execute(
            _RENEW_LEASE,
            {
                "b_run_id": claim.run_id,
                "b_step_id": claim.step_id,
                "b_task_id": claim.task_id,
                "b_attempt": claim.attempt,
                "b_lease": now + lease_for(settings, claim.spec.timeout_s),
            },
        )
    )
    if renewed:
        claim.leased_at = time.monotonic()
    return bool(renewed)


def claim_step(
    session: Session,
    settings: Settings,
    run_id: str,
    step_id: str,
    *,
    task_id: str,
    worker: str,
    delivery: str | None = None,
    redelivered: bool = False,
) -> Claim | Outcome | None:
    """Own the attempt a message carries, or None when it is not ours to run (ack and stop).

    A message claims a step that waits for its next attempt (queued or retrying), and only
    the message of that attempt: a stale or duplicate message finds the attempt count moved
    on. The claim records `delivery`, the broker's tag of the delivery carrying the attempt
    (its own message's, or its carrier's when it runs inline). A step found `running` under
    an attempt whose worker is gone (the broker redelivered the very delivery that started
    it, same tag, so its worker died; or the attempt's lease ran out) has lost that attempt:
    it is recorded as WorkerLostError and retried as the step's policy says, or
    dead-lettered at the delivery cap; the returned Outcome says which. Another copy of the
    attempt's message, redelivered or not (a reconciler's resend, a retry's countdown copy
    a busy worker held), proves nothing: None.

    On PostgreSQL, in a session that has not begun, the claim is one statement, committed as
    it returns (engine.db.statement_by_statement); a lost attempt is then recorded in a
    transaction of its own. The caller commits either way.
    """
    statement_by_statement(session)
    facts = _RUN_FACTS.get(run_id)
    if facts is None:
        run = session.execute(_SELECT_RUN, {"b_run_id": run_id}).first()
        if run is None or run.status != RunStatus.RUNNING:
            return None
        facts = _RUN_FACTS[run_id] = (
            run.workflow,
            run.version,
            run.params,
            run.priority,
            run_facts(run_id, run.workflow, run.version, run.created_at, run.scheduled_for),
        )
    workflow_name, version, params, priority, run_seen = facts
    number = attempt_number(task_id, run_id, step_id)
    try:
        workflow = compiled(session, settings, workflow_name, version)
    except InvalidSpec as exc:
        one_transaction_from_here(session)  # the failure writes several rows
        return bury_uncompilable(
            session,
            run_id,
            workflow_name,
            step_id,
            task_id=task_id,
            previous=None if number is None else number - 1,
            error=exc,
        )
    spec = workflow.steps.get(step_id)
    if spec is None:
        return None
    now = utcnow()
    key = {"b_run_id": run_id, "b_step_id": step_id}
    values: dict[str, Any] = {
        **key,
        "b_task_id": task_id,
        "b_worker": worker,
        "b_delivery": delivery,
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
                (
                    redelivered
                    and delivery is not None
                    and current.task_id == task_id
                    and current.delivery_tag == delivery
                )
                or (current.lease_expires_at is not None and current.lease_expires_at < now)
            )
        ):
            one_transaction_from_here(session)  # the failure writes several rows
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
        run_seen,
    )

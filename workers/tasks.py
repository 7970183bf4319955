"""Thin tasks: each runs engine use cases in short transactions, then sends their work."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from celery.exceptions import Retry
from sqlalchemy.exc import InterfaceError, OperationalError

from engine import (
    admission,
    lost_attempts,
    plan_failures,
    planning,
    recovery,
    retention,
    webhook_delivery,
)
from engine.attempts import Claim, Outcome
from engine.dlq import describe
from engine.models import utcnow
from engine.schedules import firing
from engine.work import (
    DELAY_TASK,
    PLAN_TASK,
    PRUNE_TASK,
    RECONCILE_TASK,
    SCHEDULE_TASK,
    STEP_TASK,
    WEBHOOK_TASK,
    step_task_id,
)
from workers import broker, dispatch
from workers.celery_app import app
from workers.limits import StepRequest
from workers.runtime import sessions, settings, unbegun_session
from workers.step_runner import Chain, claim, run_claimed

log = logging.getLogger(__name__)


class StepDeadLettered(Exception):
    """Raised after the dead letter is committed, so the task ends in FAILURE (Flower)."""


def _redelivered(task: Any) -> bool:
    info = task.request.delivery_info or {}
    return bool(info.get("redelivered"))


def _report(outcome: Outcome | None, task_id: str) -> None:
    """Send the outcome's work, then end the task as Flower should show it."""
    if outcome is None:
        return
    dispatch.send(outcome.work)
    if outcome.status == "retrying":
        raise Retry(f"attempt failed: {outcome.error}", when=outcome.retry_in_s)
    if outcome.status == "dead":
        raise StepDeadLettered(f"{task_id}: dead letter {outcome.dead_letter_id}: {outcome.error}")


def _recover_carried(run_id: str, task_id: str, delivery: str | None) -> Outcome | None:
    """This redelivered message found its own work done: record as lost the step its
    previous delivery was running inline when it died."""
    with sessions().begin() as session:
        return lost_attempts.record_lost_inline(session, settings(), run_id, task_id, delivery)


@app.task(name=STEP_TASK, bind=True, Request=StepRequest)
def execute_step(self, run_id: str, step_id: str) -> None:
    """Run one step attempt, then the chain it releases (Chain). Safe to deliver twice: a
    claimed or finished step is skipped, and an inline step its first delivery left running
    is recorded lost."""
    chain = Chain(self)
    redelivered = _redelivered(self)
    claimed = claim(run_id, step_id, self.request.id, chain.hostname, chain.delivery, redelivered)
    if isinstance(claimed, Claim):
        _report(*run_claimed(claimed, False, chain))
        return
    if claimed is None and redelivered:
        claimed = _recover_carried(run_id, self.request.id, chain.delivery)
    _report(claimed, self.request.id)


@app.task(name=PLAN_TASK, bind=True)
def plan_run(self, run_id: str, workflow: str | None = None, version: int | None = None) -> None:
    """Plan a run into steps and start its ready steps; one of them runs right here, written
    already claimed by this task as the run is planned, which saves a message and a
    transaction per run (that step keeps its own row, attempt and task id), and the chain it
    releases runs on (Chain). The message names the run's workflow and version, so the plan
    is known before the run is read (a message naming the run alone still plans it)."""
    if _redelivered(self):
        with sessions().begin() as session:
            capped = plan_failures.count_plan_redelivery(session, settings(), run_id)
        if capped is not None:
            dispatch.send(capped.work)
            raise StepDeadLettered(f"{self.request.id}: past the delivery cap")
    chain = Chain(self)
    claimed: Claim | Outcome | None = None
    try:
        expected = (workflow, version) if workflow is not None and version is not None else None
        # Not begun: on PostgreSQL planning is one statement, committed as it returns.
        with unbegun_session() as session:
            work, claimed = planning.plan_and_claim(
                session, settings(), run_id, chain.worker, expected, chain.delivery
            )
            session.commit()
        # Planned by this delivery: every plan has at least one root step.
        planned = bool(work.dispatches) or claimed is not None
    except (OperationalError, InterfaceError):
        # The database failed, not the plan: the run stays queued, and the reconciler sends
        # it again once the database answers.
        raise
    except Exception as exc:
        error_type, message, trace = describe(exc)
        with sessions().begin() as session:
            buried = plan_failures.bury_plan(
                session, settings(), run_id, error_type, message, trace
            )
        dispatch.send(buried.work)
        log.error(
            "run %s: planning failed (%s: %s); dead letter %s",
            run_id,
            error_type,
            buried.message,
            buried.letter_id,
        )
        raise StepDeadLettered(f"{self.request.id}: {error_type}: {buried.message}") from exc
    if not planned and _redelivered(self):
        # The delivery that planned this run died; the step it ran inline may be orphaned
        # (still queued, or left running), or a step it continued to in a chain.
        with sessions().begin() as session:
            orphan = planning.first_inline_step(session, settings(), run_id)
        if orphan is not None:
            claimed = claim(
                run_id,
                orphan,
                step_task_id(run_id, orphan, 1),
                chain.worker,
                chain.delivery,
                redelivered=True,
            )
        if isinstance(claimed, Claim):
            _report(*run_claimed(claimed, True, chain))
            return
        if claimed is None:
            claimed = _recover_carried(run_id, self.request.id, chain.delivery)
        _report(claimed, self.request.id)
        return
    dispatch.send(work)
    if isinstance(claimed, Claim):
        _report(*run_claimed(claimed, True, chain))


@app.task(name=RECONCILE_TASK)
def reconcile() -> int:
    """Send again the work the database says is waiting but no message carries."""
    with sessions().begin() as session:
        work = recovery.reconcile(
            session, settings(), partial(broker.oldest_waiting, settings(), app)
        )
    dispatch.send(work)
    return len(work.dispatches)


@app.task(name=PRUNE_TASK)
def prune() -> int:
    """Delete what RUN_RETENTION_DAYS and AUDIT_RETENTION_DAYS let go (engine.retention);
    safe alongside another prune: each batch deletes only what is still prunable."""
    return retention.prune_expired(sessions(), settings()).runs


@app.task(name=SCHEDULE_TASK)
def fire_schedules() -> int:
    """Submit the runs of the schedules due now; safe to run twice or at once (each fire
    time's run has its own idempotency key). If the broker is down the runs stay queued
    and the reconciler sends them."""
    with sessions().begin() as session:
        fired = firing.fire_due(session, settings(), utcnow())
    dispatch.send(fired.work)
    return len(fired.runs)


@app.task(name=DELAY_TASK)
def start_delayed() -> int:
    """Send the plan messages of the delayed runs now due, a batch per transaction, then
    admit the runs waiting for a slot of their workflow's concurrency limit; safe alongside
    another tick (each run is stamped sent once, each admission under its workflow's lock).
    If the broker is down they stay stamped and the reconciler sends them."""
    sent = 0
    for work in admission.tick(sessions(), settings()):
        dispatch.send(work)
        sent += len(work.dispatches)
    return sent


@app.task(name=WEBHOOK_TASK)
def deliver_webhooks() -> int:
    """Record the run.finished events of newly finished runs and send those due
    (engine.webhook_delivery); safe alongside another pass: each is claimed once."""
    return sum(webhook_delivery.deliver_due(sessions(), settings()).values())

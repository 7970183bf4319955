"""Thin tasks: each runs engine use cases in short transactions, then sends their work."""

from __future__ import annotations

import logging

from celery.exceptions import Retry, SoftTimeLimitExceeded
from celery.worker.request import Request

from engine import execution, recovery, runs
from engine.dlq import describe
from engine.execution import Claim, Outcome
from engine.runs import INLINE_QUEUE
from engine.work import PLAN_TASK, RECONCILE_TASK, STEP_TASK, Work, step_task_id
from workers import dispatch
from workers.celery_app import app
from workers.runtime import sessions, settings

log = logging.getLogger(__name__)


class StepDeadLettered(Exception):
    """Raised after the dead letter is committed, so the task ends in FAILURE (Flower)."""


class StepRequest(Request):
    """Records an attempt whose child was killed at its hard time limit; the child cannot."""

    def on_timeout(self, soft: bool, timeout: float) -> None:
        super().on_timeout(soft, timeout)
        if soft:
            return
        try:
            with sessions().begin() as session:
                outcome = recovery.record_killed_attempt(
                    session,
                    settings(),
                    self.id,
                    "TimeLimitExceeded",
                    f"the step ran past its hard time limit of {timeout:g} s and was killed",
                )
            if outcome is not None:
                dispatch.send(outcome.work)
        except Exception:
            log.exception(
                "task %s: recording the hard time limit failed; the reconciler "
                "will take the attempt over when its lease ends",
                self.id,
            )


def _redelivered(task: object) -> bool:
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


def run_step(
    run_id: str, step_id: str, task_id: str, worker: str, redelivered: bool = False
) -> Outcome | None:
    """Claim, run and record one step attempt, each phase its own short transaction."""
    with sessions().begin() as session:
        claimed = execution.claim_step(
            session,
            settings(),
            run_id,
            step_id,
            task_id=task_id,
            worker=worker,
            redelivered=redelivered,
        )
    if not isinstance(claimed, Claim):
        return claimed
    result = execution.attempt(claimed, timeout_errors=(SoftTimeLimitExceeded,))
    with sessions().begin() as session:
        return execution.finish_attempt(session, settings(), claimed, result)


@app.task(name=STEP_TASK, bind=True, Request=StepRequest)
def execute_step(self, run_id: str, step_id: str) -> None:
    """Run one step attempt. Safe to deliver twice: a claimed or finished step is skipped."""
    outcome = run_step(
        run_id, step_id, self.request.id, self.request.hostname or "", _redelivered(self)
    )
    _report(outcome, self.request.id)


@app.task(name=PLAN_TASK, bind=True)
def plan_run(self, run_id: str) -> None:
    """Plan a run into steps and start its ready steps; one of them runs right here, which
    saves a message per run (that step keeps its own row, attempt and task id)."""
    if _redelivered(self):
        with sessions().begin() as session:
            if runs.count_plan_redelivery(session, settings(), run_id):
                raise StepDeadLettered(f"{self.request.id}: past the delivery cap")
    try:
        with sessions().begin() as session:
            work = runs.plan_run(session, settings(), run_id)
    except Exception as exc:
        error_type, message, trace = describe(exc)
        with sessions().begin() as session:
            letter = runs.bury_plan(session, run_id, error_type, message, trace)
        log.error(
            "run %s: planning failed (%s: %s); dead letter %s", run_id, error_type, message, letter
        )
        raise StepDeadLettered(f"{self.request.id}: {error_type}: {message}") from exc
    if not work and _redelivered(self):
        # The delivery that planned this run died; the step it ran inline may be orphaned.
        with sessions().begin() as session:
            orphan = runs.first_inline_step(session, settings(), run_id)
        if orphan is not None:
            outcome = run_step(
                run_id,
                orphan,
                task_id=step_task_id(run_id, orphan, 1),
                worker=self.request.hostname or "",
                redelivered=True,
            )
            _report(outcome, self.request.id)
        return
    inline = next((d for d in work.dispatches if d.queue == INLINE_QUEUE), None)
    if inline is None:
        dispatch.send(work)
        return
    dispatch.send(Work([d for d in work.dispatches if d is not inline]))
    outcome = run_step(*inline.args, task_id=inline.task_id, worker=self.request.hostname or "")
    _report(outcome, inline.task_id)


@app.task(name=RECONCILE_TASK)
def reconcile() -> int:
    """Send again the work the database says is waiting but no message carries."""
    with sessions().begin() as session:
        work = recovery.reconcile(session, settings())
    dispatch.send(work)
    return len(work.dispatches)

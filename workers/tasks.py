"""Thin tasks: each runs engine use cases in short transactions, then sends their work."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

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
# How long a child past an inline step's hard limit waits for the attempt to be recorded.
INLINE_RECORD_BUDGET_S = 10.0


class StepDeadLettered(Exception):
    """Raised after the dead letter is committed, so the task ends in FAILURE (Flower)."""


def record_hard_limit(task_id: str, timeout: float) -> None:
    """Record an attempt killed at its hard time limit as TimeLimitExceeded and send its
    retry. Should this fail, the reconciler takes the attempt as lost when its lease ends."""
    try:
        with sessions().begin() as session:
            outcome = recovery.record_killed_attempt(
                session,
                settings(),
                task_id,
                "TimeLimitExceeded",
                f"the step ran past its hard time limit of {timeout:g} s and was killed",
            )
        if outcome is not None:
            dispatch.send(outcome.work)
    except Exception:
        log.exception(
            "task %s: recording the hard time limit failed; the reconciler will record "
            "the attempt as lost when its lease ends",
            task_id,
        )


class StepRequest(Request):
    """Records an attempt whose child was killed at its hard time limit; the child cannot."""

    def on_timeout(self, soft: bool, timeout: float) -> None:
        super().on_timeout(soft, timeout)
        if not soft:
            record_hard_limit(self.id, timeout)


class InlineTimeLimits:
    """The time limits of the step plan_run runs itself. The pool enforces plan_run's own
    limits, which leave room for planning; the inline step gets its own, as if it had been
    sent: at its soft limit SoftTimeLimitExceeded is raised in the action, and should the
    action ignore it, at its hard limit the attempt is recorded as TimeLimitExceeded and
    the child exits, as the pool would kill it (the pool starts a new child)."""

    def __init__(self, task_id: str, soft_s: float) -> None:
        self.task_id = task_id
        self.soft_s = soft_s
        self.hard_s = settings().step_hard_limit(soft_s)
        self.soft_fired = False
        self.previous: Any = None
        self.armed = False

    def __enter__(self) -> InlineTimeLimits:
        # Signals reach the main thread only; other pools (solo, threads) do without.
        if hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGALRM, self._expired)
            signal.setitimer(signal.ITIMER_REAL, self.soft_s)
            self.armed = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
            self.armed = False

    def _expired(self, signum: int, frame: Any) -> None:
        if not self.soft_fired:
            self.soft_fired = True
            signal.setitimer(signal.ITIMER_REAL, self.hard_s - self.soft_s)
            raise SoftTimeLimitExceeded(f"soft time limit ({self.soft_s:g} s) exceeded")
        log.error("task %s: hard time limit (%g s) exceeded inline", self.task_id, self.hard_s)
        # The action holds the main thread, perhaps a lock too: record from another thread,
        # and leave at the deadline whatever happens (should the record fail, the redelivered
        # plan_run finds the attempt lost).
        recorder = threading.Thread(target=record_hard_limit, args=(self.task_id, self.hard_s))
        recorder.start()
        recorder.join(INLINE_RECORD_BUDGET_S)
        os._exit(1)


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
    run_id: str,
    step_id: str,
    task_id: str,
    worker: str,
    redelivered: bool = False,
    inline: bool = False,
) -> Outcome | None:
    """Claim, run and record one step attempt, each phase its own short transaction.
    `inline`: run inside plan_run, so the step's own time limits are armed here."""
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
    if inline:
        with InlineTimeLimits(task_id, claimed.spec.timeout_s):
            result = execution.attempt(claimed, timeout_errors=(SoftTimeLimitExceeded,))
    else:
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
                inline=True,
            )
            _report(outcome, self.request.id)
        return
    inline = next((d for d in work.dispatches if d.queue == INLINE_QUEUE), None)
    if inline is None:
        dispatch.send(work)
        return
    dispatch.send(Work([d for d in work.dispatches if d is not inline]))
    outcome = run_step(
        *inline.args, task_id=inline.task_id, worker=self.request.hostname or "", inline=True
    )
    _report(outcome, inline.task_id)


@app.task(name=RECONCILE_TASK)
def reconcile() -> int:
    """Send again the work the database says is waiting but no message carries."""
    with sessions().begin() as session:
        work = recovery.reconcile(session, settings())
    dispatch.send(work)
    return len(work.dispatches)

"""Thin tasks: each runs engine use cases in short transactions, then sends their work."""

from __future__ import annotations

import logging
import signal
import time
from functools import partial
from typing import Any

from billiard.common import terminate_handler_fired
from celery.exceptions import Retry, SoftTimeLimitExceeded
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from engine import claims, execution, failures, logs, plan_failures, planning, recovery
from engine.attempts import Claim, Outcome, delivery_tag, inline_worker
from engine.dlq import describe
from engine.planning import INLINE_QUEUE
from engine.work import PLAN_TASK, RECONCILE_TASK, STEP_TASK, Dispatch, step_task_id
from workers import broker, dispatch, recording
from workers.celery_app import app
from workers.limits import CHAIN_MARGIN_S, InlineTimeLimits, StepRequest
from workers.runtime import sessions, settings, unbegun_session

log = logging.getLogger(__name__)
# What a step's soft time limit raises inside its action.
_TIME_LIMITS = (SoftTimeLimitExceeded,)


class StepDeadLettered(Exception):
    """Raised after the dead letter is committed, so the task ends in FAILURE (Flower)."""


def _redelivered(task: object) -> bool:
    info = task.request.delivery_info or {}
    return bool(info.get("redelivered"))


def _delivery(task: Any) -> str | None:
    """The tag of this delivery: kombu's virtual transports (Redis) give each publish a tag
    of its own in the message's properties, and a redelivery keeps it."""
    properties = task.request.properties or {}
    return delivery_tag(properties.get("delivery_tag"))


def _report(outcome: Outcome | None, task_id: str) -> None:
    """Send the outcome's work, then end the task as Flower should show it."""
    if outcome is None:
        return
    dispatch.send(outcome.work)
    if outcome.status == "retrying":
        raise Retry(f"attempt failed: {outcome.error}", when=outcome.retry_in_s)
    if outcome.status == "dead":
        raise StepDeadLettered(f"{task_id}: dead letter {outcome.dead_letter_id}: {outcome.error}")


def claim(
    run_id: str,
    step_id: str,
    task_id: str,
    worker: str,
    delivery: str | None,
    redelivered: bool = False,
) -> Claim | Outcome | None:
    """Claim a step attempt (see claims.claim_step). Not begun: on PostgreSQL the claim is
    one statement, committed as it returns."""
    with unbegun_session() as session:
        claimed = claims.claim_step(
            session,
            settings(),
            run_id,
            step_id,
            task_id=task_id,
            worker=worker,
            delivery=delivery,
            redelivered=redelivered,
        )
        session.commit()
        return claimed


def perform(
    claimed: Claim, inline: bool, chain: Chain | None = None
) -> tuple[Outcome, Claim | None]:
    """Run a claimed attempt and record it. `inline`: inside another task (plan_run, or the
    step before it in a chain), so the step's own time limits are armed here and its log
    lines name it. When the chain continues, the next step is claimed in the transaction
    that records this one (one transaction per step) and returned instead of sent. The
    recording is tried again while the database is away (workers.recording)."""
    if inline:
        bound = logs.bind(run_id=claimed.run_id, step_id=claimed.step_id, task_id=claimed.task_id)
        try:
            if not _lease_covers(claimed):
                return Outcome("lost"), None
            with InlineTimeLimits(claimed.task_id, claimed.spec.timeout_s):
                result = execution.attempt(claimed, _TIME_LIMITS, sessions(), settings())
        finally:
            logs.reset(bound)
    else:
        result = execution.attempt(claimed, _TIME_LIMITS, sessions(), settings())
    _leave_if_terminated(claimed)

    def write(session: Session) -> tuple[Outcome, Dispatch | None, Claim | Outcome | None]:
        # Not begun: on PostgreSQL a leaf's success is one statement, committed as it returns.
        outcome = execution.finish_attempt(session, settings(), claimed, result)
        following = chain.next_step(outcome) if chain is not None else None
        if following is None:
            session.commit()
            return outcome, None, None
        claimed_next = claims.claim_step(
            session,
            settings(),
            *following.args,
            task_id=following.task_id,
            worker=chain.worker,  # type: ignore[union-attr]
            delivery=chain.delivery,  # type: ignore[union-attr]
        )
        session.commit()
        return outcome, following, claimed_next

    deadline = min(
        chain.deadline if chain is not None else time.monotonic() + settings().lease_grace_s,
        time.monotonic() + claimed.lease_left_s(settings()),
    )
    outcome, following, claimed_next = recording.record(
        claimed.task_id, write, deadline - recording.DEADLINE_MARGIN_S, result
    )
    if following is None or not isinstance(claimed_next, Claim):
        return outcome, None  # none, or not ours to run here: its message goes out as usual
    outcome.work.dispatches.remove(following)
    return outcome, claimed_next


def _leave_if_terminated(claimed: Claim) -> None:
    """Leave the child when it was told to terminate while the action ran. Cancelling a run
    terminates the pool child running its step (SIGTERM, which billiard turns into
    SystemExit); an action that catches it runs on to its end. The termination still stands:
    the child leaves now, as it would have at the signal, and records nothing. Were it to
    stay, the pool would keep it marked as terminated, and take its next loss (a kill -9,
    an out-of-memory kill) while running another run's step as that termination: that
    step's message would be acknowledged, not delivered again, and the step left running
    until its lease ran out."""
    if terminate_handler_fired():
        log.warning(
            "task %s: the action caught the termination of its process; leaving now",
            claimed.task_id,
        )
        raise SystemExit(-(256 - signal.SIGTERM))


def _lease_covers(claimed: Claim) -> bool:
    """Whether the inline attempt may start its action: its lease was stamped when it was
    claimed, and when planning or sending the run's other steps took more than half of
    LEASE_GRACE_S since, the lease is stamped again first (the action may run up to its hard
    limit from now). False when the attempt is no longer ours."""
    if time.monotonic() - claimed.leased_at <= settings().lease_grace_s / 2:
        return True
    try:
        with sessions().begin() as session:
            if claims.renew_lease(session, settings(), claimed):
                return True
    except (OperationalError, InterfaceError) as exc:
        log.warning(
            "task %s: the lease could not be renewed (%s); running the step on the lease it has",
            claimed.task_id,
            str(exc).splitlines()[0],
        )
        return True
    log.warning("task %s: the attempt's lease ran out before it started; not run", claimed.task_id)
    return False


def run_claimed(claimed: Claim, inline: bool, chain: Chain | None = None) -> tuple[Outcome, str]:
    """Run a claimed attempt, then the chain it releases; the last outcome (its work still
    to be sent) and the task id it belongs to."""
    while True:
        outcome, following = perform(claimed, inline, chain)
        if following is None or chain is None:
            return outcome, claimed.task_id
        chain.length += 1
        claimed, inline = following, True


class Chain:
    """Inline continuation: a step that finished and released exactly one step on the inline
    queue (a chain) runs that step in the same task instead of sending it a message, which
    saves a message and a transaction per step. The step keeps its own row, attempt and task
    id; its `worker` names the carrying task. Bounded by INLINE_CHAIN_MAX steps and by the
    carrying task's own soft limit: the next step runs here only if its hard limit ends well
    before that, so the pool's limits (and the broker's visibility timeout, which covers
    them) never fall in the middle of a chain."""

    def __init__(self, task: Any) -> None:
        self.started = time.monotonic()
        self.carrier = task.request.id
        self.delivery = _delivery(task)
        self.hostname = task.request.hostname or ""
        hard, soft = (tuple(task.request.timelimit or ()) + (None, None))[:2]
        self.envelope_s = soft or hard or settings().step_timeout_max_s
        # When the pool kills this task's process: what it records must be done by then.
        self.deadline = self.started + (
            hard or settings().step_hard_limit(soft or settings().step_timeout_max_s)
        )
        self.length = 0

    @property
    def worker(self) -> str:
        return inline_worker(self.hostname, self.carrier)

    def next_step(self, outcome: Outcome | None) -> Dispatch | None:
        """The step to run next in this task, or None when it is to be sent (or none)."""
        if outcome is None or outcome.status != "succeeded" or outcome.work.revoke:
            return None
        if len(outcome.work.dispatches) != 1 or self.length >= settings().inline_chain_max:
            return None
        following = outcome.work.dispatches[0]
        if (
            following.task != STEP_TASK
            or following.queue != INLINE_QUEUE
            or following.countdown is not None
        ):
            return None
        hard = following.time_limit or settings().step_hard_limit(following.soft_time_limit or 0)
        elapsed = time.monotonic() - self.started
        if elapsed + hard + CHAIN_MARGIN_S > self.envelope_s:
            return None
        return following


def _recover_carried(run_id: str, task_id: str, delivery: str | None) -> Outcome | None:
    """This redelivered message found its own work done: record as lost the step its
    previous delivery was running inline when it died."""
    with sessions().begin() as session:
        return failures.record_lost_inline(session, settings(), run_id, task_id, delivery)


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
            if plan_failures.count_plan_redelivery(session, settings(), run_id):
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

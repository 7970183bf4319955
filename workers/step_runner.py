"""A claimed step attempt run in this worker: its action, its outcome recorded (tried again
while the database is away), and the chain of steps it releases run in the same task
(Chain). workers.tasks calls these; they hold no task of their own."""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

from billiard.common import terminate_handler_fired
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from engine import claims, execution, logs, outcomes
from engine.attempts import Claim, Outcome, delivery_tag, inline_worker
from engine.planning import INLINE_QUEUE
from engine.work import STEP_TASK, Dispatch
from workers import recording
from workers.limits import CHAIN_MARGIN_S, InlineTimeLimits
from workers.runtime import sessions, settings, unbegun_session

log = logging.getLogger(__name__)
# What a step's soft time limit raises inside its action.
_TIME_LIMITS = (SoftTimeLimitExceeded,)


def delivery(task: Any) -> str | None:
    """The tag of this delivery: kombu's virtual transports (Redis) give each publish a tag
    of its own in the message's properties, and a redelivery keeps it."""
    properties = task.request.properties or {}
    return delivery_tag(properties.get("delivery_tag"))


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
        outcome = outcomes.finish_attempt(session, settings(), claimed, result)
        following = chain.next_step(outcome) if chain is not None else None
        if following is None:
            session.commit()
            return outcome, None, None
        claimed_next = claims.claim_step(
            session,
            settings(),
            str(following.args[0]),  # a step message's args: run id, step id
            str(following.args[1]),
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
    if following is None:
        return outcome, None
    if not isinstance(claimed_next, Claim):
        # Not ours to run here: its message goes out as usual. What the claim recorded
        # instead (an attempt lost, a version this process cannot compile) is counted.
        if claimed_next is not None:
            outcome.work.counts.extend(claimed_next.work.counts)
        return outcome, None
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
        self.delivery = delivery(task)
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
        # A step skipped by its `when` releases its children as a success does.
        finished = outcome is not None and outcome.status in ("succeeded", "skipped")
        if outcome is None or not finished or outcome.work.revoke:
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

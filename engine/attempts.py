"""A step attempt's vocabulary: its task id and lease, the claim a worker holds, the result
of running the action and the outcome recorded for it; and the bind parameters the attempt
statements of engine.claims (claim), engine.outcomes (success) and engine.failures (failure,
loss) share."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, bindparam, select

from engine.config import Settings
from engine.models import Run, Step
from engine.specs import CompiledWorkflow, StepSpec
from engine.state import RunStatus, StepStatus
from engine.work import Work

steps = Step.__table__

# The hot path (claim, finish, fail) runs the same few statements for every step. Building the
# update()/select() objects on each call cost about half the engine's time per step, so they are
# built once, at import, with bind parameters and executed with the values. Bind names carry a
# `b_` prefix: an UPDATE reserves binds named after its columns. Dates and JSON binds take the
# column's type so the UTC conversion and JSON encoding still apply.
B_RUN_ID = bindparam("b_run_id", type_=steps.c.run_id.type)
B_STEP_ID = bindparam("b_step_id", type_=steps.c.step_id.type)
B_TASK_ID = bindparam("b_task_id", type_=steps.c.task_id.type)
B_ATTEMPT = bindparam("b_attempt", type_=steps.c.attempts.type)
B_NOW = bindparam("b_now", type_=steps.c.finished_at.type)
STEP_KEY = and_(steps.c.run_id == B_RUN_ID, steps.c.step_id == B_STEP_ID)
# The attempt a caller owns: the compare-and-set of finish and fail.
MINE = and_(
    STEP_KEY,
    steps.c.status == StepStatus.RUNNING,
    steps.c.task_id == B_TASK_ID,
    steps.c.attempts == B_ATTEMPT,
)
_runs = Run.__table__
# Whether the step's run is running: a claim and a release of children check it (a read, no
# lock on the run row).
RUN_IS_RUNNING = (
    select(_runs.c.id).where(_runs.c.id == B_RUN_ID, _runs.c.status == RunStatus.RUNNING).exists()
)


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
    # What its templates see of the run itself (engine.run_context).
    run: dict[str, Any]
    # When its lease was stamped (time.monotonic()): the lease runs out lease_for() later.
    leased_at: float = field(default_factory=time.monotonic)

    def lease_left_s(self, settings: Settings) -> float:
        """Seconds until this attempt's lease runs out, as stamped."""
        return (
            self.leased_at
            + lease_for(settings, self.spec.timeout_s).total_seconds()
            - time.monotonic()
        )


@dataclass
class Result:
    output: Any = None
    inputs: Any = None
    error: BaseException | None = None
    duration_s: float = 0.0
    # The step's `when` was falsy: the action was not called (engine.execution).
    skipped: bool = False
    # The values of the secrets the step read (engine.secret_store), by name: in memory
    # only, for masking its output and failure; never stored, never shown.
    secrets: dict[str, str] | None = field(default=None, repr=False)


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


def parse_task_id(task_id: str) -> tuple[str, str, int] | None:
    """(run_id, step_id, attempt) of a step task id, None for any other task id."""
    parts = task_id.rsplit(":", 2)
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    return parts[0], parts[1], int(parts[2])


# A step run inline, inside another step's (or plan_run's) task, names that task in its
# `worker`: "celery@host inline in <task id>". The step keeps its own row, attempt and task id;
# this says which Celery task (the one Flower shows) carried it.
INLINE_MARK = " inline in "
_WORKER_LENGTH = getattr(steps.c.worker.type, "length", None) or 200


_DELIVERY_LENGTH = getattr(steps.c.delivery_tag.type, "length", None) or 64


def delivery_tag(tag: object) -> str | None:
    """A broker's delivery tag as a claim records it (claims.claim_step); None for none, or
    for one that is not a string that fits: such a delivery never proves its attempt lost,
    the lease does."""
    if isinstance(tag, str) and 0 < len(tag) <= _DELIVERY_LENGTH:
        return tag
    return None


def inline_worker(worker: str, carrier_task_id: str) -> str:
    """The worker label of a step run inline inside the task `carrier_task_id`."""
    suffix = INLINE_MARK + carrier_task_id
    return worker[: max(0, _WORKER_LENGTH - len(suffix))] + suffix

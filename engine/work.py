"""What a use case asks its caller to do after the commit: messages to send, tasks to revoke,
and counts to add (a metric counts only what committed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.config import Settings

if TYPE_CHECKING:
    from prometheus_client import Counter

    from engine.specs import CompiledWorkflow

PLAN_TASK = "manager.plan_run"
STEP_TASK = "steps.execute"
RECONCILE_TASK = "manager.reconcile"
PRUNE_TASK = "maintenance.prune"
WEBHOOK_TASK = "webhooks.deliver"
# How often beat asks for a prune (engine.retention) when a retention is set.
PRUNE_INTERVAL_S = 3600.0
SCHEDULE_TASK = "schedules.fire"
DELAY_TASK = "manager.start_delayed"
MANAGER_QUEUE = "manager"
PLAN_BUDGET_S = 60.0


@dataclass(frozen=True)
class Dispatch:
    """One Celery message to send, by task name (so the web never imports the tasks)."""

    task: str
    args: tuple[str | int, ...]
    queue: str
    task_id: str
    countdown: float | None = None
    soft_time_limit: float | None = None
    time_limit: float | None = None
    priority: int | None = None


@dataclass
class Work:
    """The messages to send, the task ids to revoke and the counts to add once the
    transaction committed. A use case counts what it did here rather than on the metric
    itself: a commit that fails then counts nothing."""

    dispatches: list[Dispatch] = field(default_factory=list)
    revoke: list[str] = field(default_factory=list)
    counts: list[tuple[Counter, float]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.dispatches or self.revoke or self.counts)

    def extend(self, other: Work) -> None:
        self.dispatches.extend(other.dispatches)
        self.revoke.extend(other.revoke)
        self.counts.extend(other.counts)

    def count(self, counter: Counter, amount: float = 1) -> None:
        """Add `amount` to `counter` (a metric's labelled child) once committed."""
        self.counts.append((counter, amount))

    def count_committed(self) -> None:
        """The transaction committed: add its counts, once. workers.dispatch.send does it
        before sending; a caller with nothing to send calls it itself."""
        counts, self.counts = self.counts, []
        for counter, amount in counts:
            counter.inc(amount)


def step_task_id(run_id: str, step_id: str, attempt: int) -> str:
    """Deterministic per attempt, so Flower, logs, steps and dead letters point at each other."""
    return f"{run_id}:{step_id}:{attempt}"


def plan_task_id(run_id: str) -> str:
    return f"{run_id}:plan"


def message_priority(run_priority: int) -> int:
    # Runs say 9 is most urgent; the Redis transport serves 0 first.
    return max(0, min(9, 9 - run_priority))


def plan_dispatch(
    run_id: str, workflow: CompiledWorkflow, settings: Settings, priority: int = 0
) -> Dispatch:
    """The run's plan message. It names the run's workflow and version too (Flower shows
    them), so the planner knows the plan before it reads the run. plan_run may execute a
    first step itself, so its limits leave room for the longest root step."""
    first_step_timeout_s = max(
        (spec.timeout_s for spec in workflow.steps.values() if not spec.needs), default=0.0
    )
    return uncompiled_plan_dispatch(
        run_id, workflow.name, workflow.version, settings, priority, first_step_timeout_s
    )


def uncompiled_plan_dispatch(
    run_id: str,
    name: str,
    version: int,
    settings: Settings,
    priority: int = 0,
    first_step_timeout_s: float | None = None,
) -> Dispatch:
    """The plan message of a run whose workflow was not compiled here: its limits leave room
    for the longest step any workflow may have."""
    if first_step_timeout_s is None:
        first_step_timeout_s = settings.step_timeout_max_s
    soft = PLAN_BUDGET_S + first_step_timeout_s
    return Dispatch(
        PLAN_TASK,
        (run_id, name, version),
        MANAGER_QUEUE,
        plan_task_id(run_id),
        soft_time_limit=soft,
        time_limit=settings.step_hard_limit(soft),
        priority=message_priority(priority),
    )


def step_dispatch(
    run_id: str,
    step_id: str,
    attempt: int,
    queue: str,
    timeout_s: float,
    settings: Settings,
    countdown: float | None = None,
    priority: int = 0,
) -> Dispatch:
    return Dispatch(
        STEP_TASK,
        (run_id, step_id),
        queue,
        step_task_id(run_id, step_id, attempt),
        countdown=countdown,
        soft_time_limit=timeout_s,
        time_limit=settings.step_hard_limit(timeout_s),
        priority=message_priority(priority),
    )

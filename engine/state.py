"""Run and step statuses, and the moves allowed between them."""

from __future__ import annotations

from enum import StrEnum

from engine.errors import InvalidTransition


class RunStatus(StrEnum):
    QUEUED = "queued"
    PLANNING = "planning"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


RUN_TERMINAL = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})
RUN_LIVE = frozenset({RunStatus.QUEUED, RunStatus.PLANNING, RunStatus.RUNNING})
STEP_TERMINAL = frozenset(
    {
        StepStatus.SUCCEEDED,
        StepStatus.FAILED,
        StepStatus.DEAD,
        StepStatus.SKIPPED,
        StepStatus.CANCELLED,
    }
)
# Steps that may hold or wait for a message.
STEP_LIVE = frozenset(
    {StepStatus.PENDING, StepStatus.QUEUED, StepStatus.RUNNING, StepStatus.RETRYING}
)

RUN_MOVES: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.QUEUED: frozenset(
        {RunStatus.PLANNING, RunStatus.RUNNING, RunStatus.FAILED, RunStatus.CANCELLED}
    ),
    RunStatus.PLANNING: frozenset({RunStatus.RUNNING, RunStatus.FAILED, RunStatus.CANCELLED}),
    RunStatus.RUNNING: frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED}),
    # A failed run re-enters through a replay or a retry.
    RunStatus.FAILED: frozenset({RunStatus.RUNNING}),
    RunStatus.SUCCEEDED: frozenset(),
    RunStatus.CANCELLED: frozenset(),
}


def check_run_move(current: str, target: RunStatus) -> None:
    """Raise InvalidTransition unless a run may move from `current` to `target`."""
    if target not in RUN_MOVES[RunStatus(current)]:
        raise InvalidTransition(f"a {current} run cannot become {target}")

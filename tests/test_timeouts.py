"""Time limits and retries: a step past its hard limit is killed and recorded, a soft limit
is a StepTimeout that is retried, a retrying step shows when it runs next, and a
non-retryable error skips the retries. The first root step runs inside plan_run, so each
time limit is checked there ("inline") and on a step sent as a message of its own."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import spec
from tests.support.services import process_alive as alive
from tests.support.services import wait_for
from tests.support.stack import Stack, private_stack

DRILL_ENV = {"RECONCILE_INTERVAL_S": "1", "DISPATCH_GRACE_S": "2", "LEASE_GRACE_S": "1"}
FAST_RETRY = {"max_backoff_s": 0.1, "backoff_s": 0.05}


def placed(position: str, step: dict[str, Any]) -> list[dict[str, Any]]:
    """`step` as the first root step (run inline by plan_run) or after another one."""
    if position == "inline":
        return [step]
    # On another queue than the inline one, so `first` does not run it inline in a chain.
    return [{"id": "first", "action": "noop"}, {**step, "needs": ["first"], "queue": "default"}]


def parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


@pytest.mark.parametrize("position", ["inline", "sent"])
def test_a_step_past_its_hard_time_limit_is_killed_and_recorded_as_timed_out(
    backend: str, tmp_path: Path, unique: str, position: str
) -> None:
    with private_stack(backend, tmp_path / "stack", DRILL_ENV) as (stack, _):
        worker = stack.start_worker(concurrency=2)
        stack.register(
            spec(
                unique,
                placed(
                    position,
                    {
                        "id": "stuck",
                        "action": "stubborn",  # ignores the soft limit: only a kill stops it
                        "with": {"seconds": 30},
                        "timeout_s": 1,
                        "retry": {"max_attempts": 2, **FAST_RETRY},
                    },
                ),
            )
        )
        run_id = stack.submit(unique)
        first = stack.pid(run_id, "stuck", 1)

        run = stack.wait_finished(run_id, timeout=30)
        assert run["status"] == "failed"
        step = stack.step(run_id, "stuck")
        # Retried per its policy: attempt 1 was killed, attempt 2 too, then the DLQ.
        assert (step["status"], step["attempts"], step["error_type"]) == (
            "dead",
            2,
            "TimeLimitExceeded",
        )
        assert "hard time limit of 2 s" in step["error"]
        [letter] = stack.dead_letters(run_id)
        assert (letter.exception_type, letter.attempts) == ("TimeLimitExceeded", 2)
        second = stack.pid(run_id, "stuck", 2)
        # The pool terminates, then kills, a child past its hard limit; then it reaps it.
        wait_for(lambda: not alive(first) and not alive(second), 10, message="children gone")
        wait_for(lambda: len(worker.children()) == 2, 10, message="the pool to replace children")
        assert first not in worker.children() and second not in worker.children()


@pytest.mark.parametrize("position", ["inline", "sent"])
def test_a_soft_time_limit_is_recorded_as_a_step_timeout_and_retried(
    stack: Stack, unique: str, position: str
) -> None:
    stack.register(
        spec(
            unique,
            placed(
                position,
                {
                    "id": "slow",
                    "action": "stubborn",
                    "with": {"seconds": 30, "obey_soft_limit": True},
                    "timeout_s": 1,
                    "retry": {"max_attempts": 2, **FAST_RETRY},
                },
            ),
        )
    )
    run_id = stack.submit(unique)
    run = stack.wait_finished(run_id, timeout=30)
    assert run["status"] == "failed"
    step = stack.step(run_id, "slow")
    assert (step["status"], step["attempts"], step["error_type"]) == ("dead", 2, "StepTimeout")
    assert "time limit of 1 s" in step["error"]
    assert [attempt for _, s, attempt in stack.executions(run_id) if s == "slow"] == [1, 2]
    [letter] = stack.dead_letters(run_id)
    assert (letter.exception_type, letter.attempts) == ("StepTimeout", 2)


def test_a_step_that_timed_out_once_succeeds_on_its_retry(stack: Stack, unique: str) -> None:
    stack.register(
        spec(
            unique,
            placed(
                "inline",
                {
                    "id": "slow",
                    "action": "stubborn",
                    "with": {"seconds": 30, "obey_soft_limit": True, "until_attempt": 2},
                    "timeout_s": 1,
                    "retry": {"max_attempts": 3, **FAST_RETRY},
                },
            ),
        )
    )
    run_id = stack.submit(unique)
    run = stack.wait_finished(run_id, timeout=30)
    assert run["status"] == "succeeded"
    step = stack.step(run_id, "slow")
    assert (step["attempts"], step["output"]) == (2, {"attempt": 2})


def test_a_retrying_step_shows_its_attempts_and_when_it_runs_next(
    stack: Stack, unique: str
) -> None:
    stack.register(
        spec(
            unique,
            placed(
                "sent",
                {
                    "id": "flaky",
                    "action": "fail",
                    "with": {"until_attempt": 2, "message": "upstream busy"},
                    "retry": {"max_attempts": 4, "backoff_s": 3, "max_backoff_s": 3},
                },
            ),
        )
    )
    run_id = stack.submit(unique)

    def retrying() -> dict[str, Any] | None:
        steps = {step["step_id"]: step for step in stack.run(run_id)["steps"]}
        step = steps.get("flaky")
        return step if step and step["status"] == "retrying" else None

    step = wait_for(retrying, 20, message="the step to wait for its retry")
    assert (step["attempts"], step["max_attempts"]) == (1, 4)
    assert (step["error_type"], step["error"]) == ("ActionError", "upstream busy")
    # The delay is half the backoff plus jitter: 1.5 to 3 s after the failed attempt.
    wait = (parse(step["next_attempt_at"]) - parse(step["started_at"])).total_seconds()
    assert 1.5 <= wait <= 3.5, step

    run = stack.wait_finished(run_id, timeout=30)
    assert run["status"] == "succeeded"
    step = stack.step(run_id, "flaky")
    assert (step["status"], step["attempts"], step["next_attempt_at"]) == ("succeeded", 2, None)
    assert step["task_id"] == f"{run_id}:flaky:2"


def test_a_non_retryable_error_goes_to_the_dlq_after_one_attempt(stack: Stack, unique: str) -> None:
    stack.register(
        spec(
            unique,
            placed(
                "inline",
                {
                    "id": "invalid",
                    "action": "fail",
                    "with": {"retryable": False, "message": "the company does not exist"},
                    "retry": {"max_attempts": 5, **FAST_RETRY},
                },
            ),
        )
    )
    run_id = stack.submit(unique)
    run = stack.wait_finished(run_id)
    assert run["status"] == "failed"
    step = stack.step(run_id, "invalid")
    assert (step["status"], step["attempts"], step["max_attempts"]) == ("dead", 1, 5)
    [letter] = stack.dead_letters(run_id)
    assert (letter.exception_type, letter.attempts) == ("NonRetryableError", 1)
    assert letter.message == "the company does not exist"

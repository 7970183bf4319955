"""Steps left live in a run that has ended: a step running in a failed run whose whole
worker died, steps an earlier version left queued or retrying in a failed run, and a live
step in a cancelled run. The reconciler settles them as the run's other steps were, sends
nothing and writes no dead letter, and a replay of the run's dead letter finishes the run.
A kill -9 drill and the reconciler called directly, on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from engine import attempts, claims, failures, planning, recovery, runs
from engine.auth import Caller
from engine.models import Step, utcnow
from engine.work import Work
from tests.conftest import spec
from tests.support.services import process_alive, wait_for
from tests.support.stack import Stack, private_stack

DRILL_ENV = {"RECONCILE_INTERVAL_S": "1", "DISPATCH_GRACE_S": "2", "LEASE_GRACE_S": "1"}
OPS = "ops@example.com"
ALICE = Caller("alice@example.com", ("runs.write",))
# `boom` dies at its first attempt and succeeds at its second (the replay's).
BOOM = {"id": "boom", "action": "fail", "with": {"until_attempt": 2}, "retry": {"max_attempts": 1}}
LOST = "the worker running attempt 1 died before recording an outcome"


@pytest.fixture
def offline(backend: str, tmp_path: Path) -> Iterator[Stack]:
    """A database of its own and no worker until the test starts one: the reconciler is
    called directly."""
    platform = Stack(backend, tmp_path / "stack", env=DRILL_ENV)
    yield platform
    platform.close()


def planned_run(stack: Stack, workflow: str) -> str:
    """A run submitted and planned in the database only (the broker never saw its work)."""
    with stack.sessions.begin() as session:
        run, _, _ = runs.submit(session, stack.settings, runs.SubmitRun(workflow, {}), ALICE)
        session.flush()
        planning.plan_run(session, stack.settings, run.id)
        return run.id


def claim(stack: Stack, run_id: str, step_id: str) -> attempts.Claim:
    with stack.sessions.begin() as session:
        taken = claims.claim_step(
            session, stack.settings, run_id, step_id, task_id=f"{run_id}:{step_id}:1", worker="w"
        )
    assert isinstance(taken, attempts.Claim)
    return taken


def kill_boom(stack: Stack, run_id: str) -> None:
    """`boom`'s first attempt fails: its dead letter is written and its run fails."""
    taken = claim(stack, run_id, "boom")
    with stack.sessions.begin() as session:
        outcome = failures.fail_attempt(
            session,
            stack.settings,
            run_id,
            "boom",
            task_id=taken.task_id,
            attempt=1,
            error_type="ActionError",
            message="step failed on purpose",
        )
    assert outcome.status == "dead"


def set_step(stack: Stack, run_id: str, step_id: str, **values: Any) -> None:
    with stack.sessions.begin() as session:
        session.execute(
            update(Step).where(Step.run_id == run_id, Step.step_id == step_id).values(**values)
        )


def reconcile(stack: Stack) -> Work:
    with stack.sessions.begin() as session:
        return recovery.reconcile(session, stack.settings)


def statuses(stack: Stack, run_id: str) -> dict[str, str]:
    return {step["step_id"]: step["status"] for step in stack.run(run_id)["steps"]}


def replay_to_the_end(stack: Stack, run_id: str) -> dict[str, Any]:
    """Replay the run's only dead letter through the API and let a real worker finish it."""
    (letter,) = stack.dead_letters(run_id)
    replayed = stack.client().post(
        f"/admin/dlq/{letter.id}/replay",
        json={"reason": "fixed"},
        headers=stack.headers(OPS, "admin.*"),
    )
    assert replayed.status_code == 202, replayed.get_json()
    stack.start_worker(concurrency=2)
    return stack.wait_finished(run_id, timeout=30)


def test_a_step_whose_worker_died_in_a_failed_run_is_skipped_past_its_lease_and_replayed(
    offline: Stack, unique: str
) -> None:
    offline.register(
        spec(
            unique,
            [
                BOOM,
                {"id": "slow", "action": "record"},
                {"id": "after", "action": "record", "needs": ["slow"]},
            ],
        )
    )
    run_id = planned_run(offline, unique)
    claim(offline, run_id, "slow")  # running when `boom` dies ...
    kill_boom(offline, run_id)
    assert statuses(offline, run_id) == {"boom": "dead", "slow": "running", "after": "skipped"}
    reconcile(offline)
    assert offline.step(run_id, "slow")["status"] == "running"  # within its lease: it runs on
    # ... but its worker died with it: nothing records the attempt but its lease.
    set_step(offline, run_id, "slow", lease_expires_at=utcnow() - timedelta(seconds=1))

    work = reconcile(offline)

    assert [d for d in work.dispatches if d.args[0] == run_id] == []
    slow = offline.step(run_id, "slow")
    assert (slow["status"], slow["attempts"]) == ("skipped", 1)
    assert (slow["error_type"], slow["error"]) == ("WorkerLostError", LOST)
    assert offline.run(run_id)["status"] == "failed"
    assert len(offline.dead_letters(run_id)) == 1
    finished = replay_to_the_end(offline, run_id)
    assert finished["status"] == "succeeded", finished
    assert set(statuses(offline, run_id).values()) == {"succeeded"}
    assert sorted(e[1:] for e in offline.executions(run_id)) == [("after", 1), ("slow", 2)]


def test_two_reconcilers_at_once_settle_each_lost_step_once(
    offline: Stack, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    offline.register(spec(unique, [BOOM, {"id": "slow", "action": "record"}]))
    run_ids = [planned_run(offline, unique) for _ in range(8)]
    for run_id in run_ids:
        claim(offline, run_id, "slow")
        kill_boom(offline, run_id)
        set_step(offline, run_id, "slow", lease_expires_at=utcnow() - timedelta(seconds=1))
    start = threading.Barrier(2)

    def sweep() -> None:
        start.wait()
        reconcile(offline)

    sweepers = [threading.Thread(target=sweep) for _ in range(2)]
    with caplog.at_level(logging.WARNING, logger="engine.leftovers"):
        for thread in sweepers:
            thread.start()
        for thread in sweepers:
            thread.join(30)
    settled = [r for r in caplog.records if "after its run ended" in r.getMessage()]
    assert sorted(r.getMessage().split()[1] for r in settled) == sorted(run_ids)
    assert all(offline.step(run_id, "slow")["status"] == "skipped" for run_id in run_ids)


def test_a_failed_run_left_with_queued_and_retrying_steps_has_them_skipped_and_replayed(
    offline: Stack, unique: str
) -> None:
    offline.register(
        spec(
            unique,
            [
                BOOM,
                {"id": "waiting", "action": "record"},
                {"id": "flaky", "action": "record", "retry": {"max_attempts": 3}},
                {"id": "child", "action": "record", "needs": ["waiting"]},
            ],
        )
    )
    run_id = planned_run(offline, unique)
    kill_boom(offline, run_id)
    # As versions before fail_run skipped every step not started left such a run.
    long_ago = utcnow() - timedelta(minutes=5)
    set_step(offline, run_id, "waiting", status="queued", dispatched_at=long_ago)
    set_step(
        offline,
        run_id,
        "flaky",
        status="retrying",
        attempts=1,
        error="recorded failure",
        error_type="ActionError",
        next_attempt_at=long_ago,
        dispatched_at=long_ago,
    )
    set_step(offline, run_id, "child", status="pending")

    work = reconcile(offline)

    assert [d for d in work.dispatches if d.args[0] == run_id] == []
    assert statuses(offline, run_id) == {
        "boom": "dead",
        "waiting": "skipped",
        "flaky": "skipped",
        "child": "skipped",
    }
    assert offline.run(run_id)["status"] == "failed"
    assert len(offline.dead_letters(run_id)) == 1
    finished = replay_to_the_end(offline, run_id)
    assert finished["status"] == "succeeded", finished
    assert set(statuses(offline, run_id).values()) == {"succeeded"}
    ran = sorted(e[1:] for e in offline.executions(run_id))
    assert ran == [("child", 1), ("flaky", 2), ("waiting", 1)]


def test_a_live_step_left_in_a_cancelled_run_is_cancelled_as_its_run_cancelled_the_others(
    offline: Stack, unique: str
) -> None:
    offline.register(
        spec(
            unique,
            [
                {"id": "a", "action": "noop"},
                {"id": "b", "action": "noop"},
                {"id": "c", "action": "noop", "needs": ["a"]},
            ],
        )
    )
    run_id = planned_run(offline, unique)
    claim(offline, run_id, "a")
    response = offline.client().post(f"/runs/{run_id}/cancel", headers=offline.headers())
    assert response.status_code == 200, response.get_json()
    # Cancelling cancels the running step too, in the same transaction ...
    assert statuses(offline, run_id) == {"a": "cancelled", "b": "cancelled", "c": "cancelled"}
    # ... so only a row changed by other means holds a live step in a cancelled run.
    set_step(offline, run_id, "a", status="running", finished_at=None)
    set_step(offline, run_id, "a", lease_expires_at=utcnow() - timedelta(seconds=1))
    set_step(offline, run_id, "b", status="queued", finished_at=None)
    set_step(offline, run_id, "c", status="pending", finished_at=None)

    work = reconcile(offline)

    assert [d for d in work.dispatches if d.args[0] == run_id] == []
    assert statuses(offline, run_id) == {"a": "cancelled", "b": "cancelled", "c": "cancelled"}
    a = offline.step(run_id, "a")
    assert (a["error_type"], a["error"]) == ("WorkerLostError", LOST)
    assert all(step["finished_at"] for step in offline.run(run_id)["steps"])
    assert offline.run(run_id)["status"] == "cancelled"
    assert offline.dead_letters(run_id) == []


def test_a_whole_worker_killed_while_a_step_runs_in_a_failed_run_leaves_nothing_stuck(
    backend: str, tmp_path: Path, unique: str
) -> None:
    """`boom` dies (after `tick`) while `slow` runs; then the whole worker is killed -9, so
    Redis keeps `slow`'s message unacknowledged for hours. Past its lease (6 s time limit
    plus 1 s of grace) the reconciler skips `slow`; a replay of `boom`'s letter finishes
    the run."""
    with private_stack(backend, tmp_path / "stack", DRILL_ENV) as (stack, _):
        slow = {
            "id": "slow",
            "action": "stubborn",
            "with": {"seconds": 30, "until_attempt": 2},
            "timeout_s": 6,
        }
        after = {"id": "after", "action": "record", "needs": ["slow"]}
        tick = {"id": "tick", "action": "record", "with": {"sleep": 1}}
        stack.register(spec(unique, [slow, after, tick, {**BOOM, "needs": ["tick"]}]))
        first = stack.start_worker(concurrency=2)
        run_id = stack.submit(unique)
        victim = stack.pid(run_id, "slow")
        assert stack.wait_finished(run_id, timeout=20)["status"] == "failed"
        assert stack.step(run_id, "slow")["status"] == "running"
        first.kill()
        wait_for(lambda: not process_alive(victim), 10, message="the step's process to die")

        stack.start_worker(concurrency=2, beat=True)
        skipped = wait_for(
            lambda: (step := stack.step(run_id, "slow"))["status"] == "skipped" and step,
            30,
            0.2,
            "the reconciler to skip the lost step",
        )
        assert (skipped["attempts"], skipped["error_type"]) == (1, "WorkerLostError")
        assert stack.run(run_id)["status"] == "failed"
        (letter,) = stack.dead_letters(run_id)
        replayed = stack.client().post(
            f"/admin/dlq/{letter.id}/replay",
            json={"reason": "fixed"},
            headers=stack.headers(OPS, "admin.*"),
        )
        assert replayed.status_code == 202, replayed.get_json()
        finished = stack.wait_finished(run_id, timeout=30)
        assert finished["status"] == "succeeded", finished
        assert set(statuses(stack, run_id).values()) == {"succeeded"}
        assert [e for e in stack.executions(run_id) if e[1] == "slow"] == [
            (run_id, "slow", 1),
            (run_id, "slow", 2),
        ]
        assert len(stack.dead_letters(run_id)) == 1

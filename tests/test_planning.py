"""Planning a run is idempotent: a redelivered or duplicated plan_run creates nothing twice."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import func, select, update

from engine import planning, runs
from engine.auth import Caller
from engine.models import Run, Step
from engine.work import PLAN_TASK, Work, plan_task_id
from tests.conftest import spec
from tests.support import services
from tests.support.stack import Stack

DIAMOND = [
    {"id": "a", "action": "record"},
    {"id": "b", "action": "record", "needs": ["a"]},
    {"id": "c", "action": "record", "needs": ["a"]},
    {"id": "d", "action": "record", "needs": ["b", "c"]},
]
PLANNER = Caller("planner@example.com", ())


def queued_run(database: Stack, workflow: str) -> str:
    """A queued run written by the use case itself; no message is sent for it."""
    with database.sessions.begin() as session:
        run, _work, created = runs.submit(
            session, database.settings, runs.SubmitRun(workflow, {}), PLANNER
        )
        assert created
        return run.id


def step_rows(stack: Stack, run_id: str) -> list[tuple[Any, ...]]:
    with stack.sessions() as session:
        return [
            (s.step_id, s.status, s.attempts, s.task_id, s.started_at, s.finished_at)
            for s in session.scalars(select(Step).where(Step.run_id == run_id))
        ]


def step_count(stack: Stack, run_id: str) -> int:
    with stack.sessions() as session:
        return session.scalar(select(func.count()).where(Step.run_id == run_id)) or 0


def plan(database: Stack, run_id: str) -> Work:
    with database.sessions.begin() as session:
        return planning.plan_run(session, database.settings, run_id)


def test_planning_a_queued_run_twice_creates_its_steps_once(database: Stack, unique: str) -> None:
    database.register(spec(unique, DIAMOND))
    run_id = queued_run(database, unique)

    first = plan(database, run_id)
    assert [d.args for d in first.dispatches] == [(run_id, "a")]
    assert step_count(database, run_id) == 4
    planned = step_rows(database, run_id)

    second = plan(database, run_id)
    assert not second and second.dispatches == [] and second.revoke == []
    assert step_rows(database, run_id) == planned
    statuses = {row[0]: row[1] for row in planned}
    assert statuses == {"a": "queued", "b": "pending", "c": "pending", "d": "pending"}


def test_two_planners_racing_on_one_run_plan_it_once(database: Stack, unique: str) -> None:
    database.register(spec(unique, DIAMOND))
    run_id = queued_run(database, unique)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: plan(database, run_id), range(4)))
    assert sorted(len(work.dispatches) for work in results) == [0, 0, 0, 1]
    assert step_count(database, run_id) == 4


def plan_log_count(stack: Stack, run_id: str, outcome: str) -> int:
    text = stack.workers[0].log_path.read_text(errors="replace")
    return text.count(f"Task {PLAN_TASK}[{plan_task_id(run_id)}] {outcome}")


def send_plan(stack: Stack, run_id: str, *names: str | int) -> None:
    """A plan message naming the run alone (as messages did before they named its workflow
    and version), or with the given names."""
    stack.app.extensions["engine.celery"].send_task(
        PLAN_TASK, args=[run_id, *names], queue="manager", task_id=plan_task_id(run_id)
    )


def test_a_plan_message_naming_the_run_alone_or_another_workflow_plans_the_run_it_names(
    stack: Stack, unique: str
) -> None:
    stack.register(spec(unique, DIAMOND))
    stack.register(spec(f"{unique}_other", [{"id": "x", "action": "record"}]))
    for names in ((), (f"{unique}_other", 1), (unique, 2)):
        run_id = queued_run(stack, unique)  # no message sent for it
        send_plan(stack, run_id, *names)
        run = stack.wait_finished(run_id)
        assert run["status"] == "succeeded", (names, run)
        assert sorted(step["step_id"] for step in run["steps"]) == ["a", "b", "c", "d"], names
        executed = Counter(step for _, step, _ in stack.executions(run_id))
        assert executed == {"a": 1, "b": 1, "c": 1, "d": 1}, names


def test_a_plan_message_delivered_again_after_the_run_finished_changes_nothing(
    stack: Stack, unique: str
) -> None:
    stack.register(spec(unique, DIAMOND))
    run_id = stack.submit(unique)
    assert stack.wait_finished(run_id)["status"] == "succeeded"
    services.wait_for(
        lambda: plan_log_count(stack, run_id, "succeeded") == 1, 10, message="the first plan"
    )
    steps_before, executions_before = step_rows(stack, run_id), stack.executions(run_id)
    assert len(steps_before) == 4 and len(executions_before) == 4

    send_plan(stack, run_id)
    send_plan(stack, run_id)
    services.wait_for(
        lambda: plan_log_count(stack, run_id, "succeeded") == 3,
        30,
        message="the worker to handle both duplicate plan messages",
    )
    assert step_rows(stack, run_id) == steps_before
    assert stack.executions(run_id) == executions_before
    assert stack.run(run_id)["status"] == "succeeded"


def test_a_duplicate_plan_message_racing_the_first_runs_every_step_once(
    stack: Stack, unique: str
) -> None:
    stack.register(spec(unique, DIAMOND))
    run_id = stack.submit(unique)
    send_plan(stack, run_id)
    run = stack.wait_finished(run_id)
    assert run["status"] == "succeeded", run
    services.wait_for(
        lambda: plan_log_count(stack, run_id, "succeeded") == 2, 30, message="both plan messages"
    )
    assert step_count(stack, run_id) == 4
    executed = Counter(step for _, step, _ in stack.executions(run_id))
    assert executed == {"a": 1, "b": 1, "c": 1, "d": 1}


def test_a_run_counts_its_leaves_at_submit_and_one_queued_without_them_is_counted_at_plan(
    database: Stack, unique: str
) -> None:
    database.register(
        spec(unique, DIAMOND + [{"id": "e", "action": "record", "needs": ["a"]}])
    )  # two leaves: d and e
    counted = queued_run(database, unique)
    older = queued_run(database, unique)
    with database.sessions.begin() as session:
        assert session.get(Run, counted).leaves_left == 2  # type: ignore[union-attr]
        # As a run submitted before runs counted their leaves at submit was left queued.
        session.execute(update(Run).where(Run.id == older).values(leaves_left=0))
    for run_id in (counted, older):
        plan(database, run_id)
        with database.sessions() as session:
            run = session.get(Run, run_id)
            assert run is not None and run.status == "running" and run.leaves_left == 2


def test_the_worker_keeps_what_it_loaded_at_start_out_of_the_collectors_sight(
    stack: Stack, unique: str
) -> None:
    """Frozen at start (gc.freeze), the worker's modules and settings are not rescanned by
    every full collection, which a big plan's allocations set off."""
    stack.register(spec(unique, [{"id": "probe", "action": "worker_facts"}]))
    run_id = stack.submit(unique)
    assert stack.wait_finished(run_id)["status"] == "succeeded"
    assert stack.step(run_id, "probe")["output"]["frozen_objects"] > 10_000

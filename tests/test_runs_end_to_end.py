"""Runs through HTTP against a real prefork worker, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import Counter

import pytest

from engine import actions
from engine.errors import InvalidSpec
from engine.models import Workflow
from engine.specs import compile_spec, spec_hash
from tests.conftest import spec
from tests.support.stack import Stack


def test_a_three_step_dag_with_a_fan_in_passes_outputs_along(stack: Stack, unique: str) -> None:
    stack.register(
        spec(
            unique,
            [
                {
                    "id": "fetch",
                    "action": "echo",
                    "with": {"company": "{{ params.company }}", "n": 60},
                },
                {
                    "id": "left",
                    "action": "transform",
                    "needs": ["fetch"],
                    "with": {"expression": "steps.fetch.output.n * 2"},
                },
                {
                    "id": "right",
                    "action": "echo",
                    "needs": ["fetch"],
                    "with": {"name": "{{ steps.fetch.output.company | upper }}"},
                },
                {
                    "id": "join",
                    "action": "echo",
                    "needs": ["left", "right"],
                    "with": {
                        "total": "{{ steps.left.output + 1 }}",
                        "label": "{{ steps.right.output.name }}-{{ steps.left.output }}",
                    },
                },
            ],
            params={
                "type": "object",
                "required": ["company"],
                "properties": {"company": {"type": "string"}},
            },
        )
    )
    run_id = stack.submit(unique, {"company": "acme"})
    run = stack.wait_finished(run_id)
    assert run["status"] == "succeeded", run
    outputs = {step["step_id"]: step["output"] for step in run["steps"]}
    assert outputs["fetch"] == {"company": "acme", "n": 60}
    assert outputs["left"] == 120
    assert outputs["join"] == {"total": 121, "label": "ACME-120"}
    assert all(step["task_id"] == f"{run_id}:{step['step_id']}:1" for step in run["steps"])


def test_a_fan_out_of_fifty_with_a_join_runs_every_step_exactly_once(
    stack: Stack, unique: str
) -> None:
    width = 50
    stack.register(
        spec(
            unique,
            [
                {"id": "start", "action": "record"},
                *(
                    {"id": f"branch_{i}", "action": "record", "needs": ["start"]}
                    for i in range(width)
                ),
                {"id": "join", "action": "record", "needs": [f"branch_{i}" for i in range(width)]},
            ],
        )
    )
    run_id = stack.submit(unique)
    run = stack.wait_finished(run_id, timeout=120)
    assert run["status"] == "succeeded"
    executed = Counter(step for _, step, _ in stack.executions(run_id))
    assert len(executed) == width + 2
    assert set(executed.values()) == {1}, executed
    join = next(step for step in run["steps"] if step["step_id"] == "join")
    assert join["output"]["upstream"] == sorted(f"branch_{i}" for i in range(width))


def test_a_chain_runs_inline_each_step_once_with_its_own_row_attempt_and_task_id(
    stack: Stack, unique: str
) -> None:
    chain = [{"id": "s0", "action": "record"}]
    chain += [{"id": f"s{i}", "action": "record", "needs": [f"s{i - 1}"]} for i in range(1, 5)]
    stack.register(spec(unique, chain))
    run_id = stack.submit(unique)
    run = stack.wait_finished(run_id)
    assert run["status"] == "succeeded", run
    assert sorted(stack.executions(run_id)) == [(run_id, f"s{i}", 1) for i in range(5)]
    for step in run["steps"]:
        assert (step["status"], step["attempts"], step["task_id"]) == (
            "succeeded",
            1,
            f"{run_id}:{step['step_id']}:1",
        )
        # No message of its own: each ran inside plan_run's task, which its worker names.
        assert step["worker"].endswith(f" inline in {run_id}:plan"), step


def test_a_failing_step_fails_the_run_and_skips_what_follows(stack: Stack, unique: str) -> None:
    stack.register(
        spec(
            unique,
            [
                {
                    "id": "boom",
                    "action": "fail",
                    "with": {"message": "no such company"},
                    "retry": {"max_attempts": 1},
                },
                {"id": "after", "action": "record", "needs": ["boom"]},
            ],
        )
    )
    run_id = stack.submit(unique)
    run = stack.wait_finished(run_id)
    assert run["status"] == "failed"
    assert "no such company" in run["error"]
    statuses = {step["step_id"]: step["status"] for step in run["steps"]}
    assert statuses == {"boom": "dead", "after": "skipped"}
    assert stack.executions(run_id) == []


def test_inputs_that_fail_to_render_or_an_output_json_cannot_hold_fail_at_once(
    stack: Stack, unique: str
) -> None:
    """Each fails alike at every attempt: the step is dead after one, whatever its retry
    policy, its error naming the step and where in `with` it failed; the run fails."""
    retry = {"max_attempts": 3, "backoff_s": 0.05, "max_backoff_s": 0.05}
    cases = {
        "sum": ({"total": ["{{ params.company + 1 }}"]}, "echo", "with.total[0]"),
        "lipsum": ({"text": "{{ lipsum }}"}, "echo", "with.text"),
        "nested": ({"list": "{{ [params.nmae] }}"}, "echo", "with.list"),
        "divide": ({"expression": "params.n / 0"}, "transform", "division by zero"),
        "output": (None, "unstorable", "cannot be stored"),
    }
    run_ids = {}
    for name, (inputs, action, _) in cases.items():
        stack.register(
            spec(
                f"{unique}_{name}",
                [
                    {"id": "first", "action": action, "with": inputs, "retry": retry},
                    {"id": "after", "action": "record", "needs": ["first"]},
                ],
            )
        )
        run_ids[name] = stack.submit(f"{unique}_{name}", {"company": "acme", "n": 1})
    for name, run_id in run_ids.items():
        run = stack.wait_finished(run_id, timeout=30)
        assert run["status"] == "failed", (name, run)
        words = cases[name][2]
        assert run["error"].startswith("step 'first' failed after 1 attempt(s): InvalidInput: ")
        assert words in run["error"], (name, run["error"])
        first, after = run["steps"]
        assert (first["status"], first["attempts"], after["status"]) == ("dead", 1, "skipped")
        assert first["output"] is None


def test_a_version_registered_before_a_check_existed_still_runs(stack: Stack, unique: str) -> None:
    """What registration refuses now was accepted before: a stored version is compiled
    without those checks, so its runs go on as they did (here, a template that reads a
    step it does not need, in a branch these params never take)."""
    body = spec(
        unique,
        [
            {"id": "a", "action": "echo", "with": {"n": 1}},
            {"id": "b", "action": "echo", "with": "{{ steps.a.output if params.read else 0 }}"},
        ],
    )
    with pytest.raises(InvalidSpec):
        compile_spec(body, stack.settings)
    with stack.sessions.begin() as session:
        session.add(Workflow(name=unique, version=1, spec=body, spec_hash=spec_hash(body)))
    run = stack.wait_finished(stack.submit(unique, {"read": False}))
    assert run["status"] == "succeeded", run
    assert {step["step_id"]: step["output"] for step in run["steps"]} == {"a": {"n": 1}, "b": 0}


def test_a_run_refused_in_the_worker_says_which_field_and_why(stack: Stack, unique: str) -> None:
    """Inputs the action's schema refuses once rendered: the run's error names the field."""
    stack.register(
        spec(f"{unique}_inputs", [{"id": "nap", "action": "sleep", "with": "{{ params.nap }}"}])
    )
    refused = stack.wait_finished(stack.submit(f"{unique}_inputs", {"nap": {"seconds": "ten"}}))
    assert refused["status"] == "failed"
    assert "inputs.seconds: 'ten' is not of type 'number'" in refused["error"], refused["error"]


def test_a_step_whose_worker_lacks_its_action_is_dead_lettered_naming_it(
    stack: Stack, unique: str
) -> None:
    """The API registered the spec with an action a worker does not have (its plugin not
    deployed there, on the planner or on the worker of the step's own queue): the steps
    using it are dead letters naming the action, to replay once it is deployed; the others
    run. The step is not taken, dropped and sent again without end."""

    @actions.register(f"{unique}.api_only")
    def api_only(inputs: object, context: actions.ActionContext) -> None:
        return None

    queue = f"{unique}_bare"
    for name, action, extra in (
        ("api", f"{unique}.api_only", {}),
        ("bare", "record", {"queue": queue}),
    ):
        stack.register(
            spec(
                f"{unique}_{name}",
                [
                    {"id": "first", "action": "noop"},
                    {"id": name, "action": action, "needs": ["first"], **extra},
                ],
            )
        )
    worker = stack.start_worker(concurrency=1, queues=queue, env={"ENGINE_ACTION_MODULES": ""})
    try:
        run_ids = {name: stack.submit(f"{unique}_{name}") for name in ("api", "bare")}
        runs = {name: stack.wait_finished(run_id, timeout=30) for name, run_id in run_ids.items()}
    finally:
        worker.stop()
    for name, run in runs.items():
        assert run["status"] == "failed", run
        steps = {step["step_id"]: step for step in run["steps"]}
        assert (steps["first"]["status"], steps[name]["status"], steps[name]["attempts"]) == (
            "succeeded",
            "dead",
            1,
        )
        assert [letter.step_id for letter in stack.dead_letters(run["id"])] == [name]
    errors = {name: run["steps"][-1]["error"] for name, run in runs.items()}
    assert [run["steps"][-1]["step_id"] for run in runs.values()] == ["api", "bare"]
    assert f"unknown action '{unique}.api_only': no module this worker" in errors["api"]
    assert "unknown action 'record'" in errors["bare"]


def test_a_step_whose_worker_cannot_compile_its_workflow_is_dead_lettered_naming_why(
    stack: Stack, unique: str
) -> None:
    """The worker of a step's own queue runs with a STEP_TIMEOUT_MAX_S lowered below the
    timeout_s of the registered version: it cannot compile that version, so it cannot run
    the step. The step is a dead letter naming why, once, and the run fails; its message is
    not taken, dropped and sent again without end."""
    queue = f"{unique}_strict"
    stack.register(
        spec(
            unique,
            [
                {"id": "first", "action": "noop"},
                {"id": "long", "action": "noop", "needs": ["first"], "queue": queue},
                {"id": "after", "action": "noop", "needs": ["long"]},
            ],
            defaults={"timeout_s": 600},
        )
    )
    worker = stack.start_worker(concurrency=1, queues=queue, env={"STEP_TIMEOUT_MAX_S": "300"})
    try:
        run = stack.wait_finished(stack.submit(unique), timeout=30)
    finally:
        worker.stop()
    assert run["status"] == "failed", run
    steps = {step["step_id"]: step for step in run["steps"]}
    assert [(steps[s]["status"], steps[s]["attempts"]) for s in ("first", "long", "after")] == [
        ("succeeded", 1),
        ("dead", 1),
        ("skipped", 0),
    ]
    assert f"workflow '{unique}' cannot be compiled here" in steps["long"]["error"]
    assert "STEP_TIMEOUT_MAX_S" in steps["long"]["error"], steps["long"]["error"]
    assert steps["long"]["error_type"] == "InvalidSpec"
    (letter,) = stack.dead_letters(run["id"])
    assert (letter.step_id, letter.exception_type) == ("long", "InvalidSpec")
    assert "cannot be compiled here" in run["error"]

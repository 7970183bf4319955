"""Conditional steps: a step's `when`, evaluated as its attempt starts, runs it or skips it
(status `skipped`, output null, counted as done downstream); one that fails to evaluate
dead-letters the step; registration refuses a `when` it can tell is wrong; a replay of a
failed run holding skipped steps finishes it. Real workers, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import spec
from tests.support import services
from tests.support.cli import ok, run_engine
from tests.support.http import problem
from tests.support.stack import Stack

OPS = "ops@example.com"


def by_id(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["step_id"]: step for step in run["steps"]}


def statuses(run: dict[str, Any]) -> dict[str, str]:
    return {step["step_id"]: step["status"] for step in run["steps"]}


def test_a_false_condition_skips_its_branch_step_whose_dependent_runs_and_sees_null(
    stack: Stack, unique: str
) -> None:
    stack.register(
        spec(
            unique,
            [
                {"id": "fetch", "action": "echo", "with": {"employees": "{{ params.employees }}"}},
                {
                    "id": "big",
                    "action": "record",
                    "needs": ["fetch"],
                    "when": "steps.fetch.output.employees > 50",
                },
                {
                    "id": "small",
                    "action": "record",
                    "needs": ["fetch"],
                    "when": "steps.fetch.output.employees <= 50",
                },
                {
                    "id": "after_small",
                    "action": "echo",
                    "needs": ["small"],
                    "with": {"seen": "{{ steps.small.output }}"},
                },
                {
                    "id": "after_big",
                    "action": "echo",
                    "needs": ["big"],
                    "with": {"seen": "{{ steps.big.output.step }}"},
                },
            ],
        )
    )
    run_id = stack.submit(unique, {"employees": 60})
    run = stack.wait_finished(run_id)
    assert run["status"] == "succeeded", run
    steps = by_id(run)
    assert steps["big"]["status"] == "succeeded"
    assert steps["big"]["output"]["step"] == "big"
    assert steps["small"]["status"] == "skipped"
    assert (steps["small"]["output"], steps["small"]["error"]) == (None, None)
    assert steps["small"]["inputs"] is None  # nothing was rendered for it
    assert steps["small"]["finished_at"] is not None and steps["small"]["attempts"] == 1
    assert steps["after_small"]["status"] == "succeeded"
    assert steps["after_small"]["output"] == {"seen": None}
    assert steps["after_big"]["output"] == {"seen": "big"}
    # The skipped step's action was never called.
    assert sorted(step for _, step, _ in stack.executions(run_id)) == ["big"]


def test_a_false_condition_on_a_leaf_lets_the_run_succeed(stack: Stack, unique: str) -> None:
    stack.register(
        spec(
            unique,
            [
                {"id": "first", "action": "echo", "with": {"n": 1}},
                {"id": "kept", "action": "record", "needs": ["first"]},
                {
                    "id": "dropped",
                    "action": "record",
                    "needs": ["first"],
                    "when": "steps.first.output.n == 2",
                },
            ],
        )
    )
    run_id = stack.submit(unique)
    run = stack.wait_finished(run_id)
    assert run["status"] == "succeeded", run
    assert run["finished_at"] is not None
    assert statuses(run) == {"first": "succeeded", "kept": "succeeded", "dropped": "skipped"}
    assert by_id(run)["dropped"]["output"] is None
    assert [step for _, step, _ in stack.executions(run_id)] == ["kept"]


def test_a_false_condition_on_the_first_step_skips_it_inline_and_the_run_goes_on(
    stack: Stack, unique: str
) -> None:
    stack.register(
        spec(
            unique,
            [
                {"id": "gate", "action": "record", "when": "params.go"},
                {
                    "id": "next",
                    "action": "echo",
                    "needs": ["gate"],
                    "with": {"gate": "{{ steps.gate.output }}"},
                },
            ],
        )
    )
    skipped_id = stack.submit(unique, {"go": False})
    ran_id = stack.submit(unique, {"go": True})
    skipped, ran = stack.wait_finished(skipped_id), stack.wait_finished(ran_id)
    assert skipped["status"] == "succeeded", skipped
    gate = by_id(skipped)["gate"]
    assert (gate["status"], gate["output"]) == ("skipped", None)
    assert gate["worker"].endswith(f" inline in {skipped_id}:plan"), gate  # run by plan_run
    assert by_id(skipped)["next"]["output"] == {"gate": None}
    assert stack.executions(skipped_id) == []
    assert ran["status"] == "succeeded", ran
    assert by_id(ran)["gate"]["status"] == "succeeded"
    assert by_id(ran)["next"]["output"]["gate"]["step"] == "gate"

    only = f"{unique}_only"
    stack.register(spec(only, [{"id": "alone", "action": "record", "when": "params.go"}]))
    alone_id = stack.submit(only, {"go": 0})
    alone = stack.wait_finished(alone_id)
    assert alone["status"] == "succeeded", alone
    assert statuses(alone) == {"alone": "skipped"}


def test_a_condition_that_fails_to_evaluate_dead_letters_its_step_naming_when(
    stack: Stack, unique: str
) -> None:
    stack.register(
        spec(
            unique,
            [
                {"id": "first", "action": "echo", "with": {"n": 1}},
                {
                    "id": "broken",
                    "action": "record",
                    "needs": ["first"],
                    "when": "steps.first.output.n / params.zero",
                    "retry": {"max_attempts": 3, "backoff_s": 0},
                },
            ],
        )
    )
    run_id = stack.submit(unique, {"zero": 0})
    run = stack.wait_finished(run_id)
    assert run["status"] == "failed", run
    broken = by_id(run)["broken"]
    assert (broken["status"], broken["attempts"]) == ("dead", 1)  # not retried
    assert broken["error_type"] == "InvalidInput"
    assert broken["error"].startswith("when: expression 'steps.first.output.n / params.zero'")
    assert "division by zero" in broken["error"]
    (letter,) = stack.dead_letters(run_id)
    assert (letter.step_id, letter.exception_type) == ("broken", "InvalidInput")
    assert letter.message.startswith("when: ") and "division by zero" in letter.message
    assert stack.executions(run_id) == []


@pytest.mark.parametrize(
    ("when", "needs", "says"),
    [
        (True, ["first"], "is not of type 'string'"),
        ("", ["first"], "should be non-empty"),
        ("steps.first.output >", ["first"], "unexpected 'end of template'"),
        ("{{ steps.first.output }}", ["first"], "without {{ }}"),
        ("steps.first.output", [], "reads steps.first but the step does not need 'first'"),
        ("steps['first'].output and params.x", [], "does not need 'first'"),
        ("secrets.api_key == 'x'", ["first"], "reads secrets"),
    ],
)
def test_registration_refuses_a_when_naming_it(
    database: Stack, unique: str, when: Any, needs: list[str], says: str
) -> None:
    body = spec(
        unique,
        [
            {"id": "first", "action": "noop"},
            {"id": "second", "action": "noop", "needs": needs, "when": when},
        ],
    )
    response = database.client().post(
        "/workflows", json=body, headers=database.headers(scopes="workflows.write")
    )
    errors = problem(response, 422)["errors"]
    assert [error["field"] for error in errors] == ["steps[1].when"], errors
    assert says in errors[0]["message"], errors


def test_a_dry_run_plan_shows_the_steps_conditions(database: Stack, unique: str) -> None:
    database.register(
        spec(
            unique,
            [
                {"id": "score", "action": "transform", "with": {"expression": "params.n > 50"}},
                {
                    "id": "notify",
                    "action": "noop",
                    "needs": ["score"],
                    "when": "steps.score.output",
                },
            ],
        )
    )
    response = database.client().post(
        f"/workflows/{unique}/plan",
        json={"params": {"n": 1}},
        headers=database.headers(scopes="workflows.read"),
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {
        "workflow": unique,
        "stages": [["score"], ["notify"]],
        "when": {"notify": "steps.score.output"},
    }


def test_validating_a_spec_file_prints_its_steps_conditions(
    database: Stack, unique: str, tmp_path: Path
) -> None:
    body = spec(
        unique,
        [
            {"id": "score", "action": "transform", "with": {"expression": "params.n > 50"}},
            {"id": "notify", "action": "noop", "needs": ["score"], "when": "steps.score.output"},
        ],
    )
    path = tmp_path / "conditions.json"
    path.write_text(json.dumps(body))
    out = ok(run_engine(database.env, "workflows", "validate", str(path)))
    assert out.splitlines() == [
        f"{unique}@1 is valid; stages: [['score'], ['notify']]",
        "notify runs when: steps.score.output",
    ]


@pytest.mark.parametrize("bulk", [False, True], ids=["one", "bulk"])
def test_replaying_a_failed_run_holding_condition_skipped_steps_finishes_it(
    stack: Stack, unique: str, bulk: bool
) -> None:
    """`quiet` (a leaf) and `maybe` (whose child `after_maybe` ran) are skipped by their
    conditions, then `boom` dies on another branch and the run fails, `boom_child` skipped
    with it. The replay brings the skipped steps back but `maybe`, whose child succeeded
    (evaluated again it would skip again, and nothing would wait for it: the run could
    finish first and leave it queued): `quiet`'s condition is evaluated again and skips
    again, `boom` and its child run, and the run succeeds, its leaves counted right (a leaf
    skipped twice is not counted down twice)."""
    false = "steps.root.output.n > 5"
    stack.register(
        spec(
            unique,
            [
                {"id": "root", "action": "echo", "with": {"n": 1}},
                {"id": "quiet", "action": "record", "needs": ["root"], "when": false},
                {"id": "maybe", "action": "record", "needs": ["root"], "when": false},
                {"id": "after_maybe", "action": "record", "needs": ["maybe"]},
                {"id": "tick", "action": "record", "needs": ["root"], "with": {"sleep": 2}},
                {
                    "id": "boom",
                    "action": "record",
                    "needs": ["tick"],
                    "retry": {"max_attempts": 1},
                    "with": {"fail_at_attempt": 1},
                },
                {"id": "boom_child", "action": "record", "needs": ["boom"]},
            ],
        )
    )
    run_id = stack.submit(unique)
    failed = stack.wait_finished(run_id)
    assert failed["status"] == "failed", failed
    assert statuses(failed) == {
        "root": "succeeded",
        "quiet": "skipped",
        "maybe": "skipped",
        "after_maybe": "succeeded",
        "tick": "succeeded",
        "boom": "dead",
        "boom_child": "skipped",
    }
    (letter,) = stack.dead_letters(run_id)
    client, headers = stack.client(), stack.headers(OPS, "admin.*")
    if bulk:
        replayed = client.post(
            "/admin/dlq/replay",
            json={"filter": {"workflow": unique}, "confirm_count": 1, "reason": "fixed"},
            headers=headers,
        )
        assert replayed.status_code == 202, replayed.get_json()
        assert [item["outcome"] for item in replayed.get_json()["results"]] == ["replayed"]
    else:
        replayed = client.post(
            f"/admin/dlq/{letter.id}/replay", json={"reason": "fixed"}, headers=headers
        )
        assert replayed.status_code == 202, replayed.get_json()
    finished = stack.wait_finished(run_id)
    assert finished["status"] == "succeeded", finished
    steps = by_id(finished)
    assert statuses(finished) == {
        "root": "succeeded",
        "quiet": "skipped",
        "maybe": "skipped",
        "after_maybe": "succeeded",
        "tick": "succeeded",
        "boom": "succeeded",
        "boom_child": "succeeded",
    }
    # `quiet` evaluated again on the replay, and skipped again; `maybe` left as it was.
    assert (steps["quiet"]["attempts"], steps["maybe"]["attempts"]) == (2, 1)
    ran = sorted((step, attempt) for _, step, attempt in stack.executions(run_id))
    assert ran == [("after_maybe", 1), ("boom", 1), ("boom", 2), ("boom_child", 1), ("tick", 1)]


def test_replaying_a_second_dead_letter_of_a_running_run_keeps_its_condition_skips_done(
    stack: Stack, unique: str
) -> None:
    """`boom` dies, failing the run, and `slow` dies after it: two dead letters. Replaying
    `boom` re-enters the failed run (`maybe` is evaluated again and skips again, releasing
    `join` as far as it can); replaying `slow` then enters a running run, whose skipped step
    stays done: `join` waits for `slow` and sees its output."""
    queue = f"{unique}_q"
    false = "steps.root.output.n > 5"
    once = {"max_attempts": 1}
    stack.register(
        spec(
            unique,
            [
                {"id": "root", "action": "echo", "with": {"n": 1}},
                {"id": "maybe", "action": "record", "needs": ["root"], "when": false},
                {"id": "tick", "action": "record", "needs": ["root"], "with": {"sleep": 1}},
                {
                    "id": "boom",
                    "action": "record",
                    "needs": ["tick"],
                    "retry": once,
                    "with": {"fail_at_attempt": 1},
                },
                {
                    "id": "slow",
                    "action": "record",
                    "needs": ["root"],
                    "retry": once,
                    "with": {"sleep": 3, "fail_at_attempt": 1},
                },
                {
                    "id": "join",
                    "action": "echo",
                    "needs": ["maybe", "slow"],
                    "with": {"slow": "{{ steps.slow.output }}"},
                },
            ],
            defaults={"queue": queue},
        )
    )
    worker = stack.start_worker(concurrency=4, queues=queue)
    try:
        run_id = stack.submit(unique)
        assert stack.wait_finished(run_id)["status"] == "failed"
        services.wait_for(lambda: len(stack.dead_letters(run_id)) == 2, 20, 0.2, "two letters")
        first, second = stack.dead_letters(run_id)
        assert (first.step_id, second.step_id) == ("boom", "slow")
        run = stack.run(run_id)
        assert (statuses(run)["maybe"], statuses(run)["join"]) == ("skipped", "skipped")
        client, headers = stack.client(), stack.headers(OPS, "admin.*")
        replayed = client.post(
            f"/admin/dlq/{first.id}/replay", json={"reason": "fixed"}, headers=headers
        )
        assert replayed.status_code == 202, replayed.get_json()
        services.wait_for(
            lambda: (
                stack.step(run_id, "maybe")["attempts"] == 2
                and stack.step(run_id, "boom")["status"] == "succeeded"
            ),
            20,
            0.1,
            "maybe to skip again and boom to succeed",
        )
        assert stack.run(run_id)["status"] == "running"
        assert stack.step(run_id, "join")["status"] == "pending"
        replayed = client.post(
            f"/admin/dlq/{second.id}/replay", json={"reason": "fixed"}, headers=headers
        )
        assert replayed.status_code == 202, replayed.get_json()
        finished = stack.wait_finished(run_id, timeout=30)
    finally:
        worker.stop()
    assert finished["status"] == "succeeded", finished
    steps = by_id(finished)
    assert (steps["maybe"]["status"], steps["maybe"]["attempts"]) == ("skipped", 2)
    assert steps["join"]["output"]["slow"]["step"] == "slow"

"""`engine runs watch` and `engine runs submit --wait` follow a run in the database until it
finishes, against a real worker: a line (or JSON state) per change, exit 0 when it
succeeded, 1 when it failed or was cancelled."""

from __future__ import annotations

import json

from tests.conftest import spec
from tests.support.cli import failed, ok, run_engine
from tests.support.stack import Stack


def test_submit_wait_follows_the_run_and_exits_0_when_it_succeeded(
    stack: Stack, unique: str
) -> None:
    steps = [
        {"id": "nap", "action": "record", "with": {"sleep": 1}},
        {"id": "after", "action": "noop", "needs": ["nap"]},
    ]
    stack.register(spec(unique, steps))
    out = ok(run_engine(stack.env, "runs", "submit", unique, "--wait"))
    lines = out.splitlines()
    run_id = lines[0]
    assert stack.run(run_id)["status"] == "succeeded"
    assert len(lines) >= 3, out
    assert lines[-1].split()[1] == "succeeded", out
    assert "nap: running (attempt 1)" in out and "nap: succeeded (attempt 1)" in out
    assert "after: succeeded (attempt 1)" in out
    # One line per change: no line repeats the one before it but for its time.
    bodies = [line.split(None, 1)[1] for line in lines[1:]]
    assert all(a != b for a, b in zip(bodies, bodies[1:], strict=False)), out


def test_watch_exits_1_when_the_run_failed_and_prints_json_states(
    stack: Stack, unique: str
) -> None:
    failing = {"id": "bad", "action": "record", "with": {"fail": True, "message": "no"}}
    failing["retry"] = {"max_attempts": 1}
    stack.register(spec(unique, [failing]))
    run_id = stack.submit(unique)
    result = run_engine(stack.env, "runs", "watch", run_id, "--json")
    failed(result)
    states = [json.loads(line) for line in result.stdout.splitlines()]
    assert states[-1] == stack.run(run_id)
    assert states[-1]["status"] == "failed"
    assert all(state["status"] != "failed" for state in states[:-1])

    plain = failed(run_engine(stack.env, "runs", "watch", run_id))
    assert len(plain.splitlines()) == 1  # a finished run: its one state
    assert " failed " in plain and "bad: " in plain and "error: " in plain


def test_watch_exits_1_when_the_run_was_cancelled(stack: Stack, unique: str) -> None:
    stack.register(spec(unique, [{"id": "long", "action": "record", "with": {"sleep": 30}}]))
    run_id = stack.submit(unique)
    stack.pid(run_id, "long")
    cancelled = stack.client().post(f"/runs/{run_id}/cancel", headers=stack.headers())
    assert cancelled.status_code == 200
    out = failed(run_engine(stack.env, "runs", "watch", run_id))
    assert out.splitlines()[-1].split()[1] == "cancelled"


def test_submit_wait_json_prints_only_states_and_watch_names_a_missing_run(
    stack: Stack, unique: str
) -> None:
    stack.register(spec(unique, [{"id": "a", "action": "noop"}]))
    out = ok(run_engine(stack.env, "runs", "submit", unique, "--wait", "--json"))
    states = [json.loads(line) for line in out.splitlines()]
    assert states[-1]["status"] == "succeeded" and states[-1]["steps"][0]["step_id"] == "a"
    assert "does not exist" in failed(run_engine(stack.env, "runs", "watch", "no-such-run"))

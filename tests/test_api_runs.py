"""Runs over HTTP (submit, idempotency, list, read, cancel) and the API's HTTP contract:
problem+json errors, health and readiness — on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY
from sqlalchemy import func, insert, select

from engine import payloads
from engine.models import Run, utcnow
from engine.queues import QueueLayout
from engine.work import MANAGER_QUEUE, PLAN_TASK, plan_task_id
from tests.conftest import spec
from tests.support import services
from tests.support.commit_trap import refusing_commits
from tests.support.http import fields, problem
from tests.support.stack import Stack
from web import db as web_db

PARAMS = {
    "type": "object",
    "required": ["count"],
    "properties": {"count": {"type": "integer", "minimum": 1}},
}
ADMIN = "admin.*,runs.read"


def run_count(stack: Stack, **where: Any) -> int:
    query = select(func.count()).select_from(Run)
    for column, value in where.items():
        query = query.where(getattr(Run, column) == value)
    with stack.sessions() as session:
        return session.scalar(query) or 0


def caller(unique: str, name: str = "alice") -> str:
    return f"{name}.{unique}@example.com"


def insert_runs(stack: Stack, workflow: str, sub: str, count: int, **values: Any) -> None:
    """Rows written directly, for listing tests that need many runs or equal timestamps."""
    now = utcnow()
    rows = [
        {
            "id": str(uuid.uuid4()),
            "workflow": workflow,
            "version": 1,
            "params": {},
            "status": "succeeded",
            "priority": 0,
            "created_by": sub,
            "created_at": now - timedelta(seconds=index),
            **values,
        }
        for index in range(count)
    ]
    with stack.sessions.begin() as session:
        session.execute(insert(Run), rows)


def walk(stack: Stack, headers: dict[str, str], query: str) -> list[list[str]]:
    """Every page of GET /runs?<query>, following next_cursor."""
    pages: list[list[str]] = []
    cursor = None
    while True:
        url = f"/runs?{query}" + (f"&cursor={cursor}" if cursor else "")
        response = stack.client().get(url, headers=headers)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        pages.append([item["id"] for item in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "pagination does not end"


# --- submit ---------------------------------------------------------------------------


def test_a_submitted_run_is_accepted_with_its_location_and_runs(stack: Stack, unique: str) -> None:
    stack.register(spec(unique, [{"id": "only", "action": "echo", "with": {"n": 1}}]))
    headers = stack.headers(caller(unique))
    response = stack.client().post(
        "/runs", json={"workflow": unique, "params": {}, "priority": 3}, headers=headers
    )
    assert response.status_code == 202, response.get_json()
    run = response.get_json()
    assert run["status"] == "queued" and run["priority"] == 3 and "steps" not in run
    assert run["created_by"] == caller(unique) and run["created_at"].endswith("Z")
    assert response.headers["Location"] == f"/runs/{run['id']}"

    finished = stack.wait_finished(run["id"])
    assert finished["status"] == "succeeded"
    read = stack.client().get(response.headers["Location"], headers=headers).get_json()
    assert [(s["step_id"], s["status"], s["output"]) for s in read["steps"]] == [
        ("only", "succeeded", {"n": 1})
    ]
    step = read["steps"][0]
    assert {"attempts", "max_attempts", "depends_on", "inputs", "task_id", "worker"} <= set(step)


def test_params_that_break_the_workflow_schema_are_rejected_and_no_run_is_written(
    stack: Stack, unique: str
) -> None:
    stack.register(spec(unique, [{"id": "only", "action": "noop"}], params=PARAMS))
    client, headers = stack.client(), stack.headers(caller(unique))
    wrong_type = client.post(
        "/runs", json={"workflow": unique, "params": {"count": "many"}}, headers=headers
    )
    assert fields(problem(wrong_type, 422)) == ["params.count"]
    missing = client.post("/runs", json={"workflow": unique, "params": {}}, headers=headers)
    assert fields(problem(missing, 422)) == ["params.count"]
    too_small = client.post(
        "/runs", json={"workflow": unique, "params": {"count": 0}}, headers=headers
    )
    assert problem(too_small, 422)["code"] == "invalid_params"
    assert run_count(stack, workflow=unique) == 0


def test_a_run_without_a_version_takes_the_latest_even_one_registered_since(
    database: Stack, unique: str
) -> None:
    # An API process remembers the latest version it read, and inserts a run of it only while
    # it is still the latest: one registered since (here by another session) is taken.
    only = [{"id": "only", "action": "noop"}]
    database.register(spec(unique, only))
    client, headers = database.client(), database.headers(caller(unique))
    first = client.post("/runs", json={"workflow": unique}, headers=headers)
    assert (first.status_code, first.get_json()["version"]) == (202, 1)
    database.register({**spec(unique, only, params=PARAMS), "version": 2})
    # Checked against version 2's params.
    missing = client.post("/runs", json={"workflow": unique}, headers=headers)
    assert fields(problem(missing, 422)) == ["params.count"]
    second = client.post(
        "/runs", json={"workflow": unique, "params": {"count": 1}}, headers=headers
    )
    assert (second.status_code, second.get_json()["version"]) == (202, 2)
    assert run_count(database, workflow=unique, version=1) == 1
    assert run_count(database, workflow=unique, version=2) == 1


def test_a_malformed_submission_names_the_field(stack: Stack, unique: str) -> None:
    client, headers = stack.client(), stack.headers(caller(unique))
    no_workflow = client.post("/runs", json={"params": {}}, headers=headers)
    assert fields(problem(no_workflow, 422)) == ["workflow"]
    bad_priority = client.post("/runs", json={"workflow": unique, "priority": 12}, headers=headers)
    assert fields(problem(bad_priority, 422)) == ["priority"]
    unknown = client.post("/runs", json={"workflow": unique, "colour": "red"}, headers=headers)
    assert fields(problem(unknown, 422)) == ["colour"]
    for version in (2**31, 10**30):  # beyond any version the database can hold
        body = {"workflow": unique, "version": version}
        assert fields(problem(client.post("/runs", json=body, headers=headers), 422)) == ["version"]


def nested(depth: int) -> Any:
    """A value of `depth` levels of arrays around a number, built without recursion."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def test_params_nested_beyond_the_limit_are_refused_and_the_limit_itself_runs(
    stack: Stack, unique: str
) -> None:
    # Python's JSON parser recurses once a level, with less stack left in the worker that
    # plans a run than in the API: a value the API parsed could strand its run. Values are
    # refused at the door beyond MAX_DEPTH levels, and MAX_DEPTH itself goes all the way.
    echo = [{"id": "only", "action": "echo", "with": {"value": "{{ params.a }}"}}]
    stack.register(spec(unique, echo))
    client, headers = stack.client(), stack.headers(caller(unique))
    deepest = {"a": nested(payloads.MAX_DEPTH - 1)}  # params: MAX_DEPTH levels
    run_id = stack.submit(unique, deepest, headers=headers)
    finished = stack.wait_finished(run_id)
    assert finished["status"] == "succeeded", finished
    assert finished["steps"][0]["output"] == {"value": deepest["a"]}

    too_deep = {"workflow": unique, "params": {"a": nested(payloads.MAX_DEPTH)}}
    body = problem(client.post("/runs", json=too_deep, headers=headers), 422)
    assert (fields(body), body["code"]) == (["params"], "invalid_input")
    # Too deep for the parser itself: the same answer, never a 500.
    text = json.dumps({"workflow": unique, "params": {"a": "X"}}).replace(
        '"X"', "[" * 5000 + "1" + "]" * 5000
    )
    json_type = {**headers, "Content-Type": "application/json"}
    body = problem(client.post("/runs", data=text, headers=json_type), 422)
    assert "nested more than 64 levels" in body["detail"] and fields(body) == ["body"]
    # NaN and Infinity: Python's parser takes them, JSON and PostgreSQL's json do not.
    for constant in ("NaN", "-Infinity"):
        text = json.dumps({"workflow": unique, "params": {"a": "X"}}).replace('"X"', constant)
        body = problem(client.post("/runs", data=text, headers=json_type), 400)
        assert f"{constant.lstrip('-')} is not a JSON value" in body["detail"]
    assert run_count(stack, workflow=unique) == 1


def test_a_params_pattern_that_backtracks_without_end_is_cut_off_and_refused(
    database: Stack, unique: str
) -> None:
    # With Python's re, this pattern against this string would take hours of an API thread.
    slow = {"type": "string", "pattern": "(a|aa)+$"}
    params = {"type": "object", "properties": {"code": slow}}
    database.register(spec(unique, [{"id": "only", "action": "noop"}], params=params))
    client, headers = database.client(), database.headers(caller(unique))
    crafted = {"workflow": unique, "params": {"code": "a" * 100 + "!"}}
    body = problem(client.post("/runs", json=crafted, headers=headers), 422)
    assert body["code"] == "invalid_params" and fields(body) == ["params.code"], body
    assert "took longer than" in body["errors"][0]["message"]
    fine = {"workflow": unique, "params": {"code": "aaaa"}}
    assert client.post("/runs", json=fine, headers=headers).status_code == 202
    assert run_count(database, workflow=unique) == 1


def test_text_with_a_nul_character_is_refused_naming_where_it_is(
    database: Stack, unique: str
) -> None:
    # PostgreSQL's text cannot hold U+0000: it used to reach a statement and fail there as a
    # 500. It is refused at the door on both backends, wherever it comes: body, path, query.
    database.register(spec(unique, [{"id": "only", "action": "noop"}]))
    client, headers = database.client(), database.headers(caller(unique), ADMIN + ",runs.write")
    nul = "\x00"
    for response, field in [
        (client.post("/runs", json={"workflow": unique + nul}, headers=headers), "workflow"),
        (
            client.post("/runs", json={"workflow": unique, "params": {nul: 1}}, headers=headers),
            "params",
        ),
        (client.get("/runs/a%00b", headers=headers), "path"),
        (client.get("/runs", query_string={"workflow": nul}, headers=headers), "workflow"),
        (
            client.get("/admin/dlq", query_string={"fingerprint": nul}, headers=headers),
            "fingerprint",
        ),
        (client.post("/admin/dlq/x%00/replay", json={"reason": "r"}, headers=headers), "path"),
        # JSON in UTF-16, which the parser reads too: the escape is not there byte for byte.
        (
            client.post(
                "/runs",
                data=json.dumps({"workflow": unique, "params": {"a": nul}}).encode("utf-16"),
                content_type="application/json",
                headers=headers,
            ),
            "params",
        ),
    ]:
        body = problem(response, 422)
        assert fields(body) == [field] and "NUL" in body["detail"], body
    assert run_count(database, workflow=unique) == 0
    # A backslash followed by "u0000" is only text.
    text = {"workflow": unique, "params": {"a": "\\u0000"}}
    assert client.post("/runs", json=text, headers=headers).status_code == 202


def test_a_run_of_an_unknown_workflow_or_version_is_not_found(stack: Stack, unique: str) -> None:
    client, headers = stack.client(), stack.headers(caller(unique))
    problem(client.post("/runs", json={"workflow": unique}, headers=headers), 404)
    stack.register(spec(unique, [{"id": "only", "action": "noop"}]))
    missing_version = client.post("/runs", json={"workflow": unique, "version": 7}, headers=headers)
    assert "version 7" in problem(missing_version, 404)["detail"]
    assert run_count(stack, workflow=unique) == 0


def test_an_idempotency_key_returns_the_first_run_and_refuses_another_body(
    stack: Stack, unique: str
) -> None:
    stack.register(spec(unique, [{"id": "only", "action": "noop"}], params=PARAMS))
    client = stack.client()
    headers = {**stack.headers(caller(unique)), "Idempotency-Key": f"order-{unique}"}
    body = {"workflow": unique, "params": {"count": 2}}

    first = client.post("/runs", json=body, headers=headers)
    assert first.status_code == 202
    again = client.post("/runs", json=body, headers=headers)
    assert again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert run_count(stack, workflow=unique) == 1

    other = client.post("/runs", json={**body, "params": {"count": 3}}, headers=headers)
    assert "Idempotency-Key" in problem(other, 409)["detail"]
    assert run_count(stack, workflow=unique) == 1

    # The key belongs to its caller: someone else using it submits their own run.
    bob = {**stack.headers(caller(unique, "bob")), "Idempotency-Key": f"order-{unique}"}
    theirs = client.post("/runs", json=body, headers=bob)
    assert theirs.status_code == 202 and theirs.get_json()["id"] != first.get_json()["id"]
    blank = client.post("/runs", json=body, headers={**headers, "Idempotency-Key": ""})
    assert fields(problem(blank, 422)) == ["Idempotency-Key"]
    stack.wait_finished(first.get_json()["id"])
    stack.wait_finished(theirs.get_json()["id"])


def test_concurrent_submissions_with_one_idempotency_key_create_one_run(
    stack: Stack, unique: str
) -> None:
    stack.register(spec(unique, [{"id": "only", "action": "noop"}]))
    headers = {**stack.headers(caller(unique)), "Idempotency-Key": f"burst-{unique}"}
    app = stack.app

    def submit(_: int) -> tuple[int, str]:
        response = app.test_client().post("/runs", json={"workflow": unique}, headers=headers)
        return response.status_code, response.get_json().get("id", "")

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(submit, range(6)))
    assert sorted(status for status, _ in answers) == [200] * 5 + [202], answers
    assert len({run_id for _, run_id in answers}) == 1
    assert run_count(stack, workflow=unique) == 1
    stack.wait_finished(answers[0][1])


# --- list and read ---------------------------------------------------------------------


def test_a_caller_lists_only_their_own_runs_and_an_admin_lists_all(
    stack: Stack, unique: str
) -> None:
    good, bad = unique, f"{unique}_bad"
    stack.register(spec(good, [{"id": "only", "action": "noop"}]))
    stack.register(spec(bad, [{"id": "boom", "action": "fail", "retry": {"max_attempts": 1}}]))
    alice, bob = stack.headers(caller(unique)), stack.headers(caller(unique, "bob"))
    alice_runs = [stack.submit(good, headers=alice) for _ in range(2)]
    failed = stack.submit(bad, headers=alice)
    bob_run = stack.submit(good, headers=bob)
    for run_id in [*alice_runs, failed, bob_run]:
        stack.wait_finished(run_id)

    def ids(headers: dict[str, str], query: str = "") -> set[str]:
        response = stack.client().get(f"/runs?{query}", headers=headers)
        assert response.status_code == 200, response.get_json()
        return {item["id"] for item in response.get_json()["items"]}

    assert ids(alice) == {*alice_runs, failed}
    assert ids(bob) == {bob_run}
    admin = stack.headers("root@example.com", ADMIN)
    assert ids(admin, f"workflow={good}") == {*alice_runs, bob_run}
    assert ids(admin, f"workflow={good}&created_by={caller(unique, 'bob')}") == {bob_run}
    # A caller who sees only its own runs finds none of another's by naming them.
    assert ids(alice, f"created_by={caller(unique, 'bob')}") == set()
    assert ids(alice, f"created_by={caller(unique)}") == {*alice_runs, failed}
    assert ids(alice, "status=failed") == {failed}
    assert ids(alice, f"status=succeeded&workflow={good}") == set(alice_runs)
    assert ids(alice, f"status=failed&workflow={good}") == set()
    assert fields(problem(stack.client().get("/runs?status=lost", headers=alice), 422)) == [
        "status"
    ]


def test_cursor_pagination_walks_every_run_once_even_with_equal_timestamps(
    database: Stack, unique: str
) -> None:
    sub = caller(unique)
    insert_runs(database, unique, sub, 4)
    insert_runs(database, unique, sub, 5, created_at=utcnow() - timedelta(minutes=5))
    headers = database.headers(sub)
    pages = walk(database, headers, "limit=2")
    assert [len(page) for page in pages] == [2, 2, 2, 2, 1]
    seen = [run_id for page in pages for run_id in page]
    assert len(seen) == len(set(seen)) == 9
    everything = database.client().get("/runs?limit=50", headers=headers).get_json()
    assert [item["id"] for item in everything["items"]] == seen
    stamps = [item["created_at"] for item in everything["items"]]
    assert stamps == sorted(stamps, reverse=True)


def test_since_and_until_bound_when_the_listed_runs_were_submitted(
    database: Stack, unique: str
) -> None:
    sub = caller(unique)
    now = utcnow().replace(microsecond=0)
    insert_runs(database, unique, sub, 3, created_at=now - timedelta(days=2))
    insert_runs(database, unique, sub, 2, created_at=now - timedelta(hours=1))
    headers = database.headers(sub)
    day_ago = (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    hour_ago = (now - timedelta(hours=1)).isoformat()  # no offset: UTC

    def count(query: str) -> int:
        return sum(len(page) for page in walk(database, headers, f"limit=2&{query}"))

    assert count(f"since={day_ago}") == 2
    assert count(f"until={day_ago}") == 3
    # since is inclusive, until exclusive: a run at the very instant is in one window only.
    assert count(f"since={hour_ago}") == 2
    assert count(f"since={day_ago}&until={hour_ago}") == 0
    client = database.client()
    for query, field in [
        ("since=yesterday", "since"),
        ("until=2024-13-01", "until"),
        (f"since={hour_ago}&until={day_ago}", "until"),
        (f"since={day_ago}&until={day_ago}", "until"),
    ]:
        body = problem(client.get(f"/runs?{query}", headers=headers), 422)
        assert fields(body) == [field], query


def test_a_limit_above_the_cap_is_capped(database: Stack, unique: str) -> None:
    cap = database.settings.page_limit_max
    sub = caller(unique)
    insert_runs(database, unique, sub, cap + 3)
    body = database.client().get("/runs?limit=100000", headers=database.headers(sub)).get_json()
    assert len(body["items"]) == cap
    assert body["next_cursor"] is not None
    default = database.client().get("/runs", headers=database.headers(sub)).get_json()
    assert len(default["items"]) == database.settings.page_limit_default


def test_a_bad_limit_or_cursor_is_a_problem_naming_it(database: Stack) -> None:
    client, headers = database.client(), database.headers()
    for query, field in [
        ("limit=0", "limit"),
        ("limit=-3", "limit"),
        ("limit=ten", "limit"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=WzEsMl0", "cursor"),  # base64 of [1,2]: decodes, but is not ours
    ]:
        body = problem(client.get(f"/runs?{query}", headers=headers), 422)
        assert fields(body) == [field], query


def test_a_run_not_planned_yet_reads_with_no_steps(database: Stack, unique: str) -> None:
    # No worker here: the run stays queued, without step rows.
    database.register(spec(unique, [{"id": "only", "action": "noop"}]))
    client, headers = database.client(), database.headers(caller(unique))
    submitted = client.post("/runs", json={"workflow": unique}, headers=headers)
    read = client.get(submitted.headers["Location"], headers=headers)
    assert read.status_code == 200, read.get_json()
    assert read.get_json() == {**submitted.get_json(), "steps": []}


def test_another_callers_run_is_not_found_exactly_like_a_missing_one(
    stack: Stack, unique: str
) -> None:
    stack.register(spec(unique, [{"id": "only", "action": "noop"}]))
    run_id = stack.submit(unique, headers=stack.headers(caller(unique)))
    stack.wait_finished(run_id)
    client, bob = stack.client(), stack.headers(caller(unique, "bob"))
    missing_id = str(uuid.uuid4())

    hidden = problem(client.get(f"/runs/{run_id}", headers=bob), 404)
    missing = problem(client.get(f"/runs/{missing_id}", headers=bob), 404)
    assert hidden == {**missing, "detail": missing["detail"].replace(missing_id, run_id)}
    hidden_cancel = problem(
        client.post(
            f"/runs/{run_id}/cancel", headers=stack.headers(caller(unique, "bob"), "runs.write")
        ),
        404,
    )
    assert hidden_cancel["code"] == missing["code"]
    assert stack.run(run_id)["status"] == "succeeded"  # an admin still sees it


# --- cancel ----------------------------------------------------------------------------


def test_cancelling_a_running_run_stops_it_and_cancels_its_steps(stack: Stack, unique: str) -> None:
    stack.register(
        spec(
            unique,
            [
                {"id": "nap", "action": "record", "with": {"sleep": 60}},
                {"id": "after", "action": "record", "needs": ["nap"]},
            ],
        )
    )
    headers = stack.headers(caller(unique))
    run_id = stack.submit(unique, headers=headers)
    pid_file = Path(stack.settings.var_dir) / "pids" / f"{run_id}.nap.1"
    services.wait_for(pid_file.exists, 30, message="the sleeping step to start")
    assert stack.run(run_id)["status"] == "running"

    response = stack.client().post(f"/runs/{run_id}/cancel", headers=headers)
    assert response.status_code == 200, response.get_json()
    run = response.get_json()
    assert run["status"] == "cancelled" and run["finished_at"]
    assert {s["step_id"]: s["status"] for s in run["steps"]} == {
        "nap": "cancelled",
        "after": "cancelled",
    }

    pid = int(pid_file.read_text())
    services.wait_for(lambda: not running(pid), 20, message="the sleeping attempt to be stopped")
    after = stack.run(run_id)
    assert after["status"] == "cancelled"
    assert {s["status"] for s in after["steps"]} == {"cancelled"}
    assert [step for _, step, _ in stack.executions(run_id)] == ["nap"]
    # No warning that a result backend, which the platform does not have, was not told.
    for worker in stack.workers:
        lines = worker.log_path.read_text().splitlines()
        assert not [line for line in lines if run_id in line and "revoked in backend" in line]


def test_cancelling_stops_a_step_running_inline_in_another_steps_task(
    stack: Stack, unique: str
) -> None:
    # `carrier` arrives as its own message (queue default); `nap` follows it inline, inside
    # the carrier's task, so cancelling must stop that task too.
    stack.register(
        spec(
            unique,
            [
                {"id": "carrier", "action": "record", "queue": "default", "timeout_s": 300},
                {
                    "id": "nap",
                    "action": "record",
                    "needs": ["carrier"],
                    "timeout_s": 90,
                    "with": {"sleep": 60},
                },
            ],
        )
    )
    headers = stack.headers(caller(unique))
    run_id = stack.submit(unique, headers=headers)
    pid_file = Path(stack.settings.var_dir) / "pids" / f"{run_id}.nap.1"
    services.wait_for(pid_file.exists, 30, message="the inline step to start")
    nap = next(s for s in stack.run(run_id)["steps"] if s["step_id"] == "nap")
    assert nap["worker"].endswith(f" inline in {run_id}:carrier:1"), nap

    response = stack.client().post(f"/runs/{run_id}/cancel", headers=headers)
    assert response.status_code == 200, response.get_json()
    pid = int(pid_file.read_text())
    services.wait_for(lambda: not running(pid), 20, message="the inline step to be stopped")
    assert {s["status"] for s in stack.run(run_id)["steps"]} == {"succeeded", "cancelled"}


def running(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting for its pool to reap it."""
    status = Path(f"/proc/{pid}/status")
    try:
        return "zombie" not in status.read_text()
    except FileNotFoundError:
        return False


def test_cancelling_a_finished_run_is_a_conflict(stack: Stack, unique: str) -> None:
    stack.register(spec(unique, [{"id": "only", "action": "noop"}]))
    headers = stack.headers(caller(unique))
    run_id = stack.submit(unique, headers=headers)
    assert stack.wait_finished(run_id)["status"] == "succeeded"
    body = problem(stack.client().post(f"/runs/{run_id}/cancel", headers=headers), 409)
    assert body["code"] == "invalid_transition"
    assert stack.run(run_id)["status"] == "succeeded"


def test_a_cancel_whose_commit_the_database_refuses_cancels_and_counts_nothing(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "only", "action": "noop"}]))
    sub = caller(unique)
    headers = database.headers(sub)
    run_id = database.submit(unique, headers=headers)  # no worker here: it stays queued

    def cancelled() -> float:
        labels = {"workflow": unique, "status": "cancelled"}
        return REGISTRY.get_sample_value("runs_total", labels) or 0.0

    with refusing_commits(database, "runs", f"NEW.error = 'cancelled by {sub}'"):
        assert database.client().post(f"/runs/{run_id}/cancel", headers=headers).status_code == 500
    assert database.run(run_id)["status"] == "queued"
    assert cancelled() == 0

    answer = database.client().post(f"/runs/{run_id}/cancel", headers=headers)
    assert answer.status_code == 200, answer.get_json()
    assert cancelled() == 1


# --- the HTTP contract -----------------------------------------------------------------


def test_every_kind_of_error_is_a_problem_document(stack: Stack, unique: str) -> None:
    stack.register(spec(unique, [{"id": "only", "action": "noop"}], params=PARAMS))
    client, headers = stack.client(), stack.headers(caller(unique))
    json_type = {**headers, "Content-Type": "application/json"}
    assert (
        "not valid JSON"
        in problem(client.post("/runs", data="{", headers=json_type), 400)["detail"]
    )
    problem(client.get("/runs"), 401)
    reader = stack.headers(caller(unique), "runs.read")
    assert "runs.write" in problem(client.post("/runs", json={}, headers=reader), 403)["detail"]
    problem(client.get("/no/such/route", headers=headers), 404)
    problem(client.get(f"/runs/{uuid.uuid4()}", headers=headers), 404)
    not_allowed = problem(client.delete("/runs", headers=headers), 405)
    assert not_allowed["code"] == "method_not_allowed"
    assert set(client.delete("/runs").headers["Allow"].split(", ")) >= {"GET", "POST"}
    keyed = {**headers, "Idempotency-Key": unique}
    first = client.post("/runs", json={"workflow": unique, "params": {"count": 1}}, headers=keyed)
    assert first.status_code == 202
    problem(
        client.post("/runs", json={"workflow": unique, "params": {"count": 2}}, headers=keyed), 409
    )
    problem(client.post("/runs", json={"workflow": unique, "params": {}}, headers=headers), 422)
    stack.wait_finished(first.get_json()["id"])


def test_a_body_over_the_size_limit_is_refused_with_413(database: Stack, unique: str) -> None:
    from web import create_app

    app = create_app(database.settings.with_changes(max_body_bytes=256))
    try:
        client = app.test_client()
        big = {"workflow": unique, "params": {"blob": "x" * 400}}
        body = problem(client.post("/runs", json=big, headers=database.headers()), 413)
        assert body["code"] == "request_entity_too_large"
        big_spec = spec(unique, [{"id": "only", "action": "noop", "description": "x" * 400}])
        problem(client.post("/workflows", json=big_spec, headers=database.headers()), 413)
        assert run_count(database, workflow=unique) == 0
    finally:
        web_db.dispose(app)


def test_the_docs_page_health_and_readiness_answer(database: Stack) -> None:
    client = database.client()
    docs = client.get("/docs")
    assert docs.status_code == 200 and docs.mimetype == "text/html"
    assert "/openapi.json" in docs.get_data(as_text=True)
    health = client.get("/health")
    assert health.status_code == 200 and health.get_json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.get_json()
    assert ready.get_json()["checks"] == {"database": "ok", "broker": "ok"}


def readiness_with(database: Stack, **changes: Any) -> dict[str, Any]:
    from web import create_app

    app = create_app(database.settings.with_changes(**changes))
    try:
        return problem(app.test_client().get("/readyz"), 503)
    finally:
        web_db.dispose(app)


def test_readiness_is_503_naming_the_broker_when_redis_is_unreachable(database: Stack) -> None:
    port = services.free_port()
    body = readiness_with(database, redis_url=f"redis://:the-password@127.0.0.1:{port}/0")
    assert "broker" in body["detail"]
    assert fields(body) == ["broker"]
    # Answered without a token: the kind of error, not what it says of hosts and ports.
    assert body["errors"][0]["message"] == "ConnectionError (details in the log)"
    assert str(port) not in json.dumps(body) and "the-password" not in json.dumps(body)


def test_a_redis_that_hangs_fails_readiness_and_holds_no_submission(
    database: Stack, unique: str, tmp_path: Path
) -> None:
    # A paused Redis answers nothing and closes nothing: without socket timeouts /readyz
    # and a submission's publish waited as long as the pause, or forever.
    from web import create_app

    if database.backend != "sqlite":
        pytest.skip("the broker's part: one database is enough")
    server = services.RedisServer(tmp_path / "redis").start()
    settings = database.settings.with_changes(redis_url=server.url, broker_socket_timeout_s=2.0)
    app = create_app(settings)
    try:
        database.register(spec(unique, [{"id": "only", "action": "noop"}]))
        client, headers = app.test_client(), database.headers(scopes="runs.write")
        assert client.post("/runs", json={"workflow": unique}, headers=headers).status_code == 202
        server.client().execute_command("CLIENT", "PAUSE", "30000", "ALL")
        started = time.monotonic()
        body = problem(client.get("/readyz"), 503)
        assert fields(body) == ["broker"] and time.monotonic() - started < 10
        started = time.monotonic()
        submitted = client.post("/runs", json={"workflow": unique}, headers=headers)
        assert submitted.status_code == 202 and time.monotonic() - started < 20
        # Committed: the reconciler sends its plan message once Redis answers again.
        assert run_count(database, workflow=unique) == 2
    finally:
        web_db.dispose(app)
        server.stop()


def test_readiness_is_503_naming_the_database_when_it_is_unreachable(
    database: Stack, backend: str, tmp_path: Path
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'missing-directory' / 'engine.db'}"
    else:
        url = f"postgresql+psycopg://postgres@127.0.0.1:{services.free_port()}/engine"
    body = readiness_with(database, database_url=url)
    assert "database" in body["detail"]
    assert fields(body) == ["database"]


def test_a_submission_sends_one_plan_message_named_for_flower(database: Stack, unique: str) -> None:
    """No worker runs here: the message waits in the manager queue as the broker holds it.
    Flower shows its task name, id and arguments from these headers; queue lag reads
    sent_at."""
    database.register(spec(unique, [{"id": "only", "action": "noop"}]))
    celery = database.app.extensions["engine.celery"]
    layout = QueueLayout.from_transport_options(celery.conf.broker_transport_options)
    client = redis.Redis.from_url(database.redis_url)
    before = time.time()
    run_id = database.submit(unique)
    # One list per priority step; a run of priority 0 lands in one of them, newest first.
    [newest] = [m for m in (client.lindex(k, 0) for k in layout.keys(MANAGER_QUEUE)) if m]
    headers = json.loads(newest)["headers"]
    assert (headers["task"], headers["id"]) == (PLAN_TASK, plan_task_id(run_id))
    # The run, and the workflow and version it runs (the planner's plan without a read).
    assert (headers["argsrepr"], headers["kwargsrepr"]) == (repr((run_id, unique, 1)), "{}")
    assert before <= headers["sent_at"] <= time.time()

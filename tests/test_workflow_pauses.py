"""Pausing a workflow: new runs of it are refused (409 workflow_paused) until it is resumed,
from every API process, the CLI and schedules; runs already submitted go on — on SQLite and
PostgreSQL."""

from __future__ import annotations

import getpass
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from engine.models import Run
from tests.conftest import spec
from tests.support import services
from tests.support.cli import run_engine
from tests.support.http import fields, problem
from tests.support.stack import Stack

OPERATOR = "admin.workflows,admin.audit,workflows.read"


def run_count(stack: Stack, workflow: str) -> int:
    with stack.sessions() as session:
        return session.scalar(select(func.count()).select_from(Run).where(Run.workflow == workflow))


def pause(stack: Stack, name: str, reason: str = "partner API down") -> Any:
    return stack.client().post(
        f"/workflows/{name}/pause",
        json={"reason": reason},
        headers=stack.headers("ops@example.com", OPERATOR),
    )


def resume(stack: Stack, name: str) -> Any:
    return stack.client().post(
        f"/workflows/{name}/resume", headers=stack.headers("ops@example.com", OPERATOR)
    )


def submit(stack: Stack, name: str, **headers: str) -> Any:
    return stack.client().post(
        "/runs", json={"workflow": name}, headers={**stack.headers(), **headers}
    )


def refused(response: Any, name: str, reason: str = "partner API down") -> None:
    body = problem(response, 409)
    assert body["code"] == "workflow_paused"
    assert repr(name) in body["detail"] and reason in body["detail"]
    assert fields(body) == ["workflow"]


def test_a_paused_workflow_refuses_new_runs_and_writes_none_until_resumed(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    # This process now remembers version 1 as the latest: the remembered path is refused.
    assert submit(database, unique).status_code == 202
    answer = pause(database, unique)
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["paused"] is True

    refused(submit(database, unique), unique)
    refused(submit(database, unique, **{"Idempotency-Key": unique}), unique)
    versioned = {"workflow": unique, "version": 1}
    refused(database.client().post("/runs", json=versioned, headers=database.headers()), unique)
    # A newer version is paused too: the pause is on the name.
    database.register(spec(unique, [{"id": "a", "action": "noop"}], version=2))
    refused(submit(database, unique), unique)
    assert run_count(database, unique) == 1

    assert resume(database, unique).get_json() == {
        "workflow": unique,
        "paused": False,
        "pause": None,
    }
    assert submit(database, unique).status_code == 202
    assert submit(database, unique, **{"Idempotency-Key": unique}).status_code == 202
    assert run_count(database, unique) == 3


def test_a_repeat_of_an_idempotent_submission_made_before_the_pause_answers_its_run(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    first = submit(database, unique, **{"Idempotency-Key": unique})
    assert first.status_code == 202
    pause(database, unique)
    again = submit(database, unique, **{"Idempotency-Key": unique})
    assert again.status_code == 200 and again.get_json()["id"] == first.get_json()["id"]


def test_the_workflow_shows_who_paused_it_when_and_why_and_the_audit_trail_has_both_acts(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    reader = database.headers(scopes="workflows.read")
    assert (
        database.client().get(f"/workflows/{unique}", headers=reader).get_json()["paused"] is False
    )
    pause(database, unique, "floods the queue")
    # Pausing again changes nothing: the first pause, its author and reason, stand.
    again = pause(database, unique, "another reason")
    assert again.status_code == 200 and again.get_json()["pause"]["reason"] == "floods the queue"

    shown = database.client().get(f"/workflows/{unique}", headers=reader).get_json()
    assert shown["paused"] is True
    assert shown["pause"]["reason"] == "floods the queue"
    assert shown["pause"]["paused_by"] == "ops@example.com"
    assert shown["pause"]["paused_at"].endswith("Z")
    listed = listed_workflow(database, unique)
    assert listed["paused"] is True and listed["pause"] == shown["pause"]

    resume(database, unique)
    assert listed_workflow(database, unique)["paused"] is False
    events = database.client().get(
        f"/admin/audit?target=workflow:{unique}", headers=database.headers(scopes=OPERATOR)
    )
    actions = [
        (item["action"], item["actor"], item["reason"]) for item in events.get_json()["items"]
    ]
    assert actions == [
        ("workflow.resume", "ops@example.com", None),
        ("workflow.pause", "ops@example.com", "floods the queue"),
    ]


def listed_workflow(stack: Stack, name: str) -> dict[str, Any]:
    """The workflow as GET /workflows lists it, read page by page (the database is shared)."""
    headers = stack.headers(scopes="workflows.read")
    url = "/workflows?limit=100"
    while url:
        page = stack.client().get(url, headers=headers).get_json()
        for item in page["items"]:
            if item["name"] == name:
                return item
        url = f"/workflows?limit=100&cursor={page['next_cursor']}" if page["next_cursor"] else ""
    raise AssertionError(f"{name} is not listed")


def test_pausing_and_resuming_take_admin_workflows_a_reason_and_a_known_workflow(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    client = database.client()
    for action in ("pause", "resume"):
        url = f"/workflows/{unique}/{action}"
        problem(client.post(url, json={"reason": "x"}), 401)
        writer = database.headers(scopes="workflows.write,workflows.read,runs.write")
        assert problem(client.post(url, json={"reason": "x"}, headers=writer), 403)
    headers = database.headers(scopes=OPERATOR)
    for body in ({}, {"reason": ""}, {"reason": "x" * 501}, {"reason": 5}):
        answer = client.post(f"/workflows/{unique}/pause", json=body, headers=headers)
        assert fields(problem(answer, 422)) == ["reason"], body
    missing = client.post("/workflows/no_such_wf/pause", json={"reason": "x"}, headers=headers)
    problem(missing, 404)
    problem(client.post("/workflows/no_such_wf/resume", headers=headers), 404)
    assert submit(database, unique).status_code == 202


def test_a_run_already_submitted_finishes_normally_while_its_workflow_is_paused(
    stack: Stack, unique: str
) -> None:
    stack.register(spec(unique, [{"id": "a", "action": "sleep", "with": {"seconds": 0.5}}]))
    run_id = stack.submit(unique)
    services.wait_for(lambda: stack.run(run_id)["status"] == "running", 30, message="running")
    assert pause(stack, unique).status_code == 200
    assert stack.wait_finished(run_id)["status"] == "succeeded"
    refused(submit(stack, unique), unique)


def test_another_api_process_that_remembered_the_latest_version_refuses_too(
    database: Stack, unique: str, tmp_path: Path
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    port = services.free_port()
    env = {**database.env, "WEB_CONCURRENCY": "1", "WEB_THREADS": "1"}
    process = services.start_gunicorn(env, tmp_path / "gunicorn.log", port)
    token = database.token()

    def post_run() -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/runs",
            data=json.dumps({"workflow": unique}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())
        except OSError:
            return 0, {}

    try:
        # The other process submits first: it remembers version 1 as the latest.
        first = services.wait_for(lambda: post_run()[0] == 202, 60, 0.2, "gunicorn to submit")
        assert first
        pause(database, unique)
        status, body = post_run()
        assert status == 409 and body["code"] == "workflow_paused", body
        assert run_count(database, unique) == 1
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_cli_pauses_and_resumes_a_workflow_as_the_operator(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    paused = run_engine(database.env, "workflows", "pause", unique, "--reason", "bad release")
    assert paused.exit_code == 0 and paused.stdout.strip() == f"paused {unique}", paused.output
    shown = database.client().get(
        f"/workflows/{unique}", headers=database.headers(scopes="workflows.read")
    )
    assert shown.get_json()["pause"]["paused_by"] == f"cli:{getpass.getuser()}"
    refused(submit(database, unique), unique, "bad release")
    submitted = run_engine(database.env, "runs", "submit", unique)
    assert submitted.exit_code == 1 and "is paused: bad release" in submitted.output
    listing = run_engine(database.env, "workflows", "ls")
    assert f"{unique}@1  1 steps  paused" in listing.stdout
    missing = run_engine(database.env, "workflows", "pause", unique)
    assert missing.exit_code == 2 and "--reason" in missing.output

    resumed = run_engine(database.env, "workflows", "resume", unique)
    assert resumed.exit_code == 0 and resumed.stdout.strip() == f"resumed {unique}"
    assert run_engine(database.env, "workflows", "resume", unique).stdout.strip() == (
        f"{unique} was not paused"
    )
    assert submit(database, unique).status_code == 202
    assert run_count(database, unique) == 1

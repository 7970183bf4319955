"""Schedules over HTTP and the CLI, and a scheduled run end to end on a real worker."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from engine.models import utcnow
from engine.schedules.models import Schedule
from engine.work import MANAGER_QUEUE, SCHEDULE_TASK
from tests.conftest import spec
from tests.support import services
from tests.support.cli import failed, ok, run_engine
from tests.support.http import fields, problem
from tests.support.stack import Stack
from workers.factory import make_celery

WRITER = "runs.read,runs.write,schedules.read,schedules.write"
PARAMS = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}


pytestmark = pytest.mark.usefixtures("no_other_schedules")


def body(unique: str, **changes: object) -> dict[str, object]:
    return {"name": unique, "workflow": unique, "cron": "*/10 * * * *", **changes}


def test_a_schedule_is_created_listed_read_paused_resumed_and_deleted(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}], params=PARAMS))
    client, headers = database.client(), database.headers(scopes=WRITER)
    created = client.post(
        "/schedules",
        json=body(unique, timezone="Europe/Paris", params={"n": 1}, priority=3),
        headers=headers,
    )
    assert created.status_code == 201, created.get_json()
    schedule = created.get_json()
    assert created.headers["Location"].endswith(f"/schedules/{schedule['id']}")
    assert schedule["enabled"] and schedule["next_fire_at"] and schedule["last_fired_at"] is None
    assert schedule["timezone"] == "Europe/Paris" and schedule["version"] is None
    assert schedule["created_by"] == "alice@example.com" and schedule["last_run_id"] is None

    listed = client.get("/schedules", headers=headers).get_json()
    assert [item["name"] for item in listed["items"]] == [unique]
    for ref in (unique, schedule["id"]):
        assert client.get(f"/schedules/{ref}", headers=headers).get_json()["id"] == schedule["id"]

    paused = client.post(f"/schedules/{unique}/pause", headers=headers).get_json()
    assert not paused["enabled"] and paused["next_fire_at"] is None
    resumed = client.post(f"/schedules/{schedule['id']}/resume", headers=headers).get_json()
    assert resumed["enabled"] and resumed["next_fire_at"]

    assert client.delete(f"/schedules/{unique}", headers=headers).status_code == 204
    problem(client.get(f"/schedules/{unique}", headers=headers), 404)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "every day"}, "cron"),
        ({"cron": "0 0 * * * *"}, "cron"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"workflow": "no_such_workflow"}, "workflow"),
        ({"version": 99}, "version"),
        ({"workflow": "no_such_workflow", "version": 1}, "workflow"),
        ({"params": {"n": "one"}}, "params.n"),
        ({"params": {}}, "params.n"),
        ({"name": "has space"}, "name"),
        # Shaped like a schedule id: /schedules/{ref} would not know which one it names.
        ({"name": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"}, "name"),
        ({"priority": 12}, "priority"),
    ],
)
def test_a_bad_schedule_is_a_422_naming_the_field_and_nothing_is_stored(
    database: Stack, unique: str, changes: dict[str, object], field: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}], params=PARAMS))
    client, headers = database.client(), database.headers(scopes=WRITER)
    answer = client.post(
        "/schedules", json=body(unique, params={"n": 1}) | changes, headers=headers
    )
    assert field in fields(problem(answer, 422))
    assert client.get("/schedules", headers=headers).get_json()["items"] == []


def test_a_schedule_needs_its_scopes_and_its_creator_the_right_to_submit_runs(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    client = database.client()
    reader = database.headers(scopes="schedules.read")
    assert (
        "schedules.write"
        in problem(client.post("/schedules", json=body(unique), headers=reader), 403)["detail"]
    )
    cannot_submit = database.headers(scopes="schedules.write")
    assert (
        "runs.write"
        in problem(client.post("/schedules", json=body(unique), headers=cannot_submit), 403)[
            "detail"
        ]
    )
    problem(client.get("/schedules", headers=database.headers(scopes="runs.read")), 403)


def test_a_second_schedule_of_the_same_name_is_a_conflict(database: Stack, unique: str) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    client, headers = database.client(), database.headers(scopes=WRITER)
    assert client.post("/schedules", json=body(unique), headers=headers).status_code == 201
    assert fields(problem(client.post("/schedules", json=body(unique), headers=headers), 409)) == [
        "name"
    ]


def test_the_cli_lists_pauses_every_schedule_and_resumes_one(database: Stack, unique: str) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    client, headers = database.client(), database.headers(scopes=WRITER)
    for name in (f"{unique}_a", f"{unique}_b"):
        assert client.post("/schedules", json=body(unique, name=name), headers=headers).status_code
    listed = ok(run_engine(database.env, "schedules", "list"))
    assert f"{unique}_a  enabled" in listed and f"{unique}_b  enabled" in listed
    # Its owner, whose token's scopes its runs carry (a leaked token's schedules are found so).
    [line] = [line for line in listed.splitlines() if line.startswith(f"{unique}_a ")]
    assert line.endswith("  by alice@example.com")  # database.headers' default sub

    assert ok(run_engine(database.env, "schedules", "pause", f"{unique}_a")).strip() == (
        f"paused {unique}_a"
    )
    assert "paused 1 schedule(s)" in ok(run_engine(database.env, "schedules", "pause", "--all"))
    assert not client.get(f"/schedules/{unique}_b", headers=headers).get_json()["enabled"]
    resumed = ok(run_engine(database.env, "schedules", "resume", f"{unique}_b"))
    assert resumed.startswith(f"resumed {unique}_b; next fire 20")
    assert "no_such" in failed(run_engine(database.env, "schedules", "resume", "no_such"))
    assert run_engine(database.env, "schedules", "pause").exit_code == 2


def test_a_due_schedule_fired_by_the_task_runs_its_workflow_to_success_on_a_real_worker(
    stack: Stack, unique: str
) -> None:
    stack.register(
        spec(unique, [{"id": "hello", "action": "echo", "with": {"n": "{{ params.n }}"}}])
    )
    creator = stack.headers(f"{unique}@example.com", WRITER)
    client = stack.client()
    created = client.post(
        "/schedules", json=body(unique, cron="* * * * *", params={"n": 7}), headers=creator
    )
    assert created.status_code == 201, created.get_json()
    # Its next minute is near; bring it to now rather than wait for the clock.
    with stack.sessions.begin() as session:
        session.execute(
            update(Schedule)
            .where(Schedule.name == unique)
            .values(next_fire_at=utcnow() - timedelta(seconds=1))
        )
    make_celery(stack.settings).send_task(SCHEDULE_TASK, queue=MANAGER_QUEUE)

    def fired() -> str | None:
        return client.get(f"/schedules/{unique}", headers=creator).get_json()["last_run_id"]

    run_id = services.wait_for(fired, 30, 0.1, "the schedule to fire")
    run = stack.wait_finished(run_id)
    assert run["status"] == "succeeded" and run["created_by"] == f"{unique}@example.com"
    assert run["steps"][0]["output"] == {"n": 7}

"""PATCH /schedules/{ref} (a JSON merge patch checked as create is, audited), and whose
schedules a caller sees and changes: its own, or every one with admin.schedules."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from engine.models import utcnow
from engine.schedules.models import Schedule
from tests.conftest import spec
from tests.support.http import fields, problem
from tests.support.stack import Stack

WRITER = "runs.read,runs.write,schedules.read,schedules.write"
ADMIN = f"{WRITER},admin.schedules,admin.audit"
PARAMS = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
WORKFLOW = f"wf_schedule_changes_{uuid.uuid4().hex[:8]}"


pytestmark = pytest.mark.usefixtures("no_other_schedules")


def create(database: Stack, unique: str, sub: str = "alice@example.com") -> dict[str, Any]:
    # One workflow for the module (registering it again changes nothing): the tests share
    # the database, and GET /workflows' first page with the others'.
    database.register(spec(WORKFLOW, [{"id": "a", "action": "noop"}], params=PARAMS))
    database.register(spec(WORKFLOW, [{"id": "b", "action": "noop"}], params=PARAMS, version=2))
    body = {"name": unique, "workflow": WORKFLOW, "cron": "*/10 * * * *", "params": {"n": 1}}
    created = database.client().post("/schedules", json=body, headers=database.headers(sub, WRITER))
    assert created.status_code == 201, created.get_json()
    return created.get_json()


def parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment.replace("Z", "+00:00"))


def next_local(hour: int, zone: str, after: datetime) -> datetime:
    """The first hour:00 in `zone` after `after`, in UTC."""
    local = after.astimezone(ZoneInfo(zone))
    candidate = local.replace(hour=hour, minute=0, second=0, microsecond=0)
    if candidate <= local:
        candidate = (candidate + timedelta(days=1)).replace(hour=hour)
    return candidate.astimezone(UTC)


def test_patching_the_cron_of_an_overdue_schedule_fires_it_next_after_now_not_at_once(
    database: Stack, unique: str
) -> None:
    created = create(database, unique)
    long_ago = utcnow() - timedelta(days=2)
    with database.sessions.begin() as session:
        session.execute(
            update(Schedule)
            .where(Schedule.id == created["id"])
            .values(next_fire_at=long_ago, last_fired_at=long_ago, last_run_id="an-earlier-run")
        )
    client, headers = database.client(), database.headers(scopes=WRITER)

    before = datetime.now(UTC)
    answer = client.patch(f"/schedules/{unique}", json={"cron": "0 3 * * *"}, headers=headers)
    assert answer.status_code == 200, answer.get_json()
    changed = answer.get_json()
    assert changed["cron"] == "0 3 * * *" and changed["id"] == created["id"]
    assert parse(changed["next_fire_at"]) == next_local(3, "UTC", before)
    assert changed["last_run_id"] == "an-earlier-run" and changed["last_fired_at"]
    assert changed["params"] == {"n": 1} and changed["timezone"] == "UTC"

    # As RFC 7396 names it; a new timezone reads the same cron in it.
    tokyo = client.patch(
        f"/schedules/{created['id']}",
        data='{"timezone": "Asia/Tokyo"}',
        content_type="application/merge-patch+json",
        headers=headers,
    )
    assert tokyo.status_code == 200, tokyo.get_json()
    assert parse(tokyo.get_json()["next_fire_at"]) == next_local(3, "Asia/Tokyo", before)
    assert tokyo.get_json()["cron"] == "0 3 * * *"


def test_a_patch_changes_only_the_fields_it_gives_and_a_null_version_means_the_latest(
    database: Stack, unique: str
) -> None:
    created = create(database, unique)
    client, headers = database.client(), database.headers(scopes=WRITER)
    pinned = client.patch(
        f"/schedules/{unique}", json={"version": 1, "priority": 4}, headers=headers
    ).get_json()
    assert pinned["version"] == 1 and pinned["priority"] == 4
    assert pinned["next_fire_at"] == created["next_fire_at"] and pinned["cron"] == created["cron"]
    latest = client.patch(f"/schedules/{unique}", json={"version": None}, headers=headers)
    assert latest.get_json()["version"] is None and latest.get_json()["priority"] == 4

    renamed = client.patch(
        f"/schedules/{unique}", json={"name": f"{unique}_new", "params": {"n": 2}}, headers=headers
    ).get_json()
    assert renamed["name"] == f"{unique}_new" and renamed["params"] == {"n": 2}
    problem(client.get(f"/schedules/{unique}", headers=headers), 404)
    assert (
        client.get(f"/schedules/{unique}_new", headers=headers).get_json()["id"] == (created["id"])
    )


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"params": {"n": "one"}}, ["params.n"]),
        ({"params": {}}, ["params.n"]),
        ({"cron": "61 * * * *"}, ["cron"]),
        ({"cron": None}, ["cron"]),
        ({"timezone": "Mars/Olympus"}, ["timezone"]),
        ({"version": 99}, ["version"]),
        ({"name": "has space"}, ["name"]),
        ({"priority": 12}, ["priority"]),
        (
            {"workflow": "other", "enabled": False, "colour": "red"},
            ["colour", "enabled", "workflow"],
        ),
    ],
)
def test_a_bad_patch_is_a_422_naming_each_field_and_changes_nothing(
    database: Stack, unique: str, changes: dict[str, Any], named: list[str]
) -> None:
    created = create(database, unique)
    client, headers = database.client(), database.headers(scopes=WRITER)
    answer = client.patch(f"/schedules/{unique}", json={"priority": 5, **changes}, headers=headers)
    assert fields(problem(answer, 422)) == named
    assert client.get(f"/schedules/{unique}", headers=headers).get_json() == created


def test_renaming_a_schedule_to_a_name_taken_is_a_conflict(database: Stack, unique: str) -> None:
    create(database, unique)
    client, headers = database.client(), database.headers(scopes=WRITER)
    other = {"name": f"{unique}_b", "workflow": WORKFLOW, "cron": "0 * * * *", "params": {"n": 1}}
    assert client.post("/schedules", json=other, headers=headers).status_code == 201
    taken = client.patch(f"/schedules/{unique}_b", json={"name": unique}, headers=headers)
    assert fields(problem(taken, 409)) == ["name"]
    assert client.get(f"/schedules/{unique}_b", headers=headers).get_json()["cron"] == "0 * * * *"


def test_another_callers_schedule_is_not_found_and_unlisted_unless_the_caller_has_admin_schedules(
    database: Stack, unique: str
) -> None:
    created = create(database, unique, sub="bob@example.com")
    client, alice = database.client(), database.headers(scopes=WRITER)
    for ref in (unique, created["id"]):
        problem(client.get(f"/schedules/{ref}", headers=alice), 404)
        problem(client.patch(f"/schedules/{ref}", json={"priority": 1}, headers=alice), 404)
        for action in ("pause", "resume"):
            problem(client.post(f"/schedules/{ref}/{action}", headers=alice), 404)
        problem(client.delete(f"/schedules/{ref}", headers=alice), 404)
    assert client.get("/schedules", headers=alice).get_json()["items"] == []

    admin = database.headers("root@example.com", ADMIN)
    listed = client.get("/schedules", headers=admin).get_json()["items"]
    assert [item["id"] for item in listed] == [created["id"]]
    assert client.get(f"/schedules/{unique}", headers=admin).get_json()["created_by"] == (
        "bob@example.com"
    )
    # Its runs act as bob: only bob says what they do; an administrator may stop them.
    refused = client.patch(f"/schedules/{unique}", json={"priority": 1}, headers=admin)
    assert "bob@example.com" in problem(refused, 403)["detail"]
    assert not client.post(f"/schedules/{unique}/pause", headers=admin).get_json()["enabled"]
    bob = database.headers("bob@example.com", WRITER)
    assert client.get(f"/schedules/{unique}", headers=bob).get_json()["priority"] == 0
    assert client.delete(f"/schedules/{unique}", headers=admin).status_code == 204
    problem(client.get(f"/schedules/{unique}", headers=bob), 404)


def test_a_change_is_audited_with_old_and_new_values_and_its_runs_take_the_editors_scopes(
    database: Stack, unique: str
) -> None:
    created = create(database, unique)
    client = database.client()
    with database.sessions() as session:
        creators_jti = session.scalars(
            select(Schedule.created_jti).where(Schedule.id == created["id"])
        ).one()
    narrower = database.headers(scopes="schedules.write,runs.write")
    assert (
        client.patch(f"/schedules/{unique}", json={"cron": "0 * * * *"}, headers=narrower)
    ).status_code == 200
    # Nothing changes: nothing stored, nothing audited.
    assert (
        client.patch(f"/schedules/{unique}", json={"cron": "0 * * * *"}, headers=narrower)
    ).status_code == 200
    events = client.get(
        "/admin/audit",
        query_string={"target": f"schedule:{created['id']}"},
        headers=database.headers("root@example.com", ADMIN),
    ).get_json()["items"]
    assert [(event["action"], event["actor"]) for event in events] == [
        ("schedule.update", "alice@example.com")
    ]
    with database.sessions() as session:
        stored = session.get(Schedule, created["id"])
        assert stored is not None and stored.created_scopes == ["schedules.write", "runs.write"]
    # The change bound it to the editor's token: the event says from which, to which.
    assert creators_jti and stored.created_jti and stored.created_jti != creators_jti
    assert events[0]["detail"] == {
        "name": unique,
        "owner": "alice@example.com",
        "changed": {"cron": {"from": "*/10 * * * *", "to": "0 * * * *"}},
        "jti": {"from": creators_jti, "to": stored.created_jti},
    }

    cannot_submit = database.headers(scopes="schedules.write")
    refused = client.patch(f"/schedules/{unique}", json={"priority": 2}, headers=cannot_submit)
    assert "runs.write" in problem(refused, 403)["detail"]

"""Running a schedule now (POST /schedules/{ref}/trigger, engine schedules trigger): the run
its next fire would submit, as its owner, its fire times left as they were; over HTTP and
the CLI, on SQLite and PostgreSQL, and end to end on a real worker."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from engine.models import AuditEvent, Run
from engine.schedules.models import Schedule
from tests.conftest import spec
from tests.support.cli import ok, run_engine
from tests.support.http import fields, problem
from tests.support.stack import Stack

WRITER = "runs.read,runs.write,schedules.read,schedules.write"
OWNER = "alice@example.com"
PARAMS = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}


pytestmark = pytest.mark.usefixtures("no_other_schedules")


def create(stack: Stack, name: str, **changes: Any) -> dict[str, Any]:
    body = {"name": name, "workflow": name, "cron": "0 3 * * *", **changes}
    created = stack.client().post("/schedules", json=body, headers=stack.headers(scopes=WRITER))
    assert created.status_code == 201, created.get_json()
    return created.get_json()


def trigger(stack: Stack, ref: str, headers: dict[str, str] | None = None) -> Any:
    return stack.client().post(
        f"/schedules/{ref}/trigger", headers=headers or stack.headers(scopes=WRITER)
    )


def stored_run(stack: Stack, run_id: str) -> Run:
    with stack.sessions() as session:
        run = session.scalars(select(Run).where(Run.id == run_id)).one()
        session.expunge(run)
        return run


def test_a_triggered_schedule_runs_now_as_its_owner_and_keeps_its_fire_times(
    stack: Stack, unique: str
) -> None:
    stack.register(spec(unique, [{"id": "a", "action": "record"}], params=PARAMS))
    schedule = create(stack, unique, params={"n": 7}, priority=4, version=1)
    client, headers = stack.client(), stack.headers(scopes=WRITER)
    assert client.post(f"/schedules/{unique}/pause", headers=headers).status_code == 200

    answer = trigger(stack, schedule["id"])
    assert answer.status_code == 202, answer.get_json()
    run = answer.get_json()
    assert answer.headers["Location"].endswith(f"/runs/{run['id']}")
    assert (run["workflow"], run["version"], run["params"], run["priority"]) == (
        unique,
        1,
        {"n": 7},
        4,
    )
    assert run["created_by"] == OWNER
    assert stack.wait_finished(run["id"])["status"] == "succeeded"
    after = client.get(f"/schedules/{unique}", headers=headers).get_json()
    assert after["last_run_id"] == run["id"]
    # Still paused, and no fire time was spent on it.
    assert not after["enabled"] and after["next_fire_at"] is None
    assert after["last_fired_at"] is None


def test_a_repeated_key_answers_the_first_run_and_a_key_too_long_is_refused(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    create(database, unique)
    keyed = {**database.headers(scopes=WRITER), "Idempotency-Key": f"fix-{unique}"}
    first = trigger(database, unique, keyed)
    again = trigger(database, unique, keyed)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.get_json()["id"] == first.get_json()["id"]
    other = trigger(database, unique, {**keyed, "Idempotency-Key": f"other-{unique}"})
    assert other.status_code == 202 and other.get_json()["id"] != first.get_json()["id"]
    # The owner's own submission with the same key is another run: the keys do not meet.
    submitted = database.client().post("/runs", json={"workflow": unique}, headers=keyed)
    assert submitted.status_code == 202
    assert submitted.get_json()["id"] != first.get_json()["id"]
    too_long = trigger(database, unique, {**keyed, "Idempotency-Key": "k" * 200})
    assert fields(problem(too_long, 422)) == ["Idempotency-Key"]


def test_an_administrator_triggers_anothers_schedule_audited_and_a_stranger_finds_none(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    schedule = create(database, unique)
    stranger = database.headers("mallory@example.com", WRITER)
    problem(trigger(database, unique, stranger), 404)
    reader = database.headers(OWNER, "schedules.read,runs.write")
    assert trigger(database, unique, reader).status_code == 403

    admin = database.headers("ops@example.com", "schedules.write,admin.schedules")
    answer = trigger(database, unique, admin)
    assert answer.status_code == 202, answer.get_json()
    run = stored_run(database, answer.get_json()["id"])
    assert run.created_by == OWNER
    assert "schedules.write" in (run.created_scopes or [])
    with database.sessions() as session:
        [audited] = session.scalars(
            select(AuditEvent).where(AuditEvent.target == f"schedule:{schedule['id']}")
        ).all()
    assert (audited.action, audited.actor) == ("schedule.trigger", "ops@example.com")
    assert audited.detail == {"name": unique, "owner": OWNER, "run_id": run.id}


def test_no_run_while_its_token_is_revoked_or_its_workflow_paused(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    create(database, unique)
    ops = database.headers("ops@example.com", "admin.workflows,admin.tokens")
    paused = database.client().post(
        f"/workflows/{unique}/pause", json={"reason": "partner down"}, headers=ops
    )
    assert paused.status_code == 200, paused.get_json()
    assert problem(trigger(database, unique), 409)["code"] == "workflow_paused"
    database.client().post(f"/workflows/{unique}/resume", headers=ops)

    with database.sessions() as session:
        jti = session.scalars(select(Schedule.created_jti).where(Schedule.name == unique)).one()
    revoked = database.client().post("/admin/tokens/revoke", json={"jti": jti}, headers=ops)
    assert revoked.status_code == 200
    refused = problem(trigger(database, unique), 409)
    assert refused["code"] == "schedule_token_revoked" and OWNER in refused["detail"]
    with database.sessions() as session:
        assert session.scalars(select(Run).where(Run.workflow == unique)).all() == []


def test_the_cli_triggers_a_schedule_and_prints_its_run(database: Stack, unique: str) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    create(database, unique)
    run_id = ok(run_engine(database.env, "schedules", "trigger", unique)).strip()
    run = stored_run(database, run_id)
    assert (run.workflow, run.created_by) == (unique, OWNER)
    assert "no_such" in run_engine(database.env, "schedules", "trigger", "no_such").output

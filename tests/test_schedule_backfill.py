"""Backfilling a schedule (POST /schedules/{ref}/backfill, engine schedules backfill): one run
per fire time of a past window, each as its fire would have submitted it, a fire time that
has its run (from the tick, or an earlier backfill) never doubled; a dry run first, then the
count confirmed with a reason, audited. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from engine.models import AuditEvent, Run, timestamp, utcnow
from engine.schedules import firing
from engine.schedules.models import Schedule
from tests.conftest import spec
from tests.support.cli import failed, ok, run_engine
from tests.support.http import fields, problem
from tests.support.stack import Stack
from web import create_app
from web import db as web_db

WRITER = "runs.read,runs.write,schedules.read,schedules.write"
OWNER = "alice@example.com"
PARAMS = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
# An hourly schedule's five fire times of a past window: 00:00 to 04:00.
SINCE, UNTIL = "2026-01-01T00:00:00Z", "2026-01-01T05:00:00Z"
HOURS = [f"2026-01-01T{hour:02d}:00:00.000Z" for hour in range(5)]


pytestmark = pytest.mark.usefixtures("no_other_schedules")


def create(stack: Stack, name: str, **changes: Any) -> dict[str, Any]:
    body = {"name": name, "workflow": name, "cron": "0 * * * *", **changes}
    created = stack.client().post("/schedules", json=body, headers=stack.headers(scopes=WRITER))
    assert created.status_code == 201, created.get_json()
    return created.get_json()


def backfill(
    stack: Stack, ref: str, headers: dict[str, str] | None = None, client: Any = None, **body: Any
) -> Any:
    return (client or stack.client()).post(
        f"/schedules/{ref}/backfill",
        json={"since": SINCE, "until": UNTIL, **body},
        headers=headers or stack.headers(scopes=WRITER),
    )


def runs_of(stack: Stack, workflow: str) -> list[Run]:
    with stack.sessions() as session:
        found = session.scalars(
            select(Run).where(Run.workflow == workflow).order_by(Run.scheduled_for)
        ).all()
        session.expunge_all()
        return list(found)


def audited(stack: Stack, schedule_id: str) -> list[AuditEvent]:
    with stack.sessions() as session:
        found = session.scalars(
            select(AuditEvent)
            .where(
                AuditEvent.target == f"schedule:{schedule_id}",
                AuditEvent.action == "schedule.backfill",
            )
            .order_by(AuditEvent.id)
        ).all()
        session.expunge_all()
        return list(found)


def tick_at(stack: Stack, name: str, fire_at: datetime) -> str:
    """The tick of one fire time, as beat would have run it then: its run's id."""
    with stack.sessions.begin() as session:
        session.execute(update(Schedule).where(Schedule.name == name).values(next_fire_at=fire_at))
        fired = firing.fire_due(session, stack.settings, fire_at + timedelta(seconds=5))
    return fired.runs[name]


def test_a_backfill_submits_each_missed_fire_time_once_and_the_tick_keeps_its_run(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}], params=PARAMS))
    # Priority 0: the plan messages wait in the manager queue (no worker here), where
    # another test reads the newest of priority 0's list.
    schedule = create(database, unique, params={"n": 3}, version=1)
    # The tick fired 02:00 (its run stays that time's run); beat was down for the others.
    ticked = tick_at(database, unique, datetime(2026, 1, 1, 2, tzinfo=UTC))
    client = database.client()
    before = client.get(f"/schedules/{unique}", headers=database.headers(scopes=WRITER))

    dry_run = backfill(database, unique, dry_run=True)
    assert dry_run.status_code == 200, dry_run.get_json()
    assert dry_run.get_json() == {
        "schedule": unique,
        "since": HOURS[0],
        "until": "2026-01-01T05:00:00.000Z",
        "count": 5,
        "existing": 1,
        "fire_times": HOURS,
    }
    assert [run.id for run in runs_of(database, unique)] == [ticked]  # the dry run wrote nothing

    changed = problem(backfill(database, unique, confirm_count=4, reason="outage"), 409)
    assert fields(changed) == ["confirm_count"]
    assert len(runs_of(database, unique)) == 1 and audited(database, schedule["id"]) == []

    answer = backfill(database, unique, confirm_count=5, reason="beat was down")
    assert answer.status_code == 202, answer.get_json()
    done = answer.get_json()
    assert (done["count"], done["submitted"], done["existing"]) == (5, 4, 1)
    assert [item["fire_time"] for item in done["runs"]] == HOURS
    assert [item["outcome"] for item in done["runs"]] == ["submitted"] * 2 + ["existing"] + [
        "submitted"
    ] * 2
    assert done["runs"][2]["run_id"] == ticked
    runs = runs_of(database, unique)
    assert [timestamp(run.scheduled_for) for run in runs] == HOURS
    assert [run.id for run in runs] == [item["run_id"] for item in done["runs"]]
    for run in runs:
        assert run.scheduled_for is not None
        assert run.idempotency_key == firing.idempotency_key(schedule["id"], run.scheduled_for)
        assert (run.created_by, run.params, run.version, run.status) == (
            OWNER,
            {"n": 3},
            1,
            "queued",
        )
        shown = client.get(f"/runs/{run.id}", headers=database.headers(OWNER))
        assert shown.get_json()["scheduled_for"] == timestamp(run.scheduled_for)
    # Its own fire times and last run are the tick's, as before.
    after = client.get(f"/schedules/{unique}", headers=database.headers(scopes=WRITER))
    assert after.get_json() == before.get_json()
    [event] = audited(database, schedule["id"])
    assert (event.actor, event.reason) == (OWNER, "beat was down")
    assert event.detail == {
        "name": unique,
        "owner": OWNER,
        "since": HOURS[0],
        "until": "2026-01-01T05:00:00.000Z",
        "count": 5,
        "submitted": 4,
        "existing": 1,
    }

    # Again, and over a window that overlaps it: nothing is submitted twice.
    again = backfill(database, unique, confirm_count=5, reason="once more")
    assert (again.get_json()["submitted"], again.get_json()["existing"]) == (0, 5)
    later = {"since": "2026-01-01T03:30:00+01:00", "until": "2026-01-01T07:00:00"}
    assert backfill(database, unique, dry_run=True, **later).get_json()["fire_times"] == [
        HOURS[3],
        HOURS[4],
        "2026-01-01T05:00:00.000Z",
        "2026-01-01T06:00:00.000Z",
    ]
    overlapping = backfill(database, unique, confirm_count=4, reason="the rest", **later)
    assert (overlapping.get_json()["submitted"], overlapping.get_json()["existing"]) == (2, 2)
    assert len(runs_of(database, unique)) == 7
    assert len(audited(database, schedule["id"])) == 3


def test_a_bad_window_is_a_422_naming_the_field_and_nothing_is_submitted(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    create(database, unique)
    future = timestamp(utcnow() + timedelta(hours=2))
    for window, field in (
        ({"until": future}, "until"),
        ({"until": SINCE}, "until"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-01T00:00:00+25:00"}, "since"),
        ({"since": "0001-01-01T00:00:00Z"}, "since"),
    ):
        for confirm in ({"dry_run": True}, {"confirm_count": 5, "reason": "r"}):
            assert fields(problem(backfill(database, unique, **window, **confirm), 422)) == [field]
    missing = problem(backfill(database, unique), 422)
    assert sorted(fields(missing)) == ["confirm_count", "reason"]
    blank = problem(backfill(database, unique, confirm_count=5, reason=" "), 422)
    assert fields(blank) == ["reason"]
    no_until = database.client().post(
        f"/schedules/{unique}/backfill",
        json={"since": SINCE, "dry_run": True},
        headers=database.headers(scopes=WRITER),
    )
    assert fields(problem(no_until, 422)) == ["until"]

    # More fire times than SCHEDULE_BACKFILL_MAX: 422 naming until; at the cap, taken.
    capped = create_app(database.settings.with_changes(schedule_backfill_max=4))
    try:
        over = backfill(database, unique, client=capped.test_client(), dry_run=True)
        assert fields(problem(over, 422)) == ["until"]
        assert "SCHEDULE_BACKFILL_MAX" in problem(over, 422)["detail"]
        within = {"until": "2026-01-01T04:00:00Z", "dry_run": True}
        assert backfill(database, unique, client=capped.test_client(), **within).status_code == 200
    finally:
        web_db.dispose(capped)
    assert runs_of(database, unique) == []


def test_no_backfill_while_its_token_is_revoked_or_its_workflow_paused_but_a_paused_schedule_is(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    create(database, unique)
    client = database.client()
    headers = database.headers(scopes=WRITER)
    assert client.post(f"/schedules/{unique}/pause", headers=headers).status_code == 200
    paused = backfill(database, unique, confirm_count=5, reason="paused schedule")
    assert paused.get_json()["submitted"] == 5
    after = client.get(f"/schedules/{unique}", headers=headers).get_json()
    assert not after["enabled"] and after["next_fire_at"] is None and after["last_run_id"] is None

    ops = database.headers("ops@example.com", "admin.workflows,admin.tokens")
    stopped = client.post(f"/workflows/{unique}/pause", json={"reason": "down"}, headers=ops)
    assert stopped.status_code == 200
    for body in ({"dry_run": True}, {"confirm_count": 5, "reason": "r"}):
        assert problem(backfill(database, unique, **body), 409)["code"] == "workflow_paused"
    assert client.post(f"/workflows/{unique}/resume", headers=ops).status_code == 200

    with database.sessions() as session:
        jti = session.scalars(select(Schedule.created_jti).where(Schedule.name == unique)).one()
    assert client.post("/admin/tokens/revoke", json={"jti": jti}, headers=ops).status_code == 200
    for body in ({"dry_run": True}, {"confirm_count": 5, "reason": "r"}):
        refused = problem(backfill(database, unique, **body), 409)
        assert refused["code"] == "schedule_token_revoked" and OWNER in refused["detail"]
    assert len(runs_of(database, unique)) == 5


def test_an_administrator_backfills_anothers_schedule_and_a_stranger_finds_none(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    schedule = create(database, unique)
    stranger = database.headers("mallory@example.com", WRITER)
    problem(backfill(database, unique, stranger, dry_run=True), 404)
    reader = database.headers(OWNER, "schedules.read,runs.write")
    assert backfill(database, unique, reader, dry_run=True).status_code == 403

    admin = database.headers("ops@example.com", "schedules.write,admin.schedules")
    answer = backfill(database, unique, admin, confirm_count=5, reason="for the owner")
    assert answer.status_code == 202, answer.get_json()
    assert {run.created_by for run in runs_of(database, unique)} == {OWNER}
    [event] = audited(database, schedule["id"])
    assert event.actor == "ops@example.com" and event.detail["owner"] == OWNER


def test_the_cli_shows_the_dry_run_then_backfills_once_confirmed(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    schedule = create(database, unique)
    window = ("--since", SINCE, "--until", "2026-01-01T03:00:00Z")
    shown = ok(run_engine(database.env, "schedules", "backfill", unique, *window))
    assert [line.split()[0] for line in shown.splitlines()[:3]] == HOURS[:3]
    assert "3 fire time(s), 0 with a run already" in shown and "dry run" in shown
    assert runs_of(database, unique) == []

    declined = run_engine(
        database.env, "schedules", "backfill", unique, *window, "--reason", "r", stdin="n\n"
    )
    assert declined.exit_code == 1 and runs_of(database, unique) == []

    done = ok(
        run_engine(
            database.env, "schedules", "backfill", unique, *window, "--reason", "gap", "--yes"
        )
    )
    assert "submitted 3 run(s); 0 had theirs already" in done
    runs = runs_of(database, unique)
    assert [timestamp(run.scheduled_for) for run in runs] == HOURS[:3]
    assert all(run.id in done for run in runs)
    [event] = audited(database, schedule["id"])
    assert event.reason == "gap" and event.actor.startswith("cli:")

    wider = ("--since", SINCE, "--until", "2026-01-01T04:00:00Z")
    confirmed = run_engine(
        database.env, "schedules", "backfill", unique, *wider, "--reason", "r", stdin="y\n"
    )
    assert "submitted 1 run(s); 3 had theirs already" in ok(confirmed)
    assert "until" in failed(
        run_engine(
            database.env, "schedules", "backfill", unique, "--since", SINCE, "--until", SINCE
        )
    )

"""GET /life/health/wellness_daily: who may read which summary, what a bad day answers,
and the summary of a day with and without entries — on SQLite and PostgreSQL. The rotation
check of OPERATIONS.md relies on it: 200 with a token this deployment accepts, 401 else."""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta

import pytest

from engine.auth import mint_token
from engine.life import workflow
from engine.life.queries import today
from tests.support.http import fields, problem
from tests.support.stack import Stack

URL = "/life/health/wellness_daily"
DAY = date(2026, 12, 7)


def subject(unique: str, name: str = "ada") -> str:
    return f"{name}.{unique}@example.com"


def record(stack: Stack, sub: str, day: date, step: str, **measures: object) -> None:
    """An entry written as the workflow's record step writes it, then the day summarised."""
    with stack.sessions.begin() as session:
        workflow.record_entry(session, sub, day, measures, run_id=f"run-{step}", step_id=step)
        workflow.summarise_day(session, sub, day)


def test_a_caller_reads_its_own_empty_summary_of_today(database: Stack, unique: str) -> None:
    response = database.client().get(
        URL, headers=database.headers(subject(unique), scopes="life.read")
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {
        "subject": subject(unique),
        "day": today().isoformat(),
        "entries": 0,
        "sleep_hours_avg": None,
        "steps_total": None,
        "mood_avg": None,
        "computed_at": None,
    }


def test_a_summary_aggregates_the_entries_of_its_day(database: Stack, unique: str) -> None:
    sub = subject(unique)
    record(database, sub, DAY, f"a-{unique}", sleep_hours=7.5, steps=4000, mood=4)
    record(database, sub, DAY, f"b-{unique}", sleep_hours=6, mood=3, note="late night")
    record(database, sub, DAY - timedelta(days=1), f"c-{unique}", steps=10_000)
    headers = database.headers(sub, scopes="life.read")

    body = database.client().get(f"{URL}?day={DAY}", headers=headers).get_json()
    assert {key: body[key] for key in ("day", "entries", "sleep_hours_avg", "steps_total")} == {
        "day": "2026-12-07",
        "entries": 2,
        "sleep_hours_avg": 6.75,
        "steps_total": 4000,
    }
    assert body["mood_avg"] == 3.5 and body["computed_at"].endswith("Z")
    before = database.client().get(f"{URL}?day=2026-12-06", headers=headers).get_json()
    assert (before["entries"], before["steps_total"], before["mood_avg"]) == (1, 10_000, None)


def test_recording_the_same_step_twice_keeps_one_entry(database: Stack, unique: str) -> None:
    sub, step = subject(unique), f"record-{unique}"
    with database.sessions.begin() as session:
        first = workflow.record_entry(session, sub, DAY, {"mood": 2}, run_id="r", step_id=step)
    with database.sessions.begin() as session:
        again = workflow.record_entry(session, sub, DAY, {"mood": 5}, run_id="r", step_id=step)
        summary = workflow.summarise_day(session, sub, DAY)
    assert first.created and not again.created and again.id == first.id
    assert (summary.entries, summary.mood_avg) == (1, 2.0)


@pytest.mark.parametrize("day", ["yesterday", "2026-02-30", "20261207", "2026-12-7"])
def test_a_day_that_is_not_a_calendar_day_is_a_422_naming_it(database: Stack, day: str) -> None:
    response = database.client().get(
        f"{URL}?day={day}", headers=database.headers(scopes="life.read")
    )
    assert fields(problem(response, 422)) == ["day"]


def test_without_a_valid_token_or_the_scope_the_summary_is_refused(
    database: Stack, unique: str
) -> None:
    client = database.client()
    assert problem(client.get(URL), 401)["code"] == "unauthorized"
    no_scope = client.get(URL, headers=database.headers(subject(unique), scopes="runs.read"))
    assert fields(problem(no_scope, 403)) == ["scopes"]
    # A token signed with a key this deployment no longer holds (a rotation without grace).
    old_key = dataclasses.replace(database.settings, jwt_secret="retired-" + "y" * 40)
    stale = mint_token(old_key, subject(unique), ["life.read"], timedelta(hours=1)).token
    assert problem(client.get(URL, headers={"Authorization": f"Bearer {stale}"}), 401)


def test_a_revoked_token_is_refused(database: Stack, unique: str) -> None:
    client = database.client()
    minted = mint_token(database.settings, subject(unique), ["life.read"], timedelta(hours=1))
    bearer = {"Authorization": f"Bearer {minted.token}"}
    assert client.get(URL, headers=bearer).status_code == 200
    revoked = client.post(
        "/admin/tokens/revoke",
        json={"jti": minted.jti, "reason": "laptop lost"},
        headers=database.headers(scopes="admin.tokens"),
    )
    assert revoked.status_code == 200, revoked.get_json()
    assert "revoked" in problem(client.get(URL, headers=bearer), 401)["detail"]


def test_another_subjects_summary_needs_admin_life(database: Stack, unique: str) -> None:
    other = subject(unique, "grace")
    record(database, other, DAY, f"g-{unique}", steps=321)
    client, query = database.client(), f"{URL}?day={DAY}&subject={other}"

    refused = client.get(query, headers=database.headers(subject(unique), scopes="life.read"))
    assert fields(problem(refused, 403)) == ["scopes"]
    own = client.get(query, headers=database.headers(other, scopes="life.read"))
    admin = client.get(query, headers=database.headers(subject(unique), scopes="life.read,admin.*"))
    assert own.get_json() == admin.get_json()
    assert (admin.get_json()["subject"], admin.get_json()["steps_total"]) == (other, 321)
    too_long = client.get(
        f"{URL}?subject={'x' * 201}", headers=database.headers(scopes="life.read,admin.life")
    )
    assert fields(problem(too_long, 422)) == ["subject"]

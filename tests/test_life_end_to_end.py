"""The wellness_checkin workflow on a real prefork worker, on SQLite and PostgreSQL: check-ins
recorded, the day summarised, the summary served; a record step run twice keeps one entry;
a check-in is the submitter's own unless its submitter holds admin.life."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func, select

from engine import actions
from engine.actions import ActionContext
from engine.config import PROJECT_ROOT
from engine.errors import NonRetryableError
from engine.life.models import WellnessEntry
from tests.support.cli import ok, run_engine
from tests.support.stack import Stack

SPEC = PROJECT_ROOT / "workflows" / "wellness_checkin.yaml"
DAY = "2026-12-07"


def register_checkin(stack: Stack) -> None:
    """The built-in spec, as it is registered at start (the stacks skip workflows/)."""
    response = stack.client().post(
        "/workflows",
        data=SPEC.read_text(),
        headers={**stack.headers(scopes="workflows.write"), "Content-Type": "application/yaml"},
    )
    assert response.status_code in (200, 201), response.get_json()


def entries(stack: Stack, **where: Any) -> int:
    query = select(func.count()).select_from(WellnessEntry).filter_by(**where)
    with stack.sessions() as session:
        return session.scalar(query) or 0


def test_check_ins_are_recorded_and_summarised_for_their_day(stack: Stack, unique: str) -> None:
    register_checkin(stack)
    subject = f"ada.{unique}@example.com"
    measures = [{"sleep_hours": 8, "steps": 3000, "mood": 5}, {"steps": 4500, "mood": 2}]
    # Without a subject, the check-in is the submitter's; naming itself is the same.
    run_ids = [
        stack.submit("wellness_checkin", params, stack.headers(subject))
        for params in (
            {"day": DAY, "measures": measures[0]},
            {"subject": subject, "day": DAY, "measures": measures[1]},
        )
    ]
    runs = [stack.wait_finished(run_id) for run_id in run_ids]
    assert [run["status"] for run in runs] == ["succeeded", "succeeded"], runs
    record = runs[0]["steps"][0]
    assert record["step_id"] == "record" and record["output"]["recorded"] is True
    assert runs[0]["steps"][1]["output"]["subject"] == subject

    summary = stack.client().get(
        f"/life/health/wellness_daily?day={DAY}", headers=stack.headers(subject, "life.read")
    )
    assert summary.status_code == 200, summary.get_json()
    body = summary.get_json()
    assert (body["entries"], body["steps_total"], body["sleep_hours_avg"], body["mood_avg"]) == (
        2,
        7500,
        8.0,
        3.5,
    )
    assert entries(stack, subject=subject) == 2


def test_a_record_step_run_again_keeps_one_entry(stack: Stack, unique: str) -> None:
    register_checkin(stack)
    subject = f"grace.{unique}@example.com"
    params = {"subject": subject, "day": DAY, "measures": {"sleep_hours": 6.5}}
    run = stack.wait_finished(stack.submit("wellness_checkin", params, stack.headers(subject)))
    assert run["status"] == "succeeded", run
    first = next(step for step in run["steps"] if step["step_id"] == "record")

    # The step delivered again (a worker lost after the entry's commit): its action runs
    # with the same run and step, on the worker's kind of sessions.
    context = ActionContext(run["id"], "record", 2, params, sessions=stack.sessions)
    again = actions.get("life.record_entry").function(first["inputs"], context)
    assert again["recorded"] is False and again["entry_id"] == first["output"]["entry_id"]
    summary = actions.get("life.summarise_day").function({"subject": subject, "day": DAY}, context)
    assert summary["entries"] == 1 and summary["sleep_hours_avg"] == 6.5
    assert entries(stack, run_id=run["id"]) == 1


def test_a_check_in_for_a_day_that_does_not_exist_fails_without_retries(
    stack: Stack, unique: str
) -> None:
    register_checkin(stack)
    params = {"day": "2026-02-30", "measures": {"mood": 3}}
    run = stack.wait_finished(stack.submit("wellness_checkin", params))
    record = run["steps"][0]
    assert (run["status"], record["status"], record["attempts"]) == ("failed", "dead", 1)
    assert "inputs.day" in record["error"]
    assert entries(stack, run_id=run["id"]) == 0


def refused(run: dict[str, Any], step_id: str = "record") -> str:
    """The error of a run's step refused for its submitter: failed at once, never retried."""
    step = next(step for step in run["steps"] if step["step_id"] == step_id)
    assert (run["status"], step["status"], step["attempts"]) == ("failed", "dead", 1), run
    return str(step["error"])


def test_a_check_in_for_another_subject_needs_its_submitter_to_hold_admin_life(
    stack: Stack, unique: str
) -> None:
    register_checkin(stack)
    ada, grace = f"ada.{unique}@example.com", f"grace.{unique}@example.com"
    params = {"subject": grace, "day": DAY, "measures": {"mood": 1}}

    run = stack.wait_finished(stack.submit("wellness_checkin", params, stack.headers(ada)))
    assert "recording another subject's check-in needs the scope admin.life" in refused(run)
    assert entries(stack, subject=grace) == 0

    # A token with admin.life records for anyone, and so does the CLI's operator.
    admin = stack.headers(f"ingest.{unique}@example.com", "runs.write,admin.life")
    run = stack.wait_finished(stack.submit("wellness_checkin", params, admin))
    assert run["status"] == "succeeded", run
    cli_params = json.dumps({**params, "measures": {"mood": 3}})
    run_id = ok(run_engine(stack.env, "runs", "submit", "wellness_checkin", "--params", cli_params))
    assert stack.wait_finished(run_id.strip())["status"] == "succeeded"
    assert entries(stack, subject=grace) == 2 and entries(stack, subject=ada) == 0
    summary = stack.client().get(
        f"/life/health/wellness_daily?day={DAY}", headers=stack.headers(grace, "life.read")
    )
    assert (summary.get_json()["entries"], summary.get_json()["mood_avg"]) == (2, 2.0)


def test_no_workflow_acts_for_a_subject_its_submitter_may_not(stack: Stack, unique: str) -> None:
    # The rule is the actions': a workflow of one's own cannot name someone else either,
    # neither to record a check-in nor to read a summary through a step's output.
    grace = f"grace.{unique}@example.com"
    inputs = {
        "life.record_entry": {"subject": grace, "day": DAY, "measures": {"steps": 1}},
        "life.summarise_day": {"subject": grace, "day": DAY},
    }
    for number, (action, with_) in enumerate(inputs.items()):
        name = f"sneak_{number}_{unique}"
        step = {"id": "only", "action": action, "with": with_}
        stack.register({"name": name, "version": 1, "steps": [step]})
        run = stack.wait_finished(stack.submit(name))
        assert "needs the scope admin.life" in refused(run, "only")
    assert entries(stack, subject=grace) == 0


def test_an_action_that_keeps_data_needs_the_workers_sessions() -> None:
    context = ActionContext("run", "record", 1, {})
    inputs = {"subject": "ada@example.com", "day": DAY, "measures": {"mood": 4}}
    with pytest.raises(NonRetryableError, match="database sessions"):
        actions.get("life.record_entry").function(inputs, context)

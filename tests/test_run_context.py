"""What a step sees of its run (`run.id`, `run.workflow`, `run.version`, `run.created_at`,
`run.scheduled_for`) in its templates, its `when` and `transform`'s expression, on a real
worker over SQLite and PostgreSQL: a scheduled run's steps see its fire time, a triggered
run's the moment of the trigger, a submitted run's null. Registration refuses a name no
step's context holds, and takes `run.*`."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import update

from engine.models import timestamp, utcnow
from engine.schedules.models import Schedule
from engine.work import MANAGER_QUEUE, SCHEDULE_TASK
from tests.conftest import spec
from tests.support import services
from tests.support.http import fields, problem
from tests.support.stack import Stack
from workers.factory import make_celery

WRITER = "runs.read,runs.write,schedules.read,schedules.write"
ISO = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"


def reporting_workflow(name: str) -> dict[str, Any]:
    """Two roots (the first runs inline in plan_run, the second is claimed by a message of
    its own) and a step after the first (claimed as the chain goes on)."""
    return spec(
        name,
        [
            {
                "id": "stamp",
                "action": "echo",
                "with": {
                    "fire": "{{ run.scheduled_for }}",
                    "id": "{{ run.id }}",
                    "workflow": "{{ run.workflow }}",
                    "version": "{{ run.version }}",
                    "created": "{{ run.created_at }}",
                    "title": "report for {{ run.scheduled_for[:10] if run.scheduled_for else '' }}",
                },
            },
            {
                "id": "day",
                "action": "transform",
                "when": "run.scheduled_for is not none",
                "with": {"expression": "run.scheduled_for[:10]"},
            },
            {
                "id": "after",
                "action": "transform",
                "needs": ["stamp"],
                "with": {"expression": "run.id == steps.stamp.output.id"},
            },
        ],
    )


def outputs(run: dict[str, Any]) -> dict[str, Any]:
    return {step["step_id"]: (step["status"], step["output"]) for step in run["steps"]}


def test_a_scheduled_runs_steps_see_its_fire_time_and_the_run_itself(
    stack: Stack, unique: str
) -> None:
    stack.register(reporting_workflow(unique))
    owner = stack.headers(f"{unique}@example.com", WRITER)
    client = stack.client()
    body = {"name": unique, "workflow": unique, "cron": "* * * * *"}
    assert client.post("/schedules", json=body, headers=owner).status_code == 201
    # Its next minute is near; bring it to now rather than wait for the clock.
    with stack.sessions.begin() as session:
        session.execute(
            update(Schedule)
            .where(Schedule.name == unique)
            .values(next_fire_at=utcnow() - timedelta(seconds=1))
        )
    make_celery(stack.settings).send_task(SCHEDULE_TASK, queue=MANAGER_QUEUE)

    def fired() -> dict[str, Any] | None:
        found = client.get(f"/schedules/{unique}", headers=owner).get_json()
        return found if found["last_run_id"] else None

    schedule = services.wait_for(fired, 30, 0.1, "the schedule to fire")
    run = stack.wait_finished(schedule["last_run_id"])
    assert run["status"] == "succeeded", run
    fire_time = schedule["last_fired_at"]
    assert run["scheduled_for"] == fire_time
    done = outputs(run)
    assert done["stamp"] == (
        "succeeded",
        {
            "fire": fire_time,
            "id": run["id"],
            "workflow": unique,
            "version": 1,
            "created": run["created_at"],
            "title": f"report for {fire_time[:10]}",
        },
    )
    assert done["day"] == ("succeeded", fire_time[:10])
    assert done["after"] == ("succeeded", True)


def test_a_submitted_run_sees_no_fire_time_and_a_triggered_one_the_moment_of_its_trigger(
    stack: Stack, unique: str
) -> None:
    stack.register(reporting_workflow(unique))
    submitted = stack.wait_finished(stack.submit(unique))
    assert submitted["scheduled_for"] is None
    done = outputs(submitted)
    assert done["stamp"][1]["fire"] is None and done["stamp"][1]["id"] == submitted["id"]
    assert done["stamp"][1]["title"] == "report for "
    assert done["day"] == ("skipped", None)  # its when: run.scheduled_for is not none

    owner = stack.headers(f"{unique}@example.com", WRITER)
    client = stack.client()
    body = {"name": unique, "workflow": unique, "cron": "0 3 * * *"}
    assert client.post("/schedules", json=body, headers=owner).status_code == 201
    before = utcnow()
    answer = client.post(f"/schedules/{unique}/trigger", headers=owner)
    after = utcnow()
    assert answer.status_code == 202, answer.get_json()
    moment = answer.get_json()["scheduled_for"]
    assert timestamp(before - timedelta(milliseconds=1)) <= moment <= timestamp(after)
    triggered = stack.wait_finished(answer.get_json()["id"])
    assert triggered["scheduled_for"] == moment
    assert outputs(triggered)["stamp"][1]["fire"] == moment
    assert outputs(triggered)["day"] == ("succeeded", moment[:10])


# Steps reading what no step's context holds, and the field each refusal names.
UNKNOWN_ROOTS = [
    ({"action": "echo", "with": {"day": "{{ ds }}"}}, "steps[0].with.day"),
    ({"action": "echo", "with": ["{{ parms.x }}"]}, "steps[0].with[0]"),
    ({"action": "echo", "when": "run.id and logical_date"}, "steps[0].when"),
    ({"action": "transform", "with": {"expression": "execution_date"}}, "steps[0].with.expression"),
    (
        {"action": "echo", "with": {"x": "{% for i in [1] %}{{ loop }}{% endfor %}{{ loop }}"}},
        "steps[0].with.x",
    ),
]


def test_registration_refuses_a_name_no_steps_context_holds_and_takes_the_run(
    database: Stack, unique: str
) -> None:
    client, headers = database.client(), database.headers(scopes="workflows.write")
    for index, (step, field) in enumerate(UNKNOWN_ROOTS):
        bad = spec(f"{unique}_{index}", [{"id": "a", **step}])
        refused = problem(client.post("/workflows", json=bad, headers=headers), 422)
        assert fields(refused) == [field], step
        assert "which no step's context holds" in refused["errors"][0]["message"]

    steps = [
        {
            "id": "a",
            "action": "echo",
            "when": "run.scheduled_for is none or params.force | default(false)",
            "with": {
                "run": "{{ run }}",
                "loop": "{% for i in range(2) %}{{ loop.index }}{% endfor %}",
                "set": "{% set day = run.created_at[:10] %}{{ day }}",
            },
        },
        {
            "id": "b",
            "action": "transform",
            "needs": ["a"],
            "with": {"expression": "[run.id, inputs.extra, steps.a.output, params]", "extra": 1},
        },
    ]
    database.register(spec(unique, steps))

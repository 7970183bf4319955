"""The dead-letter queue through HTTP and the CLI, against a real worker, on both backends."""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, update

from cli import context as cli_context
from cli.main import main as cli
from engine import bulk_replay, payloads, plan_failures, replay
from engine.auth import Caller
from engine.config import Settings
from engine.errors import InvalidInput
from engine.models import DeadLetter, Run, Step
from engine.work import plan_task_id
from tests.conftest import spec
from tests.support.commit_trap import refusing_commits
from tests.support.metrics import read_api_metrics
from tests.support.stack import Stack
from web import db as web_db

OPERATOR = Caller("operator@example.com", ("admin.*",))

OPS = "ops@example.com"
QUICK_RETRY = {"max_attempts": 3, "backoff_s": 0.05, "max_backoff_s": 0.1}
ONCE = {"max_attempts": 1}


def admin(stack: Stack, scopes: str = "admin.*") -> dict[str, str]:
    return stack.headers(OPS, scopes)


def failed_run(stack: Stack, workflow: str) -> dict[str, Any]:
    run = stack.wait_finished(stack.submit(workflow))
    assert run["status"] == "failed", run
    return run


def letters_of(stack: Stack, run_id: str, status: str = "") -> list[dict[str, Any]]:
    response = stack.client().get(
        "/admin/dlq", query_string={"run_id": run_id, "status": status}, headers=admin(stack)
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()["items"]


def the_letter(stack: Stack, run_id: str) -> dict[str, Any]:
    letters = letters_of(stack, run_id)
    assert len(letters) == 1, letters
    return letters[0]


def register_failing(stack: Stack, name: str) -> None:
    """One step that fails every attempt, allowed one: each run of it is one dead letter."""
    stack.register(
        spec(name, [{"id": "a", "action": "record", "with": {"fail": True}, "retry": ONCE}])
    )


def register_flaky(stack: Stack, name: str) -> None:
    """One step that fails its first attempt (no retries) and succeeds on any later one."""
    stack.register(
        spec(name, [{"id": "work", "action": "fail", "with": {"until_attempt": 2}, "retry": ONCE}])
    )


def test_a_step_out_of_attempts_becomes_one_dead_letter_and_fails_its_run(
    stack: Stack, unique: str
) -> None:
    stack.register(
        spec(
            unique,
            [
                {"id": "a", "action": "record"},
                {
                    "id": "b",
                    "action": "record",
                    "needs": ["a"],
                    "with": {"fail": True, "message": "upstream said no"},
                    "retry": QUICK_RETRY,
                },
                {"id": "c", "action": "record", "needs": ["b"]},
            ],
        )
    )
    run = failed_run(stack, unique)
    statuses = {step["step_id"]: step["status"] for step in run["steps"]}
    assert statuses == {"a": "succeeded", "b": "dead", "c": "skipped"}
    assert Counter(step for _, step, _ in stack.executions(run["id"])) == {"a": 1, "b": 3}

    letter = the_letter(stack, run["id"])
    assert letter["attempts"] == 3
    assert letter["status"] == "open"
    assert (letter["step_id"], letter["workflow"]) == ("b", unique)
    assert letter["exception_type"] == "ActionError"
    assert letter["message"] == "upstream said no"
    assert len(letter["fingerprint"]) == 16
    task_id = f"{run['id']}:b:3"
    assert letter["task_id"] == task_id
    assert letter["flower_url"] == f"{stack.settings.flower_url}/task/{task_id}"

    detail = stack.client().get(f"/admin/dlq/{letter['id']}", headers=admin(stack))
    assert detail.status_code == 200
    assert detail.get_json()["traceback"].startswith("Traceback")
    listing = stack.client().get(
        "/admin/dlq", query_string={"workflow": unique}, headers=admin(stack)
    )
    assert listing.get_json()["groups"] == [
        {
            "fingerprint": letter["fingerprint"],
            "exception_type": "ActionError",
            "count": 1,
            "last_failed_at": letter["failed_at"],
        }
    ]


def test_a_dead_letter_of_a_step_run_inline_links_to_the_task_flower_knows(
    stack: Stack, unique: str
) -> None:
    # plan_run runs a run's first step itself: Flower knows that attempt only as the plan
    # task, so the letter's link goes there, not to the attempt's own task id.
    register_failing(stack, unique)
    run = failed_run(stack, unique)
    step = stack.step(run["id"], "a")
    assert step["worker"].endswith(f" inline in {plan_task_id(run['id'])}"), step["worker"]
    letter = the_letter(stack, run["id"])
    assert letter["task_id"] == f"{run['id']}:a:1"
    flower = f"{stack.settings.flower_url}/task/{plan_task_id(run['id'])}"
    assert letter["flower_url"] == flower
    detail = stack.client().get(f"/admin/dlq/{letter['id']}", headers=admin(stack))
    assert detail.get_json()["flower_url"] == flower
    cli_context.settings.cache_clear()
    try:
        shown = CliRunner().invoke(cli, ["dlq", "show", letter["id"]], env=stack.env)
    finally:
        cli_context.settings.cache_clear()
    assert json.loads(shown.output)["flower_url"] == flower


FIXED = {"fail": False, "api_token": "tok-0f9e8d7c"}


def test_replaying_a_dead_letter_with_fixed_inputs_resumes_its_run_at_that_step(
    stack: Stack, unique: str
) -> None:
    stack.register(
        spec(
            unique,
            [
                {"id": "a", "action": "record"},
                {"id": "b", "action": "fail", "needs": ["a"], "with": {"fail": True}},
                {"id": "c", "action": "record", "needs": ["b"]},
            ],
            defaults={"retry": ONCE},
        )
    )
    run = failed_run(stack, unique)
    letter = the_letter(stack, run["id"])
    client = stack.client()

    invalid = client.post(
        f"/admin/dlq/{letter['id']}/replay",
        json={"reason": "fixed", "inputs": {"fail": "no"}},
        headers=admin(stack),
    )
    assert invalid.status_code == 422, invalid.get_json()
    assert [error["field"] for error in invalid.get_json()["errors"]] == ["inputs.fail"]
    too_deep: Any = False
    for _ in range(payloads.MAX_DEPTH):
        too_deep = [too_deep]
    deep = client.post(
        f"/admin/dlq/{letter['id']}/replay",
        json={"reason": "fixed", "inputs": {"fail": too_deep}},
        headers=admin(stack),
    )
    assert deep.status_code == 422 and deep.get_json()["errors"][0]["field"] == "inputs"
    with stack.sessions.begin() as session, pytest.raises(InvalidInput) as raised:
        replay.replay(session, stack.settings, letter["id"], OPERATOR, "fixed", {"f": too_deep})
    assert raised.value.errors[0]["field"] == "inputs"
    no_reason = client.post(
        f"/admin/dlq/{letter['id']}/replay", json={"reason": " "}, headers=admin(stack)
    )
    assert no_reason.status_code == 422
    assert no_reason.get_json()["errors"][0]["field"] == "reason"
    assert the_letter(stack, run["id"])["status"] == "open"

    response = client.post(
        f"/admin/dlq/{letter['id']}/replay",
        json={"reason": "the upstream flag was wrong", "inputs": FIXED},
        headers=admin(stack),
    )
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["run_id"] == run["id"]
    assert response.headers["Location"].endswith(f"/runs/{run['id']}")
    assert body["dead_letter"]["status"] == "replayed"
    assert body["dead_letter"]["resolved_by"] == OPS
    # The records of the replay keep no secret of the inputs; the step gets them as given.
    assert body["dead_letter"]["resolution"] == {
        "reason": "the upstream flag was wrong",
        "inputs": {"fail": False, "api_token": "[REDACTED]"},
    }

    finished = stack.wait_finished(run["id"])
    assert finished["status"] == "succeeded", finished
    assert finished["error"] is None
    steps = {step["step_id"]: step for step in finished["steps"]}
    assert steps["b"]["inputs"] == FIXED
    assert steps["b"]["attempts"] == 2
    assert steps["b"]["task_id"] == f"{run['id']}:b:2"
    assert Counter(step for _, step, _ in stack.executions(run["id"])) == {"a": 1, "c": 1}

    events = client.get(
        "/admin/audit", query_string={"target": f"dead_letter:{letter['id']}"}, headers=admin(stack)
    ).get_json()["items"]
    assert [(e["action"], e["actor"], e["reason"]) for e in events] == [
        ("dlq.replay", OPS, "the upstream flag was wrong")
    ]
    assert events[0]["detail"]["inputs"] == {"fail": False, "api_token": "[REDACTED]"}
    again = client.post(
        f"/admin/dlq/{letter['id']}/replay", json={"reason": "again"}, headers=admin(stack)
    )
    assert again.status_code == 409


def test_two_concurrent_replays_of_one_dead_letter_run_the_step_once(
    stack: Stack, unique: str
) -> None:
    register_failing(stack, unique)
    run = failed_run(stack, unique)
    letter = the_letter(stack, run["id"])
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def replay() -> None:
        client, headers = stack.client(), admin(stack)
        barrier.wait(10)
        response = client.post(
            f"/admin/dlq/{letter['id']}/replay",
            json={"reason": "race", "inputs": {"fail": False}},
            headers=headers,
        )
        statuses.append(response.status_code)

    threads = [threading.Thread(target=replay) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(statuses) == [202, 409]
    finished = stack.wait_finished(run["id"])
    assert finished["status"] == "succeeded"
    assert sorted(stack.executions(run["id"])) == [(run["id"], "a", 1), (run["id"], "a", 2)]
    assert finished["steps"][0]["attempts"] == 2


def test_bulk_replay_acts_only_on_the_confirmed_count_and_reports_each_letter(
    stack: Stack, unique: str
) -> None:
    register_flaky(stack, unique)
    run_ids = [stack.submit(unique) for _ in range(3)]
    for run_id in run_ids:
        assert stack.wait_finished(run_id)["status"] == "failed"
    letter_ids = {the_letter(stack, run_id)["id"] for run_id in run_ids}
    client = stack.client()
    url, where = "/admin/dlq/replay", {"workflow": unique}

    first_page = client.get(
        "/admin/dlq", query_string={"workflow": unique, "limit": 2}, headers=admin(stack)
    ).get_json()
    second_page = client.get(
        "/admin/dlq",
        query_string={"workflow": unique, "limit": 2, "cursor": first_page["next_cursor"]},
        headers=admin(stack),
    ).get_json()
    assert second_page["next_cursor"] is None
    assert {item["id"] for item in first_page["items"] + second_page["items"]} == letter_ids
    assert [group["count"] for group in first_page["groups"]] == [3]

    dry = client.post(url, json={"filter": where, "dry_run": True}, headers=admin(stack))
    assert dry.status_code == 200, dry.get_json()
    assert dry.get_json()["count"] == 3
    assert set(dry.get_json()["ids"]) == letter_ids

    short = client.post(
        url, json={"filter": where, "confirm_count": 2, "reason": "redrive"}, headers=admin(stack)
    )
    assert short.status_code == 409, short.get_json()
    assert "2" in short.get_json()["detail"] and "3" in short.get_json()["detail"]
    assert all(stack.run(run_id)["status"] == "failed" for run_id in run_ids)
    assert (
        len(
            client.get(
                "/admin/dlq",
                query_string={"workflow": unique, "status": "open"},
                headers=admin(stack),
            ).get_json()["items"]
        )
        == 3
    )

    real = client.post(
        url, json={"filter": where, "confirm_count": 3, "reason": "redrive"}, headers=admin(stack)
    )
    assert real.status_code == 202, real.get_json()
    report = real.get_json()
    assert report["count"] == 3
    assert {item["id"] for item in report["results"]} == letter_ids
    assert {item["outcome"] for item in report["results"]} == {"replayed"}
    for run_id in run_ids:
        assert stack.wait_finished(run_id)["status"] == "succeeded"
    events = client.get(
        "/admin/audit",
        query_string={"action": "dlq.bulk_replay", "actor": OPS},
        headers=admin(stack),
    ).get_json()["items"]
    assert any(e["detail"] == {"filter": where, "count": 3} for e in events)


def test_a_read_only_operator_can_look_but_not_replay_or_discard(stack: Stack, unique: str) -> None:
    register_flaky(stack, unique)
    run = failed_run(stack, unique)
    letter = the_letter(stack, run["id"])
    reader, client = admin(stack, "admin.dlq.read"), stack.client()

    assert client.get("/admin/dlq", headers=reader).status_code == 200
    assert client.get(f"/admin/dlq/{letter['id']}", headers=reader).status_code == 200
    for action, scope in (("replay", "admin.dlq.replay"), ("discard", "admin.dlq.discard")):
        denied = client.post(
            f"/admin/dlq/{letter['id']}/{action}", json={"reason": "try"}, headers=reader
        )
        assert denied.status_code == 403
        assert denied.get_json()["errors"] == [{"field": "scopes", "message": f"missing {scope}"}]
    bulk = client.post("/admin/dlq/replay", json={"dry_run": True}, headers=reader)
    assert bulk.status_code == 403
    assert client.get("/admin/audit", headers=reader).status_code == 403
    assert client.get("/admin/dlq").status_code == 401
    assert the_letter(stack, run["id"])["status"] == "open"

    replayed = client.post(
        f"/admin/dlq/{letter['id']}/replay", json={"reason": "ok"}, headers=admin(stack)
    )
    assert replayed.status_code == 202
    assert stack.wait_finished(run["id"])["status"] == "succeeded"


def test_discarding_keeps_the_letter_out_of_the_open_list_and_works_only_once(
    stack: Stack, unique: str
) -> None:
    register_flaky(stack, unique)
    run = failed_run(stack, unique)
    letter = the_letter(stack, run["id"])
    client = stack.client()

    response = client.post(
        f"/admin/dlq/{letter['id']}/discard", json={"reason": "obsolete"}, headers=admin(stack)
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == "discarded"
    assert response.get_json()["resolved_by"] == OPS
    assert letters_of(stack, run["id"], "open") == []
    assert [item["id"] for item in letters_of(stack, run["id"], "discarded")] == [letter["id"]]
    events = client.get(
        "/admin/audit", query_string={"target": f"dead_letter:{letter['id']}"}, headers=admin(stack)
    ).get_json()["items"]
    assert [(e["action"], e["actor"], e["reason"]) for e in events] == [
        ("dlq.discard", OPS, "obsolete")
    ]

    twice = client.post(
        f"/admin/dlq/{letter['id']}/discard", json={"reason": "again"}, headers=admin(stack)
    )
    assert twice.status_code == 409
    replay = client.post(
        f"/admin/dlq/{letter['id']}/replay", json={"reason": "too late"}, headers=admin(stack)
    )
    assert replay.status_code == 409
    assert stack.run(run["id"])["status"] == "failed"


def test_the_cli_lists_shows_replays_and_discards_dead_letters(stack: Stack, unique: str) -> None:
    register_failing(stack, unique)
    kept, dropped = failed_run(stack, unique), failed_run(stack, unique)
    kept_letter, dropped_letter = the_letter(stack, kept["id"]), the_letter(stack, dropped["id"])
    runner = CliRunner()

    def engine(*args: str) -> Any:
        cli_context.settings.cache_clear()
        try:
            return runner.invoke(cli, ["dlq", *args], env=stack.env, catch_exceptions=False)
        finally:
            cli_context.settings.cache_clear()

    listing = engine("ls", "--workflow", unique, "--status", "open")
    assert listing.exit_code == 0, listing.output
    assert kept_letter["id"] in listing.output and dropped_letter["id"] in listing.output
    assert f"{kept_letter['fingerprint']}       2  ActionError" in listing.output

    shown = engine("show", kept_letter["id"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["task_id"] == f"{kept['id']}:a:1"

    bad = engine("replay", kept_letter["id"], "--reason", "x", "--inputs", "[1]")
    assert bad.exit_code == 2 and "--inputs" in bad.output
    replayed = engine(
        "replay", kept_letter["id"], "--reason", "flag fixed", "--inputs", '{"fail": false}'
    )
    assert replayed.exit_code == 0, replayed.output
    assert stack.wait_finished(kept["id"])["status"] == "succeeded"

    discarded = engine("discard", dropped_letter["id"], "--reason", "customer left")
    assert discarded.exit_code == 0, discarded.output
    again = engine("discard", dropped_letter["id"], "--reason", "customer left")
    assert again.exit_code == 1 and "only an open one" in again.output

    dry = engine("replay", "--all", "--workflow", unique, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "0 open dead letter(s) match" in dry.output
    actors = {
        event["actor"]
        for letter_id in (kept_letter["id"], dropped_letter["id"])
        for event in stack.client()
        .get(
            "/admin/audit",
            query_string={"target": f"dead_letter:{letter_id}"},
            headers=admin(stack),
        )
        .get_json()["items"]
    }
    assert len(actors) == 1 and actors.pop().startswith("cli:")


def test_replaying_a_planning_dead_letter_queues_its_run_again(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    run_id = database.submit(unique)  # no worker here: the run stays queued
    with database.sessions.begin() as session:
        letter_id = plan_failures.bury_plan(
            session, database.settings, run_id, "WorkerLostError", "planning died", "", 3
        ).letter_id
    assert database.run(run_id)["status"] == "failed"
    client = database.client()

    with_inputs = client.post(
        f"/admin/dlq/{letter_id}/replay",
        json={"reason": "worker fixed", "inputs": {"x": 1}},
        headers=admin(database),
    )
    assert with_inputs.status_code == 422
    assert with_inputs.get_json()["errors"][0]["field"] == "inputs"

    response = client.post(
        f"/admin/dlq/{letter_id}/replay", json={"reason": "worker fixed"}, headers=admin(database)
    )
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["dead_letter"]["step_id"] is None
    run = database.run(run_id)
    assert (run["status"], run["error"], run["steps"]) == ("queued", None, [])
    with database.sessions.begin() as session:
        assert session.get(Run, run_id).plan_deliveries == 0


def test_two_planning_failures_of_one_run_at_once_write_one_dead_letter(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    run_id = database.submit(unique)  # no worker here: the run stays queued
    letters: list[str | None] = []

    def bury() -> None:
        with database.sessions.begin() as session:
            buried = plan_failures.bury_plan(
                session, database.settings, run_id, "InvalidParams", "second", ""
            )
            letters.append(buried.letter_id)

    with database.sessions.begin() as session:
        buried = plan_failures.bury_plan(
            session, database.settings, run_id, "InvalidParams", "first", ""
        )
        letters.append(buried.letter_id)
        other = threading.Thread(target=bury)
        other.start()
        other.join(0.5)
        assert other.is_alive()  # it waits for this transaction's lock on the run
    other.join(30)
    assert letters[0] is not None and letters[1:] == [None]
    with database.sessions() as session:
        written = session.scalars(select(DeadLetter.message).where(DeadLetter.run_id == run_id))
        assert list(written) == ["first"]
    assert database.run(run_id)["error"] == "InvalidParams: first"


def test_malformed_filters_are_rejected_naming_the_field(database: Stack) -> None:
    client = database.client()
    for query, field in (
        ({"since": "yesterday"}, "since"),
        ({"until": "2024-13-01"}, "until"),
        ({"status": "lost"}, "status"),
        ({"cursor": "nonsense"}, "cursor"),
    ):
        response = client.get("/admin/dlq", query_string=query, headers=admin(database))
        assert response.status_code == 422, (query, response.get_json())
        assert response.get_json()["errors"][0]["field"] == field
    bulk = client.post(
        "/admin/dlq/replay",
        json={"filter": {"since": "soon"}, "dry_run": True},
        headers=admin(database),
    )
    assert bulk.status_code == 422
    assert bulk.get_json()["errors"][0]["field"] == "filter.since"
    unconfirmed = client.post("/admin/dlq/replay", json={"filter": {}}, headers=admin(database))
    assert unconfirmed.status_code == 422
    assert {e["field"] for e in unconfirmed.get_json()["errors"]} == {"confirm_count", "reason"}
    window = client.get(
        "/admin/dlq",
        query_string={"since": "2024-05-01T00:00:00Z", "until": "2024-05-02T00:00:00+00:00"},
        headers=admin(database),
    )
    assert window.status_code == 200
    assert window.get_json() == {"items": [], "next_cursor": None, "groups": []}


def test_a_bulk_replay_matching_more_than_the_cap_is_refused(database: Stack, unique: str) -> None:
    from web import create_app

    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    with database.sessions.begin() as session:
        for run_id in [database.submit(unique) for _ in range(2)]:
            plan_failures.bury_plan(
                session, database.settings, run_id, "WorkerLostError", "planning died", ""
            )
    app = create_app(database.settings.with_changes(bulk_replay_max=1))
    try:
        response = app.test_client().post(
            "/admin/dlq/replay",
            json={"filter": {"workflow": unique}, "dry_run": True},
            headers=admin(database),
        )
    finally:
        web_db.dispose(app)
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["detail"].startswith("2 dead letters match")
    assert response.get_json()["errors"][0]["field"] == "filter"


def test_the_pacer_spaces_sends_at_the_configured_rate() -> None:
    now = [100.0]
    pacer = bulk_replay.Pacer(4, clock=lambda: now[0])
    assert [pacer.delay() for _ in range(3)] == [0.0, 0.25, 0.5]
    now[0] = 200.0
    assert pacer.delay() == 0.0


def replayed_count(client: Any) -> float:
    text = read_api_metrics(client.application)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "dlq_events_total" and sample.labels == {"event": "replayed"}:
                return sample.value
    return 0.0


def test_a_bulk_replay_goes_in_batches_and_one_letter_that_cannot_resume_spares_the_rest(
    stack: Stack, unique: str
) -> None:
    stack.register(
        spec(
            unique,
            [
                {"id": "work", "action": "fail", "with": {"until_attempt": 2}, "retry": ONCE},
                {"id": "after", "action": "record", "needs": ["work"]},
            ],
        )
    )
    run_ids = [stack.submit(unique) for _ in range(5)]
    for run_id in run_ids:
        assert stack.wait_finished(run_id)["status"] == "failed"
    letter_of = {run_id: the_letter(stack, run_id)["id"] for run_id in run_ids}
    stuck_run = run_ids[2]
    # Someone mended the step by hand after the dry run: its letter is still open, but the
    # step is no longer dead, so its batch cannot go through whole.
    with stack.sessions.begin() as session:
        session.execute(
            update(Step.__table__)
            .where(Step.run_id == stuck_run, Step.step_id == "work")
            .values(status="succeeded")
        )
    from web import create_app

    # Two letters per transaction: 3 batches, the second one falls back letter by letter.
    settings = stack.settings.with_changes(bulk_replay_rate=1000.0, dispatch_grace_s=0.008)
    assert bulk_replay.batch_size(settings) == 2
    app = create_app(settings)
    try:
        client = app.test_client()
        before = replayed_count(client)
        response = client.post(
            "/admin/dlq/replay",
            json={"filter": {"workflow": unique}, "confirm_count": 5, "reason": "batched"},
            headers=admin(stack),
        )
        assert response.status_code == 202, response.get_json()
        assert replayed_count(client) - before == 4
    finally:
        web_db.dispose(app)
    outcome = {item["id"]: item for item in response.get_json()["results"]}
    assert set(outcome) == set(letter_of.values())
    stuck = outcome[letter_of[stuck_run]]
    assert stuck["outcome"] == "conflict" and "not dead" in stuck["detail"], stuck
    for run_id in run_ids:
        if run_id != stuck_run:
            assert outcome[letter_of[run_id]] == {
                "id": letter_of[run_id],
                "outcome": "replayed",
                "run_id": run_id,
            }
            finished = stack.wait_finished(run_id)
            assert finished["status"] == "succeeded", finished
            assert [step["status"] for step in finished["steps"]] == ["succeeded"] * 2
            assert stack.executions(run_id) == [(run_id, "after", 1)]
    assert stack.run(stuck_run)["status"] == "failed"
    assert [item["id"] for item in letters_of(stack, stuck_run, "open")] == [letter_of[stuck_run]]
    events = (
        stack.client()
        .get(
            "/admin/audit",
            query_string={"action": "dlq.replay", "actor": OPS},
            headers=admin(stack),
        )
        .get_json()["items"]
    )
    audited = {e["target"]: e for e in events if e["detail"]["run_id"] in run_ids}
    assert set(audited) == {
        f"dead_letter:{letter_of[run_id]}" for run_id in run_ids if run_id != stuck_run
    }
    assert len({e["detail"]["batch"] for e in audited.values()}) == 1
    assert {e["reason"] for e in audited.values()} == {"batched"}


def test_a_bulk_replay_of_planning_dead_letters_queues_their_runs_again(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    run_ids = [database.submit(unique) for _ in range(2)]  # no worker: the runs stay queued
    with database.sessions.begin() as session:
        for run_id in run_ids:
            plan_failures.bury_plan(
                session, database.settings, run_id, "WorkerLostError", "planning died", ""
            )
    client = database.client()
    response = client.post(
        "/admin/dlq/replay",
        json={"filter": {"workflow": unique}, "confirm_count": 2, "reason": "worker fixed"},
        headers=admin(database),
    )
    assert response.status_code == 202, response.get_json()
    assert {item["outcome"] for item in response.get_json()["results"]} == {"replayed"}
    assert [database.run(run_id)["status"] for run_id in run_ids] == ["queued", "queued"]


def test_a_bulk_batch_is_small_enough_to_be_sent_well_inside_the_dispatch_grace() -> None:
    settings = Settings(jwt_secret="s" * 48)
    assert bulk_replay.batch_size(settings) == bulk_replay.BATCH_MAX
    slow = settings.with_changes(bulk_replay_rate=2.0, dispatch_grace_s=30.0)
    assert bulk_replay.batch_size(slow) == 15
    assert bulk_replay.batch_size(settings.with_changes(bulk_replay_rate=0.01)) == 1
    assert bulk_replay.batch_size(settings.with_changes(bulk_replay_rate=0.0)) == 200


def dlq_counted(event: str) -> float:
    """dlq_events_total{event} as this process counted it (the test client's app is here)."""
    return REGISTRY.get_sample_value("dlq_events_total", {"event": event}) or 0.0


def planning_letter(database: Stack, workflow: str) -> str:
    """An open dead letter of a run of `workflow` whose planning failed (no worker needed)."""
    run_id = database.submit(workflow)  # no worker here: the run stays queued
    with database.sessions.begin() as session:
        buried = plan_failures.bury_plan(
            session, database.settings, run_id, "WorkerLostError", "planning died", ""
        )
    assert buried.letter_id is not None
    return buried.letter_id


def letter_status(database: Stack, letter_id: str) -> str:
    with database.sessions() as session:
        return str(session.get(DeadLetter, letter_id).status)


def test_a_replay_a_retry_or_a_discard_whose_commit_the_database_refuses_counts_nothing(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    to_replay, to_retry, to_discard = (planning_letter(database, unique) for _ in range(3))
    with database.sessions() as session:
        retried_run = session.get(DeadLetter, to_retry).run_id
    refused = f"{unique}@example.com"
    headers, client = database.headers(refused, "admin.*,runs.*"), database.client()
    before = {event: dlq_counted(event) for event in ("replayed", "discarded")}

    def replay_it() -> Any:
        url = f"/admin/dlq/{to_replay}/replay"
        return client.post(url, json={"reason": "fixed"}, headers=headers)

    def retry_it() -> Any:
        return client.post(f"/runs/{retried_run}/retry", headers=headers)

    def discard_it() -> Any:
        url = f"/admin/dlq/{to_discard}/discard"
        return client.post(url, json={"reason": "obsolete"}, headers=headers)

    with refusing_commits(database, "dead_letters", f"NEW.resolved_by = '{refused}'"):
        assert [call().status_code for call in (replay_it, retry_it, discard_it)] == [500] * 3
    assert {letter_status(database, letter) for letter in (to_replay, to_retry, to_discard)} == {
        "open"
    }
    assert {event: dlq_counted(event) for event in before} == before

    assert [call().status_code for call in (replay_it, retry_it, discard_it)] == [202, 202, 200]
    assert {event: dlq_counted(event) - before[event] for event in before} == {
        "replayed": 2,
        "discarded": 1,
    }

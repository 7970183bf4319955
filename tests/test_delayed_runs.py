"""Delayed runs over HTTP and the CLI, on SQLite and PostgreSQL: POST /runs with a
not_before stores the run queued and sends nothing; beat's tick starts it once due (a real
worker running beat); a time already past starts it at once; bad times are 422s naming the
field; the Idempotency-Key covers it; a run cancelled while it waits never starts. The tick
and the reconciler on a database alone: tests/test_delayed_ticks.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from sqlalchemy import event, func, select

from engine.models import Run, in_utc, timestamp, utcnow
from engine.queues import QueueLayout
from engine.work import MANAGER_QUEUE, plan_task_id
from tests.conftest import spec
from tests.support.cli import failed, ok, run_engine
from tests.support.http import fields, problem
from tests.support.stack import Stack

ADMIN = "admin.*,runs.read,runs.write,workflows.read,workflows.write"
# Beat's delay tick, fast: a due run starts within a fraction of a second.
TICK_ENV = {"RUN_DELAY_TICK_S": "0.2"}


@pytest.fixture(scope="module")
def ticking(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A platform of its own whose worker runs beat (-B), ticking every 0.2 s."""
    platform = Stack(backend, tmp_path_factory.mktemp(f"delayed-{backend}"), env=TICK_ENV)
    platform.start_worker(concurrency=2, beat=True)
    yield platform
    platform.close()


def rfc3339(moment: datetime, offset_hours: int = 0) -> str:
    """`moment` as a client writes it, in the given offset."""
    shown = moment.astimezone(timezone(timedelta(hours=offset_hours)))
    return shown.isoformat().replace("+00:00", "Z")


def submit(stack: Stack, body: dict[str, Any], **headers: str) -> Any:
    return stack.client().post("/runs", json=body, headers={**stack.headers(), **headers})


def plan_sent(stack: Stack, run_id: str) -> bool:
    """Whether the run's plan message waits in the manager queue (no worker consumes it)."""
    celery = stack.app.extensions["engine.celery"]
    layout = QueueLayout.from_transport_options(celery.conf.broker_transport_options)
    client = redis.Redis.from_url(stack.redis_url)
    wanted = plan_task_id(run_id)
    for key in layout.keys(MANAGER_QUEUE):
        for message in client.lrange(key, 0, -1):
            if json.loads(message)["headers"]["id"] == wanted:
                return True
    return False


def row(stack: Stack, run_id: str) -> Run:
    with stack.sessions() as session:
        found = session.get(Run, run_id)
        assert found is not None
        return found


def run_count(stack: Stack, workflow: str) -> int:
    with stack.sessions() as session:
        query = select(func.count()).select_from(Run).where(Run.workflow == workflow)
        return session.scalar(query) or 0


def test_a_delayed_run_waits_queued_and_starts_once_its_not_before_passed(
    ticking: Stack, unique: str
) -> None:
    ticking.register(spec(unique, [{"id": "only", "action": "echo", "with": {"n": 1}}]))
    not_before = utcnow() + timedelta(seconds=2)
    response = submit(ticking, {"workflow": unique, "not_before": rfc3339(not_before, 2)})
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert (body["status"], body["not_before"]) == ("queued", timestamp(not_before))
    assert ticking.run(body["id"])["status"] == "queued"
    listed = ticking.client().get(f"/runs?workflow={unique}", headers=ticking.headers())
    assert [item["not_before"] for item in listed.get_json()["items"]] == [body["not_before"]]

    run = ticking.wait_finished(body["id"], timeout=30)
    assert run["status"] == "succeeded", run
    started = in_utc(datetime.fromisoformat(run["started_at"]))
    # Started by the tick after its time, not by the submission.
    assert started >= not_before.replace(microsecond=not_before.microsecond // 1000 * 1000)
    assert row(ticking, body["id"]).dispatched_at > not_before


def test_a_not_before_already_past_or_now_starts_the_run_at_once(stack: Stack, unique: str) -> None:
    """The shared platform runs no beat: only the submission's own message starts these."""
    stack.register(spec(unique, [{"id": "only", "action": "noop"}]))
    for moment in (utcnow() - timedelta(hours=1), utcnow()):
        response = submit(stack, {"workflow": unique, "not_before": rfc3339(moment, -5)})
        assert response.status_code == 202, response.get_json()
        assert response.get_json()["not_before"] == timestamp(moment)
        assert stack.wait_finished(response.get_json()["id"], timeout=30)["status"] == "succeeded"


def test_a_delayed_submission_is_the_same_one_insert_and_sends_nothing(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "only", "action": "noop"}]))
    statements: list[str] = []
    db_engine = database.app.extensions["engine.db"]

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    submit(database, {"workflow": unique})  # warms the caches a first submission fills
    event.listen(db_engine, "before_cursor_execute", record)
    try:
        now = submit(database, {"workflow": unique}).get_json()["id"]
        at_once = list(statements)
        statements.clear()
        later = submit(
            database,
            {"workflow": unique, "not_before": rfc3339(utcnow() + timedelta(minutes=10))},
        )
    finally:
        event.remove(db_engine, "before_cursor_execute", record)
    assert later.status_code == 202, later.get_json()
    # The same statements: one INSERT (and on SQLite its BEGIN IMMEDIATE), nothing more.
    assert statements == at_once
    assert [text for text in at_once if text.lstrip().upper().startswith("INSERT")] == at_once[-1:]
    assert plan_sent(database, now)
    assert not plan_sent(database, later.get_json()["id"])
    waiting = row(database, later.get_json()["id"])
    assert (waiting.status, waiting.dispatched_at) == ("queued", waiting.not_before)


@pytest.mark.parametrize(
    ("not_before", "says"),
    [
        ("2030-01-01T09:00:00", "has no offset"),
        (1767258000, "is not of type 'string'"),
        ("tomorrow at nine", "is not an RFC 3339 time"),
        ("2030-02-30T09:00:00Z", "is not a valid time"),
        ("", "should be non-empty"),
    ],
)
def test_a_not_before_that_is_not_a_time_with_its_offset_is_a_422_naming_it(
    database: Stack, unique: str, not_before: Any, says: str
) -> None:
    database.register(spec(unique, [{"id": "only", "action": "noop"}]))
    found = problem(submit(database, {"workflow": unique, "not_before": not_before}), 422)
    assert fields(found) == ["not_before"]
    assert says in json.dumps(found), found
    assert run_count(database, unique) == 0


def test_a_not_before_further_ahead_than_run_delay_max_s_is_a_422(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "only", "action": "noop"}]))
    furthest = timedelta(seconds=database.settings.run_delay_max_s)
    too_far = submit(
        database, {"workflow": unique, "not_before": rfc3339(utcnow() + furthest + timedelta(1))}
    )
    found = problem(too_far, 422)
    assert fields(found) == ["not_before"] and "RUN_DELAY_MAX_S" in found["detail"]
    assert run_count(database, unique) == 0
    near_enough = utcnow() + furthest - timedelta(minutes=1)
    assert (
        submit(database, {"workflow": unique, "not_before": rfc3339(near_enough)}).status_code
        == 202
    )


def test_the_idempotency_key_covers_not_before(database: Stack, unique: str) -> None:
    database.register(spec(unique, [{"id": "only", "action": "noop"}]))
    at = utcnow() + timedelta(hours=1)
    body = {"workflow": unique, "not_before": rfc3339(at)}
    first = submit(database, body, **{"Idempotency-Key": f"later-{unique}"})
    assert first.status_code == 202
    # The same instant, written in another offset, is the same request.
    again = submit(
        database, {**body, "not_before": rfc3339(at, 9)}, **{"Idempotency-Key": f"later-{unique}"}
    )
    assert again.status_code == 200 and again.get_json()["id"] == first.get_json()["id"]
    for other in ({**body, "not_before": rfc3339(at + timedelta(seconds=1))}, {"workflow": unique}):
        refused = submit(database, other, **{"Idempotency-Key": f"later-{unique}"})
        assert "Idempotency-Key" in problem(refused, 409)["detail"]

    plain = submit(database, {"workflow": unique}, **{"Idempotency-Key": f"now-{unique}"})
    assert plain.status_code == 202
    assert (
        submit(database, {"workflow": unique}, **{"Idempotency-Key": f"now-{unique}"}).status_code
        == 200
    )
    refused = submit(database, body, **{"Idempotency-Key": f"now-{unique}"})
    assert "Idempotency-Key" in problem(refused, 409)["detail"]
    assert run_count(database, unique) == 2


def test_a_run_cancelled_while_it_waits_never_starts(ticking: Stack, unique: str) -> None:
    ticking.register(spec(unique, [{"id": "only", "action": "echo", "with": {"n": 1}}]))
    soon = utcnow() + timedelta(seconds=1.5)
    cancelled = submit(ticking, {"workflow": unique, "not_before": rfc3339(soon)}).get_json()["id"]
    answer = ticking.client().post(f"/runs/{cancelled}/cancel", headers=ticking.headers())
    assert answer.status_code == 200 and answer.get_json()["status"] == "cancelled"
    # A run due after it has started and finished: the ticks went past the cancelled one.
    marker = submit(
        ticking, {"workflow": unique, "not_before": rfc3339(soon + timedelta(seconds=1))}
    ).get_json()["id"]
    assert ticking.wait_finished(marker, timeout=30)["status"] == "succeeded"
    run = ticking.run(cancelled)
    assert (run["status"], run["started_at"], run["steps"]) == ("cancelled", None, [])
    assert ticking.executions(cancelled) == []


def test_a_paused_workflows_delayed_run_starts_when_due_as_its_queued_runs_go_on(
    ticking: Stack, unique: str
) -> None:
    ticking.register(spec(unique, [{"id": "only", "action": "noop"}]))
    soon = rfc3339(utcnow() + timedelta(seconds=1))
    run_id = submit(ticking, {"workflow": unique, "not_before": soon}).get_json()["id"]
    paused = ticking.client().post(
        f"/workflows/{unique}/pause",
        json={"reason": "drill"},
        headers=ticking.headers(scopes=ADMIN),
    )
    assert paused.status_code == 200, paused.get_json()
    assert ticking.wait_finished(run_id, timeout=30)["status"] == "succeeded"
    # New runs are refused meanwhile, delayed or not.
    refused = submit(ticking, {"workflow": unique, "not_before": soon})
    assert problem(refused, 409)["code"] == "workflow_paused"


def engine_cli(stack: Stack, *args: str) -> Any:
    return run_engine(stack.env, *args)


def test_the_cli_submits_a_run_to_start_in_a_while_or_at_a_time(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "only", "action": "noop"}]))
    before = utcnow()
    later = ok(engine_cli(database, "runs", "submit", unique, "--in", "10m")).strip()
    waiting = row(database, later)
    assert waiting.status == "queued" and waiting.not_before is not None
    assert before + timedelta(minutes=10) <= waiting.not_before <= utcnow() + timedelta(minutes=10)
    assert not plan_sent(database, later)

    at = (utcnow() + timedelta(hours=2)).replace(microsecond=0)
    stamped = ok(engine_cli(database, "runs", "submit", unique, "--at", rfc3339(at, 1))).strip()
    assert row(database, stamped).not_before == at and not plan_sent(database, stamped)
    listed = ok(engine_cli(database, "runs", "ls", "--workflow", unique))
    assert f"not before {timestamp(at)}" in listed

    no_offset = engine_cli(database, "runs", "submit", unique, "--at", "2030-01-01T09:00:00")
    assert no_offset.exit_code == 2 and "--at" in no_offset.output and "offset" in no_offset.output
    bad_delay = engine_cli(database, "runs", "submit", unique, "--in", "10 parsecs")
    assert bad_delay.exit_code == 2 and "--in" in bad_delay.output
    both = engine_cli(database, "runs", "submit", unique, "--in", "1h", "--at", rfc3339(at))
    assert both.exit_code == 2 and "not both" in both.output
    assert "RUN_DELAY_MAX_S" in failed(
        engine_cli(database, "runs", "submit", unique, "--in", "400d")
    )
    assert run_count(database, unique) == 2


def test_a_run_submitted_from_the_cli_in_a_while_starts_then(ticking: Stack, unique: str) -> None:
    ticking.register(spec(unique, [{"id": "only", "action": "noop"}]))
    submitted = utcnow()
    run_id = ok(engine_cli(ticking, "runs", "submit", unique, "--in", "1s")).strip()
    run = ticking.wait_finished(run_id, timeout=30)
    assert run["status"] == "succeeded"
    assert in_utc(datetime.fromisoformat(run["started_at"])) >= submitted + timedelta(seconds=1)

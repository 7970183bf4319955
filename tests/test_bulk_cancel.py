"""Cancelling every live run of a workflow at once (pause with cancel_running, engine
workflows pause --cancel-running): exactly its live runs are cancelled, a batch per
transaction, their running steps stopped as a single cancel stops them, audited once — on
SQLite and PostgreSQL."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from engine import cancels
from engine.auth import Caller
from engine.config import Settings
from engine.errors import ConfigError
from engine.models import AuditEvent, Run
from tests.conftest import spec
from tests.support import services
from tests.support.cli import ok, run_engine
from tests.support.http import fields, problem
from tests.support.stack import Stack

OPERATOR = "admin.workflows,admin.runs,runs.read"
NAP = [
    {"id": "nap", "action": "record", "with": {"sleep": 60}},
    {"id": "after", "action": "record", "needs": ["nap"]},
]


def pause(stack: Stack, name: str, scopes: str = OPERATOR, **body: Any) -> Any:
    return stack.client().post(
        f"/workflows/{name}/pause",
        json={"reason": "partner API down", **body},
        headers=stack.headers("ops@example.com", scopes),
    )


def statuses(stack: Stack, run_ids: list[str]) -> list[str]:
    with stack.sessions() as session:
        found = {row.id: row.status for row in session.execute(select(Run.id, Run.status))}
    return [found[run_id] for run_id in run_ids]


def audit_events(stack: Stack, target: str) -> list[AuditEvent]:
    with stack.sessions() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.target == target).order_by(AuditEvent.id)
            )
        )


def running(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting for its pool to reap it."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return "zombie" not in status.read()
    except FileNotFoundError:
        return False


def test_pausing_with_cancel_running_stops_every_live_run_of_the_workflow_and_no_other(
    stack: Stack, unique: str
) -> None:
    other = f"{unique}_other"
    stack.register(spec(unique, [{"id": "nap", "action": "noop"}]))
    stack.register(spec(other, [{"id": "a", "action": "record"}]))
    finished = stack.submit(unique)
    assert stack.wait_finished(finished)["status"] == "succeeded"
    stack.register(spec(unique, NAP, version=2))
    # The worker has two processes: two naps take both, so the third run waits, queued.
    busy = [stack.submit(unique), stack.submit(unique)]
    pids = [stack.pid(run_id, "nap") for run_id in busy]
    waiting = stack.submit(unique)
    bystander = stack.submit(other)
    assert statuses(stack, [waiting, bystander]) == ["queued", "queued"]

    answer = pause(stack, unique, cancel_running=True)
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["cancelled"] == 3 and answer.get_json()["paused"] is True

    for pid in pids:
        services.wait_for(lambda pid=pid: not running(pid), 20, message="a nap to be stopped")
    for run_id in [*busy, waiting]:
        run = stack.run(run_id)
        assert run["status"] == "cancelled", run
        assert run["error"] == "cancelled by ops@example.com: partner API down"
        assert {step["status"] for step in run["steps"]} <= {"cancelled"}
    assert {step["step_id"]: step["status"] for step in stack.run(busy[0])["steps"]} == {
        "nap": "cancelled",
        "after": "cancelled",
    }
    # The slots the naps held are free again: the other workflow's run goes on to its end.
    assert stack.wait_finished(bystander)["status"] == "succeeded"
    assert stack.run(finished)["status"] == "succeeded"
    assert sorted(step for _, step, _ in stack.executions(busy[0])) == ["nap"]
    assert stack.executions(waiting) == []


def test_the_live_runs_are_cancelled_a_batch_per_transaction_and_audited_once(
    database: Stack, unique: str
) -> None:
    other = f"{unique}_other"
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    database.register(spec(other, [{"id": "a", "action": "noop"}]))
    owner = database.headers("alice@example.com", "runs.write,runs.read")
    gone = database.submit(unique, headers=owner)
    assert database.client().post(f"/runs/{gone}/cancel", headers=owner).status_code == 200
    live = [database.submit(unique) for _ in range(5)]
    bystander = database.submit(other)
    caller = Caller("ops@example.com", ("admin.runs",))

    batches = cancels.cancel_workflow_runs(
        database.sessions, unique, caller, " stop it ", batch_size=2
    )
    first = next(batches)
    # The first batch is committed before the second one is read: the oldest two are
    # cancelled for every other session, the others are still queued.
    assert first.cancelled == 2 and first.work.revoke
    assert statuses(database, live) == ["cancelled"] * 2 + ["queued"] * 3
    assert audit_events(database, f"workflow:{unique}") == []
    assert [batch.cancelled for batch in batches] == [2, 1]

    assert statuses(database, [*live, bystander, gone]) == ["cancelled"] * 5 + [
        "queued",
        "cancelled",
    ]
    assert database.run(gone)["error"] == "cancelled by alice@example.com"
    [event] = audit_events(database, f"workflow:{unique}")
    assert (event.action, event.actor, event.reason) == (
        "workflow.cancel_runs",
        "ops@example.com",
        "stop it",
    )
    assert event.detail == {"cancelled": 5, "batches": 3}
    # One event for the call, none per run.
    assert [audit_events(database, f"run:{run_id}") for run_id in live] == [[]] * 5


def test_a_batch_costs_the_same_statements_whatever_its_number_of_runs(
    database: Stack, unique: str
) -> None:
    """A batch cancels its runs and their steps set-wise: its statements do not grow with
    the runs it holds, so a large backlog is stopped in seconds, not in minutes."""
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    small, large = f"{unique}_small", f"{unique}_large"
    database.register(spec(small, [{"id": "a", "action": "noop"}]))
    database.register(spec(large, [{"id": "a", "action": "noop"}]))
    for _ in range(2):
        database.submit(small)
    live = [database.submit(large) for _ in range(12)]
    caller = Caller("ops@example.com", ("admin.runs",))
    asked: list[str] = []

    def count(_c: Any, _k: Any, statement: str, *_: Any) -> None:
        asked.append(statement)

    event.listen(database.db_engine, "before_cursor_execute", count)
    try:
        statements = []
        for name in (small, large):
            asked.clear()
            [batch] = list(cancels.cancel_workflow_runs(database.sessions, name, caller, "x"))
            statements.append(len(asked))
    finally:
        event.remove(database.db_engine, "before_cursor_execute", count)
    assert batch.cancelled == 12 and len(set(batch.work.revoke)) >= 12
    assert statements[0] == statements[1]
    assert statuses(database, live) == ["cancelled"] * 12


def test_cancel_running_needs_admin_runs_and_a_refused_call_pauses_nothing(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    run_id = database.submit(unique)
    refused = problem(pause(database, unique, "admin.workflows", cancel_running=True), 403)
    assert "admin.runs" in refused["detail"] and fields(refused) == ["scopes"]
    assert fields(problem(pause(database, unique, cancel_running="yes"), 422)) == ["cancel_running"]
    reader = database.headers(scopes="workflows.read")
    shown = database.client().get(f"/workflows/{unique}", headers=reader).get_json()
    assert shown["paused"] is False
    assert statuses(database, [run_id]) == ["queued"]

    # Without cancel_running, admin.workflows alone pauses, and the live run goes on.
    plain = pause(database, unique, "admin.workflows")
    assert plain.status_code == 200 and "cancelled" not in plain.get_json()
    assert statuses(database, [run_id]) == ["queued"]
    # A workflow paused already: its live runs are cancelled all the same.
    assert pause(database, unique, cancel_running=True).get_json()["cancelled"] == 1
    assert statuses(database, [run_id]) == ["cancelled"]


def test_the_cli_pauses_and_cancels_the_live_runs_as_the_operator(
    database: Stack, unique: str
) -> None:
    other = f"{unique}_other"
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    database.register(spec(other, [{"id": "a", "action": "noop"}]))
    live = [database.submit(unique), database.submit(unique), database.submit(unique)]
    bystander = database.submit(other)
    env = {**database.env, "BULK_CANCEL_BATCH": "2"}
    output = ok(
        run_engine(env, "workflows", "pause", unique, "--reason", "bad release", "--cancel-running")
    )
    assert output.splitlines() == [f"paused {unique}", f"cancelled 3 live run(s) of {unique}"]
    assert statuses(database, [*live, bystander]) == ["cancelled"] * 3 + ["queued"]
    operator = f"cli:{getpass.getuser()}"
    actions = [(e.action, e.actor) for e in audit_events(database, f"workflow:{unique}")]
    assert actions == [("workflow.pause", operator), ("workflow.cancel_runs", operator)]
    assert audit_events(database, f"workflow:{unique}")[-1].detail == {
        "cancelled": 3,
        "batches": 2,
    }
    again = ok(run_engine(database.env, "workflows", "pause", unique, "--reason", "x"))
    assert again.strip() == f"{unique} was already paused by {operator}: bad release"


def test_a_bulk_cancel_batch_below_one_is_a_start_up_error_naming_it(tmp_path: Path) -> None:
    base = {"JWT_SECRET": "s" * 40, "ENGINE_VAR_DIR": str(tmp_path)}
    assert Settings.from_env({**base, "BULK_CANCEL_BATCH": "50"}).bulk_cancel_batch == 50
    for size in ("0", "10001"):
        with pytest.raises(ConfigError, match="BULK_CANCEL_BATCH must be from 1 to 10000"):
            Settings.from_env({**base, "BULK_CANCEL_BATCH": size})
    with pytest.raises(ConfigError, match="RETENTION_BATCH_SIZE must be from 1 to 10000"):
        Settings.from_env({**base, "RETENTION_BATCH_SIZE": "20000"})

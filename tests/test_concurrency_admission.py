"""Admission to a workflow's concurrency limit on a database alone (SQLite and PostgreSQL;
what would be sent is inspected instead of sent): the reconciler never sends a waiting run,
and a slot whose admission was lost is taken by the delay tick; submissions racing on real
connections never exceed the limit; a delayed run whose time came waits for a slot; a
workflow without a limit submits with the statements it always did. End to end with
workers: tests/test_concurrency.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, update

from engine import admission, delayed, recovery, runs
from engine.auth import Caller
from engine.models import Run, utcnow
from engine.state import RunStatus
from engine.work import plan_task_id
from tests.conftest import spec
from tests.support.cli import run_engine
from tests.support.http import fields
from tests.support.metrics import read_api_metrics
from tests.support.stack import Stack

ALICE = Caller("alice@example.com", ("runs.read", "runs.write"))
NOOP = [{"id": "a", "action": "noop"}]


@pytest.fixture
def platform(backend: str, tmp_path: Path) -> Iterator[Stack]:
    """A database of its own: a tick and the reconciler take every run of their database."""
    stack = Stack(backend, tmp_path)
    yield stack
    stack.close()


def submitted(stack: Stack, workflow: str, **options: Any) -> tuple[str, list[str]]:
    """A run submitted in a transaction of its own: its id and the plans it would send."""
    with stack.sessions.begin() as session:
        run, work, _ = runs.submit(
            session, stack.settings, runs.SubmitRun(workflow, {}, **options), ALICE
        )
    return run.id, [dispatch.task_id for dispatch in work.dispatches]


def finish(stack: Stack, run_id: str) -> None:
    """Mark a run succeeded, as a finish whose admission of the next run was lost."""
    with stack.sessions.begin() as session:
        session.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(status=RunStatus.SUCCEEDED, finished_at=utcnow())
        )


def age(stack: Stack, run_ids: list[str], by: timedelta) -> None:
    """Move the runs' times back by `by`, as they would be that much later."""
    with stack.sessions.begin() as session:
        for run_id in run_ids:
            run = session.get(Run, run_id)
            assert run is not None and run.dispatched_at is not None
            run.created_at -= by
            run.dispatched_at -= by
            if run.not_before is not None:
                run.not_before -= by


def reconciled(stack: Stack) -> set[str]:
    with stack.sessions.begin() as session:
        work = recovery.reconcile(session, stack.settings)
    return {dispatch.task_id for dispatch in work.dispatches}


def ticked(stack: Stack) -> list[str]:
    return [
        d.task_id
        for work in admission.tick(stack.sessions, stack.settings)
        for d in work.dispatches
    ]


def test_the_reconciler_never_sends_a_waiting_run_and_the_tick_admits_a_lost_admission(
    platform: Stack, unique: str
) -> None:
    platform.register(spec(unique, NOOP, concurrency=1))
    first, sent = submitted(platform, unique)
    second, unsent = submitted(platform, unique)
    assert (sent, unsent) == ([plan_task_id(first)], [])
    age(platform, [first, second], timedelta(hours=1))
    # The first run's message was lost: sent again. The second waits: never sent.
    assert reconciled(platform) == {plan_task_id(first)}
    assert ticked(platform) == []  # no slot free

    finish(platform, first)  # its finish admitted nothing (a lost nudge)
    assert reconciled(platform) == set()
    assert ticked(platform) == [plan_task_id(second)]
    assert ticked(platform) == []
    with platform.sessions() as session:
        run = session.get(Run, second)
        assert run is not None and (run.status, run.waiting) == ("queued", None)


def test_racing_submissions_on_real_connections_never_exceed_the_limit(
    platform: Stack, unique: str
) -> None:
    platform.register(spec(unique, NOOP, concurrency=2))
    racers = 8
    barrier = threading.Barrier(racers)
    results: list[tuple[str, list[str]]] = []
    errors: list[BaseException] = []

    def race() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(submitted(platform, unique))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    admitted = [run_id for run_id, sent in results if sent == [plan_task_id(run_id)]]
    assert len(results) == racers and len(admitted) == 2
    assert all(sent == [] for run_id, sent in results if run_id not in admitted)


def test_a_delayed_run_whose_time_came_waits_for_a_slot(platform: Stack, unique: str) -> None:
    platform.register(spec(unique, NOOP, concurrency=1))
    holder, _ = submitted(platform, unique)
    later, sent = submitted(platform, unique, not_before=utcnow() + timedelta(seconds=1))
    assert sent == []
    age(platform, [later], timedelta(minutes=5))
    assert ticked(platform) == []
    with platform.sessions() as session:
        run = session.get(Run, later)
        assert run is not None and (run.status, run.waiting) == ("queued", "concurrency")
        assert delayed.waiting(session) == 0
    finish(platform, holder)
    assert ticked(platform) == [plan_task_id(later)]


def test_a_workflow_without_a_limit_submits_with_the_statements_it_always_did(
    database: Stack, unique: str
) -> None:
    unlimited, limited = unique, unique + "_limited"
    database.register(spec(unlimited, NOOP))
    database.register(spec(limited, NOOP, concurrency=3))
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    counted = {}
    db_engine = database.app.extensions["engine.db"]
    for name in (unlimited, limited):
        database.submit(name)  # warms the caches a first submission fills
        event.listen(db_engine, "before_cursor_execute", record)
        try:
            database.submit(name)
        finally:
            event.remove(db_engine, "before_cursor_execute", record)
        counted[name] = list(statements)
        statements.clear()
    # Without a limit: one INSERT (and on SQLite its BEGIN IMMEDIATE), nothing more.
    begin = ["BEGIN IMMEDIATE"] if database.backend == "sqlite" else []
    assert len(counted[unlimited]) == len(begin) + 1, counted[unlimited]
    assert counted[unlimited][-1].lstrip().upper().startswith("INSERT")
    assert not any(
        "pg_advisory" in text or "waiting" in text.split("FROM")[-1] for text in counted[unlimited]
    )
    # With one: the admission's statements come on top.
    assert len(counted[limited]) > len(counted[unlimited])


def test_the_workflow_the_gauge_and_the_status_tell_how_many_runs_wait(
    platform: Stack, unique: str
) -> None:
    platform.register(spec(unique, NOOP, concurrency=1))
    submitted(platform, unique)
    waiting = [submitted(platform, unique)[0] for _ in range(2)]
    submitted(platform, unique, not_before=utcnow() + timedelta(minutes=5))
    shown = platform.client().get(f"/workflows/{unique}", headers=platform.headers())
    assert shown.status_code == 200, shown.get_json()
    assert shown.get_json()["concurrency"] == {"limit": 1, "active": 1, "waiting": 2}
    listed = platform.client().get(f"/runs?workflow={unique}", headers=platform.headers())
    assert sorted(str(item["waiting"]) for item in listed.get_json()["items"]) == [
        "None",
        "concurrency",
        "concurrency",
        "not_before",
    ]
    assert platform.run(waiting[0])["waiting"] == "concurrency"

    served = {
        line.split()[0]: float(line.split()[1])
        for line in read_api_metrics(platform.app).splitlines()
        if line.startswith("runs_waiting{")
    }
    assert served == {
        'runs_waiting{reason="concurrency"}': 2.0,
        'runs_waiting{reason="not_before"}': 1.0,
    }
    status = platform.client().get("/admin/status", headers=platform.headers(scopes="admin.*"))
    part = status.get_json()["runs_waiting"]
    assert part == {"status": "ok", "by_reason": {"concurrency": 2, "not_before": 1}}

    shown_cli = run_engine(platform.env, "workflows", "show", unique)
    assert shown_cli.exit_code == 0, shown_cli.output
    assert json.loads(shown_cli.output)["concurrency"] == {"limit": 1, "active": 1, "waiting": 2}
    listed_cli = run_engine(platform.env, "runs", "ls", "--workflow", unique)
    assert listed_cli.output.count("waiting for a slot") == 2, listed_cli.output


def test_a_concurrency_that_is_not_a_whole_number_from_1_is_refused_naming_it(
    database: Stack, unique: str
) -> None:
    for limit in (0, -1, 1.5, "2", True):
        response = database.client().post(
            "/workflows",
            json=spec(unique, NOOP, concurrency=limit),
            headers=database.headers(scopes="workflows.write"),
        )
        assert response.status_code == 422, (limit, response.get_json())
        assert "concurrency" in fields(response.get_json()), (limit, response.get_json())

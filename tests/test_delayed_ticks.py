"""The delay tick and the reconciler on delayed runs, on a database alone (SQLite and
PostgreSQL; what they would send is inspected instead of sent): due runs are sent once, the
longest due first, however many ticks run at once; the reconciler never sends a run before
its time and recovers a due one whose message was lost; the lag gauge and /admin/status;
beat's entry. Submitting and end to end: tests/test_delayed_runs.py."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text, update

import celeryconfig
from engine import cancels, delayed, pauses, recovery, runs
from engine.auth import Caller
from engine.models import Run, utcnow
from engine.work import DELAY_TASK, MANAGER_QUEUE, plan_task_id
from tests.conftest import spec
from tests.support.metrics import read_api_metrics
from tests.support.stack import Stack

ALICE = Caller("alice@example.com", ("runs.read", "runs.write"))


@pytest.fixture
def platform(backend: str, tmp_path: Path) -> Iterator[Stack]:
    """A database of its own: a tick takes every due run of its database."""
    stack = Stack(backend, tmp_path)
    yield stack
    stack.close()


def delayed_runs(stack: Stack, workflow: str, *ahead: timedelta) -> list[str]:
    """Runs submitted to start `ahead` from now: waiting, their plans unsent."""
    ids = []
    for offset in ahead:
        with stack.sessions.begin() as session:
            request = runs.SubmitRun(workflow, {}, not_before=utcnow() + offset)
            run, work, _ = runs.submit(session, stack.settings, request, ALICE)
            assert not work
            ids.append(run.id)
    return ids


def age(stack: Stack, run_ids: list[str], by: timedelta) -> None:
    """Move the runs' times back by `by`, as they would be that much later."""
    with stack.sessions.begin() as session:
        for run_id in run_ids:
            run = session.get(Run, run_id)
            assert run is not None and run.not_before is not None
            assert run.dispatched_at is not None
            run.created_at -= by
            run.not_before -= by
            run.dispatched_at -= by


def tick(stack: Stack, now: datetime, limit: int = delayed.BATCH) -> list[str]:
    """One tick's transaction at `now`: the runs whose plans it would send, in order."""
    with stack.sessions.begin() as session:
        work = delayed.start_due(session, stack.settings, now, limit)
    return [dispatch.args[0] for dispatch in work.dispatches]  # type: ignore[misc]


def reconciled(stack: Stack) -> set[str]:
    with stack.sessions.begin() as session:
        work = recovery.reconcile(session, stack.settings)
    return {dispatch.task_id for dispatch in work.dispatches}


def test_a_tick_sends_the_due_runs_once_the_longest_due_first(platform: Stack, unique: str) -> None:
    platform.register(spec(unique, [{"id": "a", "action": "noop"}]))
    minute = timedelta(minutes=1)
    later, first, second, third = delayed_runs(
        platform, unique, 90 * minute, 3 * minute, 5 * minute, 4 * minute
    )
    now = utcnow() + 10 * minute

    assert tick(platform, utcnow()) == []  # none due yet
    assert tick(platform, now, limit=2) == [first, third]
    assert tick(platform, now) == [second]
    assert tick(platform, now) == []  # sent once
    with platform.sessions() as session:
        sent = session.get(Run, first)
        waiting = session.get(Run, later)
        assert sent is not None and waiting is not None
        assert (sent.status, sent.dispatched_at) == ("queued", now)
        assert waiting.dispatched_at == waiting.not_before
    assert tick(platform, now + 90 * minute) == [later]


def test_a_tick_sends_a_plan_message_like_a_submissions(platform: Stack, unique: str) -> None:
    platform.register(spec(unique, [{"id": "a", "action": "noop", "timeout_s": 42}]))
    [run_id] = delayed_runs(platform, unique, timedelta(minutes=1))
    with platform.sessions.begin() as session:
        work = delayed.start_due(session, platform.settings, utcnow() + timedelta(minutes=2))
    [message] = work.dispatches
    assert (message.task_id, message.queue, message.args) == (
        plan_task_id(run_id),
        MANAGER_QUEUE,
        (run_id, unique, 1),
    )
    assert message.soft_time_limit is not None and message.soft_time_limit >= 42


def test_the_reconciler_never_sends_a_run_before_its_not_before(
    platform: Stack, unique: str
) -> None:
    platform.register(spec(unique, [{"id": "a", "action": "noop"}]))
    ahead, stamped_long_ago = delayed_runs(
        platform, unique, timedelta(seconds=5), timedelta(minutes=5)
    )
    # Whatever its dispatch stamp says (an old one here), a run not yet due stays unsent.
    with platform.sessions.begin() as session:
        session.execute(
            update(Run)
            .where(Run.id == stamped_long_ago)
            .values(dispatched_at=utcnow() - timedelta(hours=1))
        )
    hurried = platform.settings.with_changes(dispatch_grace_s=0.001)
    with platform.sessions.begin() as session:
        work = recovery.reconcile(session, hurried)
    assert not {plan_task_id(ahead), plan_task_id(stamped_long_ago)} & {
        d.task_id for d in work.dispatches
    }


def test_the_reconciler_sends_a_due_run_whose_message_was_lost_or_never_sent(
    platform: Stack, unique: str
) -> None:
    platform.register(spec(unique, [{"id": "a", "action": "noop"}]))
    lost, unticked, just_due = delayed_runs(
        platform, unique, timedelta(minutes=1), timedelta(minutes=1), timedelta(minutes=1)
    )
    age(platform, [lost, unticked], timedelta(minutes=10))
    age(platform, [just_due], timedelta(minutes=1, seconds=1))
    # A tick five minutes ago sent `lost`, whose message the broker then lost.
    assert tick(platform, utcnow() - timedelta(minutes=5), limit=1) == [lost]

    # `unticked`: no tick came (beat down) and it is past DISPATCH_GRACE_S; `just_due`
    # is left to the tick for now.
    assert reconciled(platform) == {plan_task_id(lost), plan_task_id(unticked)}
    assert reconciled(platform) == set()  # each sent once
    assert tick(platform, utcnow()) == [just_due]


def test_two_ticks_at_once_send_each_due_run_once(platform: Stack, unique: str) -> None:
    platform.register(spec(unique, [{"id": "a", "action": "noop"}]))
    run_ids = delayed_runs(platform, unique, *[timedelta(minutes=1)] * 120)
    now = utcnow() + timedelta(minutes=2)
    start = threading.Barrier(4)
    sent: list[str] = []
    failures: list[BaseException] = []

    def beat() -> None:
        try:
            start.wait()
            while batch := tick(platform, now, limit=7):
                sent.extend(batch)
        except BaseException as exc:  # reported below
            failures.append(exc)

    ticks = [threading.Thread(target=beat) for _ in range(4)]
    for thread in ticks:
        thread.start()
    for thread in ticks:
        thread.join(120)
    assert failures == []
    assert Counter(sent) == Counter(run_ids)


def test_on_postgresql_a_tick_skips_the_runs_another_tick_holds(
    platform: Stack, unique: str
) -> None:
    if platform.backend != "postgres":
        pytest.skip("SQLite's writers take turns: a second tick waits for the first")
    platform.register(spec(unique, [{"id": "a", "action": "noop"}]))
    run_ids = delayed_runs(platform, unique, *[timedelta(minutes=1)] * 4)
    now = utcnow() + timedelta(minutes=2)
    with platform.sessions.begin() as holding:
        first = delayed.start_due(holding, platform.settings, now, limit=2)
        with platform.sessions.begin() as second_tick:
            # Waiting for the first tick's rows would fail here instead of hanging.
            second_tick.execute(text("SET LOCAL lock_timeout = '2s'"))
            second = delayed.start_due(second_tick, platform.settings, now)
    ids = [[d.args[0] for d in work.dispatches] for work in (first, second)]
    assert ids == [run_ids[:2], run_ids[2:]]


def test_a_cancelled_or_paused_waiting_run(platform: Stack, unique: str) -> None:
    """Cancelled while it waits: never sent. Its workflow paused: sent when due, as the
    workflow's queued runs go on (engine.pauses)."""
    platform.register(spec(unique, [{"id": "a", "action": "noop"}]))
    cancelled, paused = delayed_runs(platform, unique, timedelta(minutes=1), timedelta(minutes=1))
    with platform.sessions.begin() as session:
        cancels.cancel(session, platform.settings, cancelled, ALICE)
        pauses.pause(session, unique, "drill", "ops@example.com")
    age(platform, [cancelled, paused], timedelta(minutes=10))
    assert tick(platform, utcnow()) == [paused]
    assert plan_task_id(cancelled) not in reconciled(platform)


def test_the_lag_is_how_long_the_most_overdue_waiting_run_has_waited_past_its_time(
    platform: Stack, unique: str
) -> None:
    platform.register(spec(unique, [{"id": "a", "action": "noop"}]))

    def lag(now: datetime) -> float:
        with platform.sessions() as session:
            return delayed.lag_seconds(session, now)

    def waiting() -> int:
        with platform.sessions() as session:
            return delayed.waiting(session)

    assert (lag(utcnow()), waiting()) == (0.0, 0)
    soon, later = delayed_runs(platform, unique, timedelta(minutes=1), timedelta(minutes=3))
    with platform.sessions() as session:
        due = session.get(Run, soon)
        assert due is not None and due.not_before is not None
        at = due.not_before
    assert lag(at - timedelta(seconds=5)) == 0.0  # none due yet
    assert lag(at + timedelta(seconds=30)) == pytest.approx(30.0)
    assert waiting() == 2
    assert tick(platform, at + timedelta(seconds=30)) == [soon]
    assert lag(at + timedelta(seconds=30)) == 0.0 and waiting() == 1

    age(platform, [later], timedelta(minutes=4))  # a minute overdue now
    [served] = [
        line
        for line in read_api_metrics(platform.app).splitlines()
        if line.startswith("delayed_run_lag_seconds ")
    ]
    assert float(served.split()[1]) == pytest.approx(60.0, abs=5.0)
    status = platform.client().get("/admin/status", headers=platform.headers(scopes="admin.*"))
    part = status.get_json()["delayed_runs"]
    assert part["status"] == "ok" and part["waiting"] == 1
    assert part["lag_s"] == pytest.approx(60.0, abs=5.0)


def test_beat_ticks_the_delayed_runs_every_run_delay_tick_s(platform: Stack) -> None:
    settings = platform.settings.with_changes(run_delay_tick_s=0.5, dispatch_grace_s=20.0)
    entry = celeryconfig.build(settings)["beat_schedule"]["delayed_runs"]
    assert entry["task"] == DELAY_TASK == "manager.start_delayed"
    assert entry["schedule"] == 0.5
    # A tick still in the queue within DISPATCH_GRACE_S is of use: the reconciler waits that.
    assert entry["options"] == {"queue": MANAGER_QUEUE, "expires": 20.0}

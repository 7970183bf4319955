"""Firing schedules (engine.schedules.firing) at chosen times on SQLite and PostgreSQL: one
run per fire time however often or concurrently it is ticked, missed fires skipped but the
latest, pause and resume, the creator's authority, a DST change, and the beat entry."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, update

import celeryconfig
from engine import pauses
from engine.auth import Caller
from engine.models import Run
from engine.schedules import firing, manage, timing
from engine.schedules.models import Schedule
from engine.work import MANAGER_QUEUE, SCHEDULE_TASK
from tests.conftest import spec
from tests.support.stack import Stack

T0 = datetime(2026, 6, 1, 12, 0, 30, tzinfo=UTC)
ALICE = Caller("alice@example.com", ("runs.write", "runs.read", "schedules.write"))


pytestmark = pytest.mark.usefixtures("no_other_schedules")


def create(
    database: Stack,
    unique: str,
    cron: str = "*/5 * * * *",
    now: datetime = T0,
    caller: Caller = ALICE,
    **options: object,
) -> str:
    with database.sessions.begin() as session:
        request = manage.NewSchedule(unique, unique, cron, **options)  # type: ignore[arg-type]
        return manage.create(session, database.settings, request, caller, now).id


def tick(database: Stack, now: datetime) -> firing.Fired:
    """A tick as the beat task runs it: committed, then its counts added."""
    with database.sessions.begin() as session:
        fired = firing.fire_due(session, database.settings, now)
    fired.work.count_committed()
    return fired


def schedule(database: Stack, schedule_id: str) -> Schedule:
    with database.sessions() as session:
        found = session.get(Schedule, schedule_id)
        assert found is not None
        session.expunge(found)
        return found


def runs_of(database: Stack, workflow: str) -> list[Run]:
    with database.sessions() as session:
        found = session.scalars(select(Run).where(Run.workflow == workflow)).all()
        session.expunge_all()
        return list(found)


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_schedule_fires_at_its_first_time_after_creation_and_moves_to_the_next(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    schedule_id = create(database, unique)
    created = schedule(database, schedule_id)
    assert created.next_fire_at == datetime(2026, 6, 1, 12, 5, tzinfo=UTC)

    assert tick(database, datetime(2026, 6, 1, 12, 4, 59, tzinfo=UTC)).runs == {}
    fired = tick(database, datetime(2026, 6, 1, 12, 5, 2, tzinfo=UTC))
    [run] = runs_of(database, unique)
    assert fired.runs == {unique: run.id}
    assert [dispatch.args[0] for dispatch in fired.work.dispatches] == [run.id]
    assert run.status == "queued"
    assert run.idempotency_key == firing.idempotency_key(
        schedule_id, datetime(2026, 6, 1, 12, 5, tzinfo=UTC)
    )
    after = schedule(database, schedule_id)
    assert after.last_fired_at == datetime(2026, 6, 1, 12, 5, tzinfo=UTC)
    assert after.next_fire_at == datetime(2026, 6, 1, 12, 10, tzinfo=UTC)
    assert after.last_run_id == run.id and after.last_error is None


def test_a_fire_time_ticked_twice_or_by_a_stale_second_beat_submits_one_run(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    schedule_id = create(database, unique)
    due = datetime(2026, 6, 1, 12, 5, tzinfo=UTC)
    duplicates = counted("schedule_fires_total", outcome="duplicate")

    first = tick(database, due)
    assert tick(database, due).runs == {}  # already moved on
    # A second beat that read the schedule before the first moved it fires the same time.
    with database.sessions.begin() as session:
        session.execute(update(Schedule).where(Schedule.id == schedule_id).values(next_fire_at=due))
    again = tick(database, due + timedelta(seconds=3))

    [run] = runs_of(database, unique)
    assert first.runs == again.runs == {unique: run.id}
    assert again.work.dispatches == []  # nothing new to send
    assert counted("schedule_fires_total", outcome="duplicate") == duplicates + 1


def test_ticks_at_the_same_moment_in_parallel_submit_one_run(database: Stack, unique: str) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    create(database, unique)
    due = datetime(2026, 6, 1, 12, 5, 1, tzinfo=UTC)
    start = threading.Barrier(4)
    results: list[firing.Fired] = []
    failures: list[BaseException] = []

    def beat() -> None:
        try:
            start.wait()
            results.append(tick(database, due))
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=beat) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    [run] = runs_of(database, unique)
    assert {result.runs.get(unique) for result in results} <= {run.id, None}


def test_fires_missed_while_nothing_ticked_submit_one_run_for_the_latest_and_count_the_rest(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    schedule_id = create(database, unique)
    skipped = counted("schedule_fires_skipped_total")
    # Beat was down from 12:04 to 14:03: fires 12:05 ... 14:00 were due, 24 of them.
    fired = tick(database, datetime(2026, 6, 1, 14, 3, tzinfo=UTC))

    [run] = runs_of(database, unique)
    assert fired.skipped == 23
    assert counted("schedule_fires_skipped_total") == skipped + 23
    assert run.idempotency_key == firing.idempotency_key(
        schedule_id, datetime(2026, 6, 1, 14, 0, tzinfo=UTC)
    )
    after = schedule(database, schedule_id)
    assert after.last_fired_at == datetime(2026, 6, 1, 14, 0, tzinfo=UTC)
    assert after.next_fire_at == datetime(2026, 6, 1, 14, 5, tzinfo=UTC)


def test_a_paused_schedule_does_not_fire_and_resumes_from_now_without_a_burst(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    schedule_id = create(database, unique)
    with database.sessions.begin() as session:
        assert not manage.pause(session, unique, ALICE).enabled
    assert schedule(database, schedule_id).next_fire_at is None
    assert tick(database, datetime(2026, 6, 1, 18, 0, tzinfo=UTC)).runs == {}

    resumed_at = datetime(2026, 6, 2, 9, 1, tzinfo=UTC)
    with database.sessions.begin() as session:
        manage.resume(session, schedule_id, ALICE, resumed_at)
    assert schedule(database, schedule_id).next_fire_at == datetime(2026, 6, 2, 9, 5, tzinfo=UTC)
    assert tick(database, resumed_at + timedelta(minutes=1)).runs == {}
    fired = tick(database, datetime(2026, 6, 2, 9, 5, 1, tzinfo=UTC))
    assert fired.skipped == 0 and len(runs_of(database, unique)) == 1


def test_a_deleted_schedule_fires_no_more(database: Stack, unique: str) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    create(database, unique)
    with database.sessions.begin() as session:
        manage.delete(session, unique, ALICE)
    assert tick(database, datetime(2026, 6, 1, 13, 0, tzinfo=UTC)).runs == {}
    assert runs_of(database, unique) == []


def test_a_scheduled_run_acts_as_the_schedules_creator_with_the_creators_scopes(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    creator = Caller(f"{unique}@example.com", ("runs.write", "admin.life"))
    create(database, unique, caller=creator, params={}, priority=7)
    tick(database, datetime(2026, 6, 1, 12, 5, tzinfo=UTC))
    [run] = runs_of(database, unique)
    assert run.created_by == creator.sub
    assert run.created_scopes == ["runs.write", "admin.life"]
    assert run.priority == 7


def test_a_schedule_whose_workflow_no_longer_takes_its_params_says_why_and_moves_on(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    schedule_id = create(database, unique, params={"who": "ada"})
    strict = {"type": "object", "additionalProperties": False}
    database.register(spec(unique, [{"id": "a", "action": "noop"}], version=2, params=strict))
    refused = counted("schedule_fires_total", outcome="refused")

    assert tick(database, datetime(2026, 6, 1, 12, 5, tzinfo=UTC)).runs == {}
    after = schedule(database, schedule_id)
    assert "InvalidParams" in (after.last_error or "")
    assert after.next_fire_at == datetime(2026, 6, 1, 12, 10, tzinfo=UTC)
    assert counted("schedule_fires_total", outcome="refused") == refused + 1
    assert runs_of(database, unique) == []


def test_a_paused_workflows_schedule_submits_nothing_says_why_and_fires_again_once_resumed(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    schedule_id = create(database, unique)
    with database.sessions.begin() as session:
        pauses.pause(session, unique, "partner API down", "ops@example.com")
    refused = counted("schedule_fires_total", outcome="refused")
    paused = counted("schedule_fires_total", outcome="paused")

    assert tick(database, datetime(2026, 6, 1, 12, 5, tzinfo=UTC)).runs == {}
    after = schedule(database, schedule_id)
    assert "WorkflowPaused" in (after.last_error or "")
    assert "partner API down" in (after.last_error or "")
    assert after.next_fire_at == datetime(2026, 6, 1, 12, 10, tzinfo=UTC)
    assert counted("schedule_fires_total", outcome="paused") == paused + 1
    assert counted("schedule_fires_total", outcome="refused") == refused  # no alert
    assert runs_of(database, unique) == []

    with database.sessions.begin() as session:
        pauses.resume(session, unique, "ops@example.com")
    assert unique in tick(database, datetime(2026, 6, 1, 12, 10, tzinfo=UTC)).runs
    assert len(runs_of(database, unique)) == 1
    assert schedule(database, schedule_id).last_error is None


def test_a_daily_schedule_keeps_its_local_time_across_a_dst_change(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    # Berlin moves from CET (UTC+1) to CEST (UTC+2) on 29 March 2026 at 02:00 local.
    before = datetime(2026, 3, 27, 12, 0, tzinfo=UTC)
    schedule_id = create(database, unique, "0 9 * * *", before, timezone="Europe/Berlin")
    assert schedule(database, schedule_id).next_fire_at == datetime(2026, 3, 28, 8, 0, tzinfo=UTC)
    tick(database, datetime(2026, 3, 28, 8, 0, tzinfo=UTC))
    assert schedule(database, schedule_id).next_fire_at == datetime(2026, 3, 29, 7, 0, tzinfo=UTC)
    tick(database, datetime(2026, 3, 29, 7, 0, tzinfo=UTC))
    assert schedule(database, schedule_id).next_fire_at == datetime(2026, 3, 30, 7, 0, tzinfo=UTC)
    assert len(runs_of(database, unique)) == 2
    # A time the change skips (02:30 on 29 March) fires at the first time after the gap.
    skipped_hour = timing.next_after("30 2 * * *", "Europe/Berlin", before + timedelta(days=1))
    assert skipped_hour == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)  # 03:00 CEST


def fires_between(expression: str, start: datetime, end: datetime) -> list[datetime]:
    """The fire times of `expression` in Berlin from `start` to `end`, one after another."""
    found, moment = [], start
    while (moment := timing.next_after(expression, "Europe/Berlin", moment)) < end:
        found.append(moment)
    return found


def test_a_time_a_fall_back_repeats_fires_once_unless_the_hour_is_a_wildcard() -> None:
    # Berlin goes back from CEST (UTC+2) to CET (UTC+1) on 26 October 2025 at 03:00 local:
    # 02:00-02:59 happens twice.
    start = datetime(2025, 10, 25, 12, 0, tzinfo=UTC)
    end = datetime(2025, 10, 27, 12, 0, tzinfo=UTC)
    assert fires_between("30 2 * * *", start, end) == [
        datetime(2025, 10, 26, 0, 30, tzinfo=UTC),  # 02:30 CEST, the first 02:30
        datetime(2025, 10, 27, 1, 30, tzinfo=UTC),  # 02:30 CET the next day
    ]
    assert len(fires_between("@daily", start, end)) == 2
    # A wildcard hour fires in both 02:30s, as cron does: it is every half hour of real time.
    repeated = fires_between(
        "30 * * * *",
        datetime(2025, 10, 25, 23, 0, tzinfo=UTC),
        datetime(2025, 10, 26, 2, 0, tzinfo=UTC),
    )
    assert repeated == [
        datetime(2025, 10, 25, 23, 30, tzinfo=UTC),
        datetime(2025, 10, 26, 0, 30, tzinfo=UTC),
        datetime(2025, 10, 26, 1, 30, tzinfo=UTC),
    ]


def test_the_beat_schedule_ticks_the_schedules_task_every_schedule_tick(database: Stack) -> None:
    settings = database.settings.with_changes(schedule_tick_s=7.0)
    entry = celeryconfig.build(settings)["beat_schedule"]["schedules"]
    assert entry["task"] == SCHEDULE_TASK == "schedules.fire"
    assert entry["schedule"] == 7.0
    assert entry["options"]["queue"] == MANAGER_QUEUE


def test_schedule_lag_is_how_long_the_most_overdue_enabled_schedule_has_waited(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    assert lag(database, T0) == 0.0  # no schedule at all
    create(database, unique)  # next fire 12:05
    with database.sessions.begin() as session:
        every_minute = manage.NewSchedule(f"{unique}_paused", unique, "* * * * *")
        manage.create(session, database.settings, every_minute, ALICE, T0)
        manage.pause(session, every_minute.name, ALICE)

    assert lag(database, datetime(2026, 6, 1, 12, 4, tzinfo=UTC)) == 0.0
    # Nothing ticked since 12:05 (beat down): the lag grows; the paused one is left out.
    assert lag(database, datetime(2026, 6, 1, 12, 7, 30, tzinfo=UTC)) == 150.0
    tick(database, datetime(2026, 6, 1, 12, 7, 30, tzinfo=UTC))
    assert lag(database, datetime(2026, 6, 1, 12, 7, 31, tzinfo=UTC)) == 0.0


def test_the_api_metrics_serve_the_schedule_lag(database: Stack, unique: str) -> None:
    from tests.support.metrics import read_api_metrics
    from web import create_app

    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    schedule_id = create(database, unique, now=datetime.now(UTC))
    overdue = datetime.now(UTC) - timedelta(minutes=10)
    with database.sessions.begin() as session:
        session.execute(
            update(Schedule).where(Schedule.id == schedule_id).values(next_fire_at=overdue)
        )
    text = read_api_metrics(create_app(database.settings))
    [served] = [line for line in text.splitlines() if line.startswith("schedule_lag_seconds ")]
    assert 600 <= float(served.split()[1]) < 900


def lag(database: Stack, now: datetime) -> float:
    with database.sessions() as session:
        return firing.lag_seconds(session, now)

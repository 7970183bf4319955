"""Retention: finished runs older than a cutoff go, with their steps and resolved dead
letters, in batches; what an operator or a worker still needs stays (SQLite and PostgreSQL)."""

from __future__ import annotations

import getpass
import threading
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, event, func, select

import celeryconfig
from engine import retention
from engine.config import Settings
from engine.errors import ConfigError
from engine.life.models import WellnessEntry
from engine.models import AuditEvent, DeadLetter, Run, Step, utcnow
from engine.retention import Pruned
from engine.work import PRUNE_INTERVAL_S, PRUNE_TASK
from tests.conftest import spec
from tests.support import services
from tests.support.cli import ok, run_engine
from tests.support.stack import Stack
from workers.factory import make_celery

LONG_AGO = utcnow() - timedelta(days=400)
CUTOFF = timedelta(days=30)


@pytest.fixture
def platform(backend: str, tmp_path: Path) -> Iterator[Stack]:
    """A database of its own: the counts a prune reports are this test's alone."""
    stack = Stack(backend, tmp_path)
    yield stack
    stack.close()


def add_run(
    stack: Stack,
    status: str,
    *,
    finished: bool = True,
    steps: tuple[str, ...] = ("succeeded",),
    letters: tuple[str, ...] = (),
    at: Any = LONG_AGO,
) -> str:
    """A run row with its steps (by status) and dead letters (by status), as the platform
    leaves them."""
    with stack.sessions.begin() as session:
        run = Run(
            workflow="retention",
            version=1,
            params={},
            status=status,
            created_by="alice@example.com",
            created_at=at,
            started_at=at,
            finished_at=at if finished else None,
        )
        session.add(run)
        session.flush()
        for position, step_status in enumerate(steps):
            session.add(
                Step(
                    run_id=run.id,
                    step_id=f"s{position}",
                    position=position,
                    action="noop",
                    status=step_status,
                    timeout_s=30.0,
                )
            )
        for letter_status in letters:
            session.add(
                DeadLetter(
                    task_name="steps.execute",
                    queue="steps",
                    run_id=run.id,
                    step_id="s0",
                    exception_type="RuntimeError",
                    fingerprint="f" * 64,
                    status=letter_status,
                    failed_at=at,
                )
            )
        return run.id


def add_letter(
    stack: Stack, status: str, *, run_id: str | None = None, resolved_at: Any = LONG_AGO
) -> str:
    """A dead letter failed long ago, resolved at `resolved_at` unless it is open."""
    with stack.sessions.begin() as session:
        letter = DeadLetter(
            task_name="manager.plan_run",
            queue="manager",
            run_id=run_id,
            exception_type="RuntimeError",
            fingerprint="e" * 64,
            status=status,
            failed_at=LONG_AGO,
            resolved_by=None if status == "open" else "alice@example.com",
            resolved_at=None if status == "open" else resolved_at,
        )
        session.add(letter)
        session.flush()
        return letter.id


def gone_run(stack: Stack) -> str:
    """The id of a run that no longer exists (dead letters name their run without a key)."""
    run_id = add_run(stack, "failed", steps=())
    with stack.sessions.begin() as session:
        session.execute(delete(Run).where(Run.id == run_id))
    return run_id


def letter_ids(stack: Stack) -> set[str]:
    with stack.sessions() as session:
        return set(session.scalars(select(DeadLetter.id)))


def remaining(stack: Stack, model: type, *where: Any) -> int:
    with stack.sessions() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def run_ids(stack: Stack) -> set[str]:
    with stack.sessions() as session:
        return set(session.scalars(select(Run.id)))


def test_finished_runs_older_than_the_cutoff_go_with_their_steps_and_resolved_letters(
    platform: Stack,
) -> None:
    gone = [
        add_run(platform, "succeeded", steps=("succeeded", "succeeded")),
        add_run(platform, "failed", steps=("dead",), letters=("discarded", "replayed")),
        add_run(platform, "cancelled", steps=("cancelled",)),
    ]
    open_letter = add_run(platform, "failed", steps=("dead",), letters=("open",))
    live_step = add_run(platform, "failed", steps=("dead", "running"), letters=("discarded",))
    running = add_run(platform, "running", finished=False, steps=("running",))
    queued = add_run(platform, "queued", finished=False, steps=())
    recent = add_run(platform, "succeeded", at=utcnow() - timedelta(days=2))
    with platform.sessions.begin() as session:
        session.add(
            WellnessEntry(
                subject="alice@example.com", day=date(2020, 1, 1), run_id=gone[0], step_id="s0"
            )
        )
        session.add(AuditEvent(actor="x", action="run.cancel", target="run", at=LONG_AGO))
    before = retention.metrics.runs_pruned_total._value.get()

    pruned = retention.prune(platform.sessions, utcnow() - CUTOFF, 500)

    assert pruned == Pruned(runs=3, steps=4, dead_letters=2)
    assert run_ids(platform) == {open_letter, live_step, running, queued, recent}
    assert remaining(platform, Step, Step.run_id.in_(gone)) == 0
    assert remaining(platform, DeadLetter, DeadLetter.run_id.in_(gone)) == 0
    assert remaining(platform, DeadLetter, DeadLetter.run_id == live_step) == 1
    # The user's own records and the audit trail stay.
    assert remaining(platform, WellnessEntry, WellnessEntry.run_id == gone[0]) == 1
    assert remaining(platform, AuditEvent) == 1
    assert retention.metrics.runs_pruned_total._value.get() == before + 3
    # The open letter is still listed, and nothing is left to prune.
    listed = platform.client().get(
        "/admin/dlq", query_string={"status": "open"}, headers=platform.headers(scopes="admin.*")
    )
    assert [letter["run_id"] for letter in listed.get_json()["items"]] == [open_letter]
    assert retention.prune(platform.sessions, utcnow() - CUTOFF, 500) == Pruned()


def test_resolved_letters_whose_run_is_gone_or_that_had_none_go_too_open_ones_stay(
    platform: Stack,
) -> None:
    gone = [
        add_letter(platform, "discarded"),
        add_letter(platform, "replayed", run_id=gone_run(platform)),
        add_letter(platform, "discarded", run_id=gone_run(platform)),
    ]
    kept = {
        add_letter(platform, "open"),
        add_letter(platform, "open", run_id=gone_run(platform)),
        # Resolved within the retention, though it failed long ago.
        add_letter(platform, "discarded", resolved_at=utcnow() - timedelta(days=2)),
        # Its run is kept (finished recently): the letter stays with it.
        add_letter(platform, "discarded", run_id=add_run(platform, "failed", at=utcnow())),
    }
    cutoff = utcnow() - CUTOFF
    with platform.sessions() as session:
        assert retention.count_prunable(session, cutoff) == Pruned(dead_letters=3)
    assert letter_ids(platform) == kept | set(gone)

    assert retention.prune(platform.sessions, cutoff, 2) == Pruned(dead_letters=3)
    assert letter_ids(platform) == kept
    with platform.sessions() as session:
        assert retention.count_prunable(session, cutoff) == Pruned()


def test_a_small_batch_deletes_everything_eligible_across_several_transactions(
    platform: Stack,
) -> None:
    old = [add_run(platform, "succeeded") for _ in range(7)]
    kept = add_run(platform, "failed", letters=("open",))
    commits: list[int] = []
    event.listen(platform.db_engine, "commit", lambda _connection: commits.append(1))

    pruned = retention.prune(platform.sessions, utcnow() - CUTOFF, 2)

    assert pruned == Pruned(runs=7, steps=7)
    assert run_ids(platform) == {kept}
    assert len(commits) == 5  # 2 + 2 + 2 + 1, then the letters left with no run: none
    assert remaining(platform, Step, Step.run_id.in_(old)) == 0


def test_audit_events_go_only_when_an_audit_retention_is_given(platform: Stack) -> None:
    with platform.sessions.begin() as session:
        for at in (LONG_AGO, LONG_AGO, utcnow()):
            session.add(AuditEvent(actor="x", action="dlq.discard", target="t", at=at))
    assert retention.prune(platform.sessions, utcnow() - CUTOFF, 500).audit_events == 0
    pruned = retention.prune(
        platform.sessions, None, 1, audit_cutoff=utcnow() - timedelta(days=365)
    )
    assert pruned == Pruned(audit_events=2)
    assert remaining(platform, AuditEvent) == 1


def test_two_prunes_at_once_delete_each_run_once_and_neither_fails(platform: Stack) -> None:
    for _ in range(40):
        add_run(platform, "succeeded", steps=("succeeded", "skipped"))
    results: list[Pruned] = []
    errors: list[BaseException] = []

    def prune() -> None:
        try:
            results.append(retention.prune(platform.sessions, utcnow() - CUTOFF, 3))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=prune) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert sum(results, Pruned()) == Pruned(runs=40, steps=80)
    assert run_ids(platform) == set()


def test_the_cli_dry_run_counts_and_changes_nothing_then_the_prune_is_audited(
    platform: Stack,
) -> None:
    add_run(platform, "succeeded", steps=("succeeded", "succeeded"))
    add_run(platform, "failed", steps=("dead",), letters=("discarded",))
    kept = add_run(platform, "failed", steps=("dead",), letters=("open",))
    add_letter(platform, "discarded", run_id=gone_run(platform))
    env = {**platform.env, "RETENTION_BATCH_SIZE": "1"}

    out = ok(run_engine(env, "db", "prune", "--older-than", "30d", "--dry-run"))
    assert out.startswith("would delete 2 run(s) finished before ")
    assert out.rstrip().endswith("with 3 step(s) and 2 resolved dead letter(s)")
    assert len(run_ids(platform)) == 3
    assert len(letter_ids(platform)) == 3
    assert remaining(platform, AuditEvent) == 0

    out = ok(run_engine(env, "db", "prune", "--older-than", "30d"))
    assert out.startswith("deleted 2 run(s) finished before ")
    assert out.rstrip().endswith("with 3 step(s) and 2 resolved dead letter(s)")
    assert run_ids(platform) == {kept}
    assert remaining(platform, DeadLetter) == 1
    with platform.sessions() as session:
        audited = session.scalars(select(AuditEvent)).one()
    assert (audited.actor, audited.action, audited.target) == (
        f"cli:{getpass.getuser()}",
        "db.prune",
        "runs",
    )
    assert audited.detail["runs"] == 2 and audited.detail["steps"] == 3

    for bad in ("0d", "forever", "-3d"):
        refused = run_engine(env, "db", "prune", "--older-than", bad)
        assert refused.exit_code == 2 and "--older-than" in refused.output, refused.output


def test_a_worker_runs_the_prune_task_while_it_keeps_running_steps(platform: Stack) -> None:
    old = add_run(platform, "succeeded")
    open_letter = add_run(platform, "failed", steps=("dead",), letters=("open",))
    platform.start_worker(env={"RUN_RETENTION_DAYS": "30", "RETENTION_BATCH_SIZE": "1"})
    name = "retention_live"
    platform.register(spec(name, [{"id": "a", "action": "noop"}, {"id": "b", "action": "noop"}]))
    live = platform.submit(name)

    sender = make_celery(platform.settings)
    try:
        sender.send_task(PRUNE_TASK, queue="default")
    finally:
        sender.close()

    services.wait_for(lambda: old not in run_ids(platform), 60, message="the prune")
    assert platform.wait_finished(live)["status"] == "succeeded"
    assert {open_letter, live} <= run_ids(platform)


def test_beat_schedules_the_prune_only_when_a_retention_is_set(tmp_path: Path) -> None:
    base = {"JWT_SECRET": "s" * 40, "ENGINE_VAR_DIR": str(tmp_path)}
    off = celeryconfig.build(Settings.from_env(base))["beat_schedule"]
    assert set(off) == {"reconcile", "schedules", "delayed_runs", "webhooks"}
    for setting in ("RUN_RETENTION_DAYS", "AUDIT_RETENTION_DAYS"):
        on = celeryconfig.build(Settings.from_env({**base, setting: "90"}))["beat_schedule"]
        assert on["prune"]["task"] == "maintenance.prune"
        assert on["prune"]["schedule"] == PRUNE_INTERVAL_S
        assert set(on) == {"reconcile", "schedules", "delayed_runs", "webhooks", "prune"}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RUN_RETENTION_DAYS", "-1"),
        ("RUN_RETENTION_DAYS", "thirty"),
        ("RUN_RETENTION_DAYS", "nan"),
        ("AUDIT_RETENTION_DAYS", "-5"),
        ("AUDIT_RETENTION_DAYS", "1e9"),
        ("RETENTION_BATCH_SIZE", "0"),
    ],
)
def test_a_bad_retention_setting_is_a_start_up_error_naming_it(
    tmp_path: Path, name: str, value: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"JWT_SECRET": "s" * 40, "ENGINE_VAR_DIR": str(tmp_path), name: value})
    assert name in str(refused.value)

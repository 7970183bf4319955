"""Recovery from lost work, drilled on real processes: kill -9 of a worker child and of a
whole worker, a flushed broker, a broker restarted without its data, and a step that kills
its worker on every attempt; each drill on a private redis-server of its own. Then the
recovery use cases on a database alone: two reconcilers at once, the delivery cap reached
through an expired lease, messages that carry another attempt. Steps left in finished
runs: tests/test_leftovers.py."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import timedelta
from functools import partial
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select, update

from engine import (
    attempts,
    claims,
    lost_attempts,
    outcomes,
    planning,
    recovery,
    resume,
    runs,
    workflows,
)
from engine.auth import Caller
from engine.models import DeadLetter, Run, Step, utcnow
from engine.queues import QueueLayout
from engine.work import MANAGER_QUEUE, Work, plan_task_id
from tests.conftest import spec
from tests.support import services
from tests.support.services import process_alive as alive
from tests.support.services import wait_for
from tests.support.stack import Stack, private_stack
from workers import broker

# Short recovery clocks, so a drill takes seconds.
DRILL_ENV = {"RECONCILE_INTERVAL_S": "1", "DISPATCH_GRACE_S": "2", "LEASE_GRACE_S": "1"}
FAST_RETRY = {"max_attempts": 3, "backoff_s": 0.05, "max_backoff_s": 0.1}


@pytest.fixture
def drill(backend: str, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Make a private stack (own redis-server, own database) with the drill's settings."""
    with ExitStack() as stacks:

        def make(**env: str) -> Stack:
            platform, _ = stacks.enter_context(
                private_stack(backend, tmp_path / "stack", {**DRILL_ENV, **env})
            )
            return platform

        yield make


def statuses(stack: Stack, run_ids: list[str]) -> Counter[str]:
    with stack.sessions() as session:
        rows = session.execute(
            select(Run.status, func.count()).where(Run.id.in_(run_ids)).group_by(Run.status)
        )
        return Counter({status: count for status, count in rows})


@pytest.mark.parametrize("position", ["inline", "sent"])
def test_a_worker_child_killed_mid_step_loses_nothing_and_the_step_runs_again(
    drill: Callable[..., Stack], unique: str, position: str
) -> None:
    stack = drill()
    worker = stack.start_worker(concurrency=2)
    slow = {"id": "slow", "action": "record", "with": {"sleep": 3}, "retry": FAST_RETRY}
    if position == "inline":  # the first root step runs inside plan_run
        steps = [slow, {"id": "after", "action": "record", "needs": ["slow"]}]
    else:  # the step is a message of its own (another queue: no inline continuation)
        steps = [
            {"id": "first", "action": "record"},
            {**slow, "needs": ["first"], "queue": "default"},
        ]
    stack.register(spec(unique, steps))
    run_id = stack.submit(unique)

    victim = stack.pid(run_id, "slow")
    assert victim in worker.children()
    os.kill(victim, 9)

    run = stack.wait_finished(run_id, timeout=30)
    assert run["status"] == "succeeded", run
    assert [e for e in stack.executions(run_id) if e[1] == "slow"] == [
        (run_id, "slow", 1),
        (run_id, "slow", 2),
    ]
    step = stack.step(run_id, "slow")
    assert (step["attempts"], step["task_id"]) == (2, f"{run_id}:slow:2")
    assert stack.dead_letters(run_id) == []
    assert not alive(victim)
    wait_for(lambda: len(worker.children()) == 2, 10, message="the pool to replace the child")


def test_a_child_whose_action_caught_a_cancels_termination_leaves_and_harms_no_other_run(
    drill: Callable[..., Stack], unique: str
) -> None:
    # Cancelling terminates the child running the step; `stubborn` catches the SystemExit
    # and sleeps on. Had that child stayed, the pool would take its next loss, while it ran
    # another run's step, as the termination: that message acknowledged, the step stranded.
    stack = drill()
    worker = stack.start_worker(concurrency=1)
    stubborn = {"id": "stubborn", "action": "stubborn", "queue": "default", "with": {"seconds": 2}}
    stack.register(spec(f"{unique}_cancelled", [stubborn]))
    slow = {
        "id": "slow",
        "action": "record",
        "queue": "default",
        "with": {"sleep": 3},
        "timeout_s": 60,
        "retry": FAST_RETRY,
    }
    stack.register(spec(f"{unique}_other", [slow]))
    cancelled = stack.submit(f"{unique}_cancelled")
    terminated = stack.pid(cancelled, "stubborn")
    response = stack.client().post(f"/runs/{cancelled}/cancel", headers=stack.headers())
    assert response.status_code == 200, response.get_json()

    other = stack.submit(f"{unique}_other")
    victim = stack.pid(other, "slow")
    assert victim in worker.children()
    os.kill(victim, 9)

    run = stack.wait_finished(other, timeout=30)
    assert run["status"] == "succeeded", run
    assert stack.executions(other) == [(other, "slow", 1), (other, "slow", 2)]
    assert not alive(terminated) and victim != terminated
    assert [s["status"] for s in stack.run(cancelled)["steps"]] == ["cancelled"]
    assert stack.dead_letters(cancelled) == []


@pytest.mark.parametrize("carrier", ["plan", "step"])
def test_a_worker_child_killed_mid_inline_chain_step_loses_nothing_and_the_run_succeeds(
    drill: Callable[..., Stack], unique: str, carrier: str
) -> None:
    stack = drill()
    worker = stack.start_worker(concurrency=2)
    slow = {
        "id": "slow",
        "action": "record",
        "needs": ["first"],
        "with": {"sleep": 3},
        "timeout_s": 10,
        "retry": FAST_RETRY,
    }
    last = {"id": "last", "action": "record", "needs": ["slow"]}
    if carrier == "plan":  # plan_run runs `first` inline, then continues to `slow`
        steps = [{"id": "first", "action": "record"}, slow, last]
    else:  # `first` is a message (its parent releases two steps) that continues to `slow`
        steps = [
            {"id": "root", "action": "record"},
            {"id": "first", "action": "record", "needs": ["root"]},
            {"id": "side", "action": "record", "needs": ["root"]},
            slow,
            last,
        ]
    stack.register(spec(unique, steps))
    run_id = stack.submit(unique)
    carried_by = f"{run_id}:plan" if carrier == "plan" else f"{run_id}:first:1"

    victim = stack.pid(run_id, "slow")
    running = stack.step(run_id, "slow")
    assert (running["status"], running["task_id"]) == ("running", f"{run_id}:slow:1")
    assert running["worker"].endswith(f" inline in {carried_by}"), running
    # The carrier's delivery stands for the inline step: its redelivery proves the loss.
    assert step_row(stack, run_id, "slow").delivery_tag is not None
    assert victim in worker.children()
    os.kill(victim, 9)

    run = stack.wait_finished(run_id, timeout=30)
    assert run["status"] == "succeeded", run
    executed = stack.executions(run_id)
    assert [e for e in executed if e[1] == "slow"] == [(run_id, "slow", 1), (run_id, "slow", 2)]
    assert Counter(step for _, step, _ in executed) == Counter(
        {step["id"]: 1 for step in steps} | {"slow": 2}
    )
    step = stack.step(run_id, "slow")
    assert (step["attempts"], step["task_id"], step["error"]) == (2, f"{run_id}:slow:2", None)
    assert stack.dead_letters(run_id) == []
    wait_for(lambda: len(worker.children()) == 2, 10, message="the pool to replace the child")


def test_killing_a_whole_worker_loses_no_run_in_flight(
    drill: Callable[..., Stack], unique: str
) -> None:
    # Redis gives a dead worker's unacknowledged messages back only after the visibility
    # timeout (hours): the reconciler must find the work, so leases are short here.
    stack = drill(STEP_TIMEOUT_S="5")
    first = stack.start_worker(concurrency=2)
    stack.register(
        spec(
            f"{unique}_retry",
            [
                {
                    "id": "flaky",
                    "action": "fail",
                    "with": {"until_attempt": 2},
                    "retry": {"max_attempts": 3, "backoff_s": 8, "max_backoff_s": 8},
                }
            ],
        )
    )
    stack.register(
        spec(
            unique,
            [
                {"id": "slow", "action": "record", "with": {"sleep": 2}},
                {"id": "after", "action": "record", "needs": ["slow"]},
            ],
        )
    )
    # A retry waiting out its countdown in the worker (an ETA message it holds) ...
    waiting = stack.submit(f"{unique}_retry")
    wait_for(lambda: [s["status"] for s in stack.run(waiting)["steps"]] == ["retrying"], 15)
    # ... two steps running, and more runs queued behind them.
    run_ids = [stack.submit(unique) for _ in range(4)]
    pids = stack.directory / "pids"

    def in_flight() -> list[str] | None:
        started = [r for r in run_ids if (pids / f"{r}.slow.1").exists()]
        return started if len(started) == 2 else None

    running = wait_for(in_flight, 20, message="two steps in flight")
    assert stack.step(waiting, "flaky")["status"] == "retrying"
    first.kill()

    stack.start_worker(concurrency=2, beat=True)
    for run_id in [waiting, *run_ids]:
        assert stack.wait_finished(run_id, timeout=60)["status"] == "succeeded", run_id
    for run_id in running:
        # The killed attempt was recorded as lost and the next one ran.
        assert [e for e in stack.executions(run_id) if e[1] == "slow"] == [
            (run_id, "slow", 1),
            (run_id, "slow", 2),
        ]
    assert stack.step(waiting, "flaky")["attempts"] == 2
    assert all(stack.dead_letters(run_id) == [] for run_id in [waiting, *run_ids])


def test_every_queued_run_completes_after_the_broker_loses_all_its_messages(
    backend: str, tmp_path: Path, unique: str
) -> None:
    with private_stack(backend, tmp_path / "stack", DRILL_ENV) as (stack, server):
        stack.register(
            spec(
                unique,
                [
                    {"id": "a", "action": "record"},
                    {"id": "b", "action": "record", "needs": ["a"]},
                ],
            )
        )
        run_ids = [stack.submit(unique) for _ in range(100)]
        assert server.client().flushall()
        stack.start_worker(concurrency=2, beat=True)

        wait_for(
            lambda: statuses(stack, run_ids) == Counter(succeeded=100),
            60,
            0.5,
            message="all 100 runs to succeed",
        )
        executed = Counter((run, step) for run, step, _ in stack.executions())
        assert len(executed) == 200
        assert set(executed.values()) == {1}


def test_a_broker_restarted_without_its_data_mid_flight_loses_no_run(
    backend: str, tmp_path: Path, unique: str
) -> None:
    with private_stack(backend, tmp_path / "stack", DRILL_ENV) as (stack, server):
        stack.register(
            spec(
                unique,
                [
                    {"id": "a", "action": "record", "with": {"sleep": 1}},
                    {"id": "b", "action": "record", "needs": ["a"]},
                ],
            )
        )
        stack.start_worker(concurrency=2, beat=True)
        run_ids = [stack.submit(unique) for _ in range(10)]
        wait_for(
            lambda: len(list((stack.directory / "pids").glob("*.a.1"))) >= 2,
            20,
            message="steps in flight",
        )
        server.stop()  # no persistence: every queued and unacknowledged message is gone
        server.start()

        for run_id in run_ids:
            assert stack.wait_finished(run_id, timeout=60)["status"] == "succeeded"
        executed = Counter((run, step) for run, step, _ in stack.executions())
        assert len(executed) == 20
        assert set(executed.values()) == {1}


def test_the_database_server_ending_every_session_loses_no_run_and_fails_no_request(
    backend: str, tmp_path: Path, unique: str
) -> None:
    if backend != "postgres":
        pytest.skip("SQLite has no server to end sessions")
    with private_stack(backend, tmp_path / "stack", DRILL_ENV) as (stack, _server):
        stack.register(
            spec(
                unique,
                [{"id": "a", "action": "record"}, {"id": "b", "action": "record", "needs": ["a"]}],
            )
        )
        stack.start_worker(concurrency=2, beat=True)
        for run_id in [stack.submit(unique) for _ in range(6)]:
            assert stack.wait_finished(run_id)["status"] == "succeeded"
        # The API's pool and each worker process hold idle connections the server has ended.
        assert services.end_every_session(stack.database_url) >= 3

        run_ids = [stack.submit(unique) for _ in range(20)]
        for run_id in run_ids:
            assert stack.wait_finished(run_id)["status"] == "succeeded"
        executed = Counter((run, step) for run, step, _ in stack.executions())
        assert len(executed) == 52
        assert set(executed.values()) == {1}
        with stack.sessions() as session:
            assert session.scalar(select(func.count()).select_from(DeadLetter)) == 0


def test_a_step_that_kills_its_worker_every_time_is_dead_lettered_at_the_delivery_cap(
    drill: Callable[..., Stack], unique: str
) -> None:
    stack = drill(MAX_DELIVERIES="2")
    stack.start_worker(concurrency=2)
    stack.register(
        spec(
            f"{unique}_crash",
            [{"id": "crash", "action": "fail", "with": {"exit": True}, "retry": FAST_RETRY}],
        )
    )
    stack.register(
        spec(
            unique,
            [
                {"id": "a", "action": "record"},
                {"id": "b", "action": "record", "needs": ["a"]},
            ],
        )
    )
    crash = stack.submit(f"{unique}_crash")
    others = [stack.submit(unique) for _ in range(4)]

    run = stack.wait_finished(crash, timeout=60)
    assert run["status"] == "failed"
    step = stack.step(crash, "crash")
    assert (step["status"], step["attempts"], step["error_type"]) == ("dead", 2, "WorkerLostError")
    assert "MAX_DELIVERIES=2" in step["error"]
    [letter] = stack.dead_letters(crash)
    assert (letter.exception_type, letter.attempts, letter.task_id) == (
        "WorkerLostError",
        2,
        f"{crash}:crash:2",
    )
    for run_id in others:
        assert stack.wait_finished(run_id, timeout=30)["status"] == "succeeded"


def test_a_held_copy_handed_back_by_a_restarting_worker_leaves_the_running_attempt_alone(
    drill: Callable[..., Stack], unique: str
) -> None:
    # A busy worker holds the countdown copy of a step's retry; past its due time the
    # reconciler sends that attempt again and another worker runs it. Then the busy worker
    # is restarted (a deploy) and the broker hands its copy back flagged `redelivered`: that
    # copy never started the attempt, so the attempt runs on and nothing is recorded lost.
    stack = drill()
    busy = stack.start_worker(concurrency=1)
    stack.register(
        spec(f"{unique}_long", [{"id": "long", "action": "record", "with": {"sleep": 12}}])
    )
    step = {
        "id": "s",
        "action": "record",
        "with": {"fail_before_attempt": 2, "sleep": 16},
        "timeout_s": 30,
        "retry": {"max_attempts": 2, "backoff_s": 4, "max_backoff_s": 4},
    }
    stack.register(spec(unique, [step]))
    run_id = stack.submit(unique)
    # Attempt 1 fails at once; its retry waits 2 to 4 s, held by the only worker.
    held = f"{run_id}:s:2".encode()
    client = redis.Redis.from_url(stack.redis_url)
    unacked = stack.env["REDIS_KEY_PREFIX"] + "unacked"
    wait_for(lambda: any(held in v for v in client.hvals(unacked)), 20, 0.02, "the retry held")
    long_run = stack.submit(f"{unique}_long")
    stack.pid(long_run, "long")  # the busy worker's only process is taken now
    other = stack.start_worker(concurrency=2, beat=True)

    def second_attempt_running() -> dict[str, object] | None:
        row = stack.step(run_id, "s")
        return row if (row["status"], row["attempts"]) == ("running", 2) else None

    running = wait_for(second_attempt_running, 30, message="the resent attempt 2 to run")
    assert running["worker"].startswith(other.name.split("@")[0] + "@"), running
    assert step_row(stack, run_id, "s").delivery_tag is not None
    assert busy.process is not None
    busy.process.send_signal(15)  # warm shutdown: the long step ends, the held copy goes back

    run = stack.wait_finished(run_id, timeout=60)
    assert run["status"] == "succeeded", run
    assert "Restoring 1 unacknowledged message" in busy.log_path.read_text()
    received = f"Task steps.execute[{run_id}:s:2] received"
    wait_for(lambda: other.log_path.read_text().count(received) == 2, 10, message="the copy")
    assert [e for e in stack.executions(run_id)] == [(run_id, "s", 1), (run_id, "s", 2)]
    done = stack.step(run_id, "s")
    assert (done["attempts"], done["error_type"], done["error"]) == (2, None, None)
    assert stack.dead_letters(run_id) == []
    assert stack.wait_finished(long_run)["status"] == "succeeded"


@pytest.fixture
def offline(backend: str, tmp_path: Path) -> Iterator[Stack]:
    """A database of its own and no worker: recovery use cases are called directly, and what
    they would send is inspected instead of sent."""
    platform = Stack(backend, tmp_path / "stack", env=DRILL_ENV)
    yield platform
    platform.close()


def planned_runs(stack: Stack, workflow: str, count: int, plan: bool = True) -> list[str]:
    """Runs submitted (and planned) in the database only: the broker never saw their work.
    Everything they wait for looks long overdue."""
    caller = Caller("alice@example.com", ("runs.write",))
    long_ago = utcnow() - timedelta(minutes=5)
    with stack.sessions.begin() as session:
        run_ids = []
        for _ in range(count):
            run, _, _ = runs.submit(session, stack.settings, runs.SubmitRun(workflow, {}), caller)
            session.flush()
            run_ids.append(run.id)
            if plan:
                planning.plan_run(session, stack.settings, run.id)
        session.execute(update(Run).where(Run.id.in_(run_ids)).values(dispatched_at=long_ago))
        session.execute(update(Step).where(Step.run_id.in_(run_ids)).values(dispatched_at=long_ago))
    return run_ids


def hold(stack: Stack, run_ids: list[str], step_id: str, attempts: int, lease: timedelta) -> None:
    """Make a step look claimed by attempt `attempts`, its lease ending after `lease`."""
    with stack.sessions.begin() as session:
        for run_id in run_ids:
            session.execute(
                update(Step)
                .where(Step.run_id == run_id, Step.step_id == step_id)
                .values(
                    status="running",
                    attempts=attempts,
                    task_id=f"{run_id}:{step_id}:{attempts}",
                    delivery_tag=f"delivery-{attempts}",
                    lease_expires_at=utcnow() + lease,
                )
            )


def two_steps(stack: Stack, name: str) -> None:
    stack.register(
        spec(name, [{"id": "a", "action": "noop"}, {"id": "b", "action": "noop", "needs": ["a"]}])
    )


def step_row(stack: Stack, run_id: str, step_id: str) -> Step:
    with stack.sessions() as session:
        row = session.get(Step, (run_id, step_id))
        assert row is not None
        return row


def test_two_reconcilers_at_once_send_each_lost_message_once(offline: Stack, unique: str) -> None:
    two_steps(offline, unique)
    queued = planned_runs(offline, unique, 10, plan=False)
    planned = planned_runs(offline, unique, 10)
    lost = planned_runs(offline, unique, 10)
    hold(offline, lost, "a", 1, -timedelta(minutes=1))

    start = threading.Barrier(2)
    works: list[Work] = []

    def sweep() -> None:
        start.wait()
        with offline.sessions.begin() as session:
            works.append(recovery.reconcile(session, offline.settings))

    sweepers = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in sweepers:
        thread.start()
    for thread in sweepers:
        thread.join(30)
    assert len(works) == 2

    sent = Counter(d.task_id for work in works for d in work.dispatches)
    # A queued run is planned again; a queued step gets the message of its first attempt;
    # a step whose lease ran out has that attempt recorded as lost and its retry sent.
    expected = {f"{r}:plan" for r in queued} | {f"{r}:a:1" for r in planned}
    expected |= {f"{r}:a:2" for r in lost}
    assert set(sent) == expected
    assert set(sent.values()) == {1}
    for run_id in lost:
        row = step_row(offline, run_id, "a")
        assert (row.status, row.error_type, row.attempts) == ("retrying", "WorkerLostError", 1)


def test_a_step_whose_lease_ran_out_at_the_delivery_cap_is_dead_lettered(
    offline: Stack, unique: str
) -> None:
    # A step that takes its whole worker down is never redelivered by Redis in time: the
    # lease is what finds it, and the delivery cap ends the loop.
    two_steps(offline, unique)
    [run_id] = planned_runs(offline, unique, 1)
    hold(offline, [run_id], "a", 2, -timedelta(seconds=1))
    settings = offline.settings.with_changes(max_deliveries=2)
    with offline.sessions.begin() as session:
        work = recovery.reconcile(session, settings)
    assert [d for d in work.dispatches if d.args[0] == run_id] == []
    row = step_row(offline, run_id, "a")
    assert (row.status, row.error_type, row.attempts) == ("dead", "WorkerLostError", 2)
    assert step_row(offline, run_id, "b").status == "skipped"
    [letter] = offline.dead_letters(run_id)
    assert (letter.exception_type, letter.task_id) == ("WorkerLostError", f"{run_id}:a:2")
    assert offline.run(run_id)["status"] == "failed"


def test_a_lost_attempt_does_not_spend_the_steps_retries(offline: Stack, unique: str) -> None:
    # A step allowed one attempt whose worker died still runs again, as a killed worker's
    # message would with Celery alone, until the delivery cap.
    offline.register(spec(unique, [{"id": "a", "action": "noop", "retry": {"max_attempts": 1}}]))
    first, last = planned_runs(offline, unique, 2)
    hold(offline, [first], "a", 1, -timedelta(seconds=1))
    hold(offline, [last], "a", 3, -timedelta(seconds=1))
    with offline.sessions.begin() as session:
        work = recovery.reconcile(session, offline.settings)  # MAX_DELIVERIES is 3
    assert [d.task_id for d in work.dispatches if d.args[0] == first] == [f"{first}:a:2"]
    row = step_row(offline, first, "a")
    assert (row.status, row.error_type, row.attempts) == ("retrying", "WorkerLostError", 1)
    row = step_row(offline, last, "a")
    assert (row.status, row.error_type, row.attempts) == ("dead", "WorkerLostError", 3)
    assert "MAX_DELIVERIES=3" in (row.error or "")


def claim_directly(
    stack: Stack, run_id: str, attempt: int, delivery: str | None, redelivered: bool
) -> object:
    """Claim attempt `attempt` of step "a" as the delivery `delivery` would, in a worker."""
    with stack.sessions.begin() as session:
        return claims.claim_step(
            session,
            stack.settings,
            run_id,
            "a",
            task_id=f"{run_id}:a:{attempt}",
            worker="test",
            delivery=delivery,
            redelivered=redelivered,
        )


def test_a_message_only_takes_the_attempt_it_carries(offline: Stack, unique: str) -> None:
    two_steps(offline, unique)
    [run_id] = planned_runs(offline, unique, 1)
    hold(offline, [run_id], "a", 1, timedelta(minutes=1))

    def claim(attempt: int, redelivered: bool = False) -> object:
        return claim_directly(offline, run_id, attempt, f"delivery-{attempt}", redelivered)

    # A duplicate of the running attempt's message: its holder is alive (the lease runs).
    assert claim(1) is None
    assert claim(2) is None
    assert step_row(offline, run_id, "a").status == "running"
    # The broker redelivers that very message: its worker died, the attempt is lost.
    lost = claim(1, redelivered=True)
    assert isinstance(lost, attempts.Outcome) and lost.status == "retrying"
    assert [d.task_id for d in lost.work.dispatches] == [f"{run_id}:a:2"]
    # A stale copy of attempt 1 cannot take the retry; the retry's own message does.
    assert claim(1) is None and claim(1, redelivered=True) is None
    taken = claim(2)
    assert isinstance(taken, attempts.Claim) and taken.attempt == 2
    assert step_row(offline, run_id, "a").task_id == f"{run_id}:a:2"


def test_a_redelivered_copy_proves_its_attempt_lost_only_if_its_delivery_started_it(
    offline: Stack, unique: str
) -> None:
    # Two copies of one attempt's message: a retry's countdown copy held by a busy worker,
    # and the reconciler's resend, which another worker claimed and runs. When the busy
    # worker restarts, the broker hands its copy back flagged `redelivered`; that copy never
    # started the attempt, so it proves nothing. Only the claiming delivery, redelivered
    # (same tag), shows that the attempt's worker died.
    two_steps(offline, unique)
    [run_id] = planned_runs(offline, unique, 1)

    def claim(delivery: str | None, redelivered: bool = False) -> object:
        return claim_directly(offline, run_id, 1, delivery, redelivered)

    taken = claim("resent")
    assert isinstance(taken, attempts.Claim) and taken.attempt == 1
    for copy in ("held", None):
        assert claim(copy, redelivered=True) is None
    row = step_row(offline, run_id, "a")
    assert (row.status, row.attempts, row.delivery_tag, row.error) == ("running", 1, "resent", None)
    lost = claim("resent", redelivered=True)
    assert isinstance(lost, attempts.Outcome) and lost.status == "retrying"
    assert [d.task_id for d in lost.work.dispatches] == [f"{run_id}:a:2"]
    row = step_row(offline, run_id, "a")
    assert (row.status, row.error_type) == ("retrying", "WorkerLostError")


def test_a_redelivered_carrier_takes_as_lost_only_the_inline_step_its_own_delivery_started(
    offline: Stack, unique: str
) -> None:
    # plan_run runs its run's first step inline: that step has no message of its own, and
    # the plan message's delivery stands for it. A copy of the plan message that did not
    # start it (a resend) finds nothing lost, redelivered or not; the delivery that did does.
    two_steps(offline, unique)
    [run_id] = planned_runs(offline, unique, 1, plan=False)
    carrier = plan_task_id(run_id)
    worker = attempts.inline_worker("celery@test", carrier)
    with offline.sessions.begin() as session:
        _, taken = planning.plan_and_claim(session, offline.settings, run_id, worker, None, "first")
    assert isinstance(taken, attempts.Claim) and taken.step_id == "a"
    assert step_row(offline, run_id, "a").delivery_tag == "first"

    def redelivered(delivery: str | None) -> tuple[object, object]:
        """What the plan message redelivered does: claim the inline step, then look for
        the steps it carried."""
        with offline.sessions.begin() as session:
            claimed = claims.claim_step(
                session,
                offline.settings,
                run_id,
                "a",
                task_id=f"{run_id}:a:1",
                worker=worker,
                delivery=delivery,
                redelivered=True,
            )
        with offline.sessions.begin() as session:
            carried = lost_attempts.record_lost_inline(
                session, offline.settings, run_id, carrier, delivery
            )
        return claimed, carried

    assert redelivered("resent") == (None, None)
    assert redelivered(None) == (None, None)
    assert step_row(offline, run_id, "a").status == "running"
    with offline.sessions.begin() as session:
        carried = lost_attempts.record_lost_inline(
            session, offline.settings, run_id, carrier, "first"
        )
    assert isinstance(carried, attempts.Outcome) and carried.status == "retrying"
    assert [d.task_id for d in carried.work.dispatches] == [f"{run_id}:a:2"]
    assert step_row(offline, run_id, "a").error_type == "WorkerLostError"


def test_a_run_left_running_with_only_a_dead_step_is_failed_by_the_reconciler(
    offline: Stack, unique: str
) -> None:
    offline.register(spec(unique, [{"id": "a", "action": "noop"}, {"id": "b", "action": "noop"}]))
    stalled, busy = planned_runs(offline, unique, 2)
    with offline.sessions.begin() as session:
        # `a` came back from a replay and succeeded; `b` is still dead.
        for run_id in (stalled, busy):
            session.execute(
                update(Step)
                .where(Step.run_id == run_id, Step.step_id == "a")
                .values(status="succeeded")
            )
        session.execute(
            update(Step).where(Step.run_id == stalled, Step.step_id == "b").values(status="dead")
        )
        session.execute(
            update(Run)
            .where(Run.id.in_([stalled, busy]))
            .values(started_at=utcnow() - timedelta(minutes=5))
        )
    with offline.sessions.begin() as session:
        recovery.reconcile(session, offline.settings)
    with offline.sessions() as session:
        failed = session.get(Run, stalled)
        still = session.get(Run, busy)
        assert failed is not None and still is not None
        assert failed.status == "failed"
        assert "b" in (failed.error or "")
        assert still.status == "running"


def test_a_resume_racing_a_finishing_step_still_sees_its_release(
    offline: Stack, unique: str
) -> None:
    # x and d run side by side, c needs both. d died (c skipped, run failed) while x was still
    # running. x now finishes while an operator resumes d: c must end up waiting for d only.
    offline.register(
        spec(
            unique,
            [
                {"id": "x", "action": "noop"},
                {"id": "d", "action": "noop"},
                {"id": "c", "action": "noop", "needs": ["x", "d"]},
            ],
        )
    )
    (run_id,) = planned_runs(offline, unique, 1)
    with offline.sessions.begin() as session:
        claim = claims.claim_step(
            session, offline.settings, run_id, "x", task_id=f"{run_id}:x:1", worker="w"
        )
        assert isinstance(claim, attempts.Claim)
        session.execute(
            update(Step).where(Step.run_id == run_id, Step.step_id == "d").values(status="dead")
        )
        session.execute(
            update(Step).where(Step.run_id == run_id, Step.step_id == "c").values(status="skipped")
        )
        session.execute(update(Run).where(Run.id == run_id).values(status="failed"))

    finishing = offline.sessions()
    finishing.begin()
    outcomes.finish_attempt(finishing, offline.settings, claim, attempts.Result(output=1))

    def resume_d() -> None:
        with offline.sessions.begin() as session:
            run = session.get(Run, run_id)
            assert run is not None
            resume.resume(session, offline.settings, run, ["d"])

    resumer = threading.Thread(target=resume_d)
    resumer.start()
    resumer.join(1.0)
    assert resumer.is_alive(), "the resume must wait for the finishing step's transaction"
    finishing.commit()
    finishing.close()
    resumer.join(30)
    c = step_row(offline, run_id, "c")
    assert (c.status, c.pending_deps) == ("pending", 1)


def test_the_reconciler_leaves_alone_work_still_waiting_in_a_backed_up_queue(
    offline: Stack, unique: str
) -> None:
    """Runs submitted while no worker runs wait in the broker past DISPATCH_GRACE_S: still
    carried, not lost. Once the broker loses them they are sent again; steps whose queue
    never held their message are sent again all along."""
    two_steps(offline, unique)
    celery = offline.app.extensions["engine.celery"]
    reading = partial(broker.oldest_waiting, offline.settings, celery)
    waiting = [offline.submit(unique) for _ in range(3)]
    never_sent = planned_runs(offline, unique, 2)
    time.sleep(offline.settings.dispatch_grace_s + 0.5)

    def sweep() -> set[str]:
        with offline.sessions.begin() as session:
            work = recovery.reconcile(session, offline.settings, reading)
        return {d.task_id for d in work.dispatches}

    assert reading([MANAGER_QUEUE])[MANAGER_QUEUE] is not None
    assert sweep() == {f"{run_id}:a:1" for run_id in never_sent}
    layout = QueueLayout.from_transport_options(celery.conf.broker_transport_options)
    redis.Redis.from_url(offline.redis_url).delete(*layout.keys(MANAGER_QUEUE))
    assert reading([MANAGER_QUEUE]) == {MANAGER_QUEUE: None}
    assert sweep() == {f"{run_id}:plan" for run_id in waiting}


def test_a_worker_that_loses_the_broker_while_it_holds_a_message_keeps_running(
    tmp_path: Path, unique: str
) -> None:
    # The consumer closes its channel and hands the message back through it; with its
    # connection gone no client could be made, and the AttributeError that kombu's own
    # client raised there stopped the whole worker ("Unrecoverable error").
    with private_stack("sqlite", tmp_path / "stack", DRILL_ENV) as (stack, server):
        roots = [{"id": f"r{i}", "action": "noop", "queue": "default"} for i in range(30)]
        stack.register(spec(unique, [{"id": "a", "action": "record"}, *roots]))
        run_id = stack.submit(unique)
        holder = sqlite3.connect(stack.database_url.removeprefix("sqlite:///"), timeout=30)
        holder.isolation_level = None
        holder.execute("BEGIN IMMEDIATE")  # plan_run holds its message, waiting to write
        worker = stack.start_worker(concurrency=2, beat=True)
        unacked = f"{stack.env['REDIS_KEY_PREFIX']}unacked"
        wait_for(lambda: server.client().hlen(unacked), 30, message="plan_run to be received")
        server.stop()
        holder.execute("ROLLBACK")
        holder.close()
        threading.Event().wait(5)
        assert worker.process.poll() is None, worker.log_path.read_text()[-3000:]
        assert "Unrecoverable" not in worker.log_path.read_text()
        server.start()
        assert stack.wait_finished(run_id, timeout=90)["status"] == "succeeded"


def test_the_step_plan_run_runs_itself_keeps_its_lease_while_redis_is_down_at_planning(
    tmp_path: Path, unique: str
) -> None:
    # Redis goes away while plan_run plans a run of 30 other root steps: their sends fail
    # (each would wait out its connection retries). The step plan_run runs itself (6 s of
    # its 8 s; a lease of 10 s with LEASE_GRACE_S=1) must start on a lease that still covers
    # it, and run once: the reconciler must not take it for lost while it runs.
    with private_stack("sqlite", tmp_path / "stack", DRILL_ENV) as (stack, server):
        roots = [{"id": f"r{i}", "action": "noop", "queue": "default"} for i in range(30)]
        slow = {"id": "a", "action": "record", "with": {"sleep": 6}, "timeout_s": 8}
        stack.register(spec(unique, [{**slow, "retry": {"max_attempts": 1}}, *roots]))
        run_id = stack.submit(unique)
        holder = sqlite3.connect(stack.database_url.removeprefix("sqlite:///"), timeout=30)
        holder.isolation_level = None
        holder.execute("BEGIN IMMEDIATE")  # plan_run waits at its first write ...
        stack.start_worker(concurrency=2, beat=True)
        unacked = f"{stack.env['REDIS_KEY_PREFIX']}unacked"
        wait_for(lambda: server.client().hlen(unacked), 30, message="plan_run to be received")
        server.stop()  # ... while the broker goes away
        holder.execute("ROLLBACK")
        holder.close()
        stack.pid(run_id, "a", timeout=60)
        server.start()

        run = stack.wait_finished(run_id, timeout=60)
        assert run["status"] == "succeeded", run
        step = stack.step(run_id, "a")
        assert (step["attempts"], step["error_type"]) == (1, None)
        assert [e for e in stack.executions(run_id) if e[1] == "a"] == [(run_id, "a", 1)]
        assert stack.dead_letters(run_id) == []


def test_a_queued_run_this_process_cannot_compile_holds_up_no_other_run(
    offline: Stack, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stored version that no longer compiles here (STEP_TIMEOUT_MAX_S was lowered below
    its step's timeout_s): the reconciler still sends every lost plan, that one included,
    and plan_run fails that run, naming why."""
    offline.register(spec(f"{unique}_long", [{"id": "a", "action": "noop", "timeout_s": 600}]))
    two_steps(offline, unique)
    lost = planned_runs(offline, f"{unique}_long", 1, plan=False)
    lost += planned_runs(offline, unique, 1, plan=False)
    lowered = dataclasses.replace(offline.settings, step_timeout_max_s=300)
    monkeypatch.setattr(workflows, "_COMPILED", {})  # a process started with those settings
    with offline.sessions.begin() as session:
        work = recovery.reconcile(session, lowered)
    assert {d.task_id for d in work.dispatches} == {plan_task_id(run_id) for run_id in lost}

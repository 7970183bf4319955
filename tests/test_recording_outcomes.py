"""Recording a step's outcome while the database is unavailable, drilled on a real worker, a
real SQLite file (its write lock held by another connection, as another process would) and
a private redis-server: the recording is tried again until the database answers, the soft
time limit does not fire inside it, and the action runs once."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.conftest import spec
from tests.support.stack import Stack, private_stack

DRILL_ENV = {"RECONCILE_INTERVAL_S": "1", "DISPATCH_GRACE_S": "2", "LEASE_GRACE_S": "1"}


class WriteLock:
    """SQLite's write lock, held by a connection of its own from start() for `seconds`."""

    def __init__(self, stack: Stack, seconds: float) -> None:
        self.path = stack.database_url.removeprefix("sqlite:///")
        self.seconds = seconds
        self.taken = threading.Event()
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def start(self) -> WriteLock:
        self.thread.start()
        assert self.taken.wait(10), "the write lock was not taken"
        return self

    def _hold(self) -> None:
        connection = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        connection.execute("BEGIN IMMEDIATE")
        self.taken.set()
        threading.Event().wait(self.seconds)  # held for its time, whatever the worker does
        connection.execute("ROLLBACK")
        connection.close()


@pytest.fixture
def sqlite_drill(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Make a private stack on SQLite (its write lock is what the drills hold)."""
    with ExitStack() as stacks:

        def make(**env: str) -> Stack:
            platform, _ = stacks.enter_context(
                private_stack("sqlite", tmp_path / "stack", {**DRILL_ENV, **env})
            )
            return platform

        yield make


def two_steps(stack: Stack, name: str, charge: dict[str, object]) -> str:
    """`first`, then `charge` as a message of its own (another queue: not run inline)."""
    stack.register(
        spec(
            name,
            [
                {"id": "first", "action": "noop"},
                {"id": "charge", "action": "record", "needs": ["first"], "queue": "default"}
                | charge,
            ],
        )
    )
    return stack.submit(name)


@pytest.mark.parametrize("action", ["succeeds", "fails"])
def test_an_outcome_is_recorded_once_the_database_answers_again_and_the_action_runs_once(
    sqlite_drill: Callable[..., Stack], unique: str, action: str
) -> None:
    # A busy timeout of 1 s, the write lock held 4 s: the first tries fail "database is
    # locked"; the action's lease (11 s) outlasts the lock.
    stack = sqlite_drill(SQLITE_BUSY_TIMEOUT_S="1")
    stack.start_worker(concurrency=2)
    run_id = two_steps(
        stack,
        unique,
        {
            "with": {"sleep": 0.5, "fail": action == "fails", "message": "card declined"},
            "timeout_s": 10,
            "retry": {"max_attempts": 1},
        },
    )
    stack.pid(run_id, "charge")
    WriteLock(stack, 4).start()

    run = stack.wait_finished(run_id, timeout=40)
    assert [e for e in stack.executions(run_id) if e[1] == "charge"] == [(run_id, "charge", 1)]
    step = stack.step(run_id, "charge")
    assert step["attempts"] == 1
    if action == "succeeds":
        assert (run["status"], step["status"]) == ("succeeded", "succeeded"), run
        assert stack.dead_letters(run_id) == []
    else:
        assert (run["status"], step["status"], step["error_type"]) == (
            "failed",
            "dead",
            "ActionError",
        ), run
        [letter] = stack.dead_letters(run_id)
        assert (letter.exception_type, letter.message, letter.attempts) == (
            "ActionError",
            "card declined",
            1,
        )
    log = (stack.directory / "worker-0.log").read_text()
    assert "database unavailable" in log


def test_the_soft_time_limit_does_not_fire_while_a_step_that_finished_in_time_is_recorded(
    sqlite_drill: Callable[..., Stack], unique: str
) -> None:
    # The action takes 1 s of its 3 s; the recording waits for the write lock until just past
    # the soft limit (3 s), well before the hard one (4 s).
    stack = sqlite_drill()
    stack.start_worker(concurrency=2)
    run_id = two_steps(
        stack,
        unique,
        {"with": {"sleep": 1}, "timeout_s": 3, "retry": {"max_attempts": 1}},
    )
    stack.pid(run_id, "charge")
    WriteLock(stack, 3.35).start()

    run = stack.wait_finished(run_id, timeout=30)
    assert run["status"] == "succeeded", run
    step = stack.step(run_id, "charge")
    assert (step["status"], step["attempts"], step["error_type"]) == ("succeeded", 1, None)
    assert [e for e in stack.executions(run_id) if e[1] == "charge"] == [(run_id, "charge", 1)]
    assert stack.dead_letters(run_id) == []

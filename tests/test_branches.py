"""A step dies while other branches of its run are waiting, running or about to retry: what
the failed run shows, and how a replay of the dead letter finishes it. Real workers, on
SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from tests.conftest import spec
from tests.support import services
from tests.support.stack import Stack

OPS = "ops@example.com"
LIVE = {"pending", "queued", "running", "retrying"}


def statuses(run: dict[str, Any]) -> dict[str, str]:
    return {step["step_id"]: step["status"] for step in run["steps"]}


def test_a_dead_step_skips_the_waiting_steps_of_every_branch_and_a_replay_finishes_them(
    stack: Stack, unique: str
) -> None:
    """Four branches: `boom` dies while `slow` and `slow_fail` run and `idle` waits queued
    for a worker of its queue. The failed run shows no live step once the running ones end:
    `idle` and every pending child is skipped, `slow` succeeds but releases nothing into the
    failed run, `slow_fail` fails after the run did and is skipped, not retried. Replaying
    the dead letter sends every step that did not run at once, and the run succeeds."""
    busy, idle = f"{unique}_busy", f"{unique}_idle"
    once, twice = {"max_attempts": 1}, {"max_attempts": 2, "backoff_s": 0.1}
    stack.register(
        spec(
            unique,
            [
                {"id": "slow", "action": "record", "queue": busy, "with": {"sleep": 3}},
                {"id": "slow_child", "action": "record", "needs": ["slow"], "queue": busy},
                {
                    "id": "slow_fail",
                    "action": "record",
                    "queue": busy,
                    "retry": twice,
                    "with": {"sleep": 3, "fail_at_attempt": 1},
                },
                {"id": "tick", "action": "record", "queue": busy, "with": {"sleep": 1}},
                {"id": "boom", "action": "fail", "needs": ["tick"], "queue": busy, "retry": once},
                {"id": "boom_child", "action": "record", "needs": ["boom"], "queue": busy},
                {"id": "idle", "action": "record", "queue": idle},
                {"id": "join", "action": "record", "needs": ["slow_child", "idle", "slow_fail"]},
            ],
        )
    )
    worker = stack.start_worker(concurrency=3, queues=busy)
    try:
        run_id = stack.submit(unique)
        failed = stack.wait_finished(run_id, timeout=30)
        assert failed["status"] == "failed", failed
        assert failed["finished_at"] is not None
        seen = statuses(failed)
        assert (seen["boom"], seen["slow"], seen["slow_fail"]) == ("dead", "running", "running")
        assert (seen["idle"], seen["boom_child"], seen["join"]) == ("skipped",) * 3, seen

        def settled() -> dict[str, Any] | None:
            run = stack.run(run_id)
            return run if not LIVE & set(statuses(run).values()) else None

        ended = services.wait_for(settled, 30, 0.2, "the running steps to end")
        assert ended["status"] == "failed"
        assert statuses(ended) == {
            "slow": "succeeded",
            "slow_child": "skipped",
            "slow_fail": "skipped",
            "tick": "succeeded",
            "boom": "dead",
            "boom_child": "skipped",
            "idle": "skipped",
            "join": "skipped",
        }
        assert "recorded failure" in ended["steps"][2]["error"]
        (letter,) = stack.dead_letters(run_id)
        replayed = stack.client().post(
            f"/admin/dlq/{letter.id}/replay",
            json={"reason": "fixed", "inputs": {"fail": False}},
            headers=stack.headers(OPS, "admin.*"),
        )
        assert replayed.status_code == 202, replayed.get_json()
        idler = stack.start_worker(concurrency=1, queues=idle)
        try:
            finished = stack.wait_finished(run_id, timeout=20)
        finally:
            idler.stop()
    finally:
        worker.stop()
    assert finished["status"] == "succeeded", finished
    ran = sorted((step, attempt) for _, step, attempt in stack.executions(run_id))
    assert ran == [
        ("boom_child", 1),
        ("idle", 1),
        ("join", 1),
        ("slow", 1),
        ("slow_child", 1),
        ("slow_fail", 1),
        ("slow_fail", 2),
        ("tick", 1),
    ]

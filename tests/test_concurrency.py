"""A workflow's concurrency limit end to end, on SQLite and PostgreSQL with a real worker
(two children, so runs could overlap) and beat ticking: runs of a workflow limited to one
never overlap and start by priority, then age; a cancelled run frees its slot and a
cancelled waiting run never starts; a failed run frees its slot and its retry waits for one;
a bulk replay of a limited workflow's dead letters runs them one at a time (API and CLI).
Admission on the database alone (reconciler, tick, racing submissions, statements):
tests/test_concurrency_admission.py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any, cast

import pytest

from tests.conftest import spec
from tests.support import services
from tests.support.cli import ok, run_engine
from tests.support.stack import Stack

TICK_ENV = {"RUN_DELAY_TICK_S": "0.2"}


@pytest.fixture(scope="module")
def ticking(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A platform of its own whose worker (two children) runs beat, ticking every 0.2 s."""
    platform = Stack(backend, tmp_path_factory.mktemp(f"concurrency-{backend}"), env=TICK_ENV)
    platform.start_worker(concurrency=2, beat=True)
    yield platform
    platform.close()


def nap(seconds: float) -> list[dict[str, Any]]:
    return [{"id": "nap", "action": "sleep", "with": {"seconds": seconds}}]


def submit(stack: Stack, workflow: str, **body: Any) -> dict[str, Any]:
    response = stack.client().post(
        "/runs", json={"workflow": workflow, "params": {}, **body}, headers=stack.headers()
    )
    assert response.status_code == 202, response.get_json()
    return dict(response.get_json())


def moment(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def wait_status(stack: Stack, run_id: str, status: str, timeout: float = 30) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        run = stack.run(run_id)
        return run if run["status"] == status else None

    return services.wait_for(reached, timeout, 0.1, f"run {run_id} to be {status}")


def test_runs_limited_to_one_never_overlap_and_start_by_priority_then_age(
    ticking: Stack, unique: str
) -> None:
    ticking.register(spec(unique, nap(0.6), concurrency=1))
    first = submit(ticking, unique)
    older = submit(ticking, unique)
    newer = submit(ticking, unique)
    urgent = submit(ticking, unique, priority=5)
    assert first["waiting"] is None
    assert [run["waiting"] for run in (older, newer, urgent)] == ["concurrency"] * 3
    assert ticking.run(older["id"])["status"] == "queued"

    finished = [ticking.wait_finished(run["id"]) for run in (first, older, newer, urgent)]
    assert [run["status"] for run in finished] == ["succeeded"] * 4
    assert all(run["waiting"] is None for run in finished)
    by_start = sorted(finished, key=lambda run: moment(run["started_at"]))
    assert [run["id"] for run in by_start] == [run["id"] for run in (first, urgent, older, newer)]
    for before, after in zip(by_start, by_start[1:], strict=False):
        assert moment(after["started_at"]) >= moment(before["finished_at"]), (before, after)


def test_a_cancelled_run_frees_its_slot_and_a_cancelled_waiting_run_never_starts(
    ticking: Stack, unique: str
) -> None:
    ticking.register(spec(unique, nap(4), concurrency=1))
    running = submit(ticking, unique)
    wait_status(ticking, running["id"], "running")
    following = submit(ticking, unique)
    dropped = submit(ticking, unique)
    assert (following["waiting"], dropped["waiting"]) == ("concurrency", "concurrency")

    cancelled = ticking.client().post(f"/runs/{dropped['id']}/cancel", headers=ticking.headers())
    assert cancelled.status_code == 200, cancelled.get_json()
    cancelled = ticking.client().post(f"/runs/{running['id']}/cancel", headers=ticking.headers())
    assert cancelled.status_code == 200, cancelled.get_json()
    # The slot goes to the next waiting run at once, not when the cancelled nap would end.
    started = wait_status(ticking, following["id"], "running", timeout=3)
    assert moment(started["started_at"]) >= moment(ticking.run(running["id"])["finished_at"])

    assert ticking.wait_finished(following["id"])["status"] == "succeeded"
    never = ticking.run(dropped["id"])
    assert (never["status"], never["started_at"], never["steps"]) == ("cancelled", None, [])


def test_a_failed_run_frees_its_slot_and_its_retry_waits_for_one(
    ticking: Stack, unique: str
) -> None:
    # Version 1 fails its first attempt (and has no other); version 2 naps. One limit
    # counts the runs of every version.
    boom = {"id": "boom", "action": "fail", "with": {"until_attempt": 2}}
    ticking.register(spec(unique, [{**boom, "retry": {"max_attempts": 1}}], concurrency=1))
    failing = submit(ticking, unique)
    assert ticking.wait_finished(failing["id"])["status"] == "failed"

    ticking.register({**spec(unique, nap(2), concurrency=1), "version": 2})
    napping = submit(ticking, unique)
    assert napping["waiting"] is None  # the failed run holds no slot

    retried = ticking.client().post(f"/runs/{failing['id']}/retry", headers=ticking.headers())
    assert retried.status_code == 202, retried.get_json()
    assert (retried.get_json()["status"], retried.get_json()["waiting"]) == (
        "queued",
        "concurrency",
    )
    done = ticking.wait_finished(napping["id"])
    resumed = ticking.wait_finished(failing["id"])
    assert (resumed["status"], resumed["waiting"]) == ("succeeded", None)
    [step] = resumed["steps"]
    assert step["attempts"] == 2
    assert moment(step["started_at"]) >= moment(done["finished_at"])


def failing_then_napping(stack: Stack, name: str, seconds: float) -> list[str]:
    """A workflow limited to one whose step fails its first attempt (its only one) and a
    nap after it; returns its four runs, failed, each with one dead letter."""
    boom = {"id": "boom", "action": "fail", "with": {"until_attempt": 2}}
    after = {**nap(seconds)[0], "needs": ["boom"]}
    stack.register(spec(name, [{**boom, "retry": {"max_attempts": 1}}, after], concurrency=1))
    run_ids = [submit(stack, name)["id"] for _ in range(4)]
    for run_id in run_ids:
        assert stack.wait_finished(run_id)["status"] == "failed"
    return run_ids


def assert_one_at_a_time(stack: Stack, run_ids: list[str]) -> None:
    """Each run succeeded, and from its replayed step's start to its end no other ran."""
    finished = [stack.wait_finished(run_id) for run_id in run_ids]
    assert [run["status"] for run in finished] == ["succeeded"] * len(run_ids)
    spans = sorted(
        (moment(run["steps"][0]["started_at"]), moment(run["finished_at"])) for run in finished
    )
    for before, after in zip(spans, spans[1:], strict=False):
        assert after[0] >= before[1], (before, after)


def test_a_bulk_replay_of_a_limited_workflow_runs_one_run_at_a_time(
    ticking: Stack, unique: str
) -> None:
    run_ids = failing_then_napping(ticking, unique, 0.8)
    headers = ticking.headers("ops@example.com", "admin.*")
    body = {"filter": {"workflow": unique}, "confirm_count": 4, "reason": "redrive"}
    answer = ticking.client().post("/admin/dlq/replay", json=body, headers=headers)
    assert answer.status_code == 202, answer.get_json()
    results = answer.get_json()["results"]
    assert [item["outcome"] for item in results] == ["replayed"] * 4
    # The last run waits behind three naps of 0.8 s: still unsent now.
    last = ticking.run(results[-1]["run_id"])
    assert (last["status"], last["waiting"]) == ("queued", "concurrency")

    assert_one_at_a_time(ticking, run_ids)
    # Oldest letter first: the first took the free slot, the others waited for it.
    assert [item.get("waiting") for item in results] == [None] + ["concurrency"] * 3


def test_the_cli_says_which_runs_of_a_bulk_replay_wait_for_a_slot(
    ticking: Stack, unique: str
) -> None:
    run_ids = failing_then_napping(ticking, unique, 0.2)
    args = ("--workflow", unique, "--confirm-count", "4", "--reason", "redrive")
    output = ok(run_engine(ticking.env, "dlq", "replay", "--all", *args))
    lines = output.splitlines()
    assert [line.endswith("waiting (concurrency)") for line in lines[:4]] == [False] + [True] * 3
    assert lines[4] == "4 dead letter(s): 4 replayed; 3 run(s) waiting for a slot"
    assert_one_at_a_time(ticking, run_ids)


def test_a_single_replay_says_when_its_run_waits_for_a_slot(ticking: Stack, unique: str) -> None:
    # Naps long enough that the first run still holds the slot while the CLI starts.
    run_ids = failing_then_napping(ticking, unique, 3.0)
    headers = ticking.headers("ops@example.com", "admin.*")
    listed = ticking.client().get(f"/admin/dlq?workflow={unique}", headers=headers).get_json()
    letters = {item["run_id"]: item["id"] for item in listed["items"]}
    first, second, third = (letters[run_id] for run_id in run_ids[:3])

    def replay(letter_id: str) -> dict[str, Any]:
        answer = ticking.client().post(
            f"/admin/dlq/{letter_id}/replay", json={"reason": "redrive"}, headers=headers
        )
        assert answer.status_code == 202, answer.get_json()
        return cast(dict[str, Any], answer.get_json())

    assert replay(first)["waiting"] is None  # the slot was free
    output = ok(run_engine(ticking.env, "dlq", "replay", second, "--reason", "redrive"))
    assert output.strip().endswith("it waits for a slot (concurrency)"), output
    assert replay(third)["waiting"] == "concurrency"
    assert_one_at_a_time(ticking, run_ids[:3])

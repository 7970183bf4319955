"""What Flower is fed: a worker sends every task's received, started and succeeded events, in
batches (workers/events.py) — read off a real redis-server as any monitor subscribes."""

from __future__ import annotations

import base64
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from engine.work import plan_task_id
from tests.support.stack import private_stack
from workers import events

RUNS = 30
FLOWER_SHOWS = {"task-received", "task-started", "task-succeeded"}


def task_events(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The task events one published kombu message carries (a batch is a list)."""
    envelope = json.loads(message["data"])
    body = envelope["body"]
    if envelope.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    decoded = json.loads(body)
    batch = decoded if isinstance(decoded, list) else [decoded]
    return [event for event in batch if event.get("type", "").startswith("task-")]


def test_a_worker_sends_every_task_event_flower_shows_in_batches(tmp_path: Path) -> None:
    with private_stack("sqlite", tmp_path) as (stack, server):
        monitor = server.client().pubsub(ignore_subscribe_messages=True)
        monitor.psubscribe("*celeryev*")
        stack.register({"name": "tick", "version": 1, "steps": [{"id": "t", "action": "noop"}]})
        headers = stack.headers()
        # Queued before the worker starts, so it drains them as fast as it can: the events of
        # a busy worker, whatever the speed of this machine.
        run_ids = [stack.submit("tick", headers=headers) for _ in range(RUNS)]
        stack.start_worker(concurrency=2)
        for run_id in run_ids:
            assert stack.wait_finished(run_id)["status"] == "succeeded"

        # Each run's first step ran inside its plan_run task: that is the task Flower lists.
        seen: dict[str, set[str]] = defaultdict(set)
        messages = count = 0
        deadline = time.monotonic() + events.FLUSH_S + 10
        wanted = {plan_task_id(run_id) for run_id in run_ids}
        while time.monotonic() < deadline and any(seen[t] != FLOWER_SHOWS for t in wanted):
            message = monitor.get_message(timeout=0.5)
            if message is None:
                continue
            carried = task_events(message)
            if carried:
                messages += 1
                count += len(carried)
            for event in carried:
                seen[event["uuid"]].add(event["type"])
        monitor.close()

        missing = {task: FLOWER_SHOWS - seen[task] for task in wanted if seen[task] != FLOWER_SHOWS}
        assert not missing
        # One PUBLISH per event or two without the batching; here a few batches.
        assert messages <= count / 4, (messages, count)

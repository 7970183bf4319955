"""Sending a use case's work (workers/dispatch.py) on a real redis-server of its own: each
message lands on its queue's list without any declaration, before a worker ever declared
the queues and after Redis lost everything it held."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from engine.config import Settings
from engine.queues import QueueLayout
from engine.work import Dispatch, Work
from tests.support.services import RedisServer
from workers import dispatch
from workers.factory import make_celery

PREFIX = "dispatch-test:"


def test_a_send_reaches_its_queue_without_declaring_it_even_after_a_flush(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        sender = make_celery(Settings(redis_url=server.url, redis_key_prefix=PREFIX))
        client = server.client()

        def send(step: str) -> None:
            dispatch.send(
                Work([Dispatch("steps.execute", ("r1", step), "steps", f"r1:{step}:1")]), sender
            )

        send("a")
        send("b")
        # kombu's declaration would have written the queue's binding.
        assert [key.decode() for key in client.keys("*")] == [f"{PREFIX}steps"]
        assert client.llen(f"{PREFIX}steps") == 2

        client.flushall()
        send("c")
        assert client.llen(f"{PREFIX}steps") == 1
    finally:
        server.stop()


def test_a_message_carries_what_celery_gives_a_task_and_names_the_task_that_sent_it(
    tmp_path: Path,
) -> None:
    """Each message holds what a worker and Flower read: the task, its id, arguments and
    their repr, time limits, an ETA for a countdown, its priority, and the task it was sent
    from (parent) and that task's root, as Celery's send_task would set them."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        sender = make_celery(Settings(redis_url=server.url, redis_key_prefix=PREFIX))
        client = server.client()
        retry = Dispatch(
            "steps.execute",
            ("r1", "a"),
            "steps",
            "r1:a:2",
            countdown=30,
            soft_time_limit=5,
            time_limit=7,
            priority=3,
        )
        dispatch.send(Work([retry]), sender)

        # Sent from inside a task that a task ran: Celery's own stack of current tasks
        # says which (apply runs them here, as a worker would, without a broker).
        @sender.task(name="tests.inner")
        def inner() -> None:
            dispatch.send(Work([Dispatch("steps.execute", ("r1", "b"), "steps", "r1:b:1")]), sender)

        @sender.task(name="tests.outer")
        def outer() -> None:
            inner.apply(task_id="r1:plan", throw=True)

        outer.apply(task_id="r0:plan", throw=True)

        layout = QueueLayout.from_transport_options(sender.conf.broker_transport_options)
        # The Redis transport keeps a list per priority step; priority 0 is the queue's own.
        [sent_inside, queued] = [
            json.loads(message)
            for key in layout.keys("steps")
            for message in client.lrange(key, 0, -1)
        ]
    finally:
        server.stop()
    headers = queued["headers"]
    assert (headers["task"], headers["id"], headers["retries"]) == ("steps.execute", "r1:a:2", 0)
    assert (headers["argsrepr"], headers["kwargsrepr"]) == ("('r1', 'a')", "{}")
    assert headers["timelimit"] == [7, 5]
    assert datetime.fromisoformat(headers["eta"]) > datetime.now(UTC) + timedelta(seconds=25)
    assert (headers["root_id"], headers["parent_id"]) == ("r1:a:2", None)
    assert queued["properties"]["priority"] == 3
    assert queued["properties"]["delivery_info"] == {"exchange": "", "routing_key": "steps"}
    args, kwargs, _ = json.loads(base64.b64decode(queued["body"]))
    assert (args, kwargs) == (["r1", "a"], {})
    inside = sent_inside["headers"]
    assert (inside["id"], inside["parent_id"], inside["root_id"]) == (
        "r1:b:1",
        "r1:plan",
        "r0:plan",
    )

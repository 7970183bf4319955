"""Sending a use case's work (workers/dispatch.py) on a real redis-server of its own: each
message lands on its queue's list without any declaration, before a worker ever declared
the queues and after Redis lost everything it held."""

from __future__ import annotations

from pathlib import Path

from engine.config import Settings
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

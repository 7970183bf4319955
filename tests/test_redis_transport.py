"""The platform's broker transport (workers/redis_transport.py): Redis URLs pick it and still
read as Redis, a channel sends every command through one client, and a sender keeps
delivering across a Redis restart — against a real redis-server of its own."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery import Celery

from engine.config import Settings
from tests.support.services import RedisServer
from workers import redis_transport
from workers.factory import make_celery

QUEUE = "default"


def app_for(url: str, prefix: str = "transport-test:") -> Celery:
    return make_celery(Settings(redis_url=url, redis_key_prefix=prefix))


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
def test_redis_urls_take_the_platform_transport_and_still_read_as_redis(scheme: str) -> None:
    app = app_for(f"{scheme}://:secret@127.0.0.1:6379/0")
    with app.connection() as connection:
        assert isinstance(connection.transport, redis_transport.Transport)
        # What the worker logs and Flower's broker page read: the scheme, not a class path.
        assert connection.as_uri() == f"{scheme}://:**@127.0.0.1:6379/0"
        assert connection.transport.driver_type == "redis"


def test_another_scheme_keeps_the_transport_kombu_picks_for_it() -> None:
    app = app_for("sentinel://127.0.0.1:26379/0")
    with app.connection() as connection:
        assert not isinstance(connection.transport, redis_transport.Transport)


def queued(server: RedisServer, prefix: str) -> int:
    return server.client().llen(f"{prefix}{QUEUE}")


def test_a_channel_sends_every_publish_through_one_client(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        app = app_for(server.url)
        with app.producer_or_acquire() as producer:
            channel = producer.channel
            assert isinstance(channel, redis_transport.Channel)
            clients = []  # held, so no id is reused
            for _ in range(5):
                app.send_task("steps.noop", queue=QUEUE, producer=producer)
                with channel.conn_or_acquire() as client:
                    clients.append(client)
            # kombu's own channel would have built five.
            assert all(client is clients[0] for client in clients)
        assert queued(server, "transport-test:") == 5
    finally:
        server.stop()


def test_a_channel_that_dropped_its_pool_sends_through_a_client_of_the_new_one(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        app = app_for(server.url)
        with app.producer_or_acquire() as producer:
            channel = producer.channel
            app.send_task("steps.noop", queue=QUEUE, producer=producer)
            with channel.conn_or_acquire() as before:
                pass
            channel._disconnect_pools()  # as kombu does when the connection is lost
            app.send_task("steps.noop", queue=QUEUE, producer=producer)
            with channel.conn_or_acquire() as after:
                assert after is not before
                assert after.connection_pool is channel.pool
        assert queued(server, "transport-test:") == 2
    finally:
        server.stop()


def test_a_sender_keeps_delivering_across_a_redis_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        app = app_for(server.url)
        app.send_task("steps.noop", queue=QUEUE)
        assert queued(server, "transport-test:") == 1
        server.stop()
        server.start()  # keeps nothing: the queue is gone with the old server
        for _ in range(3):
            app.send_task("steps.noop", queue=QUEUE)
        assert queued(server, "transport-test:") == 3
    finally:
        server.stop()


def test_each_send_gets_a_delivery_tag_of_its_own_and_a_message_handed_back_keeps_it(
    tmp_path: Path,
) -> None:
    # What a claim relies on to tell a dead worker's redelivered message from another copy
    # of the same attempt (engine.claims.claim_step): the tag in the message's properties.
    server = RedisServer(tmp_path / "redis").start()
    try:
        app = app_for(server.url)
        with app.connection() as connection:
            for _ in range(2):  # the same attempt sent twice, as the reconciler resends it
                app.send_task("steps.execute", task_id="r:s:2", queue=QUEUE, connection=connection)
            channel = connection.default_channel
            first, second = (channel.basic_get(QUEUE) for _ in range(2))
            tags = [message.properties["delivery_tag"] for message in (first, second)]
            assert tags[0] != tags[1]
            assert not first.delivery_info.get("redelivered")
            channel.qos.restore_unacked()  # what a worker's shutdown does with what it holds
            handed_back = [channel.basic_get(QUEUE) for _ in range(2)]
            assert sorted(message.properties["delivery_tag"] for message in handed_back) == sorted(
                tags
            )
            assert all(message.delivery_info["redelivered"] for message in handed_back)
            for message in handed_back:
                message.ack()
    finally:
        server.stop()

"""/readyz against a Redis of its own: the probe keeps one connection open between calls,
answers 503 naming the broker while Redis is away, and is ready again once it is back."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tests.support import services
from tests.support.http import fields, problem
from tests.support.stack import Stack
from web import create_app
from web import db as web_db


def connections_received(observer: redis.Redis) -> int:
    return int(observer.info("stats")["total_connections_received"])


def test_readiness_probes_reuse_one_redis_connection_and_reconnect_after_redis_comes_back(
    database: Stack, tmp_path: Path
) -> None:
    if database.backend != "sqlite":
        pytest.skip("the broker's part: one database is enough")
    server = services.RedisServer(tmp_path / "redis").start()
    app = create_app(database.settings.with_changes(redis_url=server.url))
    observer = server.client()
    try:
        client = app.test_client()
        before = connections_received(observer)
        for _ in range(10):
            ready = client.get("/readyz")
            assert ready.status_code == 200, ready.get_json()
        # Ten probes, one connection (the first); it is still open.
        assert connections_received(observer) - before == 1
        clients = observer.client_list()
        assert len(clients) == 2 and [c["cmd"] for c in clients].count("ping") == 1

        server.stop()
        for _ in range(2):
            body = problem(client.get("/readyz"), 503)
            assert fields(body) == ["broker"]
            assert body["errors"][0]["message"] == "ConnectionError (details in the log)"

        server.start()  # the same port, a new process: the old connection is gone
        observer = server.client()
        before = connections_received(observer)
        for _ in range(5):
            ready = client.get("/readyz")
            assert ready.status_code == 200, ready.get_json()
        assert connections_received(observer) - before == 1
    finally:
        web_db.dispose(app)
        observer.close()
        server.stop()

"""Per-caller rate limits (web.rate_limits): counted in Redis by the token's sub, writes and
reads apart, a 429 problem with Retry-After over the limit, nothing counted for a request
without a valid token, off when empty, and requests let through while the storage is away."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from engine.config import Settings
from engine.errors import ConfigError
from engine.models import Run
from tests.conftest import spec
from tests.support import services
from tests.support.stack import Stack, private_stack

WRITER = "runs.read,runs.write,workflows.write"


@pytest.fixture
def limited(backend: str, tmp_path: Path) -> Iterator[Stack]:
    """A platform whose callers may make 3 writes and 4 reads a minute."""
    platform = Stack(
        backend, tmp_path, env={"RATE_LIMIT_WRITES": "3/minute", "RATE_LIMIT_READS": "4/minute"}
    )
    yield platform
    platform.close()


def runs_of(stack: Stack, workflow: str) -> int:
    with stack.sessions() as session:
        return session.scalar(select(func.count()).where(Run.workflow == workflow)) or 0


def test_a_caller_over_its_write_limit_is_answered_429_and_others_are_not(
    limited: Stack, unique: str
) -> None:
    client = limited.client()
    admin = limited.headers("admin@example.com", WRITER)
    assert (
        client.post(
            "/workflows", json=spec(unique, [{"id": "a", "action": "noop"}]), headers=admin
        ).status_code
        == 201
    )
    alice = limited.headers("alice@example.com", WRITER)
    for _ in range(3):
        assert client.post("/runs", json={"workflow": unique}, headers=alice).status_code == 202
    over = client.post("/runs", json={"workflow": unique}, headers=alice)

    assert over.status_code == 429
    assert over.mimetype == "application/problem+json"
    body = over.get_json()
    assert body["code"] == "rate_limited" and body["status"] == 429
    assert "3 per 1 minute" in body["detail"]
    assert 1 <= int(over.headers["Retry-After"]) <= 60
    assert over.headers["X-RateLimit-Limit"] == "3"
    assert over.headers["X-RateLimit-Remaining"] == "0"
    assert runs_of(limited, unique) == 3, "a refused submission created a run"
    # Another caller has a window of its own; alice's reads are counted apart.
    bob = limited.headers("bob@example.com", WRITER)
    assert client.post("/runs", json={"workflow": unique}, headers=bob).status_code == 202
    assert client.get("/runs", headers=alice).status_code == 200


def test_reads_are_limited_apart_and_a_request_without_a_valid_token_counts_for_nobody(
    limited: Stack,
) -> None:
    client = limited.client()
    carol = limited.headers("carol@example.com", WRITER)
    for _ in range(10):
        assert client.get("/runs").status_code == 401
        assert client.get("/health").status_code == 200
    for _ in range(4):
        assert client.get("/runs", headers=carol).status_code == 200
    over = client.get("/runs/nothing-here", headers=carol)
    assert over.status_code == 429, over.get_json()
    assert "reads" in over.get_json()["detail"]
    # Writes have their own window.
    assert client.post("/runs", json={"workflow": "none"}, headers=carol).status_code == 404


def test_an_event_stream_counts_once_however_many_events_it_sends(
    limited: Stack, unique: str
) -> None:
    client = limited.client()
    dave = limited.headers("dave@example.com", WRITER)
    client.post("/workflows", json=spec(unique, [{"id": "a", "action": "noop"}]), headers=dave)
    run_id = client.post("/runs", json={"workflow": unique}, headers=dave).get_json()["id"]
    # Cancelled: the stream sends the run, then ends (nothing more will come).
    assert client.post(f"/runs/{run_id}/cancel", headers=dave).status_code == 200
    stream = client.get(f"/runs/{run_id}/events", headers=dave, buffered=True)
    assert stream.status_code == 200
    assert stream.get_data().count(b"event: run") >= 1
    for _ in range(3):
        assert client.get(f"/runs/{run_id}", headers=dave).status_code == 200
    assert client.get(f"/runs/{run_id}", headers=dave).status_code == 429


def test_empty_limits_turn_rate_limiting_off(backend: str, tmp_path: Path) -> None:
    platform = Stack(backend, tmp_path, env={"RATE_LIMIT_WRITES": "", "RATE_LIMIT_READS": ""})
    try:
        client = platform.client()
        erin = platform.headers("erin@example.com", WRITER)
        answers = {client.get("/runs", headers=erin).status_code for _ in range(300)}
        answers |= {
            client.post("/runs", json={"workflow": "x"}, headers=erin).status_code
            for _ in range(150)
        }
        assert answers == {200, 404}
        assert "engine.rate_limits" not in platform.app.extensions
    finally:
        platform.close()


def test_submissions_go_on_while_the_limits_storage_is_down(
    backend: str, tmp_path: Path, unique: str
) -> None:
    """The counters and the broker share a private redis-server, which stops: submissions
    are still accepted (the database is the record; the runs are sent once Redis is back),
    and the limit still holds within the process."""
    env = {"RATE_LIMIT_WRITES": "5/minute", "RATE_LIMIT_READS": "100/minute"}
    with private_stack(backend, tmp_path, env) as (platform, server):
        client = platform.client()
        frank = platform.headers("frank@example.com", WRITER)
        created = client.post(
            "/workflows", json=spec(unique, [{"id": "a", "action": "noop"}]), headers=frank
        )
        assert created.status_code == 201
        server.stop()
        assert not services.redis_alive(server.url)
        for _ in range(5):
            answer = client.post("/runs", json={"workflow": unique}, headers=frank)
            assert answer.status_code == 202, answer.get_json()
        assert client.get("/runs", headers=frank).status_code == 200
        assert runs_of(platform, unique) == 5
        # Counted in this process's memory meanwhile (from the outage on): a sixth is refused.
        assert client.post("/runs", json={"workflow": unique}, headers=frank).status_code == 429


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RATE_LIMIT_WRITES", "lots"),
        ("RATE_LIMIT_READS", "0/second"),
        ("RATE_LIMIT_STORAGE_URL", "http://cache:11211"),
    ],
)
def test_a_bad_rate_limit_setting_stops_start_up_naming_it(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({"JWT_SECRET": "s" * 40, name: value})


def test_limits_are_off_by_default_and_counted_in_redis_url_once_set() -> None:
    settings = Settings.from_env({"JWT_SECRET": "s" * 40, "REDIS_URL": "redis://cache:6379/1"})
    assert not settings.rate_limited
    settings = Settings.from_env(
        {
            "JWT_SECRET": "s" * 40,
            "REDIS_URL": "redis://cache:6379/1",
            "RATE_LIMIT_READS": "9/second",
        }
    )
    assert settings.rate_limited and not settings.rate_limit_writes
    assert settings.rate_limit_storage == "redis://cache:6379/1"


def test_every_gunicorn_process_counts_in_the_same_window(tmp_path: Path) -> None:
    """Two API processes, one Redis: a caller's 6 writes a minute are 6 in all, whichever
    process answers (each request on a new connection)."""
    stack = Stack("sqlite", tmp_path, env={"RATE_LIMIT_WRITES": "6/minute"})
    port = services.free_port()
    process = services.start_gunicorn(
        {**stack.env, "WEB_CONCURRENCY": "2"}, tmp_path / "gunicorn.log", port
    )
    token = stack.token("gina@example.com", WRITER)

    def post() -> int:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request(
                "POST",
                "/runs",
                body=json.dumps({"workflow": "none"}),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    def answering() -> bool:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            return connection.getresponse().status == 200
        except OSError:
            return False

    try:
        services.wait_for(answering, 60, 0.1, "gunicorn to answer")
        statuses = [post() for _ in range(10)]
        assert statuses == [404] * 6 + [429] * 4
    finally:
        process.terminate()
        process.wait(20)
        stack.close()

"""GET /admin/status: the platform at a glance, for callers with the admin.status scope."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

import engine
from engine.models import DeadLetter, Run
from tests.conftest import spec
from tests.support import services
from tests.support.stack import Stack


def status(stack: Stack, scopes: str = "admin.status") -> Any:
    return stack.client().get("/admin/status", headers=stack.headers("ops@example.com", scopes))


def database_counts(stack: Stack) -> tuple[dict[str, int], int]:
    with stack.sessions() as session:
        runs = dict(session.execute(select(Run.status, func.count()).group_by(Run.status)).all())
        letters = session.scalar(
            select(func.count()).select_from(DeadLetter).where(DeadLetter.status == "open")
        )
    return runs, int(letters or 0)


def test_admin_status_reports_version_checks_queues_workers_runs_and_dead_letters(
    stack: Stack, unique: str
) -> None:
    stack.register(spec(unique, [{"id": "boom", "action": "fail", "retry": {"max_attempts": 1}}]))
    assert stack.wait_finished(stack.submit(unique))["status"] == "failed"

    def consistent() -> tuple[dict[str, Any], dict[str, int], int] | None:
        # Another test's run may move between the two reads; read until both agree.
        response = status(stack)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        runs, letters = database_counts(stack)
        by_status = {name: count for name, count in body["runs"]["by_status"].items() if count}
        if by_status == runs and body["dead_letters"]["open"] == letters:
            return body, runs, letters
        return None

    body, runs, letters = services.wait_for(consistent, 20, 0.2, "status to match the database")
    assert body["version"] == engine.__version__
    assert body["started_at"].endswith("Z")
    assert body["uptime_s"] >= 0
    assert body["database"] == {"status": "ok"}
    assert body["broker"] == {"status": "ok"}
    queues = {item["name"]: item for item in body["queues"]["items"]}
    assert set(queues) == {"manager", "steps", "default"}
    assert all(isinstance(item["depth"], int) for item in queues.values())
    worker_prefix = stack.workers[0].name.split("@")[0] + "@"
    assert body["workers"]["status"] == "ok"
    assert any(name.startswith(worker_prefix) for name in body["workers"]["names"])
    assert body["workers"]["online"] == len(body["workers"]["names"])
    assert runs["failed"] >= 1 and letters >= 1
    assert set(body["runs"]["by_status"]) == {
        "queued",
        "planning",
        "running",
        "succeeded",
        "failed",
        "cancelled",
    }
    for part in ("schedules", "webhooks"):
        assert body[part]["status"] == "ok"
        assert isinstance(body[part]["lag_s"], float) and body[part]["lag_s"] >= 0
    assert body["status"] == "ok"


def test_admin_status_needs_the_admin_status_scope(database: Stack) -> None:
    client = database.client()
    assert client.get("/admin/status").status_code == 401
    forbidden = status(database, "runs.read,admin.dlq.read")
    assert forbidden.status_code == 403
    assert forbidden.get_json()["errors"] == [
        {"field": "scopes", "message": "missing admin.status"}
    ]
    assert status(database, "admin.*").status_code == 200


def test_admin_status_answers_quickly_naming_the_broker_when_redis_is_down(
    tmp_path: Path,
) -> None:
    server = services.RedisServer(tmp_path / "redis").start()
    stack = Stack("sqlite", tmp_path / "stack", redis_url=server.url)
    try:
        client = stack.client()
        headers = stack.headers("ops@example.com", "admin.status")
        server.stop()

        started = time.monotonic()
        response = client.get("/admin/status", headers=headers)
        elapsed = time.monotonic() - started

        assert response.status_code == 200
        body = response.get_json()
        assert elapsed < 5, elapsed
        assert body["status"] == "degraded"
        assert body["database"] == {"status": "ok"}
        assert body["broker"]["status"] == "error"
        assert body["queues"]["status"] == "error"
        assert body["workers"]["online"] == 0
        assert body["runs"]["status"] == "ok"
    finally:
        stack.close()
        server.stop()

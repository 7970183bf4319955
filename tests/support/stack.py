"""A whole platform for tests: a migrated database, the API (Flask test client) and a real
prefork worker, all sharing one settings object and a private Redis key prefix."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import select

from engine import migrations
from engine.auth import mint_token, parse_ttl
from engine.config import Settings
from engine.db import make_engine, make_session_factory
from engine.models import DeadLetter
from tests.support import services
from tests.support.actions import executions_log
from web import db as web_db

JWT_SECRET = "test-secret-" + "x" * 40


class Stack:
    def __init__(
        self,
        backend: str,
        directory: Path,
        *,
        redis_url: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.backend = backend
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.redis_url = redis_url or services.REDIS_URL
        if not services.redis_alive(self.redis_url):
            services.unavailable(f"Redis at {self.redis_url}")
        if backend == "postgres":
            self.database_url = services.create_postgres_database()
        else:
            self.database_url = f"sqlite:///{directory / 'engine.db'}"
        migrations.upgrade(self.database_url)
        self.env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "REDIS_KEY_PREFIX": f"enginetest-{uuid.uuid4().hex[:8]}:",
            "JWT_SECRET": JWT_SECRET,
            "ENGINE_VAR_DIR": str(directory),
            "ENGINE_ACTION_MODULES": "tests.support.actions",
            "WORKFLOWS_DIR": str(directory / "no-builtin-workflows"),
            "WORKER_HEALTH_PORT": str(services.free_port()),
            "PYTHONPATH": str(services.ROOT),
            **(env or {}),
        }
        self.settings = Settings.from_env(self.env)
        self.db_engine = make_engine(self.settings)
        self.sessions = make_session_factory(self.db_engine)
        self.workers: list[services.Worker] = []
        self._app: Any = None

    @property
    def app(self) -> Any:
        if self._app is None:
            from web import create_app

            self._app = create_app(self.settings)
        return self._app

    def client(self) -> Any:
        return self.app.test_client()

    def start_worker(self, **options: Any) -> services.Worker:
        index = len(self.workers)
        env = {**self.env, **options.pop("env", {})}
        worker = services.Worker(env, self.directory / f"worker-{index}.log", **options)
        self.workers.append(worker.start())
        return worker

    def token(
        self,
        sub: str = "alice@example.com",
        scopes: str = "runs.read,runs.write,workflows.read,workflows.write",
    ) -> str:
        return mint_token(self.settings, sub, scopes.split(","), parse_ttl("1h")).token

    def headers(self, sub: str = "alice@example.com", scopes: str | None = None) -> dict[str, str]:
        token = self.token(sub, scopes) if scopes else self.token(sub)
        return {"Authorization": f"Bearer {token}"}

    def executions(self, run_id: str | None = None) -> list[tuple[str, str, int]]:
        """(run_id, step_id, attempt) of every recorded execution."""
        path = executions_log(self.directory)
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            run, step, attempt, _pid = line.split()
            if run_id is None or run == run_id:
                rows.append((run, step, int(attempt)))
        return rows

    def register(self, spec: dict[str, Any]) -> dict[str, Any]:
        response = self.client().post(
            "/workflows", json=spec, headers=self.headers(scopes="workflows.write")
        )
        assert response.status_code in (200, 201), response.get_json()
        return response.get_json()

    def submit(
        self,
        workflow: str,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> str:
        response = self.client().post(
            "/runs",
            json={"workflow": workflow, "params": params or {}},
            headers=headers or self.headers(),
        )
        assert response.status_code == 202, response.get_json()
        return response.get_json()["id"]

    def run(self, run_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        response = self.client().get(
            f"/runs/{run_id}", headers=headers or self.headers(scopes="admin.*,runs.read")
        )
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def wait_finished(self, run_id: str, timeout: float = 60) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            run = self.run(run_id)
            return run if run["status"] in ("succeeded", "failed", "cancelled") else None

        return services.wait_for(finished, timeout, 0.1, f"run {run_id} to finish")

    def step(self, run_id: str, step_id: str) -> dict[str, Any]:
        """One step of a run, as GET /runs/{id} shows it."""
        return next(step for step in self.run(run_id)["steps"] if step["step_id"] == step_id)

    def pid(self, run_id: str, step_id: str, attempt: int = 1, timeout: float = 30) -> int:
        """The pid of the process running an attempt of a `record` (with `sleep`) or
        `stubborn` step, once it has started."""
        path = self.directory / "pids" / f"{run_id}.{step_id}.{attempt}"
        services.wait_for(path.exists, timeout, message=f"{path.name} to start")
        return int(services.wait_for(lambda: path.read_text().strip(), 5, message=path.name))

    def dead_letters(self, run_id: str) -> list[DeadLetter]:
        """The dead letters of a run, oldest first (read from the database)."""
        with self.sessions() as session:
            return list(
                session.scalars(
                    select(DeadLetter)
                    .where(DeadLetter.run_id == run_id)
                    .order_by(DeadLetter.failed_at)
                )
            )

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.db_engine.dispose()
        if self._app is not None:
            web_db.dispose(self._app)
        if self.backend == "postgres":
            services.drop_postgres_database(self.database_url)
        self._forget_redis_keys()

    def _forget_redis_keys(self) -> None:
        """Leave the shared Redis as found: drop every key under this stack's prefix."""
        prefix = self.env["REDIS_KEY_PREFIX"]
        try:
            client = redis.Redis.from_url(self.redis_url, socket_timeout=2)
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        except redis.RedisError:
            pass  # a private redis-server that a drill already stopped


@contextmanager
def private_stack(
    backend: str, directory: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[Stack, services.RedisServer]]:
    """A Stack on a private redis-server of its own, for drills that kill, flush or restart
    things; the caller starts the workers it needs. Everything stops on the way out."""
    server = services.RedisServer(directory / "redis").start()
    try:
        platform = Stack(backend, directory, redis_url=server.url, env=env)
        try:
            yield platform, server
        finally:
            platform.close()
    finally:
        server.stop()

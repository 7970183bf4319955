"""The bench's own platform: a fresh database per backend, a private Redis key prefix, the
worker and gunicorn processes it starts and stops itself (bench.processes), and the engine
in process for submitting runs; bench.readings reads what the runs did."""

from __future__ import annotations

import os
import secrets
import socket
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, text

from bench.processes import BIN, ROOT, WORKER_LOGLEVEL, WORKER_QUEUES, Process, free_port
from bench.readings import RunReadings
from engine import actions, migrations
from engine import runs as run_cases
from engine import workflows as workflow_specs
from engine.auth import Caller, mint_token, parse_ttl
from engine.config import Settings
from engine.db import make_engine, make_session_factory
from workers import dispatch
from workers.factory import make_celery

USER = "bench@example.com"
# The local services the bench uses unless told otherwise (a PostgreSQL login that may
# create databases: each platform makes its own and drops it at the end).
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def purge_redis_prefix(client: redis.Redis, prefix: str) -> int:
    """Delete every key under the bench's private prefix (and only those)."""
    removed = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=prefix + "*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            removed += client.unlink(*batch)
            batch = []
    if batch:
        removed += client.unlink(*batch)
    return removed


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Platform(RunReadings):
    """One backend's platform: a migrated database, settings with a private Redis prefix,
    an in-process sender, and the worker and API processes the scenarios start; what its
    runs did is read through RunReadings."""

    def __init__(
        self,
        backend: str,
        directory: Path,
        *,
        redis_url: str,
        postgres_admin_url: str,
        concurrency: int,
        prefix: str,
    ) -> None:
        self.backend = backend
        self.directory = directory
        self.concurrency = concurrency
        self.prefix = prefix
        self.postgres_admin_url = postgres_admin_url
        self.processes: list[Process] = []
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "no-workflows").mkdir(exist_ok=True)
        self.database_url = (
            self._create_postgres_database()
            if backend == "postgres"
            else f"sqlite:///{directory / 'engine.db'}"
        )
        migrations.upgrade(self.database_url)
        self.env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": redis_url,
            "REDIS_KEY_PREFIX": prefix,
            "JWT_SECRET": secrets.token_hex(32),
            "ENGINE_VAR_DIR": str(directory),
            "WORKFLOWS_DIR": str(directory / "no-workflows"),
            "WORKER_HEALTH_PORT": str(free_port()),
            # The bulk replay's pacing is a safety valve for operators; the bench measures
            # what the replay path itself can do.
            "BULK_REPLAY_RATE": "1000000",
            "PYTHONPATH": str(ROOT),
        }
        self.env.pop("LOG_DIR", None)
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.settings = Settings.from_env(self.env)
        actions.load_plugins(self.settings.action_modules)
        self.db_engine = make_engine(self.settings)
        self.sessions = make_session_factory(self.db_engine)
        self.reads = make_session_factory(self.db_engine, read_only=True)
        self.sender = make_celery(self.settings)
        self.caller = Caller(USER, ("runs.read", "runs.write"))
        self.redis = redis.Redis.from_url(redis_url)

    # -- database ------------------------------------------------------------------------
    def _create_postgres_database(self) -> str:
        name = f"engine_bench_{uuid.uuid4().hex[:10]}"
        admin = create_engine(self.postgres_admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        return self.postgres_admin_url.rsplit("/", 1)[0] + "/" + name

    def _drop_postgres_database(self) -> None:
        name = self.database_url.rsplit("/", 1)[1]
        admin = create_engine(self.postgres_admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()

    # -- processes -----------------------------------------------------------------------
    def start_worker(self, app: str = "workers.celery_app", prefix: str | None = None) -> Process:
        """A prefork worker like the Procfile's, with concurrency = this machine's cores."""
        name = f"bench-{uuid.uuid4().hex[:6]}"
        env = dict(self.env)
        if prefix is not None:
            env["REDIS_KEY_PREFIX"] = prefix
        args = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "-P",
            "prefork",
            "-c",
            str(self.concurrency),
            "-Q",
            WORKER_QUEUES,
            "-n",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            WORKER_LOGLEVEL,
        ]
        log_path = self.directory / f"{name}.log"
        worker = Process(args, env, log_path, node=f"{name}@{socket.gethostname()}")
        self.processes.append(worker)
        worker.wait_ready(lambda: b"ready." in log_path.read_bytes(), f"worker {name}")
        return worker

    def start_gunicorn(self, app: str, health_path: str, root: Path = ROOT) -> tuple[Process, str]:
        """gunicorn with the API's settings file (web/gunicorn_conf.py); returns its base URL.
        It serves this checkout's code, or that of the checkout at `root` (bench.versions):
        started there, since gunicorn puts its working directory first on the path."""
        port = free_port()
        env = {
            **self.env,
            "API_BIND": "127.0.0.1",
            "API_PORT": str(port),
            # Each gunicorn's metrics listener on a port of its own: servers run side by side.
            "API_METRICS_HOST": "127.0.0.1",
            "API_METRICS_PORT": str(free_port()),
            "PYTHONPATH": str(root),
        }
        # --reuse-port: each worker listens on its own socket and the kernel spreads the load
        # generator's keep-alive connections evenly. On one shared socket, whichever worker
        # woke first often took most of them and served them alone while the other idled,
        # which swung a run's figure by ×3 (the app's and the bare app's alike).
        args = [
            str(BIN / "gunicorn"),
            "-c",
            str(root / "web" / "gunicorn_conf.py"),
            "--reuse-port",
            app,
        ]
        log_path = self.directory / f"gunicorn-{port}.log"
        server = Process(args, env, log_path, cwd=root)
        self.processes.append(server)
        base = f"http://127.0.0.1:{port}"
        server.wait_ready(lambda: _http_ok(base + health_path), f"gunicorn {app}")
        return server, base

    def stop(self, process: Process) -> None:
        """Stop a process this platform started."""
        process.stop()
        if process in self.processes:
            self.processes.remove(process)

    # -- the engine, in process ----------------------------------------------------------
    def token(self, scopes: str = "runs.read,runs.write") -> str:
        return mint_token(self.settings, USER, scopes.split(","), parse_ttl("2h")).token

    def register(self, spec: dict[str, Any]) -> None:
        with self.sessions.begin() as session:
            workflow_specs.register(session, spec, self.settings)

    def submit(self, workflow: str, params: dict[str, Any] | None = None) -> str:
        """Submit a run the way the API does: one use case in a session of its own, commit,
        then send its work."""
        with self.sessions() as session:
            run, work, _ = run_cases.submit(
                session,
                self.settings,
                run_cases.SubmitRun(workflow, params or {}),
                self.caller,
            )
            session.commit()
            run_id = run.id
        dispatch.send(work, self.sender)
        return run_id

    def close(self) -> None:
        for process in list(self.processes):
            process.stop()
        self.processes.clear()
        self.db_engine.dispose()
        purge_redis_prefix(self.redis, self.prefix)
        self.redis.close()
        if self.backend == "postgres":
            self._drop_postgres_database()

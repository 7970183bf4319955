"""Real services for tests: the machine's Redis and PostgreSQL, private redis-servers,
worker processes, and a deadline-based wait."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() == "true"
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
T = TypeVar("T")


def unavailable(what: str) -> None:
    """Skip on a laptop without the service; fail under CI=true."""
    if IN_CI:
        pytest.fail(f"{what} is not available (CI=true: a missing service is a failure)")
    pytest.skip(f"{what} is not available")


def wait_for(
    check: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """Poll `check` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {message} (last: {last!r})")


def process_alive(pid: int) -> bool:
    """Whether a process still exists (a zombie not yet reaped by its parent counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gunicorn(
    env: dict[str, str], log_path: Path, port: int, *options: str, metrics_port: int | None = None
) -> subprocess.Popen[bytes]:
    """The API under gunicorn with its own settings (web/gunicorn_conf.py) on 127.0.0.1:`port`,
    its metrics listener on 127.0.0.1:`metrics_port` (a free port unless given), in a session
    of its own, logging to `log_path`; `options` go before the app."""
    env = {
        **env,
        "API_METRICS_HOST": "127.0.0.1",
        "API_METRICS_PORT": str(metrics_port or free_port()),
    }
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [
                str(Path(sys.executable).parent / "gunicorn"),
                "-c",
                "web/gunicorn_conf.py",
                "--bind",
                f"127.0.0.1:{port}",
                *options,
                "web:create_app()",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def start_beat(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`celery beat` answering remote control (as docker-compose.yml runs it, for its
    healthcheck), in a session of its own, logging to `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.celery_app",
                "beat",
                "--loglevel",
                "INFO",
                "-s",
                str(log_path.parent / f"beat-{uuid.uuid4().hex[:6]}"),
                "--enable-remote-control",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def redis_alive(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


class RedisServer:
    """A private redis-server on a free loopback port (for tests that flush or stop it)."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server binary")
        self.port = free_port()
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.binary = binary

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: redis_alive(self.url), 10, message="private redis-server")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


def create_postgres_database() -> str:
    """A database of its own for this test run; returns its URL."""
    from sqlalchemy import create_engine, text

    name = f"engine_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # no server, no permission: same answer
        unavailable(f"PostgreSQL at {POSTGRES_URL} ({exc.__class__.__name__})")
    finally:
        admin.dispose()
    return POSTGRES_URL.rsplit("/", 1)[0] + "/" + name


def drop_postgres_database(url: str) -> None:
    from sqlalchemy import create_engine, text

    name = url.rsplit("/", 1)[1]
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


class Worker:
    """A real `celery worker` process (prefork) with the given environment."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        *,
        concurrency: int = 2,
        queues: str = "manager,steps,default",
        beat: bool = False,
        name: str | None = None,
    ) -> None:
        self.env = env
        self.log_path = log_path
        self.name = name or f"test-{uuid.uuid4().hex[:8]}@%h"
        self.args = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.celery_app",
            "worker",
            "-P",
            "prefork",
            "-c",
            str(concurrency),
            "-Q",
            queues,
            "-n",
            self.name,
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "INFO",
        ]
        if beat:
            self.args += ["-B", "-s", str(log_path.parent / f"beat-{uuid.uuid4().hex[:6]}")]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.args,
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(
            lambda: b"ready." in self.log_path.read_bytes() or self._died(),
            60,
            message=f"worker {self.name} ready",
        )
        if self._died():
            raise AssertionError(f"worker exited: {self.log_path.read_text()[-3000:]}")
        return self

    def _died(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def children(self) -> list[int]:
        assert self.process is not None
        out = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True
        ).stdout
        return [int(pid) for pid in out.split()]

    def kill(self) -> None:
        """kill -9 the whole worker (main process and children)."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 9)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(10)
        self.log.close()


def end_every_session(database_url: str) -> int:
    """Have PostgreSQL end every session of the database, as a restart or failover does, and
    wait until they are gone (pg_terminate_backend only signals them); how many there were."""
    from sqlalchemy import create_engine, text

    name = database_url.rsplit("/", 1)[1]
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    sessions = text(
        "SELECT pid FROM pg_stat_activity WHERE datname = :name AND pid <> pg_backend_pid()"
    )
    try:
        with admin.connect() as connection:
            ended = set(connection.execute(sessions, {"name": name}).scalars())
            for pid in ended:
                connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            wait_for(
                lambda: not ended & set(connection.execute(sessions, {"name": name}).scalars()),
                10,
                0.05,
                message="the ended sessions to be gone",
            )
            return len(ended)
    finally:
        admin.dispose()


def allow_connections(database_url: str, allowed: bool) -> None:
    """Open or close a test database to new sessions; closed and with `end_every_session`,
    it is away for its clients as a stopped server is, while other tests' databases stay."""
    from sqlalchemy import create_engine, text

    name = database_url.rsplit("/", 1)[1]
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {allowed}'))
    finally:
        admin.dispose()

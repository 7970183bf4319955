"""The bench's own platform: a fresh database per backend, a private Redis key prefix, worker
and gunicorn processes it starts and stops itself, and the measuring helpers scenarios share."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import redis
from sqlalchemy import create_engine, func, select, text

from engine import actions, migrations
from engine import runs as run_cases
from engine import workflows as workflow_specs
from engine.auth import Caller, mint_token, parse_ttl
from engine.config import Settings
from engine.db import make_engine, make_session_factory
from engine.models import Run, Step
from workers import dispatch
from workers.factory import make_celery

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
USER = "bench@example.com"
WORKER_QUEUES = "manager,steps,default"
# The Procfile's worker log level: each task logs its receipt and success, for both apps.
WORKER_LOGLEVEL = "INFO"
T = TypeVar("T")


class BenchError(Exception):
    """A scenario could not be measured (a process died, a wait ran out)."""


@dataclass(frozen=True)
class Sizes:
    # Raw and platform figures are measured in alternating rounds; the best round counts.
    rounds: int
    raw_tasks: int
    runs: int
    http_connections: int
    latency_rate: float
    latency_s: float
    chain_length: int
    chain_repeats: int
    fanout_width: int
    fanout_repeats: int
    plan_sizes: tuple[int, int]
    plan_repeats: int
    api_connections: int
    api_duration_s: float
    memory_steps: int
    memory_warmup_steps: int
    dead_letters: int


SIZES = {
    "smoke": Sizes(
        rounds=1,
        raw_tasks=20,
        runs=10,
        http_connections=2,
        latency_rate=20,
        latency_s=0.5,
        chain_length=5,
        chain_repeats=1,
        fanout_width=10,
        fanout_repeats=1,
        plan_sizes=(10, 100),
        plan_repeats=1,
        api_connections=5,
        api_duration_s=1,
        memory_steps=20,
        memory_warmup_steps=10,
        dead_letters=5,
    ),
    "quick": Sizes(
        rounds=3,
        raw_tasks=2000,
        runs=400,
        http_connections=8,
        latency_rate=50,
        latency_s=10,
        chain_length=100,
        chain_repeats=2,
        fanout_width=1000,
        fanout_repeats=1,
        plan_sizes=(1000, 10000),
        plan_repeats=3,
        api_connections=50,
        api_duration_s=5,
        memory_steps=5000,
        memory_warmup_steps=500,
        dead_letters=1000,
    ),
    "full": Sizes(
        rounds=3,
        raw_tasks=20000,
        runs=4000,
        http_connections=8,
        latency_rate=50,
        latency_s=60,
        chain_length=100,
        chain_repeats=5,
        fanout_width=1000,
        fanout_repeats=3,
        plan_sizes=(1000, 10000),
        plan_repeats=5,
        api_connections=50,
        api_duration_s=20,
        memory_steps=50000,
        memory_warmup_steps=1000,
        dead_letters=10000,
    ),
}


def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `check` until it returns something truthy; BenchError at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


def paced(count: int, rate: float, send: Callable[[], object]) -> dict[str, float]:
    """Call `send` `count` times at a steady `rate` per second (the latency scenario), and
    say what rate was achieved and how many calls fell more than one interval behind."""
    interval = 1 / rate
    started = time.perf_counter()
    late = 0
    for index in range(count):
        pause_s = started + index * interval - time.perf_counter()
        if pause_s > 0:
            time.sleep(pause_s)
        elif pause_s < -interval:
            late += 1
        send()
    return {"achieved_rate_per_s": count / (time.perf_counter() - started), "late": late}


def delay_figures(delays_ms: list[float]) -> dict[str, float | None]:
    return {
        "p50_ms": percentile(delays_ms, 0.50),
        "p95_ms": percentile(delays_ms, 0.95),
        "p99_ms": percentile(delays_ms, 0.99),
        "max_ms": max(delays_ms) if delays_ms else None,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], share: float) -> float:
    """Linear interpolation between closest ranks; `share` in [0, 1]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * share
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: list[float]) -> float:
    return percentile(values, 0.5)


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process plus all its descendants, read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    family, todo = [], [pid]
    while todo:
        current = todo.pop()
        family.append(current)
        todo.extend(child for child, parent in parents.items() if parent == current)
    total = 0
    for member in family:
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


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


class Process:
    """A child process in its own session, logging to a file; stopped by its own id."""

    def __init__(
        self, args: list[str], env: dict[str, str], log_path: Path, node: str = ""
    ) -> None:
        self.args = args
        self.node = node  # a Celery worker's node name, for remote control
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.popen = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, size: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return ""

    def wait_ready(self, ready: Callable[[], bool], what: str, timeout: float = 60) -> None:
        def check() -> bool:
            if not self.alive():
                tail = self.tail()
                print(f"bench: {what} exited; the end of {self.log_path}:\n{tail}", flush=True)
                last = next((line for line in reversed(tail.splitlines()) if line.strip()), "")
                raise BenchError(f"{what} exited: {last.strip()}")
            return ready()

        wait_until(check, timeout, what, 0.1)

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        self.log.close()


def pause(app: Any, worker: Process) -> None:
    """Stop a worker consuming (remote control), so work can pile up before a drain."""
    for queue in WORKER_QUEUES.split(","):
        replies = app.control.cancel_consumer(
            queue, destination=[worker.node], reply=True, timeout=10
        )
        if not replies:
            raise BenchError(f"worker {worker.node} did not answer cancel_consumer")


def resume(app: Any, worker: Process) -> None:
    for queue in WORKER_QUEUES.split(","):
        replies = app.control.add_consumer(queue, destination=[worker.node], reply=True, timeout=10)
        if not replies:
            raise BenchError(f"worker {worker.node} did not answer add_consumer")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Platform:
    """One backend's platform: a migrated database, settings with a private Redis prefix,
    an in-process sender, and the worker and API processes the scenarios start."""

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

    def start_gunicorn(self, app: str, health_path: str) -> tuple[Process, str]:
        """gunicorn with the API's settings file (web/gunicorn_conf.py); returns its base URL."""
        port = free_port()
        env = {**self.env, "API_BIND": "127.0.0.1", "API_PORT": str(port)}
        # --reuse-port: each worker listens on its own socket and the kernel spreads the load
        # generator's keep-alive connections evenly. On one shared socket, whichever worker
        # woke first often took most of them and served them alone while the other idled,
        # which swung a run's figure by ×3 (the app's and the bare app's alike).
        args = [
            str(BIN / "gunicorn"),
            "-c",
            str(ROOT / "web" / "gunicorn_conf.py"),
            "--reuse-port",
            app,
        ]
        log_path = self.directory / f"gunicorn-{port}.log"
        server = Process(args, env, log_path)
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
        """Submit a run the way the API does: one use case, commit, then send its work."""
        with self.sessions.begin() as session:
            run, work, _ = run_cases.submit(
                session,
                self.settings,
                run_cases.SubmitRun(workflow, params or {}),
                self.caller,
            )
            run_id = run.id
        dispatch.send(work, self.sender)
        return run_id

    def run_counts(self, workflow: str) -> dict[str, int]:
        with self.reads() as session:
            rows = session.execute(
                select(Run.status, func.count())
                .where(Run.workflow == workflow)
                .group_by(Run.status)
            ).all()
        return {status: count for status, count in rows}

    def wait_runs(self, workflow: str, expected: int, timeout: float) -> dict[str, int]:
        """Wait until `expected` runs of a workflow finished; BenchError if any did not succeed."""

        def finished() -> dict[str, int] | None:
            counts = self.run_counts(workflow)
            done = sum(counts.get(s, 0) for s in ("succeeded", "failed", "cancelled"))
            return counts if done >= expected else None

        counts = wait_until(finished, timeout, f"{expected} runs of {workflow}", 0.05)
        if counts.get("succeeded", 0) < expected:
            raise BenchError(f"runs of {workflow} did not all succeed: {counts}")
        return counts

    def run_status(self, run_id: str) -> str:
        with self.reads() as session:
            return session.execute(select(Run.status).where(Run.id == run_id)).scalar_one()

    def run_times(self, run_id: str) -> tuple[datetime, datetime | None]:
        with self.reads() as session:
            row = session.execute(
                select(Run.created_at, Run.finished_at).where(Run.id == run_id)
            ).one()
        return row.created_at, row.finished_at

    def last_finished(self, workflow: str) -> datetime:
        with self.reads() as session:
            return session.execute(
                select(func.max(Run.finished_at)).where(Run.workflow == workflow)
            ).scalar_one()

    def finished_span(self, workflow: str) -> tuple[datetime, datetime]:
        """The first and the last finished_at among a workflow's runs."""
        with self.reads() as session:
            first, last = session.execute(
                select(func.min(Run.finished_at), func.max(Run.finished_at)).where(
                    Run.workflow == workflow
                )
            ).one()
        return first, last

    def first_step_delays_ms(self, workflow: str) -> list[float]:
        """Per run: its first step's start minus the run's creation, in milliseconds."""
        with self.reads() as session:
            rows = session.execute(
                select(Run.created_at, func.min(Step.started_at))
                .join(Step, Step.run_id == Run.id)
                .where(Run.workflow == workflow)
                .group_by(Run.id, Run.created_at)
            ).all()
        return [(started - created).total_seconds() * 1000 for created, started in rows if started]

    def close(self) -> None:
        for process in list(self.processes):
            process.stop()
        self.processes.clear()
        self.db_engine.dispose()
        purge_redis_prefix(self.redis, self.prefix)
        self.redis.close()
        if self.backend == "postgres":
            self._drop_postgres_database()

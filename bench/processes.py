"""The processes the bench starts (Celery workers, gunicorn): each in a session of its own,
logging to a file, stopped as a group; a Celery worker paused and resumed by remote control;
the resident memory of a process tree."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.measure import BenchError, wait_until

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WORKER_QUEUES = "manager,steps,default"
# The Procfile's worker log level: each task logs its receipt and success, for both apps.
WORKER_LOGLEVEL = "INFO"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _parent(stat: str) -> int:
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


def parent_pid(pid: int) -> int:
    return _parent(Path(f"/proc/{pid}/stat").read_text())


def family(pid: int) -> list[int]:
    """A process and all its living descendants, read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = _parent(stat)
    members, todo = [], [pid]
    while todo:
        current = todo.pop()
        members.append(current)
        todo.extend(child for child, parent in parents.items() if parent == current)
    return members


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process plus all its descendants."""
    total = 0
    for member in family(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


class Process:
    """A child process in its own session, logging to a file; stopped by its own id. It
    starts in this checkout's root, or in `cwd`."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        log_path: Path,
        node: str = "",
        cwd: Path = ROOT,
    ) -> None:
        self.args = args
        self.node = node  # a Celery worker's node name, for remote control
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.popen = subprocess.Popen(
            args,
            cwd=cwd,
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

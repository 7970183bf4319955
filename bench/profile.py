"""`python -m bench --profile`: sample a platform worker with py-spy while one-step runs flow
through it, then say where its CPU time goes: by layer (database driver, SQLAlchemy, the
broker client, Celery, the engine, logging...) and by function, inclusive and self.

py-spy (requirements-dev.txt) attaches to the running worker and its prefork children from
outside, so the figures carry no instrumentation cost.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from bench import specs
from bench.harness import BIN, ROOT, Platform

# First matching fragment of a frame's file path names its layer (order matters).
LAYERS = (
    ("sqlite3", "database driver (sqlite3)"),
    ("psycopg", "database driver (psycopg)"),
    ("sqlalchemy/orm", "SQLAlchemy ORM"),
    ("sqlalchemy", "SQLAlchemy Core/engine"),
    ("redis/", "broker client (redis-py)"),
    ("kombu", "broker client (kombu)"),
    ("billiard", "prefork pool (billiard)"),
    ("celery", "Celery"),
    ("logging", "logging"),
    ("json", "json"),
    ("jsonschema", "jsonschema"),
    ("jinja2", "Jinja2"),
    ("prometheus_client", "prometheus_client"),
    ("/engine/", "engine"),
    ("/workers/", "workers (thin tasks)"),
)
TOP = 25


def _parse(line: str) -> tuple[int, list[tuple[str, str]], int] | None:
    """(process depth, frames outermost first as (function, file), samples) of a raw line."""
    stack, _, count_text = line.rpartition(" ")
    if not stack or not count_text.isdigit():
        return None
    depth, frames = 0, []
    for frame in stack.split(";"):
        if frame.startswith("process "):
            depth += 1
            continue
        function, _, where = frame.partition(" (")
        frames.append((function.strip(), _short(where.rstrip(")").rsplit(":", 1)[0])))
    return depth, frames, int(count_text)


def _layer(path: str) -> str:
    for fragment, name in LAYERS:
        if fragment in path:
            return name
    return "other"


def _ours(path: str) -> bool:
    return path.startswith(("engine/", "workers/"))


def _share(counter: Counter[str], total: int, limit: int | None = None) -> list[str]:
    return [f"  {100 * n / total:5.1f} %  {name}" for name, n in counter.most_common(limit)]


def summarise(collapsed: str) -> str:
    """Where the samples went: main process vs pool children, layers (by the innermost
    frame), the engine's calls into libraries (inclusive), and functions (self)."""
    total = 0
    processes: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for line in collapsed.splitlines():
        parsed = _parse(line)
        if parsed is None or not parsed[1]:
            continue
        depth, frames, count = parsed
        total += count
        processes["worker main process (consumer)" if depth <= 1 else "pool children"] += count
        function, path = frames[-1]
        layers[_layer(path)] += count
        own[f"{function} ({path})"] += count
        crossings, mine = set(), set()
        for (outer, outer_path), (inner, inner_path) in zip(frames, frames[1:], strict=False):
            if _ours(outer_path):
                mine.add(f"{outer} ({outer_path})")
                if not _ours(inner_path):
                    crossings.add(f"{outer} -> {inner} ({inner_path})")
        if _ours(path):
            mine.add(f"{function} ({path})")
        for name in crossings:
            calls[name] += count
        for name in mine:
            ours[name] += count
    if not total:
        return "no samples (is py-spy allowed to attach? it needs ptrace)"
    lines = [f"{total} samples of busy threads", "", "by process:"]
    lines += _share(processes, total)
    lines += ["", "by layer (innermost frame):"]
    lines += _share(layers, total)
    lines += ["", f"engine and task functions, inclusive (top {TOP}):"]
    lines += _share(ours, total, TOP)
    lines += ["", f"library calls made by the engine and tasks, inclusive (top {TOP}):"]
    lines += _share(calls, total, TOP)
    lines += ["", f"functions, self (top {TOP}):"]
    lines += _share(own, total, TOP)
    return "\n".join(lines)


def _short(path: str) -> str:
    for marker in ("site-packages/", str(ROOT) + "/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def profile(redis_url: str, concurrency: int, seconds: float, backend: str = "sqlite") -> int:
    spy = shutil.which("py-spy") or str(BIN / "py-spy")
    if not Path(spy).exists():
        print("py-spy is not installed: .venv/bin/pip install -r requirements-dev.txt")
        return 1
    directory = Path(tempfile.mkdtemp(prefix="engine-profile-"))
    platform = Platform(
        backend,
        directory / backend,
        redis_url=redis_url,
        postgres_admin_url="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        concurrency=concurrency,
        prefix=f"bench-profile-{uuid.uuid4().hex[:8]}:",
    )
    try:
        name = "profile_one"
        platform.register(specs.one_step(name))
        worker = platform.start_worker()
        for _ in range(50):
            platform.submit(name)
        platform.wait_runs(name, 50, 60)
        output = directory / "worker.collapsed"
        recorder = subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(worker.pid),
                "--subprocesses",
                "--rate",
                "250",
                "--duration",
                str(int(seconds)),
                "--format",
                "raw",
                "--output",
                str(output),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        stop = threading.Event()
        submitted = [0]

        def feed() -> None:
            # Keep a backlog of a few hundred runs so the worker never idles.
            while not stop.is_set():
                counts = platform.run_counts(name)
                waiting = sum(counts.values()) - counts.get("succeeded", 0)
                for _ in range(max(0, 300 - waiting)):
                    platform.submit(name)
                    submitted[0] += 1
                time.sleep(0.2)

        feeder = threading.Thread(target=feed, daemon=True)
        started = time.time()
        feeder.start()
        _, errors = recorder.communicate(timeout=seconds + 60)
        stop.set()
        feeder.join()
        elapsed = time.time() - started
        done = platform.run_counts(name).get("succeeded", 0) - 50
        if not output.exists():
            print(f"py-spy failed: {errors.decode(errors='replace')[-1500:]}")
            return 1
        print(
            f"profiled the {backend} worker (-c {concurrency}) for {elapsed:.0f} s: "
            f"about {done / elapsed:.0f} one-step runs/s while sampled\n"
        )
        print(summarise(output.read_text()))
        return 0
    finally:
        platform.close()
        shutil.rmtree(directory, ignore_errors=True)

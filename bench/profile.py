"""`python -m bench --profile worker|api`: sample a platform worker with py-spy while one-step
runs flow through it (or the API's gunicorn under wrk), then say where the time goes: by
process, by layer (database driver, SQLAlchemy, broker client, Celery, Flask, JWT, the
engine, logging...) and by function, inclusive and self (bench/samples.py reads the stacks).

py-spy (requirements-dev.txt) attaches to the running worker and its prefork children from
outside, so the figures carry no instrumentation cost.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench import specs
from bench.harness import DEFAULT_POSTGRES, Platform
from bench.load import GET_SCRIPT, POST_SCRIPT, run_wrk
from bench.processes import BIN
from bench.samples import summarise


def _record(spy: str, pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
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


def _finish(recorder: subprocess.Popen[bytes], output: Path, seconds: float) -> str | None:
    _, errors = recorder.communicate(timeout=seconds + 60)
    if not output.exists():
        return f"py-spy failed: {errors.decode(errors='replace')[-1500:]}"
    return None


def _profile_worker(platform: Platform, spy: str, seconds: float, directory: Path) -> str:
    name = "profile_one"
    platform.register(specs.one_step(name))
    worker = platform.start_worker()
    for _ in range(50):
        platform.submit(name)
    platform.wait_runs(name, 50, 60)
    output = directory / "worker.collapsed"
    recorder = _record(spy, worker.pid, seconds, output)
    stop = threading.Event()

    def feed() -> None:
        # Keep a backlog of a few hundred runs so the worker never idles.
        while not stop.is_set():
            counts = platform.run_counts(name)
            waiting = sum(counts.values()) - counts.get("succeeded", 0)
            for _ in range(max(0, 300 - waiting)):
                platform.submit(name)
            time.sleep(0.2)

    feeder = threading.Thread(target=feed, daemon=True)
    started = time.time()
    feeder.start()
    failed = _finish(recorder, output, seconds)
    stop.set()
    feeder.join()
    if failed:
        return failed
    elapsed = time.time() - started
    done = platform.run_counts(name).get("succeeded", 0) - 50
    return (
        f"the {platform.backend} worker (-c {platform.concurrency}) for {elapsed:.0f} s, "
        f"about {done / elapsed:.0f} one-step runs/s while sampled\n\n"
        + summarise(output.read_text())
    )


def _profile_api(platform: Platform, spy: str, seconds: float, directory: Path) -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        return "wrk is missing: run `make bench` once (it installs wrk) or apt-get install wrk"
    name = "profile_api"
    platform.register(specs.one_step(name))
    run_id = platform.submit(name)
    server, base = platform.start_gunicorn("web:create_app()", "/health")
    token = platform.token()
    reports = []
    for label, script, url, env in (
        (
            "POST /runs",
            POST_SCRIPT,
            base + "/runs",
            {"BENCH_BODY": json.dumps({"workflow": name, "params": {}}), "BENCH_TOKEN": token},
        ),
        ("GET /runs/{id}", GET_SCRIPT, base + f"/runs/{run_id}", {"BENCH_TOKEN": token}),
    ):
        output = directory / f"api-{len(reports)}.collapsed"
        recorder = _record(spy, server.pid, seconds, output)
        result = run_wrk(wrk, url, script=script, connections=50, duration_s=seconds, env=env)
        failed = _finish(recorder, output, seconds)
        reports.append(
            f"{label} at 50 connections: {result['requests_per_s']:.0f} req/s while sampled\n\n"
            + (failed or summarise(output.read_text()))
        )
    platform.stop(server)
    return "\n\n".join(reports)


def profile(
    target: str, redis_url: str, concurrency: int, seconds: float, backend: str = "sqlite"
) -> int:
    """Profile the worker (`worker`) or the API under wrk (`api`) and print the summary."""
    spy = shutil.which("py-spy") or str(BIN / "py-spy")
    if not Path(spy).exists():
        print("py-spy is not installed: .venv/bin/pip install -r requirements-dev.txt")
        return 1
    directory = Path(tempfile.mkdtemp(prefix="engine-profile-"))
    platform = Platform(
        backend,
        directory / backend,
        redis_url=redis_url,
        postgres_admin_url=DEFAULT_POSTGRES,
        concurrency=concurrency,
        prefix=f"bench-profile-{uuid.uuid4().hex[:8]}:",
    )
    try:
        run = _profile_api if target == "api" else _profile_worker
        print("profiled " + run(platform, spy, seconds, directory))
        return 0
    finally:
        platform.close()
        shutil.rmtree(directory, ignore_errors=True)

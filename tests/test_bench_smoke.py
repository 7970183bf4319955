"""The bench harness (`make bench`) at tiny sizes, so it cannot rot unnoticed. Nothing here
looks at a timing: only that every scenario ran and left its figures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.runner import SCENARIOS
from tests.support import services


def test_the_bench_harness_runs_every_scenario_at_tiny_sizes_and_records_each_one(
    tmp_path: Path,
) -> None:
    if not services.redis_alive(services.REDIS_URL):
        services.unavailable(f"Redis at {services.REDIS_URL}")
    output = tmp_path / "results.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--smoke",
            "--backends",
            "sqlite",
            "--no-install",
            "--redis-url",
            services.REDIS_URL,
            "--output",
            str(output),
        ],
        cwd=services.ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(output.read_text())
    assert {"nproc", "cpu_model", "python", "celery"} <= set(results["machine"])
    figures = results["backends"]["sqlite"]
    assert set(SCENARIOS) <= set(figures)
    broken = {name: figures[name] for name in SCENARIOS if _errors(figures[name])}
    assert not broken, broken
    # The latency scenario measures raw Celery's send -> start beside the platform's, each
    # split where the sender's publish returned (a worker may start before the sender notes
    # the time, so the part after it is only bounded by the whole).
    for side in (figures["latency"], figures["latency"]["raw"]):
        assert side["p50_ms"] > 0 and side["send_p50_ms"] > 0, side
        assert side["start_p50_ms"] < side["p50_ms"], side
    # Each 1-step round says how busy the cores were and what each process tree spent.
    for path in ("raw", "engine", "http"):
        cpu = figures["throughput"][path]["cpu"]
        assert 0 < cpu["cores_busy"] <= 1, (path, cpu)
        assert cpu["ms_per_unit"]["worker"] > 0, (path, cpu)
        assert "redis" in cpu["ms_per_unit"], (path, cpu)
    assert figures["throughput"]["http"]["cpu"]["ms_per_unit"]["api"] > 0
    # The API phase says what each request cost the server, and the app alone in process,
    # keeping every round it alternated.
    for scenario in ("post_runs", "get_run", "hello_post", "hello_get"):
        assert len(figures["api"][scenario]["rounds"]) == results["sizes"]["rounds"]
        assert figures["api"][scenario]["server_cpu_ms"] > 0, figures["api"][scenario]
        assert figures["api"][scenario]["app_cpu_us"] > 0, figures["api"][scenario]
    assert "scenario" in done.stdout and "sqlite" in done.stdout


def _errors(section: Any) -> list[str]:
    """Every `error` recorded anywhere in a scenario's figures."""
    if isinstance(section, dict):
        found = [str(section["error"])] if "error" in section else []
        for value in section.values():
            found += _errors(value)
        return found
    if isinstance(section, list):
        return [error for item in section for error in _errors(item)]
    return []


def _versions(*arguments: str) -> subprocess.CompletedProcess[str]:
    if not services.redis_alive(services.REDIS_URL):
        services.unavailable(f"Redis at {services.REDIS_URL}")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.versions",
            "--rounds",
            "2",
            "--seconds",
            "1",
            "--connections",
            "2",
            "--no-install",
            "--redis-url",
            services.REDIS_URL,
            *arguments,
        ],
        cwd=services.ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_the_versions_comparison_reports_every_round_of_every_version_and_request() -> None:
    done = _versions("--post", "--bare", f"this={services.ROOT}", f"again={services.ROOT}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for request in ("GET /runs/{id}", "POST /runs"):
        header = next(index for index, line in enumerate(lines) if line.startswith(request))
        rows = {line.split()[0]: line.split() for line in lines[header + 1 : header + 4]}
        assert set(rows) == {"this", "again", "bare"}, lines
        for name, row in rows.items():
            # name, median, best, server CPU, failed requests, then one rate per round
            assert row[4] == "0" and len(row) == 5 + 2, (name, row)


def test_each_version_is_served_from_its_own_checkout(tmp_path: Path) -> None:
    # A copy of this checkout whose app answers every /runs request 503: only the copy's
    # rounds may count failures, which they would not if gunicorn imported this checkout.
    copy = tmp_path / "copy"
    shutil.copytree(
        services.ROOT, copy, ignore=shutil.ignore_patterns(".git", ".venv", "var", "__pycache__")
    )
    with open(copy / "web" / "__init__.py", "a") as module:
        module.write(
            "\n\n_made_here = create_app\n\n\n"
            "def create_app(settings=None):\n"
            "    from flask import request\n\n"
            "    app = _made_here(settings)\n"
            "    app.before_request(\n"
            "        lambda: ('the copy', 503) if request.path.startswith('/runs') else None\n"
            "    )\n"
            "    return app\n"
        )
    done = _versions(f"this={services.ROOT}", f"copy={copy}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[3:5]}
    assert rows["this"][4] == "0", rows
    assert int(rows["copy"][4]) > 0, rows

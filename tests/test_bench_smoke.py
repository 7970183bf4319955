"""The bench harness (`make bench`) at tiny sizes, so it cannot rot unnoticed. Nothing here
looks at a timing: only that every scenario ran and left its figures."""

from __future__ import annotations

import json
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

"""The platform side of the one-step comparison: runs submitted through the engine in a loop,
through HTTP against gunicorn, and drained from a full queue; plus the submit -> first step
latency at a steady rate. Completion comes from the database (the runs' finished_at), so
polling adds nothing to the figures."""

from __future__ import annotations

import json
import time
from typing import Any

from bench import specs
from bench.harness import Platform
from bench.load import Load
from bench.measure import latency_figures, paced
from bench.processes import Process, pause, resume
from bench.sizes import Sizes

WARM_RUNS = 20


def _timeout(runs: int) -> float:
    return max(60.0, runs / 5)


def warm_up(platform: Platform, name: str) -> None:
    """A few runs first, so caches, connections and forked children are in place."""
    platform.register(specs.one_step(name))
    for _ in range(WARM_RUNS):
        platform.submit(name)
    platform.wait_runs(name, WARM_RUNS, _timeout(WARM_RUNS))


def end_to_end(platform: Platform, runs: int, name: str) -> dict[str, Any]:
    """engine.runs.submit + workers.dispatch.send in a loop, as fast as they go."""
    platform.register(specs.one_step(name))
    started = time.time()
    for _ in range(runs):
        platform.submit(name)
    submitted = time.time() - started
    platform.wait_runs(name, runs, _timeout(runs))
    elapsed = platform.last_finished(name).timestamp() - started
    return {"runs": runs, "elapsed_s": elapsed, "submit_s": submitted, "per_s": runs / elapsed}


def drain(platform: Platform, worker: Process, runs: int, name: str) -> dict[str, Any]:
    """Submit `runs` while the worker does not consume, then time the worker alone: from
    the first run finished to the last (resuming a consumer waits out a broker poll)."""
    platform.register(specs.one_step(name))
    pause(platform.sender, worker)
    for _ in range(runs):
        platform.submit(name)
    resume(platform.sender, worker)
    platform.wait_runs(name, runs, _timeout(runs))
    first, last = platform.finished_span(name)
    elapsed = (last - first).total_seconds()
    return {"runs": runs, "elapsed_s": elapsed, "per_s": (runs - 1) / elapsed}


def http(
    platform: Platform, runs: int, connections: int, name: str, base_url: str, load: Load
) -> dict[str, Any]:
    """POST /runs through gunicorn from keep-alive connections until `runs` were answered
    (wrk when available: a load generator in Python would take CPU from the workers)."""
    platform.register(specs.one_step(name))
    started = time.time()
    sent = load.post(
        base_url + "/runs",
        json.dumps({"workflow": name, "params": {}}),
        platform.token(),
        connections=connections,
        duration_s=_timeout(runs),
        limit=runs,
        done=lambda: sum(platform.run_counts(name).values()) >= runs,
    )
    submitted = time.time() - started
    created = sum(platform.run_counts(name).values())
    platform.wait_runs(name, created, _timeout(created))
    elapsed = platform.last_finished(name).timestamp() - started
    return {
        "runs": created,
        "failed_requests": sent["non_2xx"],
        "connections": connections,
        "load_generator": load.name,
        "elapsed_s": elapsed,
        "submit_s": submitted,
        "per_s": created / elapsed,
        "submit_p50_ms": sent["p50_ms"],
        "submit_p99_ms": sent["p99_ms"],
    }


def latency(platform: Platform, sizes: Sizes, name: str) -> dict[str, Any]:
    """Runs submitted at a steady rate; per run, first step started_at minus created_at,
    split where the submission's publish returned."""
    platform.register(specs.one_step(name))
    count = max(1, round(sizes.latency_rate * sizes.latency_s))
    sent: dict[str, float] = {}

    def submit() -> None:
        run_id = platform.submit(name)
        sent[run_id] = time.time()

    pace = paced(count, sizes.latency_rate, submit)
    platform.wait_runs(name, count, _timeout(count))
    times = [
        (created, sent[run_id], started)
        for run_id, (created, started) in platform.first_step_times(name).items()
    ]
    return {
        "rate_per_s": sizes.latency_rate,
        "achieved_rate_per_s": pace["achieved_rate_per_s"],
        "late_submissions": pace["late"],
        "runs": count,
        **latency_figures(times),
    }

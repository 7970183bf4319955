"""One backend's bench: the order of the phases, which processes each one runs, and the
figures they leave. A scenario that fails records its error and the others still run."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bench import api, compare, memory, planning, replay, specs
from bench.harness import Platform
from bench.load import Load
from bench.sizes import Sizes
from engine.models import Run

SCENARIOS = (
    "throughput",
    "latency",
    "chain",
    "fanout",
    "planning",
    "api",
    "memory",
    "replay",
)
# The phases, in the order they run; `--only` picks some (compare: raw Celery against the
# platform for throughput, latency, chain and fan-out).
PHASES = ("compare", "memory", "planning", "replay", "api")


def _guard(results: dict[str, Any], key: str, measure: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    try:
        value = measure()
    except Exception as exc:  # one broken scenario must not hide the others' figures
        print(f"bench: {key} failed: {exc}", flush=True)
        traceback.print_exc()
        value = {"error": f"{type(exc).__name__}: {exc}"}
    if isinstance(value, dict):
        value.setdefault("bench_s", time.perf_counter() - started)
    results[key] = value
    return value


def run_backend(
    backend: str,
    directory: Path,
    sizes: Sizes,
    load: Load,
    *,
    redis_url: str,
    postgres_admin_url: str,
    concurrency: int,
    prefix: str,
    say: Callable[[str], None],
    phases: set[str] | frozenset[str] = frozenset(PHASES),
) -> dict[str, Any]:
    platform = Platform(
        backend,
        directory,
        redis_url=redis_url,
        postgres_admin_url=postgres_admin_url,
        concurrency=concurrency,
        prefix=prefix,
    )
    results: dict[str, Any] = {}
    try:
        if "compare" in phases:
            phase: dict[str, Any] = {}
            _guard(phase, "compare", lambda: compare.measure(platform, sizes, say, results, load))
            for key in ("throughput", "latency", "chain", "fanout"):
                results.setdefault(key, phase["compare"])
        if "memory" in phases:
            say(f"{backend}: worker memory soak")
            _guard(results, "memory", lambda: memory.measure(platform, sizes, "bench_soak"))
        if "planning" in phases:
            say(f"{backend}: planning")
            _guard(results, "planning", lambda: planning.measure(platform, sizes, "bench_plan"))
        if "replay" in phases:
            say(f"{backend}: bulk replay")
            _guard(results, "replay", lambda: replay.measure(platform, sizes, "bench_dead"))
        if "api" in phases:
            say(f"{backend}: API against a bare Flask app")
            _guard(
                results,
                "api",
                lambda: api.measure(
                    platform, sizes, load, "bench_api", _some_succeeded_run(platform, "bench_warm")
                ),
            )
    finally:
        platform.close()
    return {key: results.get(key, {"error": "not run (--only)"}) for key in SCENARIOS}


def _some_succeeded_run(platform: Platform, workflow: str) -> str:
    platform.register(specs.one_step(workflow))
    with platform.reads() as session:
        run_id = session.execute(
            select(Run.id).where(Run.workflow == workflow, Run.status == "succeeded").limit(1)
        ).scalar()
    if run_id is None:
        # The warm-up did not leave one: the API reads a queued run instead.
        run_id = platform.submit(workflow)
    return run_id

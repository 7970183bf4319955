"""Planning time of layered DAGs (engine.planning.plan_run plus its commit, in process, with the
compiled workflow cached as in a worker that planned the version before, and the process's
start-up objects frozen as in a worker). Compiling the spec, which a worker pays once per
version, is timed on its own."""

from __future__ import annotations

import gc
import time
from typing import Any

from bench import specs
from bench.harness import Platform
from bench.measure import BenchError, median
from bench.sizes import Sizes
from engine import planning
from engine import runs as run_cases
from engine import specs as workflow_specs


def measure(platform: Platform, sizes: Sizes, prefix: str) -> dict[str, Any]:
    # As a worker does at start (workers/signals.py): what is loaded so far is kept out of
    # the collector's sight, so a plan's full collections do not rescan it.
    gc.collect()
    gc.freeze()
    figures: dict[str, Any] = {}
    for size in sizes.plan_sizes:
        name = f"{prefix}_{size}"
        spec = specs.layered(name, size)
        started = time.perf_counter()
        workflow_specs.compile_spec(spec, platform.settings)
        compile_s = time.perf_counter() - started
        platform.register(spec)
        timings = []
        for _ in range(sizes.plan_repeats):
            with platform.sessions.begin() as session:
                run, _work, _ = run_cases.submit(
                    session, platform.settings, run_cases.SubmitRun(name, {}), platform.caller
                )
                run_id = run.id
            # The run's plan message is never sent: this process plans it, and nothing
            # runs its steps.
            started = time.perf_counter()
            with platform.sessions.begin() as session:
                work = planning.plan_run(session, platform.settings, run_id)
            timings.append(time.perf_counter() - started)
            if not work.dispatches:
                raise BenchError(f"planning run {run_id} of {name} released no step")
        figures[str(size)] = {
            "steps": size,
            "compile_s": compile_s,
            "plan_s": median(timings),
            "plan_runs_s": timings,
        }
    small, large = (figures[str(size)] for size in sizes.plan_sizes)
    return {
        "shape": "layers of 10 steps, each needing 2 steps of the layer before",
        "sizes": figures,
        "large_steps": large["steps"],
        "large_plan_s": large["plan_s"],
        "growth": large["plan_s"] / small["plan_s"],
        "size_ratio": large["steps"] / small["steps"],
    }

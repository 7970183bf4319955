"""The platform side of the DAG comparisons: one run of a chain of no-op steps, or of a
fan-out of no-op steps with a join, timed from submit to the run's finished_at."""

from __future__ import annotations

import time

from bench import specs
from bench.harness import Platform
from bench.measure import BenchError, wait_until


def register_chain(platform: Platform, name: str, length: int) -> None:
    platform.register(specs.chain(name, length))


def register_fan_out(platform: Platform, name: str, width: int) -> None:
    platform.register(specs.fan_out(name, width))


def one_run(platform: Platform, name: str, timeout: float) -> float:
    """Seconds from submitting a run of `name` to its finished_at."""
    started = time.time()
    run_id = platform.submit(name)

    def finished() -> str | None:
        status = platform.run_status(run_id)
        return status if status in ("succeeded", "failed", "cancelled") else None

    status = wait_until(finished, timeout, f"run {run_id} of {name}", 0.01)
    if status != "succeeded":
        raise BenchError(f"run {run_id} of {name} ended {status}")
    _, finished_at = platform.run_times(run_id)
    assert finished_at is not None
    return finished_at.timestamp() - started

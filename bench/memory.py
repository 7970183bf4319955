"""Worker memory across a soak: resident memory of the worker's main process plus its prefork
children (from /proc), after a warm-up and again after many more steps."""

from __future__ import annotations

import math
from typing import Any

from bench import specs
from bench.harness import Platform
from bench.processes import tree_rss_bytes
from bench.sizes import Sizes

MB = 1024 * 1024


def measure(platform: Platform, sizes: Sizes, name: str) -> dict[str, Any]:
    platform.register(specs.mixed(name))
    worker = platform.start_worker()
    try:
        at_start = tree_rss_bytes(worker.pid)
        warm_runs = math.ceil(sizes.memory_warmup_steps / specs.MIXED_STEPS)
        for _ in range(warm_runs):
            platform.submit(name)
        platform.wait_runs(name, warm_runs, max(60, warm_runs))
        before = tree_rss_bytes(worker.pid)
        soak_runs = math.ceil(sizes.memory_steps / specs.MIXED_STEPS)
        for _ in range(soak_runs):
            platform.submit(name)
        platform.wait_runs(name, warm_runs + soak_runs, max(120, soak_runs))
        after = tree_rss_bytes(worker.pid)
    finally:
        platform.stop(worker)
    return {
        "workflow": "10 steps: echo root, 8 echo/transform branches with templates, echo join",
        "processes": 1 + platform.concurrency,
        "warmup_steps": warm_runs * specs.MIXED_STEPS,
        "steps": soak_runs * specs.MIXED_STEPS,
        "rss_at_start_mb": at_start / MB,
        "rss_before_mb": before / MB,
        "rss_after_mb": after / MB,
        "growth_pct": (after - before) * 100 / before,
    }

"""Bulk replay of dead letters through the admin API (`POST /admin/dlq/replay`: a dry run for
the count, then the replay with confirm_count), timed from the confirming request."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import requests

from bench import specs
from bench.harness import Platform
from bench.measure import BenchError, wait_until
from bench.sizes import Sizes

REPLAY_PATH = "/admin/dlq/replay"


def _dead_letters(platform: Platform, name: str, count: int) -> None:
    platform.register(specs.failing(name))
    worker = platform.start_worker()
    try:
        for _ in range(count):
            platform.submit(name)
        wait_until(
            lambda: platform.run_counts(name).get("failed", 0) >= count,
            max(60, count / 5),
            f"{count} failed runs of {name}",
            0.1,
        )
    finally:
        platform.stop(worker)


def measure(platform: Platform, sizes: Sizes, name: str) -> dict[str, Any]:
    _dead_letters(platform, name, sizes.dead_letters)
    server, base = platform.start_gunicorn("web:create_app()", "/health")
    try:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {platform.token('admin.*')}"
        query = {"filter": {"workflow": name}, "reason": "bench: bulk replay"}
        dry = session.post(base + REPLAY_PATH, json={**query, "dry_run": True}, timeout=600)
        if dry.status_code != 200:
            raise BenchError(f"dry run answered {dry.status_code}: {dry.text[:500]}")
        count = dry.json()["count"]
        started = time.perf_counter()
        done = session.post(
            base + REPLAY_PATH, json={**query, "confirm_count": count}, timeout=3600
        )
        elapsed = time.perf_counter() - started
        if done.status_code not in (200, 202):
            raise BenchError(f"replay answered {done.status_code}: {done.text[:500]}")
        results = done.json().get("results", [])
    finally:
        platform.stop(server)
    return {
        "dead_letters": sizes.dead_letters,
        "matched": count,
        "replayed": len(results),
        "outcomes": dict(Counter(str(item.get("outcome")) for item in results)),
        "elapsed_s": elapsed,
        "items_per_s": len(results) / elapsed if elapsed else None,
        "bulk_replay_rate_setting": platform.settings.bulk_replay_rate,
    }

"""The speed targets of the bench on a 2-core machine, and whether a backend's figures meet
them. The printed table (bench/report.py) and bench/results.json carry both."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

TARGETS = {
    "throughput": "runs/s ≥ 0.5 × raw tasks/s",
    "latency": "p50 ≤ 5 ms and p99 ≤ 10 ms",
    "chain": "ratio ≤ 1.3",
    "fanout": "ratio ≤ 1.3",
    "planning": "10k steps ≤ 0.5 s (growth ≈ ×10)",
    "api_post": "≥ 0.5 × hello",
    "api_get": "≥ 0.7 × hello",
    "memory": "growth ≤ 10 %",
    "replay": "≥ 500 items/s",
}


def verdicts(backend: dict[str, Any]) -> dict[str, bool | None]:
    """PASS (True) / MISS (False) / not measured (None) per target."""

    def check(test: Callable[[], bool]) -> bool | None:
        try:
            return bool(test())
        except (KeyError, TypeError, AttributeError):
            return None

    throughput, latency = backend.get("throughput", {}), backend.get("latency", {})
    api, memory, replay = (
        backend.get("api", {}),
        backend.get("memory", {}),
        backend.get("replay", {}),
    )
    return {
        "throughput_engine": check(lambda: throughput["engine_ratio"] >= 0.5),
        "throughput_http": check(lambda: throughput["http_ratio"] >= 0.5),
        "latency": check(lambda: latency["p50_ms"] <= 5 and latency["p99_ms"] <= 10),
        "chain": check(lambda: backend["chain"]["ratio"] <= 1.3),
        "fanout": check(lambda: backend["fanout"]["ratio"] <= 1.3),
        "planning": check(lambda: backend["planning"]["large_plan_s"] <= 0.5),
        "api_post": check(lambda: api["post_ratio"] >= 0.5),
        "api_get": check(lambda: api["get_ratio"] >= 0.7),
        "memory": check(lambda: memory["growth_pct"] <= 10),
        "replay": check(lambda: replay["items_per_s"] >= 500),
    }

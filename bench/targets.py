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
# Beside the targets, two things the bench tracks so that a miss can be read. The API against
# a bare Flask app (target 6) is out of reach on two cores (bench/README.md says why), so the
# absolute request rates are tracked instead. The latency target is absolute, so raw
# Celery's own send -> start is held to it too: where raw Celery misses it, so does the
# machine, whatever the platform adds.
TRACKED = {
    "latency_raw": TARGETS["latency"],
    "api_post_floor": "≥ 500 req/s",
    "api_get_floor": "≥ 1,000 req/s",
}


def verdicts(backend: dict[str, Any]) -> dict[str, bool | None]:
    """PASS (True) / MISS (False) / not measured (None) per target, and per TRACKED figure."""

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
        "latency": check(lambda: _latency_met(latency)),
        "latency_raw": check(lambda: _latency_met(latency["raw"])),
        "chain": check(lambda: backend["chain"]["ratio"] <= 1.3),
        "fanout": check(lambda: backend["fanout"]["ratio"] <= 1.3),
        "planning": check(lambda: backend["planning"]["large_plan_s"] <= 0.5),
        "api_post": check(lambda: api["post_ratio"] >= 0.5),
        "api_get": check(lambda: api["get_ratio"] >= 0.7),
        "api_post_floor": check(lambda: api["post_runs"]["requests_per_s"] >= 500),
        "api_get_floor": check(lambda: api["get_run"]["requests_per_s"] >= 1000),
        "memory": check(lambda: memory["growth_pct"] <= 10),
        "replay": check(lambda: replay["items_per_s"] >= 500),
    }


def _latency_met(figures: dict[str, Any]) -> bool:
    return bool(figures["p50_ms"] <= 5 and figures["p99_ms"] <= 10)

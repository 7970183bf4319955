"""Measuring helpers the scenarios share: waiting for a condition, sending at a steady rate,
percentiles."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class BenchError(Exception):
    """A scenario could not be measured (a process died, a wait ran out)."""


def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `check` until it returns something truthy; BenchError at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


def paced(count: int, rate: float, send: Callable[[], object]) -> dict[str, float]:
    """Call `send` `count` times at a steady `rate` per second (the latency scenario), and
    say what rate was achieved and how many calls fell more than one interval behind."""
    interval = 1 / rate
    started = time.perf_counter()
    late = 0
    for index in range(count):
        pause_s = started + index * interval - time.perf_counter()
        if pause_s > 0:
            time.sleep(pause_s)
        elif pause_s < -interval:
            late += 1
        send()
    return {"achieved_rate_per_s": count / (time.perf_counter() - started), "late": late}


def latency_figures(times: list[tuple[float, float, float]]) -> dict[str, float | None]:
    """Per item, (begun, sent, started) in epoch seconds: the begun -> started delay's
    percentiles, and the medians of its two parts: the sender's, until its publish returned
    (`send_p50_ms`), and the rest, until the work started (`start_p50_ms`)."""
    delays_ms = [(started - begun) * 1000 for begun, _, started in times]
    return {
        "p50_ms": percentile(delays_ms, 0.50),
        "p95_ms": percentile(delays_ms, 0.95),
        "p99_ms": percentile(delays_ms, 0.99),
        "max_ms": max(delays_ms) if delays_ms else None,
        "send_p50_ms": median([(sent - begun) * 1000 for begun, sent, _ in times]),
        "start_p50_ms": median([(started - sent) * 1000 for _, sent, started in times]),
    }


def percentile(values: list[float], share: float) -> float:
    """Linear interpolation between closest ranks; `share` in [0, 1]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * share
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: list[float]) -> float:
    return percentile(values, 0.5)

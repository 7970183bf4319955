"""Retry policy: a value object that checks itself and computes backoff with jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from engine.errors import InvalidSpec


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    backoff_s: float = 1.0
    max_backoff_s: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise ValueError("backoff_s must be >= 0 and max_backoff_s >= backoff_s")

    @classmethod
    def from_spec(
        cls,
        spec: dict[str, Any] | None,
        default: RetryPolicy,
        field: str,
        max_backoff_cap: float | None = None,
    ) -> RetryPolicy:
        """Overlay a spec's `retry` mapping on a default; InvalidSpec names the field. A
        backoff above `max_backoff_cap` is refused: a retry waits unacknowledged in a
        worker, and the broker's visibility timeout only covers waits up to the cap."""
        if not spec:
            return default
        merged = {
            "max_attempts": spec.get("max_attempts", default.max_attempts),
            "backoff_s": spec.get("backoff_s", default.backoff_s),
            "max_backoff_s": spec.get(
                "max_backoff_s", max(default.max_backoff_s, spec.get("backoff_s", 0))
            ),
        }
        if max_backoff_cap is not None and merged["max_backoff_s"] > max_backoff_cap:
            message = f"max_backoff_s must not exceed RETRY_MAX_BACKOFF_S ({max_backoff_cap:g})"
            raise InvalidSpec(
                message, errors=[{"field": f"{field}.max_backoff_s", "message": message}]
            )
        try:
            return cls(**merged)
        except ValueError as exc:
            raise InvalidSpec(str(exc), errors=[{"field": field, "message": str(exc)}]) from exc

    def delay(self, attempt: int) -> float:
        """Seconds to wait before the attempt after `attempt` (1-based): exponential, capped,
        with half of it jittered so many failing steps do not retry in lockstep."""
        ceiling = min(self.max_backoff_s, self.backoff_s * (2 ** max(0, attempt - 1)))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

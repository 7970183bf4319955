"""The retry policy: a value object that checks itself and backs off with jitter."""

from __future__ import annotations

import pytest

from engine.errors import InvalidSpec
from engine.retry import RetryPolicy

DEFAULT = RetryPolicy(3, 1.0, 300.0)


def test_no_retry_spec_keeps_the_default() -> None:
    assert RetryPolicy.from_spec(None, DEFAULT, "retry") is DEFAULT
    assert RetryPolicy.from_spec({}, DEFAULT, "retry") is DEFAULT


def test_a_retry_spec_overlays_the_default() -> None:
    assert RetryPolicy.from_spec({"max_attempts": 5}, DEFAULT, "retry") == RetryPolicy(5, 1, 300)
    short = RetryPolicy.from_spec({"backoff_s": 0.05, "max_backoff_s": 0.1}, DEFAULT, "retry")
    assert short == RetryPolicy(3, 0.05, 0.1)
    # A backoff above the default cap raises the cap rather than failing.
    assert RetryPolicy.from_spec({"backoff_s": 600}, DEFAULT, "r").max_backoff_s == 600


def test_an_inconsistent_retry_spec_names_its_field() -> None:
    with pytest.raises(InvalidSpec) as raised:
        RetryPolicy.from_spec({"backoff_s": 10, "max_backoff_s": 1}, DEFAULT, "steps[2].retry")
    assert raised.value.errors[0]["field"] == "steps[2].retry"
    with pytest.raises(ValueError):
        RetryPolicy(0, 1, 1)
    with pytest.raises(ValueError):
        RetryPolicy(1, -1, 1)


def test_the_delay_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy(10, 1.0, 8.0)
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 8), (9, 8)]:
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays), (attempt, delays)
        assert len(set(delays)) > 1, "no jitter"
    assert RetryPolicy(3, 0, 0).delay(4) == 0

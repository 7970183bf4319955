"""engine.watch.follow, on a clock of its own: a state only when it changed, the end after
a finished one, quiet intervals, and the longest time to follow."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from engine import watch


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def reader(states: list[dict[str, Any]]) -> Any:
    """Reads `states` in turn, then the last one for ever."""
    items: Iterator[dict[str, Any]] = iter(states)
    last: dict[str, Any] = {}

    def read() -> dict[str, Any]:
        nonlocal last
        last = next(items, last)
        return last

    return read


def test_a_state_is_yielded_only_when_it_changed_and_a_finished_one_ends_it() -> None:
    queued, running = {"status": "queued"}, {"status": "running", "steps": [1]}
    states = [queued, queued, running, running, {**running, "steps": [2]}, {"status": "failed"}]
    clock = Clock()
    follow = watch.follow(reader(states), poll_interval_s=0.5, clock=clock, sleep=clock.sleep)
    changes = list(follow)
    assert [change.kind for change in changes] == [watch.STATE] * 4
    assert [change.state for change in changes] == [queued, running, states[4], states[5]]
    assert clock.sleeps == [0.5] * 5


def test_quiet_intervals_and_the_longest_time_to_follow() -> None:
    clock = Clock()
    changes = list(
        watch.follow(
            reader([{"status": "queued"}]),
            poll_interval_s=0.5,
            quiet_s=1.0,
            max_duration_s=3.2,
            clock=clock,
            sleep=clock.sleep,
        )
    )
    kinds = [change.kind for change in changes]
    assert kinds == [watch.STATE, watch.QUIET, watch.QUIET, watch.QUIET, watch.EXPIRED]
    assert clock.now == 3.2  # the last wait is cut to the end, not a whole interval


def test_a_first_reading_given_is_not_read_again() -> None:
    reads: list[int] = []

    def read() -> dict[str, Any]:
        reads.append(1)
        return {"status": "succeeded"}

    changes = list(watch.follow(read, poll_interval_s=1, first={"status": "cancelled"}))
    assert [change.state for change in changes] == [{"status": "cancelled"}] and reads == []

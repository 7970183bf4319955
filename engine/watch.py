"""Following a run until it finishes: the changes of what a reader sees of it, learned by
reading it again every poll interval. GET /runs/{id}/events and `engine runs watch` both
follow a run with `follow`; neither adds work to a worker or to a submission."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from engine.state import RUN_TERMINAL

# What `follow` yields: a new state of the run; a quiet interval went by; or the longest
# time to follow ran out (the run has not finished).
STATE, QUIET, EXPIRED = "state", "quiet", "expired"


@dataclass(frozen=True)
class Change:
    kind: str
    state: Mapping[str, Any] | None = None


def finished(state: Mapping[str, Any]) -> bool:
    return state["status"] in RUN_TERMINAL


def follow(
    read: Callable[[], Mapping[str, Any]],
    *,
    poll_interval_s: float,
    quiet_s: float | None = None,
    max_duration_s: float | None = None,
    first: Mapping[str, Any] | None = None,
    seen: Mapping[str, Any] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Change]:
    """The run's first state, then each state unlike the one before, ending at a finished
    one (succeeded, failed or cancelled). `read` returns the run as the reader sees it
    (`first`, when given, is its first reading). `seen` is a state the reader already has:
    a first state equal to it is not yielded (a finished one ends at once). With `quiet_s`,
    a QUIET change comes each time that long went by without a new state; with
    `max_duration_s`, an EXPIRED change ends it when that long went by without the run
    finishing."""
    started = clock()
    last = seen
    state = first if first is not None else read()
    quiet_since = started
    while True:
        if state != last:
            yield Change(STATE, state)
            last, quiet_since = state, clock()
        if finished(state):
            return
        now = clock()
        if max_duration_s is not None and now - started >= max_duration_s:
            yield Change(EXPIRED)
            return
        if quiet_s is not None and now - quiet_since >= quiet_s:
            yield Change(QUIET)
            quiet_since = now
        # Until the next reading, or sooner when a heartbeat or the end is due.
        due = [now + poll_interval_s]
        if quiet_s is not None:
            due.append(quiet_since + quiet_s)
        if max_duration_s is not None:
            due.append(started + max_duration_s)
        sleep(max(0.0, min(due) - now))
        state = read()

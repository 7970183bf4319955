"""Sweeping cancelled timers out of the worker's event loop.

Every message with a time limit (all of ours: a step's timeout, plan_run's budget) makes the
prefork pool arm a timer in the main process's event loop (kombu's hub) for its soft limit.
When the task ends in time the timer is cancelled, but it stays in the hub's timer heap
until its time would have come: with the default 300 s step timeout, five minutes. At a few
hundred steps a second that is tens of thousands of dead entries, about 600 bytes each; a
50,000-step soak grew the main process by 40 MB, and it only levels off after the longest
time limit (up to STEP_TIMEOUT_MAX_S). This bootstep takes them out every SWEEP_S, so the
heap holds the running tasks' timers and at most SWEEP_S worth of cancelled ones.
"""

from __future__ import annotations

import heapq
from typing import Any

from celery import bootsteps

SWEEP_S = 10.0


def sweep(timer: Any) -> int:
    """Drop the cancelled entries of a kombu Timer's heap; how many went. The heap is
    rebuilt in place: the hub's scheduler iterates over this very list."""
    queue = timer._queue
    kept = [item for item in queue if not item.entry.canceled]
    removed = len(queue) - len(kept)
    if removed:
        queue[:] = kept
        heapq.heapify(queue)
    return removed


class TimerSweep(bootsteps.StartStopStep):
    """Runs `sweep` on the worker's hub every SWEEP_S (pools with an event loop only)."""

    requires = ("celery.worker.components:Hub",)

    def __init__(self, worker: Any, **options: Any) -> None:
        super().__init__(worker, **options)
        self.tref: Any = None

    def include_if(self, worker: Any) -> bool:
        return bool(worker.use_eventloop)

    def start(self, worker: Any) -> None:
        self.tref = worker.hub.call_repeatedly(SWEEP_S, sweep, worker.hub.timer)

    def stop(self, worker: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None


def pending(worker: Any) -> int | None:
    """How many entries the worker's timer heap holds (None without an event loop)."""
    hub = getattr(worker, "hub", None)
    return len(hub.timer) if hub is not None else None

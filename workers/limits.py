"""Step time limits in the worker. A step sent as its own message has the pool's soft and
hard limits; at the hard limit the pool kills the child, so the parent records the attempt
(StepRequest). A step run inline (by plan_run, or next in a chain) gets its own limits from
a timer in the child (InlineTimeLimits), since the pool only knows the carrying task's."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from celery.worker.request import Request

from engine import recovery
from workers import dispatch
from workers.runtime import sessions, settings

log = logging.getLogger(__name__)

# How long a child past an inline step's hard limit waits for the attempt to be recorded.
INLINE_RECORD_BUDGET_S = 10.0
# Room left in the carrying task's own soft limit after an inline step's hard limit (and the
# recording of a hard limit), so the pool's limits never fire in the middle of a chain.
CHAIN_MARGIN_S = INLINE_RECORD_BUDGET_S + 2.0


def record_hard_limit(task_id: str, timeout: float) -> None:
    """Record an attempt killed at its hard time limit as TimeLimitExceeded and send its
    retry. Should this fail, the reconciler takes the attempt as lost when its lease ends."""
    try:
        with sessions().begin() as session:
            outcome = recovery.record_killed_attempt(
                session,
                settings(),
                task_id,
                "TimeLimitExceeded",
                f"the step ran past its hard time limit of {timeout:g} s and was killed",
            )
        if outcome is not None:
            dispatch.send(outcome.work)
    except Exception:
        log.exception(
            "task %s: recording the hard time limit failed; the reconciler will record "
            "the attempt as lost when its lease ends",
            task_id,
        )


class StepRequest(Request):
    """Records an attempt whose child was killed at its hard time limit; the child cannot."""

    def on_timeout(self, soft: bool, timeout: float) -> None:
        super().on_timeout(soft, timeout)
        if not soft:
            record_hard_limit(self.id, timeout)


class InlineTimeLimits:
    """The time limits of the step plan_run runs itself. The pool enforces plan_run's own
    limits, which leave room for planning; the inline step gets its own, as if it had been
    sent: at its soft limit SoftTimeLimitExceeded is raised in the action, and should the
    action ignore it, at its hard limit the attempt is recorded as TimeLimitExceeded and
    the child exits, as the pool would kill it (the pool starts a new child)."""

    def __init__(self, task_id: str, soft_s: float) -> None:
        self.task_id = task_id
        self.soft_s = soft_s
        self.hard_s = settings().step_hard_limit(soft_s)
        self.soft_fired = False
        self.previous: Any = None
        self.armed = False

    def __enter__(self) -> InlineTimeLimits:
        # Signals reach the main thread only; other pools (solo, threads) do without.
        if hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGALRM, self._expired)
            signal.setitimer(signal.ITIMER_REAL, self.soft_s)
            self.armed = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
            self.armed = False

    def _expired(self, signum: int, frame: Any) -> None:
        if not self.soft_fired:
            self.soft_fired = True
            signal.setitimer(signal.ITIMER_REAL, self.hard_s - self.soft_s)
            raise SoftTimeLimitExceeded(f"soft time limit ({self.soft_s:g} s) exceeded")
        log.error("task %s: hard time limit (%g s) exceeded inline", self.task_id, self.hard_s)
        # The action holds the main thread, perhaps a lock too: record from another thread,
        # and leave at the deadline whatever happens (should the record fail, the redelivered
        # plan_run finds the attempt lost).
        recorder = threading.Thread(target=record_hard_limit, args=(self.task_id, self.hard_s))
        recorder.start()
        recorder.join(INLINE_RECORD_BUDGET_S)
        os._exit(1)


# -- The soft time limit bounds the action, not the recording of its outcome -------------------
# The prefork pool's parent sends SIGUSR1 to a child at a task's soft limit, and billiard's
# handler raises SoftTimeLimitExceeded wherever the child is. Once the action has returned, that
# would break off the recording of its outcome (perhaps waiting for the database) and turn a
# step that finished in time into a time-limit failure. Each child replaces that handler, the
# first time it records an outcome, with one that defers the limit while a recording is under
# way; the hard limit still kills a child stuck for good (workers.recording stops trying before).
_recording = False
_deferred = False


def _soft_limit(signum: int, frame: Any) -> None:
    global _deferred
    if _recording:
        _deferred = True
        return
    raise SoftTimeLimitExceeded()


def _install_soft_limit() -> bool:
    """Take over the pool's soft limit handler (prefork children only: in another pool, or
    outside the main thread, there is nothing to take over)."""
    soft_signal = getattr(signal, "SIGUSR1", None)
    if soft_signal is None or threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(soft_signal)
    if getattr(current, "__name__", "") != "soft_timeout_sighandler":
        return current is _soft_limit
    signal.signal(soft_signal, _soft_limit)
    return True


_installed = False


class Recording:
    """While an outcome is recorded, a soft limit that falls due is noted, not raised."""

    def __enter__(self) -> Recording:
        global _recording, _deferred, _installed
        if not _installed:
            _install_soft_limit()
            _installed = True
        _deferred = False
        _recording = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        global _recording
        _recording = False

    @property
    def soft_limit_deferred(self) -> bool:
        return _deferred

"""Recording an attempt's outcome while the database is away.

The action has run; what it did must reach the database. A recording that fails because the
database does not answer (SQLite locked past its busy timeout, a PostgreSQL server restarting
or unreachable) is tried again, with backoff and jitter, until a deadline that falls before
the pool's hard limit would kill the process; meanwhile the soft time limit is deferred
(workers.limits.Recording): it bounds the action, not the bookkeeping. The first try is the
usual one, so the hot path costs nothing more while the database answers.

Past the deadline the message goes back to the queue (Reject with requeue): its redelivery
finds the attempt still running under its task id and records it lost (WorkerLostError), and
the step runs again as its delivery cap allows. The outcome itself is logged with the task id.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from celery.exceptions import Reject
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from engine.attempts import Result
from engine.db import lock_wait
from engine.redaction import failure_redactor
from workers.limits import Recording
from workers.runtime import db_engine, sessions, settings

log = logging.getLogger(__name__)
T = TypeVar("T")

# Stop trying this long before the pool's hard limit (or the attempt's lease) ends, so the
# message is handed back by this process rather than killed with it.
DEADLINE_MARGIN_S = 0.25
# Backoff between tries: doubled from the first up to the cap, with jitter.
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0


def _describe(result: Result) -> str:
    if result.skipped:
        return "skipped: its when is false"
    if result.error is None:
        return f"succeeded in {result.duration_s:.3g} s"
    # Without the credentials a recorded failure would lose (engine.redaction).
    redactor = failure_redactor(settings(), result.inputs, secrets=(result.secrets or {}).values())
    error = redactor.redact(str(result.error))
    return f"failed in {result.duration_s:.3g} s: {type(result.error).__name__}: {error}"


def database_away(exc: BaseException) -> bool:
    """Whether `exc` says the database did not answer (as plan_run and the API judge it),
    rather than that it refused what was asked."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def record(task_id: str, write: Callable[[Session], T], deadline: float, result: Result) -> T:
    """Run `write` in a session of its own (not begun; `write` commits), again while the
    database is away, until `deadline` (time.monotonic()); then Reject(requeue=True). The
    first try waits for SQLite's lock as any statement does (SQLITE_BUSY_TIMEOUT_S).
    `result` is the attempt's, named in the log should it not be recorded."""
    busy_s = settings().sqlite_busy_timeout_s
    tries = 0
    delay = BACKOFF_FIRST_S
    with Recording() as recording:
        while True:
            # On SQLite a try waits up to the busy timeout for the write lock: a try after the
            # first never past the deadline, where the hard limit would kill the process. The
            # first is the usual one, so the hot path costs nothing more.
            wait: float | None = max(0.0, deadline - time.monotonic()) if tries else None
            if wait is not None and wait >= busy_s:
                wait = None
            try:
                if wait is None:
                    with sessions()() as session:
                        written = write(session)
                else:
                    with lock_wait(db_engine(), wait) as bind, sessions()(bind=bind) as session:
                        written = write(session)
                break
            except DBAPIError as exc:
                if not database_away(exc):
                    raise
                tries += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.error(
                        "task %s: the database did not answer in %d tries (%s); the outcome "
                        "(%s) is not recorded: the message goes back to the queue, and the "
                        "attempt will be recorded as lost",
                        task_id,
                        tries,
                        str(exc).splitlines()[0],
                        _describe(result),
                    )
                    raise Reject(f"{task_id}: outcome not recorded: {exc}", requeue=True) from exc
                pause = min(delay * random.uniform(0.5, 1.0), remaining)
                log.warning(
                    "task %s: recording the outcome failed, database unavailable (%s); "
                    "try %d again in %.2f s",
                    task_id,
                    str(exc).splitlines()[0],
                    tries + 1,
                    pause,
                )
                time.sleep(pause)
                delay = min(delay * 2, BACKOFF_MAX_S)
        if recording.soft_limit_deferred:
            log.info("task %s: the soft time limit fell due while recording; deferred", task_id)
    if tries:
        log.warning("task %s: outcome recorded after %d failed tries", task_id, tries)
    return written

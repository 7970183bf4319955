"""Dead letters: recording work that failed for good, fingerprinting it, listing it."""

from __future__ import annotations

import hashlib
import re
import traceback as traceback_module
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from engine import metrics
from engine.db import durable
from engine.models import DeadLetter, new_id, utcnow
from engine.work import Work

_NUMBERS = re.compile(r"\d+")
_FRAME = re.compile(r'File "(?P<file>[^"]+)", line \d+, in (?P<function>\S+)')
TOP_FRAMES = 3


def fingerprint(exception_type: str, trace: str, message: str = "") -> str:
    """Exception type plus the innermost frames without line numbers: stable across
    deployments that only shift lines, distinct for failures in different places."""
    frames = [f"{m['file'].rsplit('/', 1)[-1]}:{m['function']}" for m in _FRAME.finditer(trace)]
    basis = (
        [exception_type, *frames[-TOP_FRAMES:]]
        if frames
        else [exception_type, _NUMBERS.sub("N", message)[:200]]
    )
    return hashlib.sha256("|".join(basis).encode()).hexdigest()[:16]


def describe(error: BaseException) -> tuple[str, str, str]:
    """(type name, message, formatted traceback) of an exception. The message of an engine
    error carries the fields it names (`inputs.seconds: …`) unless it already says them: a
    run's error is all its author sees of a spec or inputs refused in a worker."""
    trace = "".join(traceback_module.format_exception(type(error), error, error.__traceback__))
    message = str(error)
    details = [
        f"{item['field']}: {item['message']}"
        for item in getattr(error, "errors", None) or ()
        if isinstance(item, dict) and str(item.get("message")) not in message
    ]
    if details:
        message = f"{message} ({'; '.join(details)})"
    return type(error).__name__, message, trace


def record(
    session: Session,
    work: Work,
    *,
    task_name: str,
    task_id: str | None,
    queue: str,
    args: list[Any],
    run_id: str | None,
    step_id: str | None,
    workflow: str | None,
    exception_type: str,
    message: str,
    trace: str,
    attempts: int,
    failed_at: datetime | None = None,
) -> str:
    """Insert an open dead letter in the caller's transaction, which then commits durably
    (db.durable), and count it in `work` (once committed); returns its id."""
    durable(session)
    letter_id = new_id()
    session.execute(
        insert(DeadLetter.__table__).values(
            id=letter_id,
            task_name=task_name,
            task_id=task_id,
            queue=queue,
            args=args,
            kwargs={},
            run_id=run_id,
            step_id=step_id,
            workflow=workflow,
            exception_type=exception_type,
            message=message[:10_000],
            traceback=trace[-50_000:],
            fingerprint=fingerprint(exception_type, trace, message),
            attempts=attempts,
            failed_at=failed_at or utcnow(),
            status="open",
        )
    )
    work.count(metrics.dlq_events_total.labels(event="added"))
    return letter_id

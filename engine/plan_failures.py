"""A run that cannot be planned: its plan message redelivered past the cap, or its plan
refused (bad params, a workflow version this worker cannot compile). It gets one dead
letter and fails, in the caller's transaction; the caller commits."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import update
from sqlalchemy.orm import Session

from engine import dlq, metrics
from engine.config import Settings
from engine.models import Run, utcnow
from engine.redaction import failure_redactor
from engine.state import RunStatus
from engine.work import MANAGER_QUEUE, PLAN_TASK, Work, plan_task_id

runs = Run.__table__


@dataclass(frozen=True)
class Buried:
    """What bury_plan kept: the dead letter's id (None when the run was no longer waiting
    for its plan), the failure's message as stored, for the caller's log line, and the work
    to send once the caller committed (the counts of the letter and the failed run)."""

    letter_id: str | None
    message: str
    work: Work = field(default_factory=Work)


def count_plan_redelivery(session: Session, settings: Settings, run_id: str) -> Buried | None:
    """Count a redelivered plan_run; past the delivery cap the run is buried (what
    bury_plan kept), else None."""
    row = session.execute(
        update(runs)
        .where(runs.c.id == run_id, runs.c.status == RunStatus.QUEUED)
        .values(plan_deliveries=runs.c.plan_deliveries + 1)
        .returning(runs.c.plan_deliveries)
    ).first()
    if row is None or row.plan_deliveries < settings.max_deliveries:
        return None
    return bury_plan(
        session,
        settings,
        run_id,
        "WorkerLostError",
        f"the worker died while planning this run {row.plan_deliveries} time(s); "
        f"the delivery cap is {settings.max_deliveries}",
        "",
        row.plan_deliveries,
    )


def bury_plan(
    session: Session,
    settings: Settings,
    run_id: str,
    error_type: str,
    message: str,
    trace: str,
    attempts: int = 1,
) -> Buried:
    """Dead letter plus failed run, the message and traceback kept without the credentials
    engine.redaction knows of, the run's secret-named params among them (a schema's refusal
    quotes the value it refused).

    The run row is locked before its status is judged: two deliveries of one plan message
    failing at once would otherwise each read it queued and each write a dead letter."""
    run = session.get(Run, run_id, with_for_update=True)
    redactor = failure_redactor(settings, run.params if run is not None else None)
    message, trace = redactor.redact(message), redactor.redact(trace)
    if run is None or run.status not in (RunStatus.QUEUED, RunStatus.PLANNING):
        return Buried(None, message)
    work = Work()
    letter_id = dlq.record(
        session,
        work,
        task_name=PLAN_TASK,
        task_id=plan_task_id(run_id),
        queue=MANAGER_QUEUE,
        args=[run_id, run.workflow, run.version],  # as its plan message names them
        run_id=run_id,
        step_id=None,
        workflow=run.workflow,
        exception_type=error_type,
        message=message,
        trace=trace,
        attempts=attempts,
    )
    run.status, run.error, run.finished_at = RunStatus.FAILED, f"{error_type}: {message}", utcnow()
    work.count(metrics.runs_total.labels(workflow=run.workflow, status="failed"))
    return Buried(letter_id, message, work)

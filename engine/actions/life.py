"""Domain actions of the life module: record a wellness check-in, summarise a day.

Both keep data, through the worker's sessions (ActionContext.sessions), each in one short
transaction of its own, and both are safe to run twice (engine.life.workflow). Both act for
the run's submitter: for its own subject when none is named, for another subject only when
the token that submitted the run held admin.life (the rule GET /life/health/wellness_daily
reads by). The run's row says who that was, so no workflow, params or replayed inputs can
act for someone else. On
PostgreSQL those commits may not wait for the disk (WORKER_SYNCHRONOUS_COMMIT), as the
step's own bookkeeping does not: a crash that undid an entry undid the step's success,
committed after it, as well, and the step runs again.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from engine import run_query
from engine.actions import ActionContext, register
from engine.errors import NonRetryableError
from engine.life import workflow
from engine.life.queries import SUBJECT_MAX, parse_day, subject_for, summary_json
from engine.models import timestamp

# None (or no subject): the run's submitter.
SUBJECT = {"type": ["string", "null"], "minLength": 1, "maxLength": SUBJECT_MAX}
DAY = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"}
MEASURES = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": {
        "sleep_hours": {"type": "number", "minimum": 0, "maximum": 24},
        "steps": {"type": "integer", "minimum": 0, "maximum": 200_000},
        "mood": {"type": "integer", "minimum": 1, "maximum": 5},
        "note": {"type": "string", "maxLength": 280},
    },
}


@register(
    "life.record_entry",
    schema={
        "type": "object",
        "required": ["day", "measures"],
        "additionalProperties": False,
        "properties": {"subject": SUBJECT, "day": DAY, "measures": MEASURES},
    },
)
def record_entry(inputs: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    """Record a check-in, keyed on this run and step: a second delivery records nothing
    new and answers the entry as first recorded (`recorded: false`)."""
    day = parse_day(inputs["day"], "inputs.day")
    measures = dict(inputs["measures"])
    for name in ("steps", "mood"):  # JSON Schema's integers include 3.0
        if measures.get(name) is not None:
            measures[name] = int(measures[name])
    with _sessions(context).begin() as session:
        entry = workflow.record_entry(
            session,
            _subject(session, context, inputs, "recording another subject's check-in"),
            day,
            measures,
            run_id=context.run_id,
            step_id=context.step_id,
        )
    return {
        "entry_id": entry.id,
        "subject": entry.subject,
        "day": entry.day.isoformat(),
        "recorded_at": timestamp(entry.recorded_at),
        "recorded": entry.created,
    }


@register(
    "life.summarise_day",
    schema={
        "type": "object",
        "required": ["day"],
        "additionalProperties": False,
        "properties": {"subject": SUBJECT, "day": DAY},
    },
)
def summarise_day(inputs: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    """Compute and store a subject's summary of a day from its entries; answer it."""
    day = parse_day(inputs["day"], "inputs.day")
    with _sessions(context).begin() as session:
        subject = _subject(session, context, inputs, "summarising another subject's day")
        summary = workflow.summarise_day(session, subject, day)
    return summary_json(summary)


def _subject(session: Session, context: ActionContext, inputs: dict[str, Any], doing: str) -> str:
    """The subject named in the inputs, or the submitter's; refused (PermissionDenied, so
    the step fails without retries) when the run's submitter may not act for it."""
    return subject_for(run_query.submitter(session, context.run_id), inputs.get("subject"), doing)


def _sessions(context: ActionContext) -> sessionmaker[Session]:
    if context.sessions is None:
        raise NonRetryableError("this action keeps data and needs the worker's database sessions")
    return context.sessions

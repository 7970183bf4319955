"""PostgreSQL's one-statement plan: a run still queued as a run of the workflow and version
its plan message names is started and its steps are written in one statement (a
data-modifying CTE, the rows handed over as one JSON document), and taken back when its params
are refused. engine.planning decides when a plan goes this way and builds the rows; this
module only runs the statements, on the runs and steps tables, in the caller's session."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Row,
    Text,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal_column,
    select,
    true,
    update,
)
from sqlalchemy.orm import Session

from engine.models import Run, Step
from engine.specs import CompiledWorkflow
from engine.state import RunStatus

steps = Step.__table__
runs = Run.__table__
# Built once, with bind parameters, as engine.planning's statements are (binds named `b_*`).
_B_RUN_ID = bindparam("b_run_id", type_=runs.c.id.type)

# PostgreSQL: a queued run of the expected workflow and version is started and its steps are
# written in one statement (one round trip, and no BEGIN and COMMIT of its own), the rows
# passed as one JSON document. The steps are written only if the run was started; the
# statement returns the run's params, priority, creation and fire time (what its steps see,
# engine.run_context), or no row when the run was not queued so.
_STARTED = (
    update(runs)
    .where(
        runs.c.id == _B_RUN_ID,
        runs.c.status == RunStatus.QUEUED,
        runs.c.workflow == bindparam("b_workflow", type_=runs.c.workflow.type),
        runs.c.version == bindparam("b_version", type_=runs.c.version.type),
    )
    .values(
        status=RunStatus.RUNNING,
        started_at=bindparam("b_now", type_=runs.c.started_at.type),
        leaves_left=case(
            (runs.c.leaves_left == 0, bindparam("b_leaves_left", type_=runs.c.leaves_left.type)),
            else_=runs.c.leaves_left,
        ),
    )
    .returning(runs.c.params, runs.c.priority, runs.c.created_at, runs.c.scheduled_for)
    .cte("started")
)
# Every column of the steps table: a key the plan's rows leave out (engine.planning: the
# outcome's columns) is NULL.
_PLANNED_COLUMNS = [column.key for column in steps.columns]
# The rows as the steps table's own row type, so each value takes its column's type.
_PLANNED = (
    func.json_populate_recordset(
        literal_column(f"NULL::{steps.name}"), cast(bindparam("b_rows", type_=Text), JSON)
    )
    .table_valued(*_PLANNED_COLUMNS)
    .alias("planned")
)
_WRITTEN = (
    insert(steps)
    .from_select(
        _PLANNED_COLUMNS,
        select(*[_PLANNED.c[name] for name in _PLANNED_COLUMNS]).join_from(
            _STARTED, _PLANNED, true()
        ),
    )
    .cte("written")
)
_START_AND_PLAN = select(
    _STARTED.c.params, _STARTED.c.priority, _STARTED.c.created_at, _STARTED.c.scheduled_for
).add_cte(_WRITTEN)
# What a run not started by _START_AND_PLAN is, while it is still queued.
_QUEUED_AS = select(runs.c.workflow, runs.c.version).where(
    runs.c.id == _B_RUN_ID, runs.c.status == RunStatus.QUEUED
)
# A plan written, then refused (its params): the run back to queued, its steps gone.
_REQUEUED = (
    update(runs)
    .where(runs.c.id == _B_RUN_ID, runs.c.status == RunStatus.RUNNING)
    .values(status=RunStatus.QUEUED, started_at=None)
    .returning(runs.c.id)
    .cte("requeued")
)
_UNPLAN = delete(steps).where(steps.c.run_id.in_(select(_REQUEUED.c.id))).add_cte(_REQUEUED)


def write_plan(
    session: Session,
    run_id: str,
    now: datetime,
    workflow: CompiledWorkflow,
    rows: list[dict[str, Any]],
) -> Row[Any] | None:
    """Start the run and write its steps' `rows` (_START_AND_PLAN): the run's params,
    priority, created_at and scheduled_for, or None when the run is not queued as a run of
    `workflow`."""
    values = {
        "b_run_id": run_id,
        "b_workflow": workflow.name,
        "b_version": workflow.version,
        "b_now": now,
        "b_leaves_left": workflow.leaves,
        "b_rows": json.dumps(rows, default=_json_time),
    }
    return session.execute(_START_AND_PLAN, values).first()


def _json_time(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def queued_as(session: Session, run_id: str) -> Row[Any] | None:
    """The workflow and version of a run write_plan did not start, while it is still queued."""
    return session.execute(_QUEUED_AS, {"b_run_id": run_id}).first()


def unplan(session: Session, run_id: str) -> None:
    """Take back a plan write_plan wrote: the run queued again, its steps gone."""
    session.execute(_UNPLAN, {"b_run_id": run_id})

"""JSON shapes of the API (models have no to_dict; this is where shapes live)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row

from engine import concurrency, webhooks
from engine.models import DeadLetter, Run, Step, Workflow, WorkflowPause, timestamp
from engine.schedules import backfill
from engine.schedules.models import Schedule


def run(row: Run | Row[Any], steps: Sequence[Step | Row[Any]] | None = None) -> dict[str, Any]:
    body = {
        "id": row.id,
        "workflow": row.workflow,
        "version": row.version,
        "params": row.params,
        "status": row.status,
        "priority": row.priority,
        "created_by": row.created_by,
        "created_at": timestamp(row.created_at),
        "scheduled_for": timestamp(row.scheduled_for),
        "started_at": timestamp(row.started_at),
        "finished_at": timestamp(row.finished_at),
        "error": row.error,
        "webhook": _webhook(row),
        "not_before": timestamp(row.not_before),
        # Why a queued run waits unsent: "concurrency" (no slot of its workflow's limit
        # free) or "not_before"; null when it does not wait (engine.concurrency).
        "waiting": concurrency.waits_for(row),
    }
    if steps is not None:
        body["steps"] = [step(item) for item in steps]
    return body


def _webhook(row: Run | Row[Any]) -> dict[str, Any] | None:
    """Where the run's run.finished event goes and how its delivery stands (engine.webhooks)."""
    status = webhooks.status(row)
    return None if status is None else {"url": row.webhook_url, "status": status}


def step(row: Step | Row[Any]) -> dict[str, Any]:
    return {
        "step_id": row.step_id,
        "action": row.action,
        "status": row.status,
        "attempts": row.attempts,
        "max_attempts": row.max_attempts,
        "depends_on": row.depends_on,
        "inputs": row.inputs,
        "output": row.output,
        "error": row.error,
        "error_type": row.error_type,
        "task_id": row.task_id,
        "worker": row.worker,
        "queue": row.queue,
        "started_at": timestamp(row.started_at),
        "finished_at": timestamp(row.finished_at),
        "next_attempt_at": timestamp(row.next_attempt_at),
    }


def workflow(row: Workflow, pause: WorkflowPause | None) -> dict[str, Any]:
    return {
        "name": row.name,
        "version": row.version,
        "spec": row.spec,
        "created_at": timestamp(row.created_at),
        **workflow_pause(pause),
    }


def workflow_pause(pause: WorkflowPause | None) -> dict[str, Any]:
    """Whether a workflow is paused (engine.pauses), and by whom, when and why."""
    if pause is None:
        return {"paused": False, "pause": None}
    return {
        "paused": True,
        "pause": {
            "reason": pause.reason,
            "paused_by": pause.paused_by,
            "paused_at": timestamp(pause.paused_at),
        },
    }


def schedule(row: Schedule) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "workflow": row.workflow,
        "version": row.version,
        "cron": row.cron,
        "timezone": row.timezone,
        "params": row.params,
        "priority": row.priority,
        "enabled": row.enabled,
        "next_fire_at": timestamp(row.next_fire_at),
        "last_fired_at": timestamp(row.last_fired_at),
        "last_run_id": row.last_run_id,
        "last_error": row.last_error,
        "created_by": row.created_by,
        "created_at": timestamp(row.created_at),
        "updated_at": timestamp(row.updated_at),
    }


def backfill_plan(found: backfill.Plan) -> dict[str, Any]:
    """A backfill's dry run: its window, the fire times in it and how many have their run."""
    return {
        "schedule": found.schedule.name,
        "since": timestamp(found.since),
        "until": timestamp(found.until),
        "count": len(found.fire_times),
        "existing": len(found.existing),
        "fire_times": [timestamp(moment) for moment in found.fire_times],
    }


def backfilled(done: backfill.Backfilled) -> dict[str, Any]:
    """A confirmed backfill: each fire time's run, submitted now or there already."""
    return {
        "schedule": done.plan.schedule.name,
        "since": timestamp(done.plan.since),
        "until": timestamp(done.plan.until),
        "count": len(done.runs),
        "submitted": done.submitted,
        "existing": done.existing,
        "runs": [
            {
                "fire_time": timestamp(moment),
                "run_id": run_id,
                "outcome": "submitted" if created else "existing",
            }
            for moment, run_id, created in done.runs
        ],
    }


def dead_letter(row: DeadLetter, flower_url: str, carrier: str | None = None) -> dict[str, Any]:
    """A dead letter; its Flower link goes to `carrier`, the Celery task its attempt ran in
    when that is not its own (engine.dlq_query.carriers)."""
    flower_task = carrier or row.task_id
    return {
        "id": row.id,
        "task_name": row.task_name,
        "task_id": row.task_id,
        "queue": row.queue,
        "args": row.args,
        "run_id": row.run_id,
        "step_id": row.step_id,
        "workflow": row.workflow,
        "exception_type": row.exception_type,
        "message": row.message,
        "traceback": row.traceback,
        "fingerprint": row.fingerprint,
        "attempts": row.attempts,
        "failed_at": timestamp(row.failed_at),
        "status": row.status,
        "resolved_by": row.resolved_by,
        "resolved_at": timestamp(row.resolved_at),
        "resolution": row.resolution,
        "flower_url": f"{flower_url}/task/{flower_task}" if flower_task else None,
    }


def dead_letter_page(
    items: list[DeadLetter],
    following: str | None,
    groups: list[Any],
    flower_url: str,
    carriers: dict[str, str],
) -> dict[str, Any]:
    """GET /admin/dlq's body (and `engine dlq ls --json`'s)."""
    body = page([dead_letter(item, flower_url, carriers.get(item.id)) for item in items], following)
    body["groups"] = [
        {
            "fingerprint": group.fingerprint,
            "exception_type": group.exception_type,
            "count": group.count,
            "last_failed_at": timestamp(group.last_failed_at),
        }
        for group in groups
    ]
    return body


def page(items: list[dict[str, Any]], next_cursor: str | None) -> dict[str, Any]:
    return {"items": items, "next_cursor": next_cursor}

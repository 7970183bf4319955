"""The components of /openapi.json: the JSON shapes the API answers with, each described
once, and the request bodies: the very schema objects the views validate with, imported and
never copied. The operations that name them are in web/openapi_operations.py."""

from __future__ import annotations

from typing import Any

from engine import concurrency, dlq_query, spec_schema, webhooks
from engine.state import RunStatus, StepStatus
from web import admin, schedules, schemas, tokens

STRING: dict[str, Any] = {"type": "string"}
INTEGER: dict[str, Any] = {"type": "integer"}
TIME: dict[str, Any] = {"type": "string", "format": "date-time"}
MAYBE_STRING: dict[str, Any] = {"type": ["string", "null"]}
MAYBE_TIME: dict[str, Any] = {"type": ["string", "null"], "format": "date-time"}
ANY_JSON: dict[str, Any] = {}
STRINGS: dict[str, Any] = {"type": "array", "items": STRING}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def shape(properties: dict[str, Any], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """An object with exactly these members, each present unless named optional."""
    return {
        "type": "object",
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
        "properties": properties,
    }


def page(item: str, **extra: Any) -> dict[str, Any]:
    """The List envelope of every listing: {items, next_cursor} (null on the last page)."""
    return shape(
        {"items": {"type": "array", "items": ref(item)}, "next_cursor": MAYBE_STRING, **extra}
    )


def part(**values: Any) -> dict[str, Any]:
    """One part of /admin/status: ok with its values, error with the reason, or unknown."""
    status = {"enum": ["ok", "error", "unknown"]}
    return {"type": "object", "required": ["status"], "properties": {"status": status, **values}}


# What the views validate request bodies with: the same objects, by name.
REQUESTS: dict[str, dict[str, Any]] = {
    "SubmitRun": schemas.SUBMIT_RUN,
    "PlanRequest": schemas.PLAN,
    "WorkflowSpec": spec_schema.SPEC_SCHEMA,
    "Replay": admin.REPLAY,
    "Discard": admin.DISCARD,
    "BulkReplay": admin.BULK_REPLAY,
    "BulkDiscard": admin.BULK_DISCARD,
    "MintToken": tokens.MINT,
    "RevokeToken": tokens.REVOKE,
    "CreateSchedule": schemas.CREATE_SCHEDULE,
    "PatchSchedule": schemas.PATCH_SCHEDULE,
    "PauseWorkflow": schemas.PAUSE_WORKFLOW,
    "BackfillSchedule": schedules.BACKFILL,
}

STEP = shape(
    {
        "step_id": STRING,
        "action": STRING,
        "status": {"enum": [status.value for status in StepStatus]},
        "attempts": INTEGER,
        "max_attempts": INTEGER,
        "depends_on": STRINGS,
        "inputs": ANY_JSON,
        "output": ANY_JSON,
        "error": MAYBE_STRING,
        "error_type": MAYBE_STRING,
        "task_id": MAYBE_STRING,
        "worker": MAYBE_STRING,
        "queue": STRING,
        "started_at": MAYBE_TIME,
        "finished_at": MAYBE_TIME,
        "next_attempt_at": MAYBE_TIME,
    }
)
RUN = shape(
    {
        "id": {"type": "string", "format": "uuid"},
        "workflow": STRING,
        "version": INTEGER,
        "params": {"type": "object"},
        "status": {"enum": [status.value for status in RunStatus]},
        "priority": INTEGER,
        "created_by": STRING,
        "created_at": TIME,
        # The fire time a schedule submitted it for (a tick's or a backfill's), or the moment
        # it was triggered; null for a run submitted by POST /runs. Steps see it as
        # run.scheduled_for.
        "scheduled_for": MAYBE_TIME,
        "started_at": MAYBE_TIME,
        "finished_at": MAYBE_TIME,
        "error": MAYBE_STRING,
        # Null unless the run was submitted with a webhook_url (README: Being told when a
        # run finishes): waiting until it finishes, then its latest run.finished event's
        # delivery (failed: retried past WEBHOOK_MAX_AGE_HOURS, or refused by the policy).
        "webhook": {
            "oneOf": [
                {"type": "null"},
                shape(
                    {
                        "url": STRING,
                        "status": {"enum": list(webhooks.STATUSES)},
                    }
                ),
            ]
        },
        # Not started before this time (null: at once); a queued run with a not_before
        # ahead waits for it (README: Starting a run later).
        "not_before": MAYBE_TIME,
        # Why a queued run waits unsent: for a slot of its workflow's concurrency limit, or
        # for its not_before; null when it does not wait (README: A workflow's concurrency).
        "waiting": {"enum": [*concurrency.REASONS, None]},
        "steps": {"type": "array", "items": ref("Step")},
    },
    optional=("steps",),  # on a single run (GET /runs/{run_id}, cancel) only
)
DEAD_LETTER = shape(
    {
        "id": STRING,
        "task_name": STRING,
        "task_id": MAYBE_STRING,
        "queue": STRING,
        "args": ANY_JSON,
        "run_id": MAYBE_STRING,
        "step_id": MAYBE_STRING,
        "workflow": MAYBE_STRING,
        "exception_type": STRING,
        "message": STRING,
        "traceback": STRING,
        "fingerprint": STRING,
        "attempts": INTEGER,
        "failed_at": TIME,
        "status": {"enum": list(dlq_query.STATUSES)},
        "resolved_by": MAYBE_STRING,
        "resolved_at": MAYBE_TIME,
        "resolution": ANY_JSON,
        "flower_url": MAYBE_STRING,
    }
)
GROUP = shape(
    {"fingerprint": STRING, "exception_type": STRING, "count": INTEGER, "last_failed_at": TIME}
)
RESULT = shape(
    {
        "id": STRING,
        "outcome": STRING,
        "run_id": STRING,
        "detail": STRING,
        # A replayed letter whose run waits for a slot of its workflow's concurrency limit.
        "waiting": {"enum": [concurrency.REASON]},
    },
    ("run_id", "detail", "waiting"),
)
PROBLEM = shape(
    {
        "type": STRING,
        "title": STRING,
        "status": INTEGER,
        "detail": STRING,
        "code": STRING,
        "errors": {
            "type": "array",
            "items": shape({"field": STRING, "message": STRING}),
        },
    },
    optional=("detail", "code", "errors"),
)
# The header object of a Location an answer sets (the URL, relative to the API's).
LOCATION: dict[str, Any] = {
    "required": True,
    "schema": {"type": "string", "format": "uri-reference"},
}
# The headers of a 429: when to try again, and the limit that was reached (web.rate_limits).
_SECONDS = {"type": "string", "pattern": "^[0-9]+$"}
RATE_LIMITED: dict[str, Any] = {
    "Retry-After": {
        "required": True,
        "schema": _SECONDS,
        "description": "seconds until the caller's window of requests resets",
    },
    "X-RateLimit-Limit": {
        "schema": _SECONDS,
        "description": "requests the caller may make in the window it went over",
    },
    "X-RateLimit-Remaining": {"schema": _SECONDS, "description": "0"},
    "X-RateLimit-Reset": {
        "schema": _SECONDS,
        "description": "when that window resets, in seconds since the epoch",
    },
}

# Whether a workflow is paused (engine.pauses), and by whom, when and why (null: not paused).
WORKFLOW_PAUSE: dict[str, Any] = {
    "paused": {"type": "boolean"},
    "pause": {
        **shape({"reason": STRING, "paused_by": STRING, "paused_at": TIME}),
        "type": ["object", "null"],
    },
}

# The answers, each shape once.
RESPONSES: dict[str, dict[str, Any]] = {
    "Problem": PROBLEM,
    "Run": RUN,
    "Step": STEP,
    "RunList": page("Run"),
    "Workflow": shape(
        {
            "name": STRING,
            "version": INTEGER,
            "spec": {"type": "object"},
            "created_at": TIME,
            **WORKFLOW_PAUSE,
            "versions": {"type": "array", "items": INTEGER},
            # The version's concurrency limit (null: none), and how many runs of the
            # workflow (every version) hold a slot and wait for one.
            "concurrency": shape(
                {
                    "limit": {"type": ["integer", "null"], "minimum": 1},
                    "active": INTEGER,
                    "waiting": INTEGER,
                }
            ),
        },
        # On GET /workflows/{name}: every version of that name, and its runs' slots.
        optional=("versions", "concurrency"),
    ),
    "WorkflowList": page("Workflow"),
    "WorkflowPauseState": shape({"workflow": STRING, **WORKFLOW_PAUSE}),
    # With cancel_running: how many live runs of it were cancelled.
    "PausedWorkflow": shape(
        {"workflow": STRING, **WORKFLOW_PAUSE, "cancelled": INTEGER}, optional=("cancelled",)
    ),
    # `when`: the condition of each step that has one, by step id (it runs only if that holds).
    "Plan": shape(
        {
            "workflow": STRING,
            "stages": {"type": "array", "items": STRINGS},
            "when": {"type": "object", "additionalProperties": STRING},
        }
    ),
    "DeadLetter": DEAD_LETTER,
    "DeadLetterGroup": GROUP,
    "DeadLetterList": page("DeadLetter", groups={"type": "array", "items": ref("DeadLetterGroup")}),
    "Replayed": shape(
        {
            "dead_letter": ref("DeadLetter"),
            "run_id": STRING,
            # Why the run waits unsent (its workflow's concurrency limit), or null.
            "waiting": {"type": ["string", "null"], "enum": ["concurrency", None]},
        }
    ),
    "BulkReplayPlan": shape({"count": INTEGER, "ids": STRINGS}),
    "BulkReplayResults": shape({"count": INTEGER, "results": {"type": "array", "items": RESULT}}),
    # A dry run's {count, ids}, or the confirmed call's {count, results}.
    "BulkDiscardResults": shape(
        {"count": INTEGER, "ids": STRINGS, "results": {"type": "array", "items": RESULT}},
        ("ids", "results"),
    ),
    "AuditEvent": shape(
        {
            "id": INTEGER,
            "at": TIME,
            "actor": STRING,
            "action": STRING,
            "target": STRING,
            "reason": MAYBE_STRING,
            "detail": ANY_JSON,
        }
    ),
    "AuditEventList": page("AuditEvent"),
    "Schedule": shape(
        {
            "id": {"type": "string", "format": "uuid"},
            "name": STRING,
            "workflow": STRING,
            "version": {"type": ["integer", "null"]},
            "cron": STRING,
            "timezone": STRING,
            "params": {"type": "object"},
            "priority": INTEGER,
            "enabled": {"type": "boolean"},
            "next_fire_at": MAYBE_TIME,
            "last_fired_at": MAYBE_TIME,
            "last_run_id": MAYBE_STRING,
            "last_error": MAYBE_STRING,
            "created_by": STRING,
            "created_at": TIME,
            "updated_at": TIME,
        }
    ),
    "ScheduleList": page("Schedule"),
    # A backfill's dry run: the fire times in its window, and how many have their run.
    "BackfillPlan": shape(
        {
            "schedule": STRING,
            "since": TIME,
            "until": TIME,
            "count": INTEGER,
            "existing": INTEGER,
            "fire_times": {"type": "array", "items": TIME},
        }
    ),
    # A confirmed backfill: each fire time's run, submitted now or there already.
    "Backfilled": shape(
        {
            "schedule": STRING,
            "since": TIME,
            "until": TIME,
            "count": INTEGER,
            "submitted": INTEGER,
            "existing": INTEGER,
            "runs": {
                "type": "array",
                "items": shape(
                    {
                        "fire_time": TIME,
                        "run_id": STRING,
                        "outcome": {"enum": ["submitted", "existing"]},
                    }
                ),
            },
        }
    ),
    "MintedToken": shape({"token": STRING, "jti": STRING, "expires_at": TIME}),
    "Revocation": shape(
        {
            "jti": STRING,
            "expires_at": MAYBE_TIME,
            "paused_schedules": {
                "type": "array",
                "items": shape(
                    {"id": {"type": "string", "format": "uuid"}, "name": STRING, "owner": STRING}
                ),
            },
        }
    ),
    "Status": shape(
        {
            "version": STRING,
            "started_at": TIME,
            "uptime_s": {"type": "number"},
            "database": part(),
            "broker": part(),
            "queues": part(items={"type": "array", "items": {"type": "object"}}),
            "workers": part(online=INTEGER, names=STRINGS),
            "runs": part(by_status={"type": ["object", "null"]}),
            "dead_letters": part(open={"type": ["integer", "null"]}),
            "schedules": part(lag_s={"type": ["number", "null"]}),
            "webhooks": part(lag_s={"type": ["number", "null"]}),
            "delayed_runs": part(
                lag_s={"type": ["number", "null"]}, waiting={"type": ["integer", "null"]}
            ),
            # Queued runs waiting unsent, by reason (concurrency, not_before).
            "runs_waiting": part(by_reason={"type": ["object", "null"]}),
            "status": {"enum": ["ok", "degraded"]},
        }
    ),
    "Health": shape({"status": {"const": "ok"}, "version": STRING}),
    "Readiness": shape(
        {"status": {"const": "ready"}, "checks": {"type": "object", "additionalProperties": STRING}}
    ),
    "OpenAPI": {"type": "object", "description": "an OpenAPI 3.1 document"},
    "Text": STRING,
}

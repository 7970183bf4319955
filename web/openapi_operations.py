"""What /openapi.json describes: one `Operation` per route and method, with the parameters
its view reads, its request body, every success status it answers with (and the Location
header it sets), and the problems it answers with that web/openapi.py cannot tell from the
rest (a 404 of a workflow named in the body, a 409). Adding a route is adding one entry to
OPERATIONS; the shapes it names are in web/openapi_components.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine import dlq_query, spec_schema
from engine.schedules import trigger
from engine.state import RunStatus
from web.openapi_components import MAYBE_TIME, STRING, TIME, ref, shape
from web.runs import MAX_IDEMPOTENCY_KEY
from web.telemetry import STREAM_MIMETYPE
from web.workflows import YAML_TYPES

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"  # RFC 7396


def query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


LIMIT = query(
    "limit", {"type": "integer", "minimum": 1}, "page size; above the server's maximum it is capped"
)
CURSOR = query("cursor", STRING, "the next_cursor of the previous page")
WORKFLOW = query("workflow", STRING, "only those of this workflow")
SINCE = query("since", TIME, "only those at or after this ISO 8601 time (no offset: UTC)")
UNTIL = query("until", TIME, "only those before this ISO 8601 time (no offset: UTC)")
RUN_QUERY = (
    query("status", {"enum": [status.value for status in RunStatus]}, "only runs in this status"),
    WORKFLOW,
    query("since", TIME, "only runs submitted at or after this ISO 8601 time (no offset: UTC)"),
    query("until", TIME, "only runs submitted before this ISO 8601 time (no offset: UTC)"),
    query("created_by", STRING, "only runs submitted by this caller (its token's sub)"),
    LIMIT,
    CURSOR,
)
VERSION_QUERY = (query("version", spec_schema.VERSION, "this version instead of the latest"),)
_LETTER_FILTERS = {
    "status": query(
        "status",
        {"enum": list(dlq_query.STATUSES)},
        "only letters in this status (default: every status)",
    ),
    "workflow": WORKFLOW,
    "step": query("step", STRING, "only letters of this step id"),
    "exception_type": query("exception_type", STRING, "only letters of this exception type"),
    "fingerprint": query("fingerprint", STRING, "only letters with this fingerprint"),
    "run_id": query("run_id", STRING, "only letters of this run"),
    "since": SINCE,
    "until": UNTIL,
}
# One parameter per field of the dead-letter filter (a new field without one is a KeyError).
LETTER_QUERY = (*(_LETTER_FILTERS[name] for name in dlq_query.FILTER_FIELDS), LIMIT, CURSOR)
AUDIT_QUERY = (
    query("actor", STRING, "only events by this caller"),
    query("action", STRING, "only events of this action"),
    query("target", STRING, "only events about this run or dead letter"),
    SINCE,
    UNTIL,
    LIMIT,
    CURSOR,
)
MAYBE_NUMBER = {"type": ["number", "null"]}
EVENT_STREAM = {
    "type": "string",
    "description": "text/event-stream: first `retry:` (ms), then events of `id:` (the id of "
    "the run state the client has once it has the event: a digest of the Run's JSON), "
    "`event:` (run, timeout or unauthorized) and `data:` (a Run as JSON; {} for timeout; "
    "{detail} for unauthorized, when the token expired or was revoked meanwhile), and "
    "comment lines",
}
RESUME = (
    {
        "name": "Last-Event-ID",
        "in": "header",
        "required": False,
        "schema": STRING,
        "description": "the id of the run state the client has (EventSource sends it when "
        "it reconnects): that state is not sent again, the stream waits for the next one",
    },
    query("last_event_id", STRING, "as the Last-Event-ID header, which wins when both are sent"),
)
WELLNESS_SUMMARY = shape(
    {
        "subject": STRING,
        "day": {"type": "string", "format": "date"},
        "entries": {"type": "integer", "minimum": 0},
        "sleep_hours_avg": MAYBE_NUMBER,
        "steps_total": {"type": ["integer", "null"]},
        "mood_avg": MAYBE_NUMBER,
        "computed_at": MAYBE_TIME,
    }
)
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
    "description": "a repeat with the same key and body answers 200 with the first run; "
    "with another body, 409",
}

TRIGGER_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": trigger.KEY_MAX},
    "description": "a repeated trigger with the same key answers 200 with the first run; "
    "409 when the schedule's run has changed since (another version, params or priority)",
}


def body(name: str, *, required: bool = True, also: tuple[str, ...] = ()) -> dict[str, Any]:
    """A request body of the named request schema, as JSON (and the `also` media types)."""
    schema = ref(name)
    return {
        "required": required,
        "content": {media: {"schema": schema} for media in (JSON, *also)},
    }


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    scope: str | None
    summary: str
    # Every status the view answers with on success -> the component its body has, or an
    # inline schema for a shape no other operation shares (None: no body); "Problem"
    # answers as application/problem+json.
    responses: dict[int, str | dict[str, Any] | None]
    body: dict[str, Any] | None = None
    parameters: tuple[dict[str, Any], ...] = ()
    media: str = JSON
    # 4xx answers besides those of its scope (401, 403), body (400, 413, 415, 422), path
    # (404, 422) and query parameters (422): each a problem.
    problems: tuple[int, ...] = ()
    # What the Location header of its success answers points to (None: no Location).
    location: str | None = None


OPERATIONS: list[Operation] = [
    Operation("get", "/health", None, "Liveness", {200: "Health"}),
    Operation(
        "get",
        "/readyz",
        None,
        "Readiness: database and broker; 503 names the failing check",
        {200: "Readiness", 503: "Problem"},
    ),
    Operation(
        "post",
        "/runs",
        "runs.write",
        "Submit a run: 202 new; 200 a repeat with the same Idempotency-Key; 409 "
        "workflow_paused while its workflow is paused; a webhook_url is POSTed a signed "
        "run.finished event when it finishes; with a not_before ahead (RFC 3339 with its "
        "offset, at most RUN_DELAY_MAX_S ahead) it waits queued and starts then",
        {202: "Run", 200: "Run"},
        body("SubmitRun"),
        (IDEMPOTENCY_KEY,),
        problems=(404, 409),
        location="the run (GET it for its status and steps)",
    ),
    Operation(
        "get",
        "/runs",
        "runs.read",
        "List runs (own; admin sees all), newest first: status, workflow, since, until, "
        "created_by, limit, cursor",
        {200: "RunList"},
        parameters=RUN_QUERY,
    ),
    Operation("get", "/runs/{run_id}", "runs.read", "A run with its steps", {200: "Run"}),
    Operation(
        "get",
        "/runs/{run_id}/events",
        "runs.read",
        "Server-Sent Events of a run: `event: run` (the run as GET /runs/{run_id} shows it) "
        "first, unless Last-Event-ID names that state, and at each change, the last one "
        "finished; `: keep-alive` comments while nothing changes; `event: timeout` when the "
        "stream was open its longest (reconnect). 204 when Last-Event-ID names the finished "
        "run's state (nothing more will come). 503 with Retry-After when the server holds "
        "all the streams it may",
        {200: EVENT_STREAM, 204: None, 503: "Problem"},
        parameters=RESUME,
        media=STREAM_MIMETYPE,
    ),
    Operation(
        "post",
        "/runs/{run_id}/cancel",
        "runs.write",
        "Cancel a live run",
        {200: "Run"},
        problems=(409,),
    ),
    Operation(
        "post",
        "/runs/{run_id}/retry",
        "runs.write",
        "Resume a failed run from its failed steps",
        {202: "Run"},
        problems=(409,),
    ),
    Operation(
        "get",
        "/workflows",
        "workflows.read",
        "Latest version of every workflow, by name: limit, cursor",
        {200: "WorkflowList"},
        parameters=(LIMIT, CURSOR),
    ),
    Operation(
        "post",
        "/workflows",
        "workflows.write",
        "Register a workflow version (JSON or YAML): 201 new; 200 the same spec again",
        {201: "Workflow", 200: "Workflow"},
        body("WorkflowSpec", also=YAML_TYPES[:1]),
        problems=(409,),
        location="this version of the workflow",
    ),
    Operation(
        "get",
        "/workflows/{name}",
        "workflows.read",
        "A workflow (latest or ?version=), with its versions and its concurrency: the "
        "version's limit (null: none), and how many runs of it (every version) are active "
        "(planning, running, or queued with their plan sent) and wait for a slot",
        {200: "Workflow"},
        parameters=VERSION_QUERY,
    ),
    Operation(
        "post",
        "/workflows/{name}/pause",
        "admin.workflows",
        "Pause a workflow (every version): new runs of it (POST /runs, schedules) are refused "
        "with 409 workflow_paused until it is resumed; runs already submitted go on. Pausing "
        "a paused one changes nothing. With cancel_running: true (which needs admin.runs too) "
        "every live run of it is then cancelled, as POST /runs/{run_id}/cancel would, a batch "
        "of BULK_CANCEL_BATCH runs per transaction, audited once (workflow.cancel_runs); the "
        "answer's cancelled counts them",
        {200: "PausedWorkflow"},
        body("PauseWorkflow"),
    ),
    Operation(
        "post",
        "/workflows/{name}/resume",
        "admin.workflows",
        "Resume a paused workflow: new runs of it are taken again",
        {200: "WorkflowPauseState"},
    ),
    Operation(
        "post",
        "/workflows/{name}/plan",
        "workflows.read",
        "Dry-run plan: parallel stages",
        {200: "Plan"},
        body("PlanRequest", required=False),
    ),
    Operation(
        "get",
        "/admin/dlq",
        "admin.dlq.read",
        "Dead letters, newest first (every status unless ?status=open|replayed|discarded), "
        "with counts grouped by fingerprint",
        {200: "DeadLetterList"},
        parameters=LETTER_QUERY,
    ),
    Operation(
        "get",
        "/admin/dlq/{letter_id}",
        "admin.dlq.read",
        "A dead letter, with its Flower link",
        {200: "DeadLetter"},
    ),
    Operation(
        "post",
        "/admin/dlq/{letter_id}/replay",
        "admin.dlq.replay",
        "Replay an open dead letter into its run at its step: {reason, inputs?}",
        {202: "Replayed"},
        body("Replay"),
        problems=(409,),
        location="the run the letter was replayed into",
    ),
    Operation(
        "post",
        "/admin/dlq/replay",
        "admin.dlq.replay",
        "Bulk replay by filter: {filter, dry_run: true} -> 200 {count, ids}; "
        "then {filter, confirm_count, reason} -> 202 per-item results (waiting: concurrency "
        "where the run waits for a slot of its workflow's concurrency limit)",
        {200: "BulkReplayPlan", 202: "BulkReplayResults"},
        body("BulkReplay"),
        problems=(409,),
    ),
    Operation(
        "post",
        "/admin/dlq/discard",
        "admin.dlq.discard",
        "Bulk discard by filter: {filter, dry_run: true} -> 200 {count, ids}; then "
        "{filter, confirm_count, reason} -> 200 per-item results (discarded or not_open), "
        "all in one transaction",
        {200: "BulkDiscardResults"},
        body("BulkDiscard"),
        problems=(409,),
    ),
    Operation(
        "post",
        "/admin/dlq/{letter_id}/discard",
        "admin.dlq.discard",
        "Discard an open dead letter (kept for audit): {reason}",
        {200: "DeadLetter"},
        body("Discard"),
        problems=(409,),
    ),
    Operation(
        "get",
        "/admin/audit",
        "admin.audit",
        "Audit events, newest first: actor, action, target, since, until, limit, cursor",
        {200: "AuditEventList"},
        parameters=AUDIT_QUERY,
    ),
    Operation(
        "get", "/openapi.json", None, "This description of the API (OpenAPI 3.1)", {200: "OpenAPI"}
    ),
    Operation(
        "get", "/docs", None, "A browsable page of the API", {200: "Text"}, media="text/html"
    ),
    Operation(
        "post",
        "/admin/tokens",
        "admin.tokens",
        "Mint a token: {sub, scopes, ttl}",
        {201: "MintedToken"},
        body("MintToken"),
    ),
    Operation(
        "post",
        "/admin/tokens/revoke",
        "admin.tokens",
        "Revoke a token by jti; the enabled schedules acting with it are paused in the same "
        "transaction (last_error says why) and named in the answer",
        {200: "Revocation"},
        body("RevokeToken"),
    ),
    Operation(
        "get",
        "/admin/status",
        "admin.status",
        "Version, uptime, database and broker checks, queue depth and lag, online workers, "
        "runs by status, open dead letters",
        {200: "Status"},
    ),
    Operation(
        "post",
        "/schedules",
        "schedules.write",
        "Create a schedule: {name, workflow, cron, timezone?, version?, params?, priority?, "
        "enabled?}; its runs are submitted as the caller (who needs runs.write too), with "
        "this token's scopes; revoking this token pauses the schedule (last_error says why). "
        "Its expiry stops nothing",
        {201: "Schedule"},
        body("CreateSchedule"),
        problems=(409,),
        location="the schedule",
    ),
    Operation(
        "get",
        "/schedules",
        "schedules.read",
        "The caller's schedules (admin.schedules: every one) by name: limit, cursor",
        {200: "ScheduleList"},
        parameters=(LIMIT, CURSOR),
    ),
    Operation(
        "get",
        "/schedules/{ref}",
        "schedules.read",
        "A schedule by id or name (another caller's is a 404 without admin.schedules)",
        {200: "Schedule"},
    ),
    Operation(
        "patch",
        "/schedules/{ref}",
        "schedules.write",
        "Change a schedule (by id or name) in place, as a JSON merge patch of name, cron, "
        "timezone, version (null: the latest), params (replaced whole), priority; a new "
        "cron or timezone "
        "fires next at its first time after now. Only its owner may (who needs runs.write "
        "too; its runs then carry this token's scopes, until this token is revoked)",
        {200: "Schedule"},
        body("PatchSchedule", also=(MERGE_PATCH,)),
        problems=(409,),
    ),
    Operation(
        "post",
        "/schedules/{ref}/pause",
        "schedules.write",
        "Pause a schedule (by id or name): it fires no more until resumed",
        {200: "Schedule"},
    ),
    Operation(
        "post",
        "/schedules/{ref}/resume",
        "schedules.write",
        "Resume a schedule (by id or name) from its first fire time after now; the times "
        "missed while paused are not made up. Its owner's resume binds it to this token (its "
        "scopes, and its revocation pauses the schedule; runs.write needed, "
        "as on create). Another's (admin.schedules) keeps the owner's token, and is a 409 "
        "schedule_token_revoked when that token was revoked: only the owner resumes it then",
        {200: "Schedule"},
        problems=(409,),
    ),
    Operation(
        "post",
        "/schedules/{ref}/trigger",
        "schedules.write",
        "Run a schedule (by id or name) now, outside its cron times, paused or not: 202 and "
        "the run its next fire would submit (as its owner, with the scopes of the token it "
        "acts with); its fire times stay. Its owner or admin.schedules (audited) may; 409 "
        "schedule_token_revoked while its token is revoked, workflow_paused while its "
        "workflow is",
        {202: "Run", 200: "Run"},
        parameters=(TRIGGER_KEY,),
        problems=(409,),
        location="the run (GET it for its status and steps)",
    ),
    Operation(
        "post",
        "/schedules/{ref}/backfill",
        "schedules.write",
        "Backfill a schedule (by id or name): one run per cron fire time in [since, until) "
        "(ISO 8601; no offset: UTC; until not in the future), each submitted as its fire "
        "would have been (as its owner, under the fire's idempotency key, scheduled_for its "
        "fire time), paused or not; a fire time that has its run keeps it. {since, until, "
        "dry_run: true} -> 200 the fire times and how many have their run; then {since, "
        "until, confirm_count, reason} -> 202 each fire time's run, audited "
        "(schedule.backfill). 409 when the count changed, schedule_token_revoked while its "
        "token is revoked, workflow_paused while its workflow is; 422 naming until past "
        "SCHEDULE_BACKFILL_MAX fire times. Its next fire and last run stay",
        {200: "BackfillPlan", 202: "Backfilled"},
        body("BackfillSchedule"),
        problems=(409,),
    ),
    Operation(
        "delete",
        "/schedules/{ref}",
        "schedules.write",
        "Delete a schedule (by id or name); the runs it submitted stay",
        {204: None},
    ),
    Operation(
        "get",
        "/life/health/wellness_daily",
        "life.read",
        "The caller's daily wellness summary (with admin.life, any subject's); "
        "zero entries when nothing was recorded that day",
        {200: WELLNESS_SUMMARY},
        parameters=(
            query("day", {"type": "string", "format": "date"}, "YYYY-MM-DD; default today (UTC)"),
            query("subject", STRING, "another subject's summary (needs admin.life)"),
        ),
    ),
]

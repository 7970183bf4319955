"""Schedules: create, list, read, change, pause, resume, trigger, backfill, delete. The beat
task fires them."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, request, url_for

from engine.schedules import backfill, edit, manage, trigger
from web import schemas, serialize
from web.auth import current_caller, require_scopes
from web.db import get_session
from web.dispatch import send

bp = Blueprint("schedules", __name__, url_prefix="/schedules")

_TIME = {"type": "string", "minLength": 1, "maxLength": 64}
# A window of fire times, a dry run first, then its count confirmed with a reason (the bulk
# protocol of POST /admin/dlq/replay).
BACKFILL = {
    "type": "object",
    "required": ["since", "until"],
    "additionalProperties": False,
    "properties": {
        "since": _TIME,
        "until": _TIME,
        "dry_run": {"type": "boolean"},
        "confirm_count": {"type": "integer", "minimum": 0},
        "reason": {"type": "string", "minLength": 1, "maxLength": 2000},
    },
}


@bp.post("")
@require_scopes("schedules.write")
def create_schedule() -> Any:
    body = schemas.json_body(schemas.CREATE_SCHEDULE)
    session = get_session()
    schedule = manage.create(
        session,
        current_app.config["SETTINGS"],
        manage.NewSchedule(
            name=body["name"],
            workflow=body["workflow"],
            cron=body["cron"],
            timezone=body.get("timezone", "UTC"),
            version=body.get("version"),
            params=body.get("params", {}),
            priority=body.get("priority", 0),
            enabled=body.get("enabled", True),
        ),
        current_caller(),
    )
    session.commit()
    headers = {"Location": url_for("schedules.get_schedule", ref=schedule.id)}
    return serialize.schedule(schedule), 201, headers


@bp.get("")
@require_scopes("schedules.read")
def list_schedules() -> Any:
    settings = current_app.config["SETTINGS"]
    limit = schemas.query_int(
        "limit", settings.page_limit_default, minimum=1, maximum=settings.page_limit_max
    )
    items, following = manage.list_schedules(
        get_session(), current_caller(), limit=limit, cursor=request.args.get("cursor")
    )
    return serialize.page([serialize.schedule(item) for item in items], following)


@bp.get("/<ref>")
@require_scopes("schedules.read")
def get_schedule(ref: str) -> Any:
    return serialize.schedule(manage.get(get_session(), ref, current_caller()))


@bp.patch("/<ref>")
@require_scopes("schedules.write")
def update_schedule(ref: str) -> Any:
    changes = schemas.json_body(schemas.PATCH_SCHEDULE)
    session = get_session()
    schedule = edit.change(session, current_app.config["SETTINGS"], ref, changes, current_caller())
    session.commit()
    return serialize.schedule(schedule)


@bp.post("/<ref>/pause")
@require_scopes("schedules.write")
def pause_schedule(ref: str) -> Any:
    session = get_session()
    schedule = manage.pause(session, ref, current_caller())
    session.commit()
    return serialize.schedule(schedule)


@bp.post("/<ref>/resume")
@require_scopes("schedules.write")
def resume_schedule(ref: str) -> Any:
    session = get_session()
    schedule = manage.resume(session, ref, current_caller())
    session.commit()
    return serialize.schedule(schedule)


@bp.post("/<ref>/trigger")
@require_scopes("schedules.write")
def trigger_schedule(ref: str) -> Any:
    """202 and the run its next fire would submit, now; 200 with the first run for a repeated
    Idempotency-Key."""
    key = schemas.idempotency_key(trigger.KEY_MAX)
    session = get_session()
    run, work, created = trigger.trigger(
        session, current_app.config["SETTINGS"], ref, current_caller(), key
    )
    session.commit()
    send(work)
    headers = {"Location": url_for("runs.get_run", run_id=run.id)}
    return serialize.run(run), 202 if created else 200, headers


@bp.post("/<ref>/backfill")
@require_scopes("schedules.write")
def backfill_schedule(ref: str) -> Any:
    """Dry run first (`dry_run: true` -> the window's fire times, and how many have their
    run), then the real call confirms the count with a reason: 202 and each fire time's run."""
    body = schemas.json_body(BACKFILL)
    settings, session, caller = current_app.config["SETTINGS"], get_session(), current_caller()
    window = (body["since"], body["until"])
    if body.get("dry_run"):
        return serialize.backfill_plan(backfill.plan(session, settings, ref, caller, *window))
    done = backfill.backfill(
        session,
        settings,
        ref,
        caller,
        *window,
        confirm_count=body.get("confirm_count"),
        reason=body.get("reason"),
    )
    session.commit()
    send(done.work)
    return serialize.backfilled(done), 202


@bp.delete("/<ref>")
@require_scopes("schedules.write")
def delete_schedule(ref: str) -> Any:
    session = get_session()
    manage.delete(session, ref, current_caller())
    session.commit()
    return "", 204

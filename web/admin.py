"""Operators: the dead-letter queue (list, show, replay, bulk replay, discard) and the audit
trail. Scopes: admin.dlq.read, admin.dlq.replay, admin.dlq.discard, admin.audit."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, current_app, request, url_for

from engine import audit, bulk_discard, dlq_query, replay
from engine import bulk_replay as bulk
from engine.errors import InvalidInput
from engine.models import AuditEvent
from web import schemas, serialize
from web.auth import current_caller, require_scopes
from web.db import get_session
from web.dispatch import send

bp = Blueprint("admin", __name__, url_prefix="/admin")

REASON = {"type": "string", "minLength": 1, "maxLength": 2000}
REPLAY = {
    "type": "object",
    "required": ["reason"],
    "additionalProperties": False,
    "properties": {
        "reason": REASON,
        "inputs": {
            "type": "object",
            "description": (
                "Replaces the step's rendered inputs, as given (checked against the action's "
                "schema). Copy them from the step's stored inputs: a [SECRET:name] in them, "
                "alone or inside a longer string, is replaced by that secret's value by the "
                "worker as the step runs, and may name only a secret the step's templates "
                "read. A [REDACTED] (what failures and records show) is refused, 422 naming "
                "the field (inputs.<path>): write the value, or [SECRET:name]."
            ),
        },
    },
}
DISCARD = {
    "type": "object",
    "required": ["reason"],
    "additionalProperties": False,
    "properties": {"reason": REASON},
}
BULK_REPLAY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "filter": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                name: {"type": "string", "maxLength": 200} for name in dlq_query.FILTER_FIELDS
            },
        },
        "dry_run": {"type": "boolean"},
        "confirm_count": {"type": "integer", "minimum": 0},
        "reason": REASON,
    },
}
# The same body: a filter, a dry run, then the count confirmed with a reason.
BULK_DISCARD = BULK_REPLAY


def _settings() -> Any:
    return current_app.config["SETTINGS"]


def _letter(row: Any) -> dict[str, Any]:
    carrier = dlq_query.carriers(get_session(), [row]).get(row.id)
    return serialize.dead_letter(row, _settings().flower_url, carrier)


def _limit() -> int:
    settings = _settings()
    return schemas.query_int(
        "limit", settings.page_limit_default, minimum=1, maximum=settings.page_limit_max
    )


@bp.get("/dlq")
@require_scopes("admin.dlq.read")
def list_dead_letters() -> Any:
    """Every status unless ?status= is given; groups count the whole filter, not the page."""
    where = dlq_query.LetterFilter.parse(request.args)
    session = get_session()
    items, following = dlq_query.list_letters(
        session, where, limit=_limit(), cursor=request.args.get("cursor")
    )
    groups = dlq_query.group_letters(session, where)
    return serialize.dead_letter_page(
        items, following, groups, _settings().flower_url, dlq_query.carriers(session, items)
    )


@bp.get("/dlq/<letter_id>")
@require_scopes("admin.dlq.read")
def get_dead_letter(letter_id: str) -> Any:
    return _letter(dlq_query.get_letter(get_session(), letter_id))


@bp.post("/dlq/<letter_id>/replay")
@require_scopes("admin.dlq.replay")
def replay_dead_letter(letter_id: str) -> Any:
    body = schemas.json_body(REPLAY)
    session = get_session()
    replayed = replay.replay(
        session, _settings(), letter_id, current_caller(), body["reason"], body.get("inputs")
    )
    session.commit()
    send(replayed.work)
    location = url_for("runs.get_run", run_id=replayed.run_id)
    return (
        {
            "dead_letter": _letter(replayed.letter),
            "run_id": replayed.run_id,
            "waiting": replayed.waiting,
        },
        202,
        {"Location": location},
    )


@bp.post("/dlq/replay")
@require_scopes("admin.dlq.replay")
def bulk_replay() -> Any:
    """Dry run first (`dry_run: true` -> count and ids), then the real call confirms the
    count; sends are paced at settings.bulk_replay_rate per second."""
    body, where, dry_run = _bulk_request(BULK_REPLAY, "replay")
    if dry_run is not None:
        return dry_run
    settings, session, caller = _settings(), get_session(), current_caller()
    plan = bulk.plan_bulk(
        session,
        settings,
        where,
        caller,
        confirm_count=body["confirm_count"],
        reason=body["reason"],
    )
    session.commit()
    pacer = bulk.Pacer(settings.bulk_replay_rate)
    results = []
    for batch in bulk.replay_batches(
        current_app.extensions["engine.sessions"], settings, plan, caller, body["reason"]
    ):
        for item in batch:
            if item.work:
                delay = pacer.delay()
                if delay > 0:
                    time.sleep(delay)
                send(item.work)
            results.append(_item(item))
    return {"count": len(results), "results": results}, 202


def _bulk_request(
    schema: dict[str, Any], action: str
) -> tuple[dict[str, Any], dlq_query.LetterFilter, dict[str, Any] | None]:
    """A bulk call's body and filter, and the answer when it is a dry run (the count and
    ids of the open letters matching); a real call lacking confirm_count or reason is a 422."""
    body = schemas.json_body(schema)
    where = dlq_query.LetterFilter.parse(body.get("filter") or {}, prefix="filter.")
    if body.get("dry_run"):
        plan = bulk.plan_bulk(get_session(), _settings(), where, current_caller(), action=action)
        return body, where, {"count": len(plan.ids), "ids": plan.ids}
    missing = [name for name in ("confirm_count", "reason") if name not in body]
    if missing:
        raise InvalidInput(
            f"a bulk {action} needs confirm_count and reason (or dry_run: true)",
            errors=[{"field": name, "message": "required unless dry_run"} for name in missing],
        )
    return body, where, None


@bp.post("/dlq/discard")
@require_scopes("admin.dlq.discard")
def bulk_discard_dead_letters() -> Any:
    """Dry run first (`dry_run: true` -> count and ids), then the real call confirms the
    count and discards the letters at once, in one transaction."""
    body, where, dry_run = _bulk_request(BULK_DISCARD, "discard")
    if dry_run is not None:
        return dry_run
    session = get_session()
    done = bulk_discard.discard_matching(
        session,
        _settings(),
        where,
        current_caller(),
        confirm_count=body["confirm_count"],
        reason=body["reason"],
    )
    session.commit()
    send(done.work)
    results = [{"id": letter_id, "outcome": "discarded"} for letter_id in done.discarded] + [
        {"id": letter_id, "outcome": "not_open"} for letter_id in done.not_open
    ]
    return {"count": len(results), "results": results}


def _item(item: bulk.ItemResult) -> dict[str, Any]:
    result: dict[str, Any] = {"id": item.id, "outcome": item.outcome}
    if item.run_id:
        result["run_id"] = item.run_id
    if item.detail:
        result["detail"] = item.detail
    if item.waiting:
        result["waiting"] = item.waiting
    return result


@bp.post("/dlq/<letter_id>/discard")
@require_scopes("admin.dlq.discard")
def discard_dead_letter(letter_id: str) -> Any:
    body = schemas.json_body(DISCARD)
    session = get_session()
    letter, work = replay.discard(session, letter_id, current_caller(), body["reason"])
    session.commit()
    send(work)
    return _letter(letter)


def _event(row: AuditEvent) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": serialize.timestamp(row.at),
        "actor": row.actor,
        "action": row.action,
        "target": row.target,
        "reason": row.reason,
        "detail": row.detail,
    }


@bp.get("/audit")
@require_scopes("admin.audit")
def list_audit_events() -> Any:
    """Newest first; actor, action and target match exactly; since/until bound `at`."""
    since, until = audit.parse_window(request.args.get("since"), request.args.get("until"))
    items, following = audit.list_events(
        get_session(),
        limit=_limit(),
        cursor=request.args.get("cursor"),
        actor=request.args.get("actor"),
        action=request.args.get("action"),
        target=request.args.get("target"),
        since=since,
        until=until,
    )
    return serialize.page([_event(item) for item in items], following)

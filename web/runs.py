"""Runs: submit, list, read, cancel, retry."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, request, url_for

from engine import audit, cancels, delayed, resume, run_query, runs, webhooks
from web import events, schemas, serialize
from web.auth import current_caller, request_claims, require_scopes
from web.db import get_session, read_connection
from web.dispatch import send

bp = Blueprint("runs", __name__, url_prefix="/runs")
MAX_IDEMPOTENCY_KEY = 200


@bp.post("")
@require_scopes("runs.write")
def submit_run() -> Any:
    body = schemas.json_body(schemas.SUBMIT_RUN)
    key = schemas.idempotency_key(MAX_IDEMPOTENCY_KEY)
    settings = current_app.config["SETTINGS"]
    webhook_url = body.get("webhook_url")
    if webhook_url is not None:
        webhooks.check_url(webhook_url, settings)
    session = get_session()
    run, work, created = runs.submit(
        session,
        settings,
        runs.SubmitRun(
            body["workflow"],
            body.get("params", {}),
            body.get("version"),
            body.get("priority", 0),
            key,
            webhook_url,
            not_before=delayed.parse(body.get("not_before")),
        ),
        current_caller(),
    )
    session.commit()
    send(work)
    headers = {"Location": url_for("runs.get_run", run_id=run.id)}
    return serialize.run(run), 202 if created else 200, headers


@bp.get("")
@require_scopes("runs.read")
def list_runs() -> Any:
    settings = current_app.config["SETTINGS"]
    limit = schemas.query_int(
        "limit", settings.page_limit_default, minimum=1, maximum=settings.page_limit_max
    )
    since, until = audit.parse_window(request.args.get("since"), request.args.get("until"))
    with read_connection() as connection:
        items, following = run_query.list_runs(
            connection,
            current_caller(),
            limit=limit,
            cursor=request.args.get("cursor"),
            status=request.args.get("status"),
            workflow=request.args.get("workflow"),
            since=since,
            until=until,
            created_by=request.args.get("created_by"),
        )
    return serialize.page([serialize.run(item) for item in items], following)


@bp.get("/<run_id>")
@require_scopes("runs.read")
def get_run(run_id: str) -> Any:
    with read_connection() as connection:
        run, steps = run_query.read_run_with_steps(connection, run_id, current_caller())
    return serialize.run(run, steps)


@bp.get("/<run_id>/events")
@require_scopes("runs.read")
def run_events(run_id: str) -> Any:
    client_has = events.last_event_id(request)
    caller = current_caller()
    read_db = current_app.extensions["engine.read_db"]
    still_valid = events.token_check(request_claims(), current_app.extensions["engine.revocations"])

    def read() -> dict[str, Any]:
        still_valid()  # a token that expires or is revoked while it streams ends the stream
        with read_db.connect() as connection:
            return serialize.run(*run_query.read_run_with_steps(connection, run_id, caller))

    # Read once before answering: another caller's run is a 404, as GET /runs/{id} says.
    return events.stream(read, read(), client_has)


@bp.post("/<run_id>/cancel")
@require_scopes("runs.write")
def cancel_run(run_id: str) -> Any:
    session = get_session()
    run, work = cancels.cancel(session, current_app.config["SETTINGS"], run_id, current_caller())
    session.commit()
    send(work)
    return serialize.run(run, run_query.run_steps(session, run_id))


@bp.post("/<run_id>/retry")
@require_scopes("runs.write")
def retry_run(run_id: str) -> Any:
    session = get_session()
    run, work = resume.retry_run(session, current_app.config["SETTINGS"], run_id, current_caller())
    session.commit()
    send(work)
    return serialize.run(run), 202

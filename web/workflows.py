"""Workflows: register versions (JSON or YAML), read them, dry-run plans, pause and resume."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, request, url_for

from engine import cancels, concurrency, pauses, spec_schema, spec_text, workflows
from engine.auth import ADMIN_WORKFLOWS_SCOPE
from engine.errors import InvalidInput
from web import schemas, serialize
from web.auth import current_caller, require_scopes
from web.db import get_session
from web.dispatch import send

bp = Blueprint("workflows", __name__, url_prefix="/workflows")
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


@bp.get("")
@require_scopes("workflows.read")
def list_workflows() -> Any:
    settings = current_app.config["SETTINGS"]
    limit = schemas.query_int(
        "limit", settings.page_limit_default, minimum=1, maximum=settings.page_limit_max
    )
    session = get_session()
    rows, following = workflows.list_latest_page(
        session, limit=limit, cursor=request.args.get("cursor")
    )
    paused = pauses.paused(session, [row.name for row in rows])
    items = [serialize.workflow(row, paused.get(row.name)) for row in rows]
    return serialize.page(items, following)


@bp.post("")
@require_scopes("workflows.write")
def register_workflow() -> Any:
    if schemas.media_type(YAML_TYPES) in YAML_TYPES:
        spec = spec_text.parse_text(schemas.body_bytes())
    else:
        spec = schemas.parse_json()
        spec_text.refuse_duplicate_keys(schemas.body_bytes())
    if not isinstance(spec, dict):
        raise InvalidInput(
            "the body must be a workflow spec object (JSON or YAML)",
            errors=[{"field": "body", "message": "expected an object"}],
        )
    session = get_session()
    workflow, created = workflows.register(session, spec, current_app.config["SETTINGS"])
    body = serialize.workflow(workflow, pauses.paused(session, [workflow.name]).get(workflow.name))
    session.commit()
    location = url_for("workflows.get_workflow", name=workflow.name, version=workflow.version)
    return body, 201 if created else 200, {"Location": location}


@bp.get("/<name>")
@require_scopes("workflows.read")
def get_workflow(name: str) -> Any:
    version = request.args.get("version") or None
    if version is not None and not (
        version.isascii() and version.isdigit() and 1 <= int(version) <= spec_schema.MAX_VERSION
    ):
        raise InvalidInput(
            f"version must be an integer from 1 to {spec_schema.MAX_VERSION}",
            errors=[{"field": "version", "message": "not a version number"}],
        )
    session = get_session()
    row = workflows.get(session, name, int(version) if version else None)
    body = serialize.workflow(row, pauses.paused(session, [name]).get(name))
    body["versions"] = [item.version for item in workflows.list_versions(session, name)]
    body["concurrency"] = concurrency.usage(session, name, row.spec)
    return body


@bp.post("/<name>/plan")
@require_scopes("workflows.read")
def plan_workflow(name: str) -> Any:
    body = schemas.json_body(schemas.PLAN, default={})
    stages, conditions = workflows.plan_stages(
        get_session(),
        current_app.config["SETTINGS"],
        name,
        body.get("params", {}),
        body.get("version"),
    )
    return {"workflow": name, "stages": stages, "when": conditions}


@bp.post("/<name>/pause")
@require_scopes(ADMIN_WORKFLOWS_SCOPE)
def pause_workflow(name: str) -> Any:
    """With cancel_running (admin.runs too), the live runs are then cancelled, a batch per
    transaction, each batch's tasks stopped after its commit."""
    body = schemas.json_body(schemas.PAUSE_WORKFLOW)
    caller = current_caller()
    if body.get("cancel_running"):
        cancels.require_bulk_scope(caller)
    session = get_session()
    pause, _ = pauses.pause(session, name, body["reason"], caller.sub)
    answer: dict[str, Any] = {"workflow": name, **serialize.workflow_pause(pause)}
    session.commit()
    if body.get("cancel_running"):
        answer["cancelled"] = 0
        for batch in cancels.cancel_workflow_runs(
            current_app.extensions["engine.sessions"],
            name,
            caller,
            body["reason"],
            batch_size=current_app.config["SETTINGS"].bulk_cancel_batch,
        ):
            send(batch.work)
            answer["cancelled"] += batch.cancelled
    return answer


@bp.post("/<name>/resume")
@require_scopes(ADMIN_WORKFLOWS_SCOPE)
def resume_workflow(name: str) -> Any:
    session = get_session()
    pauses.resume(session, name, current_caller().sub)
    session.commit()
    return {"workflow": name, **serialize.workflow_pause(None)}

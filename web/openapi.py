"""The API described: /openapi.json, and a browsable /docs page served from it."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template_string

import engine

bp = Blueprint("docs", __name__)

# (method, path, scope, summary, success status)
OPERATIONS: list[tuple[str, str, str | None, str, int]] = [
    ("get", "/health", None, "Liveness", 200),
    ("get", "/readyz", None, "Readiness: database and broker; 503 names the failing check", 200),
    ("get", "/metrics", None, "Prometheus metrics", 200),
    ("post", "/runs", "runs.write", "Submit a run (Idempotency-Key header supported)", 202),
    (
        "get",
        "/runs",
        "runs.read",
        "List runs (own; admin sees all): status, workflow, limit, cursor",
        200,
    ),
    ("get", "/runs/{run_id}", "runs.read", "A run with its steps", 200),
    ("post", "/runs/{run_id}/cancel", "runs.write", "Cancel a live run", 200),
    (
        "post",
        "/runs/{run_id}/retry",
        "runs.write",
        "Resume a failed run from its failed steps",
        202,
    ),
    ("get", "/workflows", "workflows.read", "Latest version of every workflow", 200),
    ("post", "/workflows", "workflows.write", "Register a workflow version (JSON or YAML)", 201),
    ("get", "/workflows/{name}", "workflows.read", "A workflow (latest or ?version=)", 200),
    ("post", "/workflows/{name}/plan", "workflows.read", "Dry-run plan: parallel stages", 200),
    (
        "get",
        "/admin/dlq",
        "admin.dlq.read",
        "Dead letters, newest first (every status unless ?status=open|replayed|discarded): "
        "workflow, step, exception_type, fingerprint, run_id, since, until, limit, cursor; "
        "with counts grouped by fingerprint",
        200,
    ),
    ("get", "/admin/dlq/{letter_id}", "admin.dlq.read", "A dead letter, with its Flower link", 200),
    (
        "post",
        "/admin/dlq/{letter_id}/replay",
        "admin.dlq.replay",
        "Replay an open dead letter into its run at its step: {reason, inputs?}",
        202,
    ),
    (
        "post",
        "/admin/dlq/replay",
        "admin.dlq.replay",
        "Bulk replay by filter: {filter, dry_run: true} -> {count, ids}; "
        "then {filter, confirm_count, reason} -> per-item results",
        202,
    ),
    (
        "post",
        "/admin/dlq/{letter_id}/discard",
        "admin.dlq.discard",
        "Discard an open dead letter (kept for audit): {reason}",
        200,
    ),
    (
        "get",
        "/admin/audit",
        "admin.audit",
        "Audit events, newest first: actor, action, target, since, until, limit, cursor",
        200,
    ),
    ("get", "/openapi.json", None, "This description of the API (OpenAPI 3.1)", 200),
    ("get", "/docs", None, "A browsable page of the API", 200),
    ("post", "/admin/tokens", "admin.tokens", "Mint a token: {sub, scopes, ttl}", 201),
    ("post", "/admin/tokens/revoke", "admin.tokens", "Revoke a token by jti", 204),
    (
        "get",
        "/admin/status",
        "admin.status",
        "Version, uptime, database and broker checks, queue depth and lag, online workers, "
        "runs by status, open dead letters",
        200,
    ),
    (
        "get",
        "/life/health/wellness_daily",
        "life.read",
        "The caller's daily wellness summary: ?day=YYYY-MM-DD (default today, UTC); "
        "?subject= another subject's, with admin.life",
        200,
    ),
]

_DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ info.title }} API</title>
<style>body{font-family:system-ui,sans-serif;margin:2rem;max-width:60rem}
code{background:#f3f3f3;padding:0 .3em}td,th{padding:.3em .8em;text-align:left}
.m{font-weight:bold;text-transform:uppercase}</style></head><body>
<h1>{{ info.title }} <small>{{ info.version }}</small></h1>
<p>{{ info.description }} The machine-readable spec is at <a href="/openapi.json">/openapi.json</a>.
Send <code>Authorization: Bearer &lt;token&gt;</code>; errors are
<code>application/problem+json</code>.</p>
<table><tr><th>method</th><th>path</th><th>scope</th><th>what</th></tr>
{% for path, item in paths.items() %}{% for method, op in item.items() %}
<tr><td class="m">{{ method }}</td><td><code>{{ path }}</code></td>
<td>{{ op.get('x-scope') or '' }}</td><td>{{ op.summary }}</td></tr>
{% endfor %}{% endfor %}</table></body></html>"""


def extra_operations() -> list[tuple[str, str, str | None, str, int]]:
    """Blueprints added later append their operations here."""
    return []


def spec() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path, scope, summary, status in OPERATIONS + extra_operations():
        operation: dict[str, Any] = {
            "summary": summary,
            "responses": {
                str(status): {"description": "success"},
                "default": {
                    "description": "problem",
                    "content": {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    },
                },
            },
        }
        if scope:
            operation["security"] = [{"bearer": []}]
            operation["x-scope"] = scope
        parameters = [
            {"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
            for part in path.split("/")
            if part.startswith("{")
        ]
        if parameters:
            operation["parameters"] = parameters
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "AI Business Engine",
            "version": engine.__version__,
            "description": "Submit runs of versioned workflows; operate the platform.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "schemas": {
                "Problem": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "code": {"type": "string"},
                        "errors": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "field": {"type": "string"},
                                    "message": {"type": "string"},
                                },
                            },
                        },
                    },
                }
            },
        },
    }


@bp.get("/openapi.json")
def openapi_json() -> dict[str, Any]:
    return spec()


@bp.get("/docs")
def docs() -> str:
    document = spec()
    return render_template_string(_DOCS_PAGE, info=document["info"], paths=document["paths"])

"""The API described: /openapi.json, built from the entries of web/openapi_operations.py and
the components of web/openapi_components.py, and a browsable /docs page served from it."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

from flask import Blueprint, current_app, render_template_string

import engine
from web import openapi_components as parts
from web.errors import PROBLEM
from web.openapi_operations import OPERATIONS, Operation

bp = Blueprint("docs", __name__)
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


def openapi_path(rule: str) -> str:
    """A Flask rule as an OpenAPI path: /runs/<run_id> -> /runs/{run_id}."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def _operation_ids() -> dict[tuple[str, str], str]:
    """(method, path) -> the name of the view that answers it, from the app's own routes."""
    views = current_app.view_functions
    return {
        (method.lower(), openapi_path(rule.rule)): views[rule.endpoint].__name__
        for rule in current_app.url_map.iter_rules()
        for method in rule.methods or ()
    }


def _response(
    description: str, component: str | dict[str, Any] | None, media: str
) -> dict[str, Any]:
    if component is None:
        return {"description": description}
    media = PROBLEM if component == "Problem" else media
    schema = parts.ref(component) if isinstance(component, str) else component
    return {"description": description, "content": {media: {"schema": schema}}}


def problem_statuses(operation: Operation) -> list[int]:
    """The 4xx statuses an operation answers with: those of its scope (no valid token, a
    scope missing), of its body (malformed JSON, too large, a type it does not read,
    invalid), of its path (nothing there; it and the query string: text no column can
    store, a bad value), and its own."""
    statuses = set(operation.problems)
    if operation.scope:
        statuses |= {401, 403, 429}  # 429: over its rate limit (web.rate_limits)
    if operation.body is not None:
        statuses |= {400, 413, 415, 422}
    if "{" in operation.path:
        statuses |= {404, 422}
    if any(parameter["in"] == "query" for parameter in operation.parameters):
        statuses.add(422)
    return sorted(statuses)


def describe(operation: Operation, operation_id: str | None) -> dict[str, Any]:
    """The OpenAPI operation object of one entry."""
    responses = {
        str(status): _response(HTTPStatus(status).phrase, component, operation.media)
        for status, component in operation.responses.items()
    }
    if operation.location:
        location = {**parts.LOCATION, "description": f"The URL of {operation.location}"}
        for response in responses.values():
            response["headers"] = {"Location": location}
    for status in problem_statuses(operation):
        responses[str(status)] = _response(HTTPStatus(status).phrase, "Problem", PROBLEM)
    if "429" in responses:
        responses["429"]["description"] = (
            "The caller is over its rate limit (RATE_LIMIT_WRITES for POST, PATCH and DELETE, "
            "RATE_LIMIT_READS for GET); retry after Retry-After seconds"
        )
        responses["429"]["headers"] = parts.RATE_LIMITED
    responses["default"] = _response("A problem (RFC 9457)", "Problem", PROBLEM)
    described: dict[str, Any] = {"summary": operation.summary}
    if operation_id:
        described["operationId"] = operation_id
    described["tags"] = [operation.path.split("/")[1].split(".")[0]]
    path_parameters = [
        {"name": name, "in": "path", "required": True, "schema": parts.STRING}
        for name in re.findall(r"{([^}]+)}", operation.path)
    ]
    if path_parameters or operation.parameters:
        described["parameters"] = [*path_parameters, *operation.parameters]
    if operation.body is not None:
        described["requestBody"] = operation.body
    described["responses"] = responses
    if operation.scope:
        described["security"] = [{"bearer": []}]
        described["x-scope"] = operation.scope
    return described


def spec() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API (call within the app's context)."""
    operation_ids = _operation_ids()
    paths: dict[str, dict[str, Any]] = {}
    for operation in OPERATIONS:
        operation_id = operation_ids.get((operation.method, operation.path))
        paths.setdefault(operation.path, {})[operation.method] = describe(operation, operation_id)
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
            "schemas": {**parts.RESPONSES, **parts.REQUESTS},
        },
    }


@bp.get("/openapi.json")
def openapi_json() -> dict[str, Any]:
    return spec()


@bp.get("/docs")
def docs() -> str:
    document = spec()
    return render_template_string(_DOCS_PAGE, info=document["info"], paths=document["paths"])

"""One error shape for the whole API: RFC 9457 application/problem+json."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, json
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from engine.errors import EngineError

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"


def problem(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    code: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if code:
        body["code"] = code
    if errors:
        body["errors"] = errors
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register(app: Flask) -> None:
    @app.errorhandler(EngineError)
    def _engine_error(error: EngineError) -> Response:
        return problem(
            error.status, error.title, error.detail, code=error.code, errors=error.errors
        )

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        code = (error.name or "error").lower().replace(" ", "_")
        response = problem(
            error.code or 500,
            error.name,
            error.description,
            code=code,
            errors=getattr(error, "errors", None),
        )
        if error.code == 405 and error.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore
        return response

    @app.errorhandler(OperationalError)
    def _database_away(error: OperationalError) -> Response:
        log.error("database unavailable: %s", error.orig)
        return problem(
            503,
            "Service unavailable",
            "the database is unavailable; retry shortly",
            code="database_unavailable",
            headers={"Retry-After": "2"},
        )

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error")
        return problem(
            500, "Internal server error", "an unexpected error occurred", code="internal_error"
        )

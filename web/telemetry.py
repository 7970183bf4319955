"""What the API tells operators: request metrics (multiprocess-aware; served by the private
metrics listener, web/metrics_listener.py, not on the API's port), request ids, and one
access-log line per request."""

from __future__ import annotations

import logging
import random
import re
import time
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import Counter, Histogram

import celeryconfig
from engine import logs
from engine.config import Settings
from engine.metrics import DURATION_BUCKETS
from workers.observer import make_observer

access_log = logging.getLogger(logs.ACCESS_LOGGER)

LABELS = ["method", "endpoint", "status"]
api_requests_total = Counter("api_requests_total", "API requests", LABELS)
api_errors_total = Counter("api_errors_total", "API requests answered with a 5xx", LABELS)
api_request_latency_seconds = Histogram(
    "api_request_latency_seconds", "API latency", LABELS, buckets=DURATION_BUCKETS
)

REQUEST_ID_HEADER = "X-Request-ID"
# The same header as WSGI names it in the environ.
_REQUEST_ID_ENVIRON = "HTTP_" + REQUEST_ID_HEADER.upper().replace("-", "_")
# A caller's id is kept when it is plain enough to log and echo back; else we make one.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
STREAM_MIMETYPE = "text/event-stream"
# Any other method a client sends is counted as "other": a label value per made-up method
# would let clients add series without end.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# What a route answers when it breaks: its error series starts at 0, so that increase()
# and rate() (HighErrorRate) see the first one.
EXPECTED_ERROR = "500"
_SERIES: dict[tuple[str, str, int, bool], tuple[Any, Any, Any]] = {}


def init_app(app: Flask) -> None:
    settings: Settings = app.config["SETTINGS"]
    app.extensions["engine.started"] = (datetime.now(UTC), time.monotonic())
    observer = make_observer(
        settings,
        app.extensions["engine.celery"],
        app.extensions["engine.read_sessions"],
        celeryconfig.QUEUES,
    )
    app.extensions["engine.observer"] = observer
    expect_errors(app)
    # Every response counts, 404s and auth failures too.
    app.before_request(_start)
    app.after_request(_finish)
    app.teardown_request(_unbind)


def expect_errors(app: Flask) -> None:
    """Create api_errors_total at 0 for every route and method the app serves (HEAD and
    OPTIONS, which Flask adds to every route, left out)."""
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            api_errors_total.labels(method, rule.rule, EXPECTED_ERROR)


def _start() -> None:
    g.request_started = time.perf_counter()
    incoming = request.environ.get(_REQUEST_ID_ENVIRON, "")
    g.request_id = incoming if _VALID_REQUEST_ID.fullmatch(incoming) else _new_request_id()
    g.log_token = logs.bind(request_id=g.request_id)


def _new_request_id() -> str:
    """32 hex digits, like uuid4().hex, from the process's own random generator (seeded anew
    in every forked worker). uuid4 reads the kernel's random source: a system call, which
    hands the interpreter lock to another of gunicorn's threads. An id must be unique, not
    secret."""
    return f"{random.getrandbits(128):032x}"


def _finish(response: Response) -> Response:
    request_id = g.get("request_id")
    if request_id:
        response.headers[REQUEST_ID_HEADER] = request_id
    current = request._get_current_object()  # type: ignore[attr-defined]
    path = current.path
    started = g.get("request_started")
    started = started if started is not None else time.perf_counter()
    method, status = current.method, response.status_code
    rule = current.url_rule
    # A stream (GET /runs/{id}/events) lasts minutes: it stays out of the latency
    # histogram, which the API's objectives read (no series of its route there at all), and
    # its access line is written when it ends, with its whole duration.
    streamed = response.mimetype == STREAM_MIMETYPE
    endpoint = rule.rule if rule else "unmatched"
    requests, latency, errors = _series(method, endpoint, status, not streamed)
    requests.inc()
    if errors is not None:
        errors.inc()
    fields: dict[str, Any] = {
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": 0.0,
        "remote_addr": current.remote_addr,
    }
    caller = g.get("caller")  # set once the token was verified (web.auth)
    if caller is not None:
        fields["caller"] = caller.sub
    if streamed:
        response.call_on_close(lambda: _log_access(fields, started, request_id))
        return response
    latency.observe(time.perf_counter() - started)
    _log_access(fields, started)
    return response


def _log_access(fields: dict[str, Any], started: float, request_id: str | None = None) -> None:
    """The request's access line; `request_id` binds the id again for a line written once
    the request's own context is gone (a stream's, when it ends)."""
    elapsed = time.perf_counter() - started
    fields["duration_ms"] = round(elapsed * 1000, 2)
    method, path, status = fields["method"], fields["path"], fields["status"]
    token = logs.bind(request_id=request_id) if request_id else None
    access_log.info(
        "%s %s %s %.1fms", method, path, status, elapsed * 1000, extra={"fields": fields}
    )
    if token is not None:
        logs.reset(token)


def _series(method: str, endpoint: str, status: int, timed: bool = True) -> tuple[Any, Any, Any]:
    """The request's counter, latency (None when not `timed`) and (for a 5xx) error series:
    looked up by their labels once per process, then kept (there are as many as routes ×
    methods × statuses)."""
    key = (method if method in METHODS else "other", endpoint, status, timed)
    series = _SERIES.get(key)
    if series is None:
        labels = (key[0], endpoint, str(status))
        series = _SERIES[key] = (
            api_requests_total.labels(*labels),
            api_request_latency_seconds.labels(*labels) if timed else None,
            api_errors_total.labels(*labels) if status >= 500 else None,
        )
    return series


def _unbind(_error: BaseException | None) -> None:
    token = g.pop("log_token", None)
    if token is not None:
        logs.reset(token)

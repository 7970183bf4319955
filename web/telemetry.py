"""API request metrics under the names operators chart, exported at /metrics."""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import Counter, Histogram

from engine.metrics import DURATION_BUCKETS

LABELS = ["method", "endpoint", "status"]
api_requests_total = Counter("api_requests_total", "API requests", LABELS)
api_errors_total = Counter("api_errors_total", "API requests answered with a 5xx", LABELS)
api_request_latency_seconds = Histogram(
    "api_request_latency_seconds", "API latency", LABELS, buckets=DURATION_BUCKETS
)


def init_app(app: Flask, exporter: Any) -> None:
    # The exporter serves /metrics (multiprocess-aware); the counting is ours, so that
    # every response counts, including 404s and auth failures, under stable names.
    exporter(app, export_defaults=False)

    @app.before_request
    def _start_timer() -> None:
        g.request_started = time.perf_counter()

    @app.after_request
    def _count(response: Response) -> Response:
        if request.path == "/metrics":
            return response
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        labels = {
            "method": request.method,
            "endpoint": endpoint,
            "status": str(response.status_code),
        }
        api_requests_total.labels(**labels).inc()
        if response.status_code >= 500:
            api_errors_total.labels(**labels).inc()
        started = g.get("request_started")
        if started is not None:
            api_request_latency_seconds.labels(**labels).observe(time.perf_counter() - started)
        return response

"""Metric objects, shared by the API and the workers so both count under the same names.

Processes that fork (gunicorn workers, Celery prefork children) aggregate through
prometheus_client's multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
)

manager_planning_duration_seconds = Histogram(
    "manager_planning_duration_seconds", "Time to plan a run into steps", buckets=DURATION_BUCKETS
)
runs_total = Counter("runs_total", "Runs that reached an end state", ["workflow", "status"])
steps_total = Counter("steps_total", "Step attempts by outcome", ["action", "status"])
step_duration_seconds = Histogram(
    "step_duration_seconds", "Time an action ran", ["action"], buckets=DURATION_BUCKETS
)
task_retries_total = Counter("task_retries_total", "Step attempts scheduled for a retry")
dlq_events_total = Counter("dlq_events_total", "Dead-letter events", ["event"])
# Gauges read from the database or the broker at scrape time (see engine/observe.py).
queue_depth = Gauge(
    "queue_depth", "Messages waiting in a queue", ["queue"], multiprocess_mode="max"
)
queue_lag_seconds = Gauge(
    "queue_lag_seconds", "Age of the oldest waiting message", ["queue"], multiprocess_mode="max"
)
dlq_open = Gauge("dlq_open", "Dead letters still open", multiprocess_mode="max")
workers_online = Gauge("workers_online", "Celery workers answering", multiprocess_mode="max")

__all__ = ["REGISTRY"]

"""Metric objects, shared by the API and the workers so both count under the same names.

Processes that fork (gunicorn workers, Celery prefork children) aggregate through
prometheus_client's multiprocess mode: with PROMETHEUS_MULTIPROC_DIR set (Settings.metrics_dir)
every process counts into its own files there, and whoever serves /metrics sums them.

Gauges that describe the platform rather than one process (queue depth and lag, open dead
letters, workers online, the schedules' and webhooks' lag) are not stored at all:
`LiveGauges` reads them when /metrics is scraped, so a gauge from a process that has since
died never lingers in the files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)
# `*_created` series double what is exposed for nothing our dashboards read (and the
# multiprocess mode never has them): one shape in both modes.
disable_created_metrics()

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
runs_pruned_total = Counter(
    "runs_pruned_total", "Finished runs deleted by retention, with their steps"
)
# Each due schedule's fire: a run submitted, one already submitted for that fire time
# (another tick got there first), refused (its workflow or params no longer valid), paused
# (its workflow is), or revoked (its token was: the schedule paused, by the revocation
# itself, or by a fire that found it enabled).
schedule_fires_total = Counter("schedule_fires_total", "Schedule fires by outcome", ["outcome"])
schedule_fires_skipped_total = Counter(
    "schedule_fires_skipped_total", "Missed fire times skipped (one run for the latest only)"
)
webhook_deliveries_total = Counter(
    "webhook_deliveries_total",
    "Webhook delivery attempts by outcome (expired and refused: given up, alert on them)",
    ["outcome"],
)

# Alerts compute increase() over these; a series born at its first event hides that event.
DLQ_EVENTS = ("added", "replayed", "discarded")
for _event in DLQ_EVENTS:
    dlq_events_total.labels(event=_event)
# paused: its workflow is paused (engine.pauses); revoked: the token the schedule acts with
# was revoked, and the schedule is paused (engine.schedules.tokens). Both are an operator's
# choice: no alert counts them.
SCHEDULE_OUTCOMES = ("submitted", "duplicate", "refused", "paused", "revoked")
for _outcome in SCHEDULE_OUTCOMES:
    schedule_fires_total.labels(outcome=_outcome)
# delivered: a 2xx; retried: another attempt is due later; gone: a 410 stopped it; expired:
# still failing past WEBHOOK_MAX_AGE_HOURS; refused: the outbound policy does not allow it.
WEBHOOK_OUTCOMES = ("delivered", "retried", "gone", "expired", "refused")
for _outcome in WEBHOOK_OUTCOMES:
    webhook_deliveries_total.labels(outcome=_outcome)
# The outcomes a worker counts (a cancel is counted by the API).
RUN_OUTCOMES = ("succeeded", "failed")
# skipped: a step whose `when` was false (a failed run's skipped steps are not counted).
STEP_OUTCOMES = ("succeeded", "skipped", "retrying", "dead")


def expect_outcomes(workflows: Iterable[str], actions: Iterable[str]) -> None:
    """Create the outcome series of these workflows and actions at 0, so that increase()
    and rate() see their first run or step too (the dashboards' "Runs failed (1h)")."""
    for workflow in workflows:
        for status in RUN_OUTCOMES:
            runs_total.labels(workflow=workflow, status=status)
    for action in actions:
        for status in STEP_OUTCOMES:
            steps_total.labels(action=action, status=status)


@dataclass
class Readings:
    """The platform gauges at one moment; None (or a missing queue) when it could not be read."""

    queue_depth: dict[str, int] = field(default_factory=dict)
    queue_lag_seconds: dict[str, float] = field(default_factory=dict)
    dlq_open: int | None = None
    workers_online: int | None = None
    schedule_lag_seconds: float | None = None
    webhook_lag_seconds: float | None = None
    delayed_run_lag_seconds: float | None = None
    # Queued runs waiting unsent, by reason (concurrency, not_before); empty when unread.
    runs_waiting: dict[str, int] = field(default_factory=dict)


class LiveGauges(Collector):
    """queue_depth, queue_lag_seconds, dlq_open, workers_online, schedule_lag_seconds,
    webhook_lag_seconds, delayed_run_lag_seconds and runs_waiting, read at scrape time. A
    reading that failed is left out, never served as 0: the ReadinessFailing alert reads a missing
    dlq_open as the database failing and a missing queue_depth as the broker."""

    def __init__(self, read: Callable[[], Readings]) -> None:
        self._read = read

    def describe(self) -> list[Metric]:
        # Registering must not probe Redis or the database.
        return []

    def collect(self) -> Iterator[Metric]:
        readings = self._read()
        depth = GaugeMetricFamily("queue_depth", "Messages waiting in a queue", labels=["queue"])
        for queue, count in sorted(readings.queue_depth.items()):
            depth.add_metric([queue], count)
        lag = GaugeMetricFamily(
            "queue_lag_seconds", "Age of the oldest waiting message", labels=["queue"]
        )
        for queue, value in sorted(readings.queue_lag_seconds.items()):
            lag.add_metric([queue], value)
        dlq = GaugeMetricFamily("dlq_open", "Dead letters still open")
        if readings.dlq_open is not None:
            dlq.add_metric([], readings.dlq_open)
        online = GaugeMetricFamily(
            "workers_online", "Celery workers answering a ping (beat left out)"
        )
        if readings.workers_online is not None:
            online.add_metric([], readings.workers_online)
        overdue = GaugeMetricFamily(
            "schedule_lag_seconds",
            "How long the most overdue enabled schedule has waited past its fire time",
        )
        if readings.schedule_lag_seconds is not None:
            overdue.add_metric([], readings.schedule_lag_seconds)
        undelivered = GaugeMetricFamily(
            "webhook_lag_seconds",
            "How long the most overdue webhook event has waited past its due time",
        )
        if readings.webhook_lag_seconds is not None:
            undelivered.add_metric([], readings.webhook_lag_seconds)
        unstarted = GaugeMetricFamily(
            "delayed_run_lag_seconds",
            "How long the most overdue delayed run has waited past its not_before unsent",
        )
        if readings.delayed_run_lag_seconds is not None:
            unstarted.add_metric([], readings.delayed_run_lag_seconds)
        # One series per reason, never per workflow (GET /workflows/{name} tells those).
        held = GaugeMetricFamily(
            "runs_waiting",
            "Queued runs waiting unsent: for a slot of their workflow's concurrency limit, "
            "or for their not_before",
            labels=["reason"],
        )
        for reason, count in sorted(readings.runs_waiting.items()):
            held.add_metric([reason], count)
        yield from (depth, lag, dlq, online, overdue, undelivered, unstarted, held)


class _ProcessRegistry(Collector):
    """This process's own metrics (single-process mode), inside another registry."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def multiprocess_active() -> bool:
    """Whether this process counts into PROMETHEUS_MULTIPROC_DIR files (fixed at import)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def exposition_registry(
    metrics_dir: Path | None, read: Callable[[], Readings] | None = None
) -> CollectorRegistry:
    """What /metrics serves: every process's counts (from the multiprocess directory when
    set, else this process's) plus the live gauges."""
    registry = CollectorRegistry(auto_describe=False)
    if metrics_dir is not None:
        if not multiprocess_active():
            log.warning(
                "metrics directory %s is configured, but this process was started without "
                "PROMETHEUS_MULTIPROC_DIR in its environment: its own counts are not shared",
                metrics_dir,
            )
        MultiProcessCollector(registry, path=str(metrics_dir))
    else:
        registry.register(_ProcessRegistry())
    if read is not None:
        registry.register(LiveGauges(read))
    return registry


def prepare_directory(metrics_dir: Path, keep_pid: int | None = None) -> int:
    """Create the multiprocess directory and remove the files of earlier processes (a new
    process with a reused pid would otherwise continue their counts); returns how many.
    `keep_pid`: the caller's own files, already open, stay."""
    metrics_dir.mkdir(parents=True, exist_ok=True)
    removed = 0
    for path in metrics_dir.glob("*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if keep_pid is not None and pid == str(keep_pid):
            continue
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def process_exited(metrics_dir: Path | None, pid: int | None = None) -> None:
    """Bookkeeping for a process that ended: its live gauges stop counting; its counters and
    histograms stay, so totals never go down."""
    if metrics_dir is not None:
        mark_process_dead(pid if pid is not None else os.getpid(), str(metrics_dir))


__all__ = [
    "REGISTRY",
    "Readings",
    "LiveGauges",
    "exposition_registry",
    "prepare_directory",
    "process_exited",
]

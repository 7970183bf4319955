"""GET /admin/status: the platform at a glance for an operator.

Every part is read side by side under one deadline (engine/observe.py), so a database or
broker that does not answer shows up as that part's error instead of hanging the request.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from flask import Blueprint, current_app

import engine
from engine.observe import Observer, Reading
from web.auth import require_scopes

bp = Blueprint("status", __name__)


def _part(reading: Reading | None, **values: Any) -> dict[str, Any]:
    if reading is None:
        return {"status": "unknown"}
    if not reading.ok:
        return {"status": "error", "error": reading.error}
    return {"status": "ok", **values}


def _workers(reading: Reading | None) -> dict[str, Any]:
    # A ping nobody answered in time means no worker online, as far as the API can tell.
    names = list(reading.value or []) if reading is not None and reading.ok else []
    return {**_part(reading), "online": len(names), "names": names}


def _failing(*readings: Reading | None) -> Reading | None:
    """The first of a part's readings that is missing or failed, else its last."""
    return next((item for item in readings if item is None or not item.ok), readings[-1])


def _rounded(reading: Reading | None) -> float | None:
    return round(reading.value, 3) if reading is not None and reading.ok else None


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@bp.get("/admin/status")
@require_scopes("admin.status")
def admin_status() -> dict[str, Any]:
    observer: Observer = current_app.extensions["engine.observer"]
    started_at, started = current_app.extensions["engine.started"]
    readings = observer.snapshot(runs=True, database=True, lags=True)

    queues = readings["queues"]
    workers = readings.get("workers")
    runs = readings.get("runs")
    letters = readings.get("dead_letters")
    schedules = readings.get("schedules")
    webhooks = readings.get("webhooks")
    delayed, waiting = readings.get("delayed_runs"), readings.get("delayed_waiting")
    held = readings.get("runs_waiting")
    body: dict[str, Any] = {
        "version": engine.__version__,
        "started_at": _iso(started_at),
        "uptime_s": round(time.monotonic() - started, 3),
        "database": _part(readings.get("database")),
        "broker": _part(readings["broker"]),
        "queues": _part(
            queues,
            items=[
                {"name": stat.name, "depth": stat.depth, "lag_s": stat.lag_s}
                for stat in (queues.value or [])
            ],
        ),
        "workers": _workers(workers),
        "runs": _part(runs, by_status=runs.value if runs else None),
        "dead_letters": _part(letters, open=letters.value if letters else None),
        # How far behind the schedules' fires and the webhooks' deliveries are (the
        # schedule_lag_seconds and webhook_lag_seconds gauges): near 0 while beat keeps up.
        "schedules": _part(schedules, lag_s=_rounded(schedules)),
        "webhooks": _part(webhooks, lag_s=_rounded(webhooks)),
        # Runs waiting for their not_before, and how long the most overdue one has waited
        # past it unsent (the delayed_run_lag_seconds gauge): near 0 while beat keeps up.
        "delayed_runs": _part(
            _failing(delayed, waiting),
            lag_s=_rounded(delayed),
            waiting=waiting.value if waiting is not None and waiting.ok else None,
        ),
        # Queued runs waiting unsent, by reason (the runs_waiting gauge): for a slot of
        # their workflow's concurrency limit, or for their not_before.
        "runs_waiting": _part(held, by_reason=held.value if held is not None else None),
    }
    parts = (
        "database",
        "broker",
        "queues",
        "workers",
        "runs",
        "dead_letters",
        "schedules",
        "webhooks",
        "delayed_runs",
        "runs_waiting",
    )
    healthy = all(body[part]["status"] == "ok" for part in parts)
    # Up but useless: nothing would run the work.
    body["status"] = "ok" if healthy and body["workers"]["online"] else "degraded"
    return body

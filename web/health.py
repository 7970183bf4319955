"""Liveness and readiness. Both answer without a token, so a failing check names only the
part and the kind of error; what it said (hosts, users, paths) goes to the log."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, current_app
from sqlalchemy import text

import engine
from engine import queues
from web.errors import problem

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)
# How long /readyz waits for the broker's answer.
READY_TIMEOUT_S = 2.0


@bp.get("/health")
def health() -> dict[str, Any]:
    return {"status": "ok", "version": engine.__version__}


def check_database() -> str | None:
    try:
        with current_app.extensions["engine.db"].connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any failure makes the check fail; it is reported, not raised
        return f"{type(exc).__name__}: {exc}"[:300]
    return None


def check_broker() -> str | None:
    """A PING within READY_TIMEOUT_S: a Redis that hangs fails the check instead of holding it."""
    client = queues.broker_client(current_app.config["SETTINGS"], timeout=READY_TIMEOUT_S)
    try:
        client.ping()
    except Exception as exc:  # any failure makes the check fail; it is reported, not raised
        return f"{type(exc).__name__}: {exc}"[:300]
    finally:
        client.close()
    return None


@bp.get("/readyz")
def readyz() -> Any:
    checks = {"database": check_database(), "broker": check_broker()}
    failing = {name: error for name, error in checks.items() if error}
    if failing:
        for name, error in failing.items():
            log.warning("readiness: the %s check failed: %s", name, error)
        return problem(
            503,
            "Not ready",
            "failing: " + ", ".join(sorted(failing)),
            code="not_ready",
            errors=[
                {"field": name, "message": error.partition(":")[0] + " (details in the log)"}
                for name, error in failing.items()
            ],
        )
    return {"status": "ready", "checks": {name: "ok" for name in checks}}

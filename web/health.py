"""Liveness and readiness. Both answer without a token, so a failing check names only the
part and the kind of error; what it said (hosts, users, paths) goes to the log."""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Blueprint, current_app
from sqlalchemy import text

import engine
from engine import queues
from web.errors import problem

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)
# How long /readyz waits for the broker's answer.
READY_TIMEOUT_S = 2.0
_BROKER = "engine.readiness_broker"


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
    try:
        readiness_broker().ping()
    except Exception as exc:  # any failure makes the check fail; it is reported, not raised
        return f"{type(exc).__name__}: {exc}"[:300]
    return None


def readiness_broker() -> redis.Redis:
    """The process's client for the readiness PING, made at the first probe. Its pool keeps
    the connection open between probes (a probe every few seconds opens no new one) and
    drops a connection that failed, so the next probe after Redis is back connects again."""
    extensions = current_app.extensions
    client: redis.Redis | None = extensions.get(_BROKER)
    if client is None:
        # Two first probes at once: one client is kept; the other never connected.
        made = queues.broker_client(current_app.config["SETTINGS"], timeout=READY_TIMEOUT_S)
        client = extensions.setdefault(_BROKER, made)
    return client


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

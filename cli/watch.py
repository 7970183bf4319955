"""`engine runs watch` and `engine runs submit --wait`: follow a run in the database until
it finishes (engine.watch, as GET /runs/{id}/events does), one line per change."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import click

from cli.context import operator, require_database, settings
from engine import run_query, watch
from engine.db import make_engine, read_engine
from engine.state import RunStatus


def follow(run_id: str, as_json: bool) -> int:
    """Print the run's states until it finishes; the exit code: 0 when it succeeded, 1
    when it failed or was cancelled."""
    from web import serialize

    current = settings()
    require_database(current)
    db_engine = make_engine(current)
    read_db = read_engine(db_engine)
    caller = operator()

    def read() -> dict[str, Any]:
        with read_db.connect() as connection:
            return serialize.run(*run_query.read_run_with_steps(connection, run_id, caller))

    last: Mapping[str, Any] | None = None
    try:
        for change in watch.follow(read, poll_interval_s=current.events_poll_interval_s):
            state = change.state
            assert state is not None  # without quiet_s or max_duration_s, only states
            click.echo(json.dumps(state, default=str) if as_json else line(last, state))
            last = state
    finally:
        read_db.dispose()
        db_engine.dispose()
    return 0 if last is not None and last["status"] == RunStatus.SUCCEEDED else 1


def line(before: Mapping[str, Any] | None, state: Mapping[str, Any]) -> str:
    """`time  status  step: status (attempt n) ...`: the steps that changed since `before`
    (all of them at first), and the run's error once it has one."""
    seen = {step["step_id"]: step for step in (before or {}).get("steps", [])}
    changed = [step for step in state["steps"] if seen.get(step["step_id"]) != step]
    parts = [f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}  {state['status']:<10}"]
    parts += [
        f"{step['step_id']}: {step['status']} (attempt {step['attempts']})" for step in changed
    ]
    if state["error"] and watch.finished(state):
        parts.append(f"error: {state['error']}")
    return "  ".join(parts)

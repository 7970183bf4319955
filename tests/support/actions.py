"""Actions for tests, loaded by workers through ENGINE_ACTION_MODULES.

`record` appends one line per execution to <ENGINE_VAR_DIR>/executions.log (O_APPEND writes
of one short line are atomic across processes), so tests count real executions.
"""

from __future__ import annotations

import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from engine.actions import ActionContext, register
from engine.config import Settings
from engine.errors import ActionError


@lru_cache(maxsize=1)
def _var_dir() -> Path:
    return Settings.from_env().var_dir


def executions_log(var_dir: Path) -> Path:
    return var_dir / "executions.log"


@register("record")
def record(inputs: Any, context: ActionContext) -> dict[str, Any]:
    """Record the execution; `sleep` first (writing the pid), `fail: true` to raise;
    `fail_before_attempt: n` fails the attempts before n at once; `fail_at_attempt: n`
    fails attempt n after its sleep."""
    inputs = inputs if isinstance(inputs, dict) else {}
    line = f"{context.run_id} {context.step_id} {context.attempt} {os.getpid()}\n"
    with open(executions_log(_var_dir()), "a") as handle:
        handle.write(line)
    if context.attempt < inputs.get("fail_before_attempt", 0):
        raise ActionError(f"attempt {context.attempt} fails on purpose")
    if inputs.get("sleep"):
        pid_dir = _var_dir() / "pids"
        pid_dir.mkdir(exist_ok=True)
        (pid_dir / f"{context.run_id}.{context.step_id}.{context.attempt}").write_text(
            str(os.getpid())
        )
        time.sleep(float(inputs["sleep"]))
    if inputs.get("fail") or context.attempt == inputs.get("fail_at_attempt"):
        raise ActionError(inputs.get("message", "recorded failure"))
    return {"step": context.step_id, "inputs": inputs, "upstream": sorted(context.steps)}


@register("stubborn")
def stubborn(inputs: Any, context: ActionContext) -> dict[str, Any]:
    """Record the execution and its pid, then sleep `seconds` (default 30). It swallows what
    the soft time limit raises and sleeps on, so only the hard limit stops it, unless
    `obey_soft_limit: true`; from attempt `until_attempt` on it returns at once."""
    inputs = inputs if isinstance(inputs, dict) else {}
    with open(executions_log(_var_dir()), "a") as handle:
        handle.write(f"{context.run_id} {context.step_id} {context.attempt} {os.getpid()}\n")
    pid_dir = _var_dir() / "pids"
    pid_dir.mkdir(exist_ok=True)
    (pid_dir / f"{context.run_id}.{context.step_id}.{context.attempt}").write_text(str(os.getpid()))
    until = inputs.get("until_attempt")
    if until is not None and context.attempt >= until:
        return {"attempt": context.attempt}
    deadline = time.monotonic() + float(inputs.get("seconds", 30))
    while time.monotonic() < deadline:
        try:
            time.sleep(max(0.0, deadline - time.monotonic()))
        except BaseException:
            if inputs.get("obey_soft_limit"):
                raise
    return {"attempt": context.attempt, "slept": True}


@register("worker_facts")
def worker_facts(inputs: Any, context: ActionContext) -> dict[str, Any]:
    """Facts of the worker process running this step: synchronous_commit on a connection of
    its own engine (PostgreSQL; None on SQLite), and how many objects its start-up left out
    of the garbage collector's sight."""
    import gc

    from sqlalchemy import text

    from workers.runtime import db_engine

    engine = db_engine()
    commit = None
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            commit = connection.execute(text("SHOW synchronous_commit")).scalar_one()
    return {"synchronous_commit": commit, "frozen_objects": gc.get_freeze_count()}


@register("unstorable")
def unstorable(inputs: Any, context: ActionContext) -> Any:
    """Return what JSON cannot hold (a set), as an action with a slip would."""
    return {"tags": {"a", "b"}}

"""Built-in actions: noop, echo, sleep, fail (for drills), transform."""

from __future__ import annotations

import os
import time
from typing import Any

from engine import templating
from engine.actions import ActionContext, register
from engine.errors import ActionError, NonRetryableError


@register("noop")
def noop(inputs: Any, context: ActionContext) -> None:
    return None


@register("echo", echoes_inputs=True)
def echo(inputs: Any, context: ActionContext) -> Any:
    return inputs


@register(
    "sleep",
    schema={
        "type": "object",
        "required": ["seconds"],
        "properties": {"seconds": {"type": "number", "minimum": 0}},
    },
)
def sleep(inputs: dict[str, Any], context: ActionContext) -> dict[str, float]:
    time.sleep(inputs["seconds"])
    return {"slept": inputs["seconds"]}


@register(
    "fail",
    schema={
        "type": ["object", "null"],
        "properties": {
            "fail": {"type": "boolean"},
            "message": {"type": "string"},
            "retryable": {"type": "boolean"},
            "until_attempt": {"type": "integer", "minimum": 1},
            "exit": {"type": "boolean"},
        },
    },
)
def fail(inputs: dict[str, Any] | None, context: ActionContext) -> dict[str, Any]:
    """Fail on purpose: `fail: false` succeeds (a fixed input), `until_attempt: n` fails the
    attempts before n, `retryable: false` skips retries, `exit: true` kills the process."""
    inputs = inputs or {}
    if not inputs.get("fail", True):
        return {"failed": False}
    until = inputs.get("until_attempt")
    if until is not None and context.attempt >= until:
        return {"failed": False, "attempt": context.attempt}
    if inputs.get("exit"):
        os._exit(1)
    message = inputs.get("message", "step failed on purpose")
    if inputs.get("retryable", True):
        raise ActionError(message)
    raise NonRetryableError(message)


@register(
    "transform",
    schema={
        "type": "object",
        "required": ["expression"],
        "properties": {"expression": {"type": "string"}},
    },
    expressions=("expression",),
    echoes_inputs=True,
)
def transform(inputs: dict[str, Any], context: ActionContext) -> Any:
    """Evaluate a sandboxed expression over params, upstream outputs, the run and the other
    inputs."""
    scope = {"params": context.params, "steps": context.steps, "run": context.run, "inputs": inputs}
    return templating.evaluate(inputs["expression"], scope)

"""Workflow specs the scenarios register: one step, a chain, a fan-out with a join, a layered
DAG for planning, a mixed ten-step DAG for the memory soak, and a step that always fails."""

from __future__ import annotations

from typing import Any

FAST_RETRY = {"max_attempts": 1}


def _spec(name: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "version": 1, "steps": steps}


def one_step(name: str) -> dict[str, Any]:
    return _spec(name, [{"id": "only", "action": "noop"}])


def chain(name: str, length: int) -> dict[str, Any]:
    steps = [{"id": "c0", "action": "noop"}]
    steps += [{"id": f"c{i}", "action": "noop", "needs": [f"c{i - 1}"]} for i in range(1, length)]
    return _spec(name, steps)


def fan_out(name: str, width: int) -> dict[str, Any]:
    """`width` independent steps and a join that needs them all (a chord's shape)."""
    members = [{"id": f"w{i}", "action": "noop"} for i in range(width)]
    join = {"id": "join", "action": "noop", "needs": [f"w{i}" for i in range(width)]}
    return _spec(name, [*members, join])


def layered(name: str, size: int, width: int = 10) -> dict[str, Any]:
    """Layers of `width` steps; each step needs two steps of the layer before it."""
    steps = []
    for index in range(size):
        layer, slot = divmod(index, width)
        step: dict[str, Any] = {"id": f"s{index}", "action": "noop"}
        if layer:
            base = (layer - 1) * width
            step["needs"] = sorted({f"s{base + slot}", f"s{base + (slot + 1) % width}"})
        steps.append(step)
    return _spec(name, steps)


def mixed(name: str) -> dict[str, Any]:
    """Ten steps: a root, eight branches rendering templates and expressions, a join."""
    branches = [
        {
            "id": f"b{i}",
            "action": "transform" if i % 2 else "echo",
            "needs": ["root"],
            "with": (
                {"expression": f"steps.root.output.value + {i}"}
                if i % 2
                else {"label": "{{ steps.root.output.name }}-" + str(i)}
            ),
        }
        for i in range(8)
    ]
    return _spec(
        name,
        [
            {"id": "root", "action": "echo", "with": {"name": "bench", "value": 1}},
            *branches,
            {
                "id": "join",
                "action": "echo",
                "needs": [b["id"] for b in branches],
                "with": {"total": "{{ steps.b1.output + steps.b3.output }}"},
            },
        ],
    )


MIXED_STEPS = 10


def failing(name: str) -> dict[str, Any]:
    """One step that fails for good on its first attempt: every run leaves a dead letter."""
    return _spec(
        name,
        [
            {
                "id": "boom",
                "action": "fail",
                "with": {"retryable": False, "message": "bench dead letter"},
                "retry": FAST_RETRY,
            }
        ],
    )

"""Pure DAG planning: order, parallel stages, cycle detection. Linear in steps plus edges."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def find_cycle(needs: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A list of step ids forming a cycle (first id repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in needs:
        if state.get(root):
            continue
        path: list[str] = [root]
        iterators = [iter(needs.get(root, ()))]
        state[root] = 1
        while iterators:
            child = next(iterators[-1], None)
            if child is None:
                state[path.pop()] = 2
                iterators.pop()
                continue
            mark = state.get(child)
            if mark == 1:
                return path[path.index(child) :] + [child]
            if mark is None and child in needs:
                state[child] = 1
                path.append(child)
                iterators.append(iter(needs[child]))
    return None


def stages(needs: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Group steps into stages that can run in parallel (Kahn's algorithm, spec order kept)."""
    waiting = {step: len(parents) for step, parents in needs.items()}
    children: dict[str, list[str]] = {step: [] for step in needs}
    for step, parents in needs.items():
        for parent in parents:
            children[parent].append(step)
    current = [step for step, count in waiting.items() if count == 0]
    result: list[list[str]] = []
    while current:
        result.append(current)
        following: list[str] = []
        for step in current:
            for child in children[step]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    following.append(child)
        current = following
    if sum(len(stage) for stage in result) != len(needs):
        raise ValueError("the steps contain a cycle")
    return result


def dependents(needs: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """For each step, the steps that need it."""
    children: dict[str, list[str]] = {step: [] for step in needs}
    for step, parents in needs.items():
        for parent in parents:
            children[parent].append(step)
    return children


def descendants(children: Mapping[str, Sequence[str]], start: str) -> set[str]:
    """Every step downstream of `start` (not including it)."""
    seen: set[str] = set()
    todo = list(children.get(start, ()))
    while todo:
        step = todo.pop()
        if step not in seen:
            seen.add(step)
            todo.extend(children.get(step, ()))
    return seen

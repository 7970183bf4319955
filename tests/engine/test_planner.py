"""The pure DAG planner: stages, cycles, dependents."""

from __future__ import annotations

import pytest

from engine import planner

DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


def test_a_diamond_plans_into_three_stages() -> None:
    assert planner.stages(DIAMOND) == [["a"], ["b", "c"], ["d"]]


def test_independent_steps_share_a_stage_in_spec_order() -> None:
    needs = {"z": [], "y": [], "x": ["z"], "w": ["y", "x"]}
    assert planner.stages(needs) == [["z", "y"], ["x"], ["w"]]
    assert planner.stages({}) == []


def test_a_step_joins_the_stage_after_its_last_parent() -> None:
    needs = {"a": [], "b": ["a"], "c": ["b"], "late": ["a", "c"]}
    assert planner.stages(needs) == [["a"], ["b"], ["c"], ["late"]]


def test_staging_a_cycle_is_refused() -> None:
    with pytest.raises(ValueError, match="cycle"):
        planner.stages({"a": ["b"], "b": ["a"], "c": []})


@pytest.mark.parametrize(
    ("needs", "cycle"),
    [
        ({"a": ["a"]}, ["a", "a"]),
        ({"a": ["b"], "b": ["a"]}, ["a", "b", "a"]),
        ({"root": [], "x": ["root", "z"], "y": ["x"], "z": ["y"]}, ["x", "z", "y", "x"]),
    ],
)
def test_a_cycle_is_found_and_named(needs: dict[str, list[str]], cycle: list[str]) -> None:
    assert planner.find_cycle(needs) == cycle


def test_a_dag_has_no_cycle_and_unknown_needs_are_left_to_validation() -> None:
    assert planner.find_cycle(DIAMOND) is None
    assert planner.find_cycle({"a": ["ghost"], "b": ["a"]}) is None


def test_a_long_chain_is_planned_without_recursion() -> None:
    length = 20_000
    needs = {f"s{i}": ([f"s{i - 1}"] if i else []) for i in range(length)}
    assert planner.find_cycle(needs) is None
    assert len(planner.stages(needs)) == length
    needs["s0"] = [f"s{length - 1}"]
    cycle = planner.find_cycle(needs)
    assert cycle is not None and len(cycle) == length + 1 and cycle[0] == cycle[-1]


def test_dependents_and_descendants_follow_the_edges_downstream() -> None:
    children = planner.dependents(DIAMOND)
    assert children == {"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}
    assert planner.descendants(children, "a") == {"b", "c", "d"}
    assert planner.descendants(children, "c") == {"d"}
    assert planner.descendants(children, "d") == set()

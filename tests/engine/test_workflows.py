"""Workflow specs compiled and checked without a database: defaults, errors, params."""

from __future__ import annotations

from typing import Any

import pytest

from engine import payloads
from engine.config import Settings
from engine.errors import InvalidInput, InvalidParams, InvalidSpec
from engine.retry import RetryPolicy
from engine.spec_text import parse_text
from engine.specs import compile_spec, spec_hash

SETTINGS = Settings(jwt_secret="unit-test-secret-" + "z" * 32)


def spec(steps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"name": "unit", "version": 1, "steps": steps, **extra}


def errors_of(body: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(InvalidSpec) as raised:
        compile_spec(body, SETTINGS)
    return {error["field"]: error["message"] for error in raised.value.errors}


def test_steps_get_the_settings_defaults_unless_the_spec_says_otherwise() -> None:
    compiled = compile_spec(
        spec(
            [
                {"id": "plain", "action": "noop"},
                {
                    "id": "tuned",
                    "action": "noop",
                    "needs": ["plain"],
                    "retry": {"max_attempts": 7},
                    "timeout_s": 5,
                    "queue": "slow",
                },
            ],
            defaults={"retry": {"backoff_s": 0.05, "max_backoff_s": 0.1}, "queue": "fast"},
        ),
        SETTINGS,
    )
    plain, tuned = compiled.steps["plain"], compiled.steps["tuned"]
    assert plain.retry == RetryPolicy(SETTINGS.retry_max_attempts, 0.05, 0.1)
    assert (plain.timeout_s, plain.queue, plain.needs) == (SETTINGS.step_timeout_s, "fast", ())
    assert tuned.retry == RetryPolicy(7, 0.05, 0.1)
    assert (tuned.timeout_s, tuned.queue, tuned.needs) == (5.0, "slow", ("plain",))
    assert compiled.children == {"plain": ["tuned"], "tuned": []}
    assert compiled.stages() == [["plain"], ["tuned"]]
    assert compiled.params_schema == {"type": "object"}


def test_every_problem_of_a_spec_is_reported_at_once() -> None:
    errors = errors_of(
        spec(
            [
                {"id": "a", "action": "no_such_action"},
                {"id": "b", "action": "noop", "needs": ["a", "a"]},
                {"id": "c", "action": "noop", "needs": ["ghost"], "timeout_s": 99_999},
            ]
        )
    )
    assert set(errors) == {
        "steps[0].action",
        "steps[1].needs",
        "steps[2].needs",
        "steps[2].timeout_s",
    }
    assert "twice" in errors["steps[1].needs"]
    assert "STEP_TIMEOUT_MAX_S" in errors["steps[2].timeout_s"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"version": 1, "steps": [{"id": "a", "action": "noop"}]}, "name"),
        (spec([{"id": "a", "action": "noop"}], version="1"), "version"),
        (spec([{"id": "has space", "action": "noop"}]), "steps[0].id"),
        (spec([{"id": "a", "action": "noop", "colour": 1}]), "steps[0].colour"),
        (
            spec([{"id": "a", "action": "noop", "retry": {"max_attempts": 0}}]),
            "steps[0].retry.max_attempts",
        ),
        (spec([{"id": "a", "action": "noop", "timeout_s": 0}]), "steps[0].timeout_s"),
        (spec([{"id": "a", "action": "noop"}], name="9lives"), "name"),
        ("not a mapping", "spec"),
    ],
)
def test_a_malformed_spec_names_the_field(body: Any, field: str) -> None:
    assert field in errors_of(body)


def test_a_cycle_is_reported_with_its_path() -> None:
    errors = errors_of(
        spec(
            [
                {"id": "a", "action": "noop", "needs": ["c"]},
                {"id": "b", "action": "noop", "needs": ["a"]},
                {"id": "c", "action": "noop", "needs": ["b"]},
            ]
        )
    )
    assert errors == {"steps": "the steps form a cycle: a -> c -> b -> a"}


def test_params_are_checked_against_the_schema_naming_the_nested_field() -> None:
    compiled = compile_spec(
        spec(
            [{"id": "a", "action": "noop"}],
            params={
                "type": "object",
                "required": ["address"],
                "properties": {
                    "address": {
                        "type": "object",
                        "required": ["zip"],
                        "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                    }
                },
            },
        ),
        SETTINGS,
    )
    compiled.check_params({"address": {"zip": "75001"}})
    for params, field in [
        ({}, "params.address"),
        ({"address": {}}, "params.address.zip"),
        ({"address": {"zip": "abc"}}, "params.address.zip"),
        ([], "params"),
    ]:
        with pytest.raises(InvalidParams) as raised:
            compiled.check_params(params)
        assert [error["field"] for error in raised.value.errors] == [field]


def test_specs_parse_from_yaml_or_json_and_hash_the_same_whatever_the_key_order() -> None:
    from_yaml = parse_text("name: unit\nversion: 1\nsteps:\n  - {id: a, action: noop}\n")
    from_json = parse_text(
        '{"steps": [{"action": "noop", "id": "a"}], "version": 1, "name": "unit"}'
    )
    assert from_yaml == from_json
    assert spec_hash(from_yaml) == spec_hash(from_json)
    assert spec_hash(from_yaml) != spec_hash({**from_yaml, "version": 2})
    with pytest.raises(InvalidInput):
        parse_text("steps: [")


def test_a_retry_backoff_above_the_configured_cap_is_refused_naming_the_field() -> None:
    cap = SETTINGS.retry_max_backoff_s
    assert errors_of(
        spec([{"id": "slow", "action": "noop", "retry": {"max_backoff_s": cap + 1}}])
    ).keys() == {"steps[0].retry.max_backoff_s"}
    assert errors_of(
        spec([{"id": "a", "action": "noop"}], defaults={"retry": {"backoff_s": cap * 2}})
    ).keys() == {"defaults.retry.max_backoff_s"}
    compiled = compile_spec(
        spec([{"id": "ok", "action": "noop", "retry": {"max_backoff_s": cap}}]), SETTINGS
    )
    assert compiled.steps["ok"].retry.max_backoff_s == cap


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"next": value}
    return value


def test_values_nested_beyond_the_limit_are_refused_wherever_they_enter() -> None:
    limit = payloads.MAX_DEPTH
    assert payloads.excess(nested(limit)) is None
    assert payloads.excess(nested(limit + 1)) == payloads.TOO_DEEP
    # The walk itself does not recurse: far beyond any parser's depth, it still answers.
    assert payloads.excess(nested(200_000)) == payloads.TOO_DEEP
    compiled = compile_spec(spec([{"id": "a", "action": "noop"}]), SETTINGS)
    compiled.check_params(nested(limit))
    with pytest.raises(InvalidParams) as raised:
        compiled.check_params(nested(limit + 1))
    assert [error["field"] for error in raised.value.errors] == ["params"]
    # A spec names the member that nests too deep, as its other errors do.
    deep_step = {"id": "a", "action": "echo", "with": nested(limit)}
    assert list(errors_of(spec([deep_step]))) == ["steps"]
    # Text too deep for the parser itself is refused as too deep, not a crash.
    with pytest.raises(InvalidInput) as raised:
        parse_text("steps: " + "[" * 5000 + "]" * 5000)
    assert "nested more than" in raised.value.detail


def test_a_yaml_spec_whose_aliases_expand_beyond_the_limit_is_refused_at_once() -> None:
    # 600 bytes of YAML, 9 ** 9 values once its aliases are followed: compiling it took
    # minutes and storing it all the memory there is. Aliases within the limit still work.
    anchors = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for level in range(1, 9):
        anchors.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    text = "name: unit\nversion: 1\nsteps:\n  - id: a\n    action: echo\n    with:\n"
    text += "".join(f"      {line}\n" for line in anchors)
    with pytest.raises(InvalidSpec) as raised:
        parse_text(text)
    assert raised.value.errors == [{"field": "steps", "message": payloads.TOO_LARGE}]
    # One budget for the whole spec: members each under it are not under it together.
    text = "\n".join(anchors[:6]) + "\nname: unit\nversion: 1\nsteps: [*a5]\n"
    with pytest.raises(InvalidSpec) as raised:
        parse_text(text)
    assert raised.value.errors[0]["message"] == payloads.TOO_LARGE
    steps = "  - {id: a, action: noop, retry: &twice {max_attempts: 2}}\n"
    steps += "  - {id: b, action: noop, retry: *twice}\n"
    compiled = compile_spec(parse_text(f"name: unit\nversion: 1\nsteps:\n{steps}"), SETTINGS)
    assert compiled.steps["b"].retry.max_attempts == 2


def test_a_template_reading_a_step_that_is_not_a_need_is_refused() -> None:
    """A step sees the outputs of the steps in its needs only: reading another one (upstream
    through a need, downstream, itself, or absent) could only fail at run time."""
    errors = errors_of(
        spec(
            [
                {"id": "a", "action": "echo"},
                {"id": "b", "action": "echo", "needs": ["a"]},
                {"id": "c", "action": "echo", "needs": ["b"], "with": "{{ steps.a.output }}"},
                {"id": "d", "action": "echo", "with": {"x": ["{{ steps['d'].output }}"]}},
                {
                    "id": "e",
                    "action": "transform",
                    "needs": ["b"],
                    "with": {"expression": "steps.b.output + steps.ghost.output"},
                },
            ]
        )
    )
    assert set(errors) == {"steps[2].with", "steps[3].with", "steps[4].with"}
    assert "reads steps.a but does not need 'a'" in errors["steps[2].with"]
    assert "reads steps.d" in errors["steps[3].with"]
    assert "reads steps.ghost" in errors["steps[4].with"]
    compiled = compile_spec(
        spec(
            [
                {"id": "a", "action": "echo"},
                {"id": "b", "action": "transform", "needs": ["a"], "with": {"expression": "1"}},
                {
                    "id": "c",
                    "action": "transform",
                    "needs": ["a", "b"],
                    "with": {"expression": "steps.b.output", "a": "{{ steps['a'].output }}"},
                },
            ]
        ),
        SETTINGS,
    )
    assert compiled.stages() == [["a"], ["b"], ["c"]]


def test_a_transform_expression_that_does_not_parse_is_refused_naming_it() -> None:
    errors = errors_of(spec([{"id": "a", "action": "transform", "with": {"expression": "1 +"}}]))
    assert list(errors) == ["steps[0].with.expression"]
    assert "'1 +'" in errors["steps[0].with.expression"]


def test_inputs_that_can_never_pass_the_actions_schema_are_refused_at_registration() -> None:
    """Constant inputs, and keys the schema requires, are the same at every run; what a
    template renders to is only known then."""
    errors = errors_of(
        spec(
            [
                {"id": "a", "action": "sleep", "with": {"seconds": "ten"}},
                {"id": "b", "action": "sleep"},
                {"id": "c", "action": "sleep", "with": {"secs": "{{ params.s }}"}},
                {"id": "d", "action": "fail", "with": {"until_attempt": 0, "message": "{{ 1 }}"}},
                {"id": "e", "action": "transform", "with": {"expression": 42}},
            ]
        )
    )
    assert set(errors) == {
        "steps[0].with.seconds",
        "steps[1].with",
        "steps[2].with.seconds",
        "steps[3].with.until_attempt",
        "steps[4].with.expression",
    }
    assert "can never pass its schema" in errors["steps[0].with.seconds"]
    assert "'seconds' is a required property" in errors["steps[2].with.seconds"]
    compile_spec(
        spec(
            [
                {"id": "a", "action": "sleep", "with": {"seconds": "{{ params.s }}"}},
                {"id": "b", "action": "sleep", "with": "{{ params.sleep }}"},
                {"id": "c", "action": "fail", "with": {"until_attempt": "{{ params.n }}"}},
                {"id": "d", "action": "echo", "with": {"anything": ["goes", 1]}},
            ]
        ),
        SETTINGS,
    )


def test_a_timeout_above_the_maximum_is_named_where_it_is_written() -> None:
    errors = errors_of(
        spec(
            [
                {"id": "a", "action": "noop"},
                {"id": "b", "action": "noop"},
                {"id": "c", "action": "noop", "timeout_s": 99_999},
                {"id": "d", "action": "noop", "timeout_s": 5},
            ],
            defaults={"timeout_s": 7200},
        )
    )
    assert errors == {
        "defaults.timeout_s": "defaults: timeout_s exceeds STEP_TIMEOUT_MAX_S (3600)",
        "steps[2].timeout_s": "step 'c': timeout_s exceeds STEP_TIMEOUT_MAX_S (3600)",
    }


def test_each_problem_is_named_at_its_own_step_whatever_was_wrong_before_it() -> None:
    """A step left out of the compiled form (a duplicate id, a bad retry) moves no other
    step's errors to another index, and is still a step that others may need."""
    errors = errors_of(
        spec(
            [
                {"id": "a", "action": "noop"},
                {"id": "a", "action": "noop"},
                {"id": "x", "action": "noop", "retry": {"backoff_s": 5, "max_backoff_s": 1}},
                {"id": "b", "action": "noop", "needs": ["ghost", "x"]},
                {"id": "x", "action": "noop"},
            ]
        )
    )
    assert errors == {
        "steps[1].id": "duplicate step id 'a'",
        "steps[2].retry": "backoff_s must be >= 0 and max_backoff_s >= backoff_s",
        "steps[3].needs": "step 'b' needs unknown step 'ghost'",
        "steps[4].id": "duplicate step id 'x'",
    }


def test_a_bad_default_retry_is_reported_with_the_other_problems() -> None:
    errors = errors_of(
        spec(
            [{"id": "a", "action": "no_such_action"}],
            defaults={"retry": {"backoff_s": 5, "max_backoff_s": 1}},
        )
    )
    assert set(errors) == {"defaults.retry", "steps[0].action"}

"""Step inputs rendered in Jinja2's sandbox: types kept, nothing unsafe reachable."""

from __future__ import annotations

import pytest

from engine import templating
from engine.errors import InvalidInput

CONTEXT = {
    "params": {"company": "acme", "n": 3, "tags": ["a", "b"]},
    "steps": {"fetch": {"output": {"employees": 60, "name": "Acme"}}},
}


@pytest.mark.parametrize(
    ("template", "value"),
    [
        ("{{ params.n }}", 3),
        ("  {{ params.n * 2 }}  ", 6),
        ("{{ params.tags }}", ["a", "b"]),
        ("{{ steps.fetch.output }}", {"employees": 60, "name": "Acme"}),
        ("{{ steps.fetch.output.employees > 50 }}", True),
        ("{{ params.missing_ok | default(none) }}", None),
        ("{{ params.company | upper }}-{{ params.n }}", "ACME-3"),
        ("{{ params.n }}{{ params.n }}", "33"),
        ("{% if params.n > 2 %}big{% else %}small{% endif %}", "big"),
        ("plain text", "plain text"),
    ],
)
def test_a_template_renders_and_a_lone_expression_keeps_its_type(
    template: str, value: object
) -> None:
    assert templating.render(template, CONTEXT) == value


def test_templates_are_rendered_inside_nested_structures() -> None:
    inputs = {"url": "/c/{{ params.company }}", "ids": ["{{ params.n }}", 7, None], "on": True}
    assert templating.render(inputs, CONTEXT) == {"url": "/c/acme", "ids": [3, 7, None], "on": True}


@pytest.mark.parametrize(
    "template",
    [
        "{{ params.nope.deeper }}",
        "{{ undefined_name }}",
        "hello {{ steps.other.output }}",
        "{{ ''.__class__.__mro__ }}",
        "{{ params.__class__ }}",
        "{{ params.tags.append('c') }}",
        "{{ params.update({'n': 4}) }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ params.nope }}",
    ],
)
def test_undefined_names_and_unsafe_access_are_refused(template: str) -> None:
    with pytest.raises(InvalidInput):
        templating.render(template, CONTEXT)
    assert CONTEXT["params"]["tags"] == ["a", "b"] and CONTEXT["params"]["n"] == 3


def test_syntax_errors_are_found_before_anything_runs() -> None:
    good = {"a": "{{ params.n }}", "b": ["x {{ params.company }}"], "c": 1}
    assert templating.check_syntax(good) == []
    problems = templating.check_syntax({"a": ["{{ params. }}"], "b": "{% if %}", "c": "{{ ok }}"})
    assert len(problems) == 2


def test_an_expression_is_evaluated_to_a_native_value() -> None:
    assert templating.evaluate("steps.fetch.output.employees * 2", CONTEXT) == 120
    with pytest.raises(InvalidInput):
        templating.evaluate("params.__class__.__base__", CONTEXT)


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("{{ params.nmae }}", "no attribute 'nmae'"),
        ("{{ 1 / 0 }}", "division by zero"),
        ("{{ params.company + 1 }}", "can only concatenate"),
        ("{{ range(10 ** 9) | list }}", "MAX_RANGE"),
        ("{{ lipsum }}", "JSON cannot hold"),
        ("{{ [params.nmae] }}", "no attribute 'nmae'"),
        ("{{ {'a': params.nmae} }}", "no attribute 'nmae'"),
        ("{{ 'nan' | float }}", "nan"),
        ("{{ params.n * 1e308 }}", "JSON cannot hold"),
        ("x {{ 1 / 0 }}", "division by zero"),
    ],
)
def test_a_failing_template_is_invalid_input_naming_the_field(template: str, words: str) -> None:
    """Whatever a template raises, or a lone expression yields that JSON cannot hold, is the
    same at every attempt: InvalidInput (not retried), naming where it is in `with`."""
    inputs = {"ok": "{{ params.n }}", "deep": {"list": [1, template]}}
    with pytest.raises(InvalidInput) as raised:
        templating.render(inputs, CONTEXT)
    assert str(raised.value).startswith("with.deep.list[1]: "), raised.value
    assert words in str(raised.value)
    assert raised.value.errors[0]["field"] == "with.deep.list[1]"


def test_a_lone_expression_yields_json_values_only() -> None:
    assert templating.render("{{ (params.n, [params.company]) }}", CONTEXT) == (3, ["acme"])
    assert templating.render("{{ {1: params.tags} }}", CONTEXT) == {1: ["a", "b"]}
    for expression in ("lipsum", "params.items()", "[cycler]"):
        with pytest.raises(InvalidInput, match="JSON cannot hold"):
            templating.evaluate(expression, CONTEXT)


def test_the_steps_a_template_reads_are_found_before_anything_runs() -> None:
    inputs = {
        "a": "{{ steps.fetch.output.n }} and {{ steps['score'].output }}",
        "b": ["{% for row in steps.rows.output %}{{ row }}{% endfor %}", "{{ params.n }}"],
        "c": "{{ steps[params.which] }}",
    }
    problems, read = templating.check(inputs)
    assert problems == []
    assert read == {"fetch", "score", "rows"}
    read = set()
    assert templating.check_expression("steps.left.output * 2", read) is None
    assert read == {"left"}
    assert "unexpected" in str(templating.check_expression("1 +", read))
    problems, _ = templating.check({"x": [{"y": "{{ params. }}"}]})
    assert [field for field, _ in problems] == ["with.x[0].y"]

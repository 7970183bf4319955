"""Workflows over HTTP: register (JSON and YAML), read, validate, dry-run plans."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select

from engine import payloads, spec_schema
from engine.models import Run, Workflow
from tests.conftest import spec
from tests.support.http import fields, problem
from tests.support.stack import Stack

DIAMOND = [
    {"id": "a", "action": "noop"},
    {"id": "b", "action": "noop", "needs": ["a"]},
    {"id": "c", "action": "noop", "needs": ["a"]},
    {"id": "d", "action": "noop", "needs": ["b", "c"]},
]
PARAMS = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}


def count(stack: Stack, model: type) -> int:
    with stack.sessions() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def writer(stack: Stack) -> dict[str, str]:
    return stack.headers(scopes="workflows.write,workflows.read")


def test_a_json_spec_is_registered_once_and_the_same_spec_again_is_a_no_op(
    database: Stack, unique: str
) -> None:
    client = database.client()
    body = spec(unique, DIAMOND, params=PARAMS)
    first = client.post("/workflows", json=body, headers=writer(database))
    assert first.status_code == 201, first.get_json()
    created = first.get_json()
    assert set(created) == {"name", "version", "spec", "created_at", "paused", "pause"}
    assert created["paused"] is False and created["pause"] is None
    assert (created["name"], created["version"], created["spec"]) == (unique, 1, body)
    assert created["created_at"].endswith("Z")
    assert first.headers["Location"].endswith(f"/workflows/{unique}?version=1")

    again = client.post("/workflows", json=body, headers=writer(database))
    assert again.status_code == 200
    assert again.get_json() == created


def test_a_yaml_spec_is_registered_and_equals_its_json_twin(database: Stack, unique: str) -> None:
    client = database.client()
    text = yaml.safe_dump(spec(unique, DIAMOND, params=PARAMS), sort_keys=False)
    response = client.post(
        "/workflows",
        data=text,
        headers={**writer(database), "Content-Type": "application/yaml"},
    )
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["spec"]["steps"] == DIAMOND
    twin = client.post(
        "/workflows", json=spec(unique, DIAMOND, params=PARAMS), headers=writer(database)
    )
    assert twin.status_code == 200


def test_the_same_version_with_another_spec_is_a_conflict(database: Stack, unique: str) -> None:
    database.register(spec(unique, DIAMOND))
    before = count(database, Workflow)
    response = database.client().post(
        "/workflows", json=spec(unique, DIAMOND[:1]), headers=writer(database)
    )
    assert "immutable" in problem(response, 409)["detail"]
    assert count(database, Workflow) == before
    newer = database.client().post(
        "/workflows", json={**spec(unique, DIAMOND[:1]), "version": 2}, headers=writer(database)
    )
    assert newer.status_code == 201


def test_concurrent_registrations_of_one_version_create_it_once(
    database: Stack, unique: str
) -> None:
    body, headers, app = spec(unique, DIAMOND), writer(database), database.app

    def post(_: int) -> int:
        return app.test_client().post("/workflows", json=body, headers=headers).status_code

    with ThreadPoolExecutor(6) as pool:
        statuses = sorted(pool.map(post, range(6)))
    assert statuses == [200] * 5 + [201]


INVALID = {
    "a cycle": (
        [
            {"id": "a", "action": "noop", "needs": ["c"]},
            {"id": "b", "action": "noop", "needs": ["a"]},
            {"id": "c", "action": "noop", "needs": ["b"]},
        ],
        {},
        "steps",
        "cycle",
    ),
    "a self edge": ([{"id": "a", "action": "noop", "needs": ["a"]}], {}, "steps[0].needs", "a"),
    "an unknown need": (
        [{"id": "a", "action": "noop"}, {"id": "b", "action": "noop", "needs": ["ghost"]}],
        {},
        "steps[1].needs",
        "ghost",
    ),
    "a duplicate step id": (
        [{"id": "a", "action": "noop"}, {"id": "a", "action": "echo"}],
        {},
        "steps[1].id",
        "duplicate",
    ),
    "an unknown action": (
        [{"id": "a", "action": "no.such.action"}],
        {},
        "steps[0].action",
        "no.such.action",
    ),
    "an invalid params schema": (
        [{"id": "a", "action": "noop"}],
        {"params": {"type": "object", "required": "n"}},
        "params",
        "JSON Schema",
    ),
    "a step without an action": ([{"id": "a"}], {}, "steps[0].action", "required"),
    "a $ref to a schema elsewhere": (
        [{"id": "a", "action": "noop"}],
        {"params": {"$ref": "https://example.com/params.json"}},
        "params",
        "$ref",
    ),
    "a version beyond the database's integers": (
        [{"id": "a", "action": "noop"}],
        {"version": 2**31},
        "version",
        "maximum",
    ),
    "an unknown top-level key": (
        [{"id": "a", "action": "noop"}],
        {"schedule": "daily"},
        "schedule",
        "unexpected",
    ),
    "a template that does not parse": (
        [{"id": "a", "action": "echo", "with": {"x": ["{{ params. }}"]}}],
        {},
        "steps[0].with.x[0]",
        "template",
    ),
    "a template reading a step that is not a need": (
        [
            {"id": "a", "action": "echo"},
            {"id": "b", "action": "echo", "with": {"x": "{{ steps.a.output }}"}},
        ],
        {},
        "steps[1].with",
        "does not need 'a'",
    ),
    "an expression that does not parse": (
        [{"id": "a", "action": "transform", "with": {"expression": "params.n +"}}],
        {},
        "steps[0].with.expression",
        "params.n +",
    ),
    "inputs the action's schema always refuses": (
        [{"id": "a", "action": "sleep", "with": {"seconds": -1}}],
        {},
        "steps[0].with.seconds",
        "can never pass its schema",
    ),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_an_invalid_spec_is_rejected_with_the_field_named_and_nothing_written(
    database: Stack, unique: str, case: str
) -> None:
    steps, extra, field, words = INVALID[case]
    before = count(database, Workflow)
    response = database.client().post(
        "/workflows", json=spec(unique, steps, **extra), headers=writer(database)
    )
    body = problem(response, 422)
    assert body["code"] == "invalid_spec"
    assert field in fields(body), body
    assert any(words in error["message"] for error in body["errors"]), body
    assert count(database, Workflow) == before


def test_a_body_that_is_not_a_spec_object_is_a_problem(database: Stack) -> None:
    client, headers = database.client(), writer(database)
    malformed = client.post(
        "/workflows", data="{not json", headers={**headers, "Content-Type": "application/json"}
    )
    assert "not valid JSON" in problem(malformed, 400)["detail"]
    bad_yaml = client.post(
        "/workflows", data="steps: [", headers={**headers, "Content-Type": "application/yaml"}
    )
    problem(bad_yaml, 422)
    assert fields(problem(client.post("/workflows", json=[1], headers=headers), 422)) == ["body"]


def test_a_spec_nested_beyond_the_limit_is_refused_as_json_and_as_yaml(
    database: Stack, unique: str
) -> None:
    client, headers = database.client(), writer(database)
    before = count(database, Workflow)
    value: Any = 1
    for _ in range(payloads.MAX_DEPTH):
        value = [value]
    step = {"id": "only", "action": "echo", "with": {"value": value}}
    deep = problem(client.post("/workflows", json=spec(unique, [step]), headers=headers), 422)
    assert fields(deep) == ["steps"] and "nested more than" in deep["errors"][0]["message"]
    # Beyond what the YAML parser can descend: a 422, not a 500.
    text = f"name: {unique}\nversion: 1\nsteps: {'[' * 5000}{']' * 5000}\n"
    yaml_type = {**headers, "Content-Type": "application/yaml"}
    assert fields(problem(client.post("/workflows", data=text, headers=yaml_type), 422)) == ["body"]
    assert count(database, Workflow) == before


@pytest.mark.parametrize(
    "value", ["2026-01-01", ".nan", "!!binary aGVsbG8=", "!!set {a, b}", "{2026-01-01: x}"]
)
def test_a_yaml_value_json_cannot_hold_is_refused_naming_it(
    database: Stack, unique: str, value: str
) -> None:
    # A spec is stored and served as JSON: a date, NaN, binary or a set was a 500.
    text = f"name: {unique}\nversion: 1\nsteps:\n  - id: a\n    action: echo\n"
    text += f"    with: {{v: {value}}}\n"
    yaml_type = {**writer(database), "Content-Type": "application/yaml"}
    before = count(database, Workflow)
    body = problem(database.client().post("/workflows", data=text, headers=yaml_type), 422)
    assert body["code"] == "invalid_spec" and "quote it" in body["detail"], body
    assert fields(body) == ["steps[0].with.v"], body
    assert count(database, Workflow) == before


def test_workflows_are_listed_and_read_by_version(database: Stack, unique: str) -> None:
    database.register(spec(unique, DIAMOND[:1]))
    database.register({**spec(unique, DIAMOND), "version": 2})
    client, headers = database.client(), database.headers(scopes="workflows.read")

    # The database is shared with other tests: every page is read, cursor after cursor.
    items, query = [], {"limit": 100}
    for _ in range(1000):
        listed = client.get("/workflows", query_string=query, headers=headers).get_json()
        items += listed["items"]
        if listed["next_cursor"] is None:
            break
        query = {"limit": 100, "cursor": listed["next_cursor"]}
    mine = [item for item in items if item["name"] == unique]
    assert [item["version"] for item in mine] == [2]
    assert len({item["name"] for item in items}) == len(items), "a workflow listed twice"

    latest = client.get(f"/workflows/{unique}", headers=headers).get_json()
    assert (latest["version"], latest["versions"]) == (2, [1, 2])
    first = client.get(f"/workflows/{unique}?version=1", headers=headers).get_json()
    assert first["spec"]["steps"] == DIAMOND[:1]

    problem(client.get("/workflows/no_such_workflow", headers=headers), 404)
    problem(client.get(f"/workflows/{unique}?version=3", headers=headers), 404)
    assert fields(problem(client.get(f"/workflows/{unique}?version=x", headers=headers), 422)) == [
        "version"
    ]
    # Numbers no version can have, and digits int() refuses, name the field too (not a 500).
    for version in ("0", str(spec_schema.MAX_VERSION + 1), "9" * 30, "²"):
        query = {"version": version}
        answer = client.get(f"/workflows/{unique}", query_string=query, headers=headers)
        assert fields(problem(answer, 422)) == ["version"], version


def test_a_dry_run_plan_gives_parallel_stages_and_creates_no_run(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, DIAMOND, params=PARAMS))
    client, headers = database.client(), database.headers(scopes="workflows.read")
    runs_before = count(database, Run)

    response = client.post(f"/workflows/{unique}/plan", json={"params": {"n": 1}}, headers=headers)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["stages"] == [["a"], ["b", "c"], ["d"]]

    wrong = client.post(f"/workflows/{unique}/plan", json={"params": {"n": "x"}}, headers=headers)
    assert fields(problem(wrong, 422)) == ["params.n"]
    missing = client.post(f"/workflows/{unique}/plan", json={}, headers=headers)
    assert fields(problem(missing, 422)) == ["params.n"]
    problem(client.post("/workflows/no_such_workflow/plan", json={}, headers=headers), 404)
    assert count(database, Run) == runs_before


def test_registering_needs_the_write_scope(database: Stack, unique: str) -> None:
    response = database.client().post(
        "/workflows",
        json=spec(unique, DIAMOND),
        headers=database.headers(scopes="workflows.read"),
    )
    assert "workflows.write" in problem(response, 403)["detail"]


def test_a_spec_repeating_a_key_is_refused_as_json_and_as_yaml(
    database: Stack, unique: str
) -> None:
    """YAML and JSON parsers keep the last of two equal keys silently: a step's second
    `with:` would drop its first unseen. Keys a YAML merge brings in may be overridden."""
    client, headers = database.client(), writer(database)
    before = count(database, Workflow)
    text = f"name: {unique}\nversion: 1\nsteps:\n  - id: a\n    action: echo\n"
    text += "    with: {x: 1}\n    with: {y: 2}\n"
    yaml_type = {**headers, "Content-Type": "application/yaml"}
    body = problem(client.post("/workflows", data=text, headers=yaml_type), 422)
    assert fields(body) == ["body"] and "duplicate key 'with'" in body["errors"][0]["message"]
    raw = (
        f'{{"name": "{unique}", "version": 1, "steps": [{{"id": "a", "action": "echo", '
        '"with": {"x": 1}, "with": {"y": 2}}]}'
    )
    json_type = {**headers, "Content-Type": "application/json"}
    body = problem(client.post("/workflows", data=raw, headers=json_type), 422)
    assert fields(body) == ["body"] and "'with' appears twice" in body["errors"][0]["message"]
    assert count(database, Workflow) == before

    merged = f"base: &step {{id: a, action: echo}}\nname: {unique}\nversion: 1\n"
    merged += "steps:\n  - <<: *step\n    id: b\n"
    # A merge's keys may be overridden; the unknown top-level `base` is what is refused.
    body = problem(client.post("/workflows", data=merged, headers=yaml_type), 422)
    assert fields(body) == ["base"], body

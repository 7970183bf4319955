"""What a request body may be declared as, on SQLite and PostgreSQL: JSON (application/json,
any +json type, parameters such as charset allowed), or no Content-Type at all; workflow
specs in YAML too. Any other declared type (`curl -d` sends a form's) is a 415 problem
naming the types accepted, with nothing written."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select

from engine.models import AuditEvent, Run, Workflow
from tests.conftest import spec
from tests.support.http import fields, problem
from tests.support.stack import Stack

ADMIN = "admin.*,runs.read,runs.write,workflows.read,workflows.write"
REFUSED = (
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/xml",
    "Text/Plain; charset=utf-8",
)
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


def count(stack: Stack, model: Any, **where: Any) -> int:
    query = select(func.count()).select_from(model).filter_by(**where)
    with stack.sessions() as session:
        return session.scalar(query) or 0


def post(stack: Stack, path: str, body: Any, content_type: str | None) -> Any:
    headers = stack.headers(scopes=ADMIN)
    if content_type is not None:
        headers["Content-Type"] = content_type
    data = body if isinstance(body, str) else json.dumps(body)
    return stack.client().post(path, data=data, headers=headers)


@pytest.mark.parametrize("content_type", REFUSED)
def test_a_body_declared_as_another_type_is_a_415_naming_the_types_accepted(
    database: Stack, unique: str, content_type: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    events = count(database, AuditEvent)
    for path, body in (
        ("/runs", {"workflow": unique}),
        (f"/workflows/{unique}/plan", {}),
        ("/workflows", spec(f"{unique}_b", [{"id": "a", "action": "noop"}])),
        ("/admin/tokens", {"sub": "bot", "scopes": ["runs.read"]}),
        ("/admin/tokens/revoke", {"jti": unique}),
        ("/admin/dlq/some-letter/replay", {"reason": "r"}),
        ("/admin/dlq/some-letter/discard", {"reason": "r"}),
        ("/admin/dlq/replay", {"filter": {"workflow": unique}, "reason": "r"}),
    ):
        body = problem(post(database, path, body, content_type), 415)
        assert fields(body) == ["Content-Type"], (path, body)
        assert body["code"] == "unsupported_media_type"
        declared = content_type.partition(";")[0].lower()
        assert f"a body of type {declared} is not accepted" in body["detail"]
        assert "application/json" in body["detail"] and "+json" in body["detail"]
        # Only the endpoint that reads YAML says it does.
        assert ("application/yaml" in body["detail"]) == (path == "/workflows"), body
    assert count(database, Run, workflow=unique) == 0
    assert count(database, Workflow, name=f"{unique}_b") == 0
    assert count(database, AuditEvent) == events


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        "application/vnd.api+json",
        "application/merge-patch+json; charset=utf-8",
    ],
)
def test_json_is_read_as_any_json_type_or_undeclared(
    database: Stack, unique: str, content_type: str | None
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    response = post(database, "/runs", {"workflow": unique}, content_type)
    assert response.status_code == 202, response.get_json()
    # Malformed JSON under any of them is still a 400, not a 415.
    assert problem(post(database, "/runs", "{", content_type), 400)
    registered = post(
        database,
        "/workflows",
        spec(unique, [{"id": "b", "action": "noop"}], version=2),
        content_type,
    )
    assert registered.status_code == 201, registered.get_json()


@pytest.mark.parametrize("yaml_type", YAML_TYPES)
def test_a_workflow_spec_is_read_as_yaml_under_each_yaml_type(
    database: Stack, unique: str, yaml_type: str
) -> None:
    text = yaml.safe_dump(spec(unique, [{"id": "a", "action": "noop"}]))
    response = post(database, "/workflows", text, f"{yaml_type}; charset=utf-8")
    assert response.status_code == 201, response.get_json()
    # Elsewhere YAML is not read.
    refused = problem(post(database, "/runs", "workflow: x", yaml_type), 415)
    assert fields(refused) == ["Content-Type"]

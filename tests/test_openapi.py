"""/openapi.json tells the truth: a valid OpenAPI 3.1 document naming every route and
method of the app, every query parameter each view reads, the very schema each view checks
its body with, every success status, the Location header where an answer sets one, every
4xx problem each operation answers with (and none it never does), and shapes that real
answers match."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from flask import Request
from jsonschema import Draft202012Validator
from markupsafe import escape
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from sqlalchemy import select
from werkzeug.datastructures import ImmutableMultiDict

from engine import spec_schema
from engine.models import DeadLetter
from engine.schedules.models import Schedule
from tests.conftest import spec
from tests.support.stack import Stack
from web import create_app, openapi_components, schemas
from web import db as web_db
from web.openapi import openapi_path

EVERY_SCOPE = "runs.*,workflows.*,admin.*,life.*,schedules.*"
DOCUMENT = "urn:engine:openapi"  # the base URI the document's own $refs resolve against


def the_document(stack: Stack) -> dict[str, Any]:
    response = stack.client().get("/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


def request_schema(operation: dict[str, Any]) -> dict[str, Any] | None:
    """The Python schema object the operation's JSON request body names, if it has one."""
    if "requestBody" not in operation:
        return None
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return openapi_components.REQUESTS[ref.rpartition("/")[2]]


def test_the_document_is_a_valid_openapi_3_1_document(database: Stack) -> None:
    document = the_document(database)
    assert document["openapi"].startswith("3.1")
    validate(document)
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids)), "operationIds must be unique"


def test_the_document_describes_every_route_and_method_of_the_app(database: Stack) -> None:
    document = the_document(database)
    routes = {
        (method.lower(), openapi_path(rule.rule)): database.app.view_functions[rule.endpoint]
        for rule in database.app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    described = {(method, path): operation for method, path, operation in operations(document)}
    assert set(routes) - set(described) == set(), "routes missing from /openapi.json"
    assert set(described) - set(routes) == set(), "/openapi.json describes routes the app lacks"
    for (method, path), operation in described.items():
        assert operation["summary"] and operation["operationId"] == routes[method, path].__name__
        assert [name for name in operation["responses"] if name[0] == "2"], (method, path)
        in_path = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
        assert in_path == re.findall(r"{([^}]+)}", path)


class ArgsThatRemember(ImmutableMultiDict):  # type: ignore[type-arg]
    """A query string that notes the name of every argument a view asks for."""

    asked: set[str] = set()

    def get(self, key: Any, default: Any = None, type: Any = None) -> Any:
        ArgsThatRemember.asked.add(key)
        return super().get(key, default, type)

    def __getitem__(self, key: Any) -> Any:
        ArgsThatRemember.asked.add(key)
        return super().__getitem__(key)


class RequestThatRemembers(Request):
    parameter_storage_class = ArgsThatRemember


def call_every_operation(
    stack: Stack, document: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> dict[tuple[str, str], tuple[set[str], list[dict[str, Any]]]]:
    """(method, path) -> (the query arguments its view read, the schemas it checked a body
    with), each operation called with an empty JSON object and ids that match nothing."""
    checked: list[dict[str, Any]] = []
    check = schemas.check

    def check_and_remember(schema: dict[str, Any], body: Any, what: str = "body") -> Any:
        checked.append(schema)
        return check(schema, body, what)

    monkeypatch.setattr(schemas, "check", check_and_remember)
    monkeypatch.setattr(stack.app, "request_class", RequestThatRemembers)
    client, headers = stack.client(), stack.headers("docs@example.com", EVERY_SCOPE)
    seen = {}
    for method, path, _ in operations(document):
        ArgsThatRemember.asked.clear()
        checked.clear()
        url = re.sub(r"{[^}]+}", "00000000-0000-0000-0000-000000000000", path)
        answer = client.open(
            url, method=method, json={} if method in ("post", "patch") else None, headers=headers
        )
        assert answer.status_code < 500, (method, path, answer.get_data(as_text=True))
        seen[method, path] = (set(ArgsThatRemember.asked), list(checked))
    return seen


def test_every_query_parameter_a_view_reads_is_documented_and_no_other(
    database: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = the_document(database)
    seen = call_every_operation(database, document, monkeypatch)
    for method, path, operation in operations(document):
        documented = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
        assert seen[method, path][0] == documented, (method, path)
    keyed = document["paths"]["/runs"]["post"]["parameters"]
    assert [(p["name"], p["in"]) for p in keyed] == [("Idempotency-Key", "header")]


def test_every_body_is_documented_with_the_schema_object_its_view_checks_it_with(
    database: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = the_document(database)
    seen = call_every_operation(database, document, monkeypatch)
    for method, path, operation in operations(document):
        named = request_schema(operation)
        if (method, path) == ("post", "/workflows"):
            # The engine checks a spec (JSON or YAML) with its own validator of SPEC_SCHEMA.
            assert named is spec_schema.SPEC_SCHEMA and spec_schema.SPEC_VALIDATOR.schema is named
            assert set(operation["requestBody"]["content"]) == {
                "application/json",
                "application/yaml",
            }
            continue
        checked = seen[method, path][1]
        assert [id(schema) for schema in checked] == ([id(named)] if named else []), (method, path)
    for name, schema in openapi_components.REQUESTS.items():
        assert document["components"]["schemas"][name] == schema


def test_the_docs_page_shows_every_operation_of_the_document(database: Stack) -> None:
    document = the_document(database)
    page = database.client().get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "/openapi.json" in html
    for method, path, operation in operations(document):
        row = f'<tr><td class="m">{method}</td><td><code>{path}</code></td>'
        assert row in html and str(escape(operation["summary"])) in html, (method, path)
        assert str(escape(operation.get("x-scope", ""))) in html


class Answers:
    """Calls the API and checks each answer against what the document says of it."""

    def __init__(self, stack: Stack) -> None:
        self.document = the_document(stack)
        self.client = stack.client()
        self.registry = Registry().with_resource(
            DOCUMENT, Resource.from_contents(self.document, default_specification=DRAFT202012)
        )
        # (method, path, status) of every answer checked.
        self.seen: set[tuple[str, str, int]] = set()

    def __call__(self, method: str, path: str, *, status: int, **options: Any) -> Any:
        """The answer to `method path` (path arguments as `{name}` from options)."""
        arguments = {name: options.pop(name) for name in re.findall(r"{([^}]+)}", path)}
        answer = self.client.open(path.format(**arguments), method=method, **options)
        assert answer.status_code == status, answer.get_data(as_text=True)
        self.seen.add((method, path, status))
        responses = self.document["paths"][path][method]["responses"]
        described = responses.get(str(status))
        if described is None:
            assert status >= 500, f"{method} {path} answered {status}, which is not documented"
            described = responses["default"]
        headers = described.get("headers", {})
        assert ("Location" in answer.headers) == ("Location" in headers), (method, path, status)
        if "Location" in headers:
            self.validate(answer.headers["Location"], headers["Location"]["schema"])
        if "content" not in described:
            assert answer.get_data() == b""
            return answer
        assert answer.mimetype in described["content"], (method, path, answer.mimetype)
        schema = described["content"][answer.mimetype]["schema"]
        body = answer.get_json() if answer.is_json else answer.get_data(as_text=True)
        self.validate(body, schema)
        return answer

    def validate(self, value: Any, schema: dict[str, Any]) -> None:
        """`value` matches `schema`, a schema of the document or a $ref into it."""
        if "$ref" in schema:
            schema = {"$ref": DOCUMENT + schema["$ref"]}
        Draft202012Validator(
            schema, registry=self.registry, format_checker=Draft202012Validator.FORMAT_CHECKER
        ).validate(value)

    def problems(self, method: str, path: str) -> set[int]:
        """The 4xx statuses the document gives the operation."""
        responses = self.document["paths"][path][method]["responses"]
        return {int(status) for status in responses if status.startswith("4")}


def a_dead_letter(stack: Stack, unique: str) -> str:
    """A failed task's letter, written directly (no worker needed to fail one)."""
    with stack.sessions.begin() as session:
        letter = DeadLetter(
            task_name="steps.execute",
            task_id=f"task-{unique}",
            queue="steps",
            args=[f"run:{unique}:a"],
            workflow=unique,
            exception_type="ValueError",
            message="boom",
            traceback="Traceback ...",
            fingerprint=unique,
            attempts=1,
        )
        session.add(letter)
        session.flush()
        return letter.id


def test_real_answers_match_the_documented_shapes_and_statuses(
    database: Stack, unique: str
) -> None:
    answer = Answers(database)
    headers = database.headers("docs@example.com", EVERY_SCOPE)
    steps = [{"id": "a", "action": "noop"}, {"id": "b", "action": "noop", "needs": ["a"]}]
    first = spec(unique, steps)
    answer("post", "/workflows", status=201, json=first, headers=headers)
    answer("post", "/workflows", status=200, json=first, headers=headers)
    answer(
        "post",
        "/workflows",
        status=201,
        data=yaml.safe_dump(spec(unique, steps, version=2)),
        content_type="application/yaml",
        headers=headers,
    )
    answer("get", "/workflows", status=200, headers=headers)
    answer("get", "/workflows/{name}", status=200, name=unique, headers=headers)
    answer("post", "/workflows/{name}/plan", status=200, name=unique, headers=headers)
    why = {"json": {"reason": "docs"}, "name": unique, "headers": headers}
    answer("post", "/workflows/{name}/pause", status=200, **why)
    answer("get", "/workflows/{name}", status=200, name=unique, headers=headers)
    answer("get", "/workflows", status=200, headers=headers)
    answer("post", "/runs", status=409, json={"workflow": unique}, headers=headers)
    stop = {**why, "json": {"reason": "docs", "cancel_running": True}}
    assert (
        answer("post", "/workflows/{name}/pause", status=200, **stop).get_json()["cancelled"] == 0
    )
    answer("post", "/workflows/{name}/resume", status=200, name=unique, headers=headers)

    every_hour = {"name": unique, "workflow": unique, "cron": "0 * * * *"}
    answer("post", "/schedules", status=201, json=every_hour, headers=headers)
    answer("get", "/schedules", status=200, headers=headers)
    for action in ("pause", "resume"):
        answer("post", f"/schedules/{{ref}}/{action}", status=200, ref=unique, headers=headers)
    answer("get", "/schedules/{ref}", status=200, ref=unique, headers=headers)
    hourly = {"json": {"cron": "30 * * * *", "version": None}, "headers": headers}
    answer("patch", "/schedules/{ref}", status=200, ref=unique, **hourly)
    window = {"since": "2026-01-01T00:00:00Z", "until": "2026-01-01T02:00:00Z"}
    path = "/schedules/{ref}/backfill"
    answer("post", path, status=200, ref=unique, json={**window, "dry_run": True}, headers=headers)
    confirmed = {**window, "confirm_count": 2, "reason": "docs"}
    answer("post", path, status=202, ref=unique, json=confirmed, headers=headers)
    answer("delete", "/schedules/{ref}", status=204, ref=unique, headers=headers)

    keyed = {**headers, "Idempotency-Key": unique}
    submit = {"json": {"workflow": unique, "params": {}}, "headers": keyed}
    run = answer("post", "/runs", status=202, **submit).get_json()
    answer("post", "/runs", status=200, **submit)
    answer("get", "/runs", status=200, query_string={"workflow": unique}, headers=headers)
    answer("get", "/runs/{run_id}", status=200, run_id=run["id"], headers=headers)
    answer("post", "/runs/{run_id}/cancel", status=200, run_id=run["id"], headers=headers)
    answer("post", "/runs/{run_id}/retry", status=409, run_id=run["id"], headers=headers)
    # A finished run's stream is its one event; to a client that has it, a 204.
    streamed = answer("get", "/runs/{run_id}/events", status=200, run_id=run["id"], headers=headers)
    [has] = [
        line[4:] for line in streamed.get_data(as_text=True).splitlines() if line[:4] == "id: "
    ]
    resumed = {**headers, "Last-Event-ID": has}
    answer("get", "/runs/{run_id}/events", status=204, run_id=run["id"], headers=resumed)

    letter = a_dead_letter(database, unique)
    by_print = {"fingerprint": unique}
    listed = answer("get", "/admin/dlq", status=200, query_string=by_print, headers=headers)
    assert [item["id"] for item in listed.get_json()["items"]] == [letter]
    answer("get", "/admin/dlq/{letter_id}", status=200, letter_id=letter, headers=headers)
    dry_run = {"filter": by_print, "dry_run": True}
    answer("post", "/admin/dlq/replay", status=200, json=dry_run, headers=headers)
    why = {"reason": "checked by hand"}
    answer(
        "post",
        "/admin/dlq/{letter_id}/discard",
        status=200,
        letter_id=letter,
        json=why,
        headers=headers,
    )
    answer("get", "/admin/audit", status=200, query_string={"target": letter}, headers=headers)

    mint = {"sub": f"{unique}@example.com", "scopes": ["runs.read"], "ttl": "5m"}
    minted = answer("post", "/admin/tokens", status=201, json=mint, headers=headers).get_json()
    revoke = {"jti": minted["jti"]}
    answer("post", "/admin/tokens/revoke", status=200, json=revoke, headers=headers)
    answer("get", "/admin/status", status=200, headers=headers)
    for path in ("/health", "/readyz", "/docs", "/openapi.json"):
        answer("get", path, status=200)

    answer("get", "/runs/{run_id}", status=404, run_id=unique, headers=headers)
    answer("post", "/runs", status=422, json={"workflow": ""}, headers=headers)
    answer("get", "/runs", status=401)


# A body each operation that takes one accepts (all but these accept an empty object).
VALID_BODIES: dict[str, dict[str, Any]] = {
    "/admin/dlq/{letter_id}/replay": {"reason": "r"},
    "/admin/dlq/{letter_id}/discard": {"reason": "r"},
    "/admin/dlq/replay": {"filter": {}, "dry_run": True},
    "/admin/dlq/discard": {"filter": {}, "dry_run": True},
    "/workflows/{name}/pause": {"reason": "r"},
    "/schedules/{ref}/backfill": {
        "since": "2026-01-01T00:00:00Z",
        "until": "2026-01-01T02:00:00Z",
        "dry_run": True,
    },
}


def test_every_problem_an_operation_documents_is_one_it_answers_and_no_other(
    database: Stack, unique: str
) -> None:
    answer = Answers(database)
    headers = database.headers("docs@example.com", EVERY_SCOPE)
    no_scope = database.headers("docs@example.com", "nothing.granted")
    limit = database.settings.max_body_bytes
    for method, path, operation in operations(answer.document):
        ids = {name: "nothing-here" for name in re.findall(r"{([^}]+)}", path)}
        valid = VALID_BODIES.get(path, {})
        if "security" in operation:
            answer(method, path, status=401, **ids)
            answer(method, path, status=403, json=valid, headers=no_scope, **ids)
        if "requestBody" in operation:
            for status, options in (
                (400, {"data": "{", "content_type": "application/json"}),
                (413, {"data": "x" * (limit + 1), "content_type": "application/json"}),
                (415, {"data": "{}", "content_type": "application/x-www-form-urlencoded"}),
                (422, {"json": {"unexpected": True}}),
            ):
                answer(method, path, status=status, headers=headers, **ids, **options)
        if ids:
            answer(method, path, status=404, json=valid, headers=headers, **ids)
            nul = {name: "x\x00" for name in ids}
            answer(method, path, status=422, json=valid, headers=headers, **nul)
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "query":
                query = {parameter["name"]: "x\x00"}
                answer(method, path, status=422, query_string=query, headers=headers, **ids)

    # A workflow the body names that does not exist; and each 409.
    answer("post", "/runs", status=404, json={"workflow": f"{unique}_none"}, headers=headers)
    first = spec(unique, [{"id": "a", "action": "noop"}])
    answer("post", "/workflows", status=201, json=first, headers=headers)
    changed = spec(unique, [{"id": "b", "action": "noop"}])
    answer("post", "/workflows", status=409, json=changed, headers=headers)
    every_hour = {"name": unique, "workflow": unique, "cron": "0 * * * *"}
    answer("post", "/schedules", status=201, json=every_hour, headers=headers)
    answer("post", "/schedules", status=409, json=every_hour, headers=headers)
    other_hour = {**every_hour, "name": f"{unique}_b"}
    answer("post", "/schedules", status=201, json=other_hour, headers=headers)
    taken = {"json": {"name": unique}, "headers": headers}
    answer("patch", "/schedules/{ref}", status=409, ref=f"{unique}_b", **taken)
    answer("post", "/schedules/{ref}/trigger", status=202, ref=unique, headers=headers)
    # A backfill whose count is not the dry run's.
    miscounted = {**VALID_BODIES["/schedules/{ref}/backfill"], "dry_run": False}
    miscounted.update(confirm_count=3, reason="r")
    answer(
        "post",
        "/schedules/{ref}/backfill",
        status=409,
        ref=unique,
        json=miscounted,
        headers=headers,
    )
    pause = {"json": {"reason": "r"}, "headers": headers, "name": unique}
    answer("post", "/workflows/{name}/pause", status=200, **pause)
    answer("post", "/schedules/{ref}/trigger", status=409, ref=unique, headers=headers)
    answer("post", "/workflows/{name}/resume", status=200, name=unique, headers=headers)
    # Another's schedule whose token was revoked: only its owner may resume it.
    owner = database.headers(f"{unique}@example.com", "schedules.write,runs.write")
    client = database.client()
    orphan = {**every_hour, "name": f"{unique}_c"}
    made = client.post("/schedules", json=orphan, headers=owner)
    assert made.status_code == 201, made.get_json()
    assert client.post(f"/schedules/{unique}_c/pause", headers=headers).status_code == 200
    with database.sessions() as session:
        jti = session.scalars(select(Schedule.created_jti).where(Schedule.name == orphan["name"]))
        revoke = {"jti": jti.one()}
    assert client.post("/admin/tokens/revoke", json=revoke, headers=headers).status_code == 200
    answer("post", "/schedules/{ref}/resume", status=409, ref=f"{unique}_c", headers=headers)
    keyed = {**headers, "Idempotency-Key": unique}
    run = answer("post", "/runs", status=202, json={"workflow": unique}, headers=keyed)
    other = {"workflow": unique, "priority": 5}
    answer("post", "/runs", status=409, json=other, headers=keyed)
    run_id = run.get_json()["id"]
    answer("post", "/runs/{run_id}/cancel", status=200, run_id=run_id, headers=headers)
    answer("post", "/runs/{run_id}/cancel", status=409, run_id=run_id, headers=headers)
    answer("post", "/runs/{run_id}/retry", status=409, run_id=run_id, headers=headers)
    letter = a_dead_letter(database, unique)
    too_many = {"filter": {"fingerprint": unique}, "confirm_count": 2, "reason": "r"}
    answer("post", "/admin/dlq/replay", status=409, json=too_many, headers=headers)
    answer("post", "/admin/dlq/discard", status=409, json=too_many, headers=headers)
    why = {"json": {"reason": "r"}, "letter_id": letter, "headers": headers}
    answer("post", "/admin/dlq/{letter_id}/discard", status=200, **why)
    answer("post", "/admin/dlq/{letter_id}/discard", status=409, **why)
    answer("post", "/admin/dlq/{letter_id}/replay", status=409, **why)

    # A caller over its rate limit: the second request in a minute that allows one.
    limited = create_app(
        database.settings.with_changes(
            rate_limit_writes="1/minute",
            rate_limit_reads="1/minute",
            rate_limit_storage_url="memory://",
        )
    )
    answer.client = limited.test_client()
    for method, path, operation in operations(answer.document):
        if "security" in operation:
            ids = {name: "nothing-here" for name in re.findall(r"{([^}]+)}", path)}
            caller = database.headers(f"{method} {path}@example.com", EVERY_SCOPE)
            first = {"json": VALID_BODIES.get(path, {}), "headers": caller}
            answer.client.open(path.format(**ids), method=method, **first)
            over = answer(method, path, status=429, **first, **ids)
            assert int(over.headers["Retry-After"]) >= 1
    web_db.dispose(limited)

    for method, path, _ in operations(answer.document):
        answered = {status for m, p, status in answer.seen if (m, p) == (method, path)}
        assert answer.problems(method, path) == {s for s in answered if 400 <= s < 500}, (
            method,
            path,
        )

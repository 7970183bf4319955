"""Values at the edges of what the API takes, on SQLite and PostgreSQL: text no column can
store, numbers beyond a float, times beyond the years 1 to 9999, cursors it never issued,
whole numbers written as 1.0, names ending in a newline, chunked bodies over the limit, the
bearer scheme in any case, and the workflow list a page at a time. Each is a clear 4xx
naming what is wrong, with nothing written."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import yaml
from sqlalchemy import func, select

from engine import cursors
from engine.models import AuditEvent, Run, Workflow
from tests.conftest import spec
from tests.support.http import fields, problem
from tests.support.stack import Stack

ADMIN = "admin.*,runs.read,runs.write,workflows.read,workflows.write"


def count(stack: Stack, model: Any, **where: Any) -> int:
    query = select(func.count()).select_from(model)
    for column, value in where.items():
        query = query.where(getattr(model, column) == value)
    with stack.sessions() as session:
        return session.scalar(query) or 0


def chunked(client: Any, path: str, data: bytes, headers: dict[str, str], mimetype: str) -> Any:
    """A POST whose body has no Content-Length, as a server hands a chunked one to the app."""
    return client.post(
        path,
        input_stream=io.BytesIO(data),
        content_type=mimetype,
        headers={**headers, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_a_chunked_body_over_the_limit_is_refused_not_cut_short(
    database: Stack, unique: str
) -> None:
    # Werkzeug stops reading such a body at the limit without a word: the spec below, cut
    # there, was valid YAML without its second step, and was registered for good.
    client, headers = database.client(), database.headers(scopes=ADMIN)
    limit = database.settings.max_body_bytes
    steps = [
        {"id": "a", "action": "noop", "description": "a" * limit},
        {"id": "b", "action": "noop", "needs": ["a"]},
    ]
    spec_ = {"name": unique, "version": 1, "steps": steps}
    text = yaml.safe_dump(spec_, width=2 * limit, sort_keys=False)
    problem(chunked(client, "/workflows", text.encode(), headers, "application/yaml"), 413)
    assert count(database, Workflow, name=unique) == 0
    body = json.dumps({"workflow": unique, "params": {"note": "x" * limit}}).encode()
    problem(chunked(client, "/runs", body, headers, "application/json"), 413)
    assert count(database, Run, workflow=unique) == 0

    small = yaml.safe_dump(spec(unique, [{"id": "a", "action": "noop"}]))
    response = chunked(client, "/workflows", small.encode(), headers, "application/yaml")
    assert response.status_code == 201, response.get_json()


def test_text_no_column_can_store_is_refused_wherever_it_comes(
    database: Stack, unique: str
) -> None:
    # A lone UTF-16 surrogate is not a character: UTF-8 cannot encode it, and a statement
    # binding one failed with a 500. A NUL character is refused as before.
    client, headers = database.client(), database.headers(f"{unique}@example.com", ADMIN)
    lone = "\ud800"
    cases = [
        ("/runs", json.dumps({"workflow": unique + lone}).encode(), "workflow"),
        ("/runs", json.dumps({"workflow": unique, "params": {"a": [lone]}}).encode(), "params"),
        # The same surrogate as the three bytes UTF-8 would give it, not as an escape.
        ("/runs", b'{"workflow": "' + unique.encode() + b'\xed\xa0\x80"}', "workflow"),
        ("/admin/tokens/revoke", json.dumps({"jti": "j" + lone}).encode(), "jti"),
        ("/admin/tokens/revoke", json.dumps({"jti": "j", "reason": lone}).encode(), "reason"),
        ("/admin/tokens", json.dumps({"sub": lone, "scopes": ["runs.read"]}).encode(), "sub"),
        ("/admin/dlq/some-id/replay", json.dumps({"reason": lone}).encode(), "reason"),
        ("/admin/dlq/some-id/discard", json.dumps({"reason": lone}).encode(), "reason"),
        ("/admin/dlq/replay", json.dumps({"filter": {}, "reason": lone}).encode(), "reason"),
    ]
    events = count(database, AuditEvent)
    for path, data, field in cases:
        response = client.post(path, data=data, content_type="application/json", headers=headers)
        body = problem(response, 422)
        assert fields(body) == [field] and "surrogate" in body["detail"], (path, body)
    assert count(database, Run, workflow=unique) == 0
    assert count(database, AuditEvent) == events

    # A YAML spec is held to the same rule as a JSON one, NUL included.
    for escape, word in (("\\ud800", "surrogate"), ("\\0", "NUL")):
        text = f'name: {unique}\nversion: 1\nsteps: [{{id: a, action: echo, with: "x{escape}"}}]'
        response = client.post(
            "/workflows", data=text, content_type="application/yaml", headers=headers
        )
        body = problem(response, 422)
        assert fields(body) == ["body"] and word in body["detail"], body
    assert count(database, Workflow, name=unique) == 0
    # A well-formed pair is one character, and is kept.
    pair = {"workflow": unique, "params": {"a": "\U0001f600"}}
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    assert client.post("/runs", json=pair, headers=headers).status_code == 202


def test_a_number_beyond_a_float_is_refused_not_served_as_infinity(
    database: Stack, unique: str
) -> None:
    client, headers = database.client(), database.headers(scopes=ADMIN)
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    for path, text in (
        ("/runs", f'{{"workflow": "{unique}", "params": {{"x": 1e400}}}}'),
        ("/runs", f'{{"workflow": "{unique}", "params": {{"x": -2.5e999}}}}'),
        (
            "/workflows",
            f'{{"name": "{unique}x", "version": 1, '
            '"steps": [{"id": "a", "action": "echo", "with": {"x": 1e400}}]}',
        ),
    ):
        response = client.post(path, data=text, content_type="application/json", headers=headers)
        assert "beyond the range" in problem(response, 400)["detail"]
    assert count(database, Run, workflow=unique) == 0
    assert count(database, Workflow, name=unique + "x") == 0
    large = client.post("/runs", json={"workflow": unique, "params": {"x": 1e300}}, headers=headers)
    assert large.status_code == 202 and large.get_json()["params"] == {"x": 1e300}


def test_a_time_with_no_utc_within_the_years_1_to_9999_is_refused_naming_its_field(
    database: Stack,
) -> None:
    client, headers = database.client(), database.headers(scopes=ADMIN)
    early, late = "0001-01-01T00:00:00+05:00", "9999-12-31T23:00:00-05:00"
    cursor = base64.urlsafe_b64encode(json.dumps([early, "x"]).encode()).decode()
    for response, field in [
        (client.get("/admin/dlq", query_string={"since": early}, headers=headers), "since"),
        (client.get("/admin/dlq", query_string={"until": late}, headers=headers), "until"),
        (client.get("/admin/audit", query_string={"since": early}, headers=headers), "since"),
        (client.get("/admin/audit", query_string={"until": late}, headers=headers), "until"),
        (
            client.post(
                "/admin/dlq/replay",
                json={"filter": {"since": early}, "dry_run": True},
                headers=headers,
            ),
            "filter.since",
        ),
        (client.get("/runs", query_string={"cursor": cursor}, headers=headers), "cursor"),
        (client.get("/admin/dlq", query_string={"cursor": cursor}, headers=headers), "cursor"),
    ]:
        assert fields(problem(response, 422)) == [field]
    # The edges themselves, in UTC, are times like any other.
    edge = client.get(
        "/admin/audit", query_string={"since": "0001-01-01T00:00:00Z"}, headers=headers
    )
    assert edge.status_code == 200


def test_an_audit_cursor_beyond_an_event_id_is_refused(database: Stack) -> None:
    client, headers = database.client(), database.headers(scopes=ADMIN)
    for event_id in (99999999999999999999999, 0, -3, True, "7"):
        cursor = cursors.encode(event_id)
        response = client.get("/admin/audit", query_string={"cursor": cursor}, headers=headers)
        assert fields(problem(response, 422)) == ["cursor"], event_id


def test_the_platforms_whole_numbers_are_refused_when_written_as_1_0(
    database: Stack, unique: str
) -> None:
    # JSON Schema counts 1.0 as an integer; a version 1.0 was served as 1.0, its Location
    # (?version=1.0) refused, and the same spec with 1 a conflict.
    client, headers = database.client(), database.headers(scopes=ADMIN)
    floated = {**spec(unique, [{"id": "a", "action": "noop"}]), "version": 1.0}
    assert fields(problem(client.post("/workflows", json=floated, headers=headers), 422)) == [
        "version"
    ]
    retry = spec(unique, [{"id": "a", "action": "noop", "retry": {"max_attempts": 2.0}}])
    body = problem(client.post("/workflows", json=retry, headers=headers), 422)
    assert fields(body) == ["steps[0].retry.max_attempts"]
    assert count(database, Workflow, name=unique) == 0
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    for body, field in (
        ({"workflow": unique, "priority": 5.0}, "priority"),
        ({"workflow": unique, "version": 1.0}, "version"),
    ):
        assert fields(problem(client.post("/runs", json=body, headers=headers), 422)) == [field]
    assert count(database, Run, workflow=unique) == 0
    plan = client.post(f"/workflows/{unique}/plan", json={"version": 1.0}, headers=headers)
    assert fields(problem(plan, 422)) == ["version"]


def test_a_name_step_id_or_queue_ending_in_a_newline_is_refused(
    database: Stack, unique: str
) -> None:
    # Python's "$" matches before a final newline: such a workflow could not be read back by
    # its name, and a step queued on "steps\n" waited for a worker that would never come.
    client, headers = database.client(), database.headers(scopes=ADMIN)
    for body, field in (
        (spec(unique + "\n", [{"id": "a", "action": "noop"}]), "name"),
        (spec(unique, [{"id": "a\n", "action": "noop"}]), "steps[0].id"),
        (spec(unique, [{"id": "a", "action": "noop", "queue": "steps\n"}]), "steps[0].queue"),
        (
            spec(unique, [{"id": "a", "action": "noop"}], defaults={"queue": "q\n"}),
            "defaults.queue",
        ),
    ):
        response = client.post("/workflows", json=body, headers=headers)
        assert fields(problem(response, 422)) == [field], body
    assert count(database, Workflow, name=unique) == 0


def test_the_bearer_scheme_is_taken_in_any_case(database: Stack) -> None:
    # RFC 9110: a scheme's name is case-insensitive. Each token is new here, so the first
    # request with it goes through the full verification, not this process's memory.
    client = database.client()
    for scheme in ("bearer", "BEARER", "Bearer"):
        token = database.token(scopes="runs.read")
        response = client.get("/runs", headers={"Authorization": f"{scheme} {token}"})
        assert response.status_code == 200, (scheme, response.get_json())
        again = client.get("/runs", headers={"Authorization": f"{scheme} {token}"})
        assert again.status_code == 200
    token = database.token(scopes="runs.read")
    problem(client.get("/runs", headers={"Authorization": f"Basic {token}"}), 401)


def test_a_yaml_spec_that_does_not_parse_names_the_body(database: Stack) -> None:
    client, headers = database.client(), database.headers(scopes=ADMIN)
    response = client.post(
        "/workflows", data="name: [unclosed", content_type="application/yaml", headers=headers
    )
    assert fields(problem(response, 422)) == ["body"]


def test_workflows_are_listed_a_page_at_a_time_by_name(database: Stack, unique: str) -> None:
    client, headers = database.client(), database.headers(scopes=ADMIN)
    mine = [f"{unique}_{letter}" for letter in "cab"]
    for name in mine:
        database.register(spec(name, [{"id": "a", "action": "noop"}]))
    database.register({**spec(mine[0], [{"id": "a", "action": "echo"}]), "version": 2})
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/workflows", query_string=query, headers=headers).get_json()
        assert len(page["items"]) <= 2
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    names = [item["name"] for item in seen]
    assert names == sorted(set(names)), "each workflow once, in name order"
    assert [item["version"] for item in seen if item["name"] in mine] == [1, 1, 2]
    bad = client.get("/workflows", query_string={"cursor": "junk"}, headers=headers)
    assert fields(problem(bad, 422)) == ["cursor"]
    zero = client.get("/workflows", query_string={"limit": 0}, headers=headers)
    assert fields(problem(zero, 422)) == ["limit"]


def test_a_token_is_minted_over_the_api_only_with_scopes_the_platform_checks(
    database: Stack,
) -> None:
    # A typo would mint a token every endpoint refuses; an admin.* caller "holds" it too.
    client, headers = database.client(), database.headers(scopes=ADMIN)
    for scopes in (["admni.dlq.read"], ["admin.dlq.raed"], []):
        body = {"sub": "bot@example.com", "scopes": scopes, "ttl": "1h"}
        response = client.post("/admin/tokens", json=body, headers=headers)
        assert fields(problem(response, 422)) == ["scopes"], scopes
    long = client.post(
        "/admin/tokens",
        json={"sub": "bot", "scopes": ["runs.read"], "ttl": "400d"},
        headers=headers,
    )
    assert "2,592,000 seconds" in problem(long, 422)["errors"][0]["message"]
    minted = client.post(
        "/admin/tokens",
        json={"sub": "bot", "scopes": ["runs.read", "admin.dlq.read"]},
        headers=headers,
    )
    assert minted.status_code == 201, minted.get_json()

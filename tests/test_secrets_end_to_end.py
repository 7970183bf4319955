"""Named secrets (`{{ secrets.name }}`) through the API and a real prefork worker, on SQLite
and PostgreSQL: the action gets the value, and no table, log line or API answer holds it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import MetaData, select

from tests.conftest import BACKENDS, spec
from tests.support.origin import Answer, Origin, origin
from tests.support.stack import Stack

OPERATOR = "ops@example.com"


@pytest.fixture(scope="module", params=BACKENDS)
def platform(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp(f"secrets-{request.param}")
    secrets_dir = directory / "mounted-secrets"
    secrets_dir.mkdir()
    stack = Stack(
        request.param,
        directory,
        env={"HTTP_ALLOW_PRIVATE_ADDRESSES": "true", "SECRETS_DIR": str(secrets_dir)},
    )
    stack.start_worker(concurrency=2)
    yield stack
    stack.close()


@pytest.fixture
def server() -> Iterator[Origin]:
    with origin() as running:
        yield running


def provide(platform: Stack, name: str, value: str) -> None:
    """Mount a secret as Docker and Kubernetes do: a file, its value and a final newline."""
    (platform.settings.secrets_dir / name).write_text(value + "\n")


def database_text(platform: Stack) -> str:
    """Every row of every table of the database, as text."""
    tables = MetaData()
    tables.reflect(platform.db_engine)
    with platform.db_engine.connect() as connection:
        return "\n".join(
            repr(tuple(row))
            for table in tables.sorted_tables
            for row in connection.execute(select(table))
        )


def worker_logs(platform: Stack) -> str:
    return "\n".join(worker.log_path.read_text(errors="replace") for worker in platform.workers)


def calling(url: str, name: str, **step: Any) -> dict[str, Any]:
    """A step that calls `url` with the secret `name` as its bearer token."""
    return {
        "id": "call",
        "action": "http.request",
        "with": {
            "method": "GET",
            "url": url,
            "headers": {"Authorization": "Bearer {{ secrets." + name + " }}"},
        },
        **step,
    }


def admin(platform: Stack) -> dict[str, str]:
    return platform.headers(OPERATOR, "admin.*,runs.read")


def test_an_action_gets_a_named_secret_that_no_table_log_or_api_answer_holds(
    platform: Stack, server: Origin, unique: str
) -> None:
    name, value = f"token_{unique}", f"tok-{uuid.uuid4().hex}"
    provide(platform, name, value)
    # The server answers with the header it got, as an echo service does.
    url = server.script("/me", Answer(200, {"seen": f"Bearer {value}", "plan": "pro"}))
    platform.register(spec(unique, [calling(url, name)]))

    run = platform.wait_finished(platform.submit(unique, {"company": "acme"}))

    assert run["status"] == "succeeded", run
    assert server.requests_of("/me")[0].headers["Authorization"] == f"Bearer {value}"
    step = run["steps"][0]
    assert step["inputs"]["headers"] == {"Authorization": f"Bearer [SECRET:{name}]"}
    assert step["output"]["body"] == {"seen": f"Bearer [SECRET:{name}]", "plan": "pro"}
    shown = platform.client().get(f"/runs/{run['id']}", headers=admin(platform))
    assert value not in shown.get_data(as_text=True)
    stored = database_text(platform)
    assert f"[SECRET:{name}]" in stored and run["id"] in stored
    assert value not in stored
    assert value not in worker_logs(platform)


def test_a_missing_secret_kills_the_step_naming_it_and_a_replay_once_it_is_provided_succeeds(
    platform: Stack, server: Origin, unique: str
) -> None:
    name, value = f"later_{unique}", f"tok-{uuid.uuid4().hex}"
    url = server.script("/later", Answer(200, {"ok": True}))
    platform.register(spec(unique, [calling(url, name, retry={"max_attempts": 3})]))

    run = platform.wait_finished(platform.submit(unique))

    assert run["status"] == "failed", run
    step = run["steps"][0]
    assert step["status"] == "dead" and step["attempts"] == 1, step
    assert f"secret {name!r} is not set" in step["error"]
    assert step["inputs"]["headers"] == {"Authorization": f"Bearer [SECRET:{name}]"}
    assert server.requests_of("/later") == []
    (letter,) = platform.dead_letters(run["id"])
    assert name in letter.message

    provide(platform, name, value)
    replayed = platform.client().post(
        f"/admin/dlq/{letter.id}/replay",
        json={"reason": "secret provided"},
        headers=admin(platform),
    )
    assert replayed.status_code == 202, replayed.get_json()
    run = platform.wait_finished(run["id"])

    assert run["status"] == "succeeded", run
    assert [r.headers["Authorization"] for r in server.requests_of("/later")] == [f"Bearer {value}"]
    assert value not in database_text(platform)


def test_a_secret_an_action_puts_in_its_failure_is_masked_wherever_the_failure_goes(
    platform: Stack, unique: str
) -> None:
    name, value = f"echoed_{unique}", f"pw-{uuid.uuid4().hex}"
    provide(platform, name, value)
    failing = {
        "id": "login",
        "action": "fail",
        "with": {
            "message": "login refused for password {{ secrets." + name + " }}",
            "retryable": False,
        },
    }
    platform.register(spec(unique, [failing]))

    run = platform.wait_finished(platform.submit(unique))

    assert run["status"] == "failed", run
    assert "login refused for password [REDACTED]" in run["steps"][0]["error"]
    (letter,) = platform.dead_letters(run["id"])
    assert "[REDACTED]" in letter.message and value not in letter.message + letter.traceback
    detail = platform.client().get(f"/admin/dlq/{letter.id}", headers=admin(platform))
    assert value not in detail.get_data(as_text=True)
    assert value not in database_text(platform)
    assert value not in worker_logs(platform)


def calling_twice(url: str, name: str) -> dict[str, Any]:
    """A step that sends the secret `name` in two headers, once alone and once inside a longer
    string, and fails for good at the first error."""
    step = calling(url, name, retry={"max_attempts": 1})
    step["with"]["headers"]["X-Api-Key"] = "{{ secrets." + name + " }}"
    return step


def replay(platform: Stack, letter_id: str, inputs: dict[str, Any]) -> Any:
    return platform.client().post(
        f"/admin/dlq/{letter_id}/replay",
        json={"reason": "the API moved", "inputs": inputs},
        headers=admin(platform),
    )


def test_a_replay_of_the_stored_inputs_edited_sends_the_secrets_their_placeholders_name(
    platform: Stack, server: Origin, unique: str
) -> None:
    name, value = f"kept_{unique}", f"tok-{uuid.uuid4().hex}"
    provide(platform, name, value)
    moved = server.script("/v1/me", Answer(503, {"error": "gone to v2"}))
    # The new address answers with the headers it got, as an echo service does.
    current = server.script("/v2/me", Answer(200, {"seen": f"Bearer {value}", "key": value}))
    platform.register(spec(unique, [calling_twice(moved, name)]))
    run = platform.wait_finished(platform.submit(unique))
    assert run["status"] == "failed", run
    stored = run["steps"][0]["inputs"]
    assert stored["headers"] == {
        "Authorization": f"Bearer [SECRET:{name}]",
        "X-Api-Key": f"[SECRET:{name}]",
    }
    (letter,) = platform.dead_letters(run["id"])

    # The operator copies the stored inputs and edits the address alone.
    edited = {**stored, "url": current}
    replayed = replay(platform, letter.id, edited)
    assert replayed.status_code == 202, replayed.get_json()
    run = platform.wait_finished(run["id"])

    assert run["status"] == "succeeded", run
    (request,) = server.requests_of("/v2/me")
    assert request.headers["Authorization"] == f"Bearer {value}"
    assert request.headers["X-Api-Key"] == value
    step = run["steps"][0]
    assert step["inputs"] == edited
    assert step["output"]["body"] == {"seen": f"Bearer [SECRET:{name}]", "key": f"[SECRET:{name}]"}
    shown = platform.client().get("/admin/audit", headers=admin(platform))
    assert letter.id in shown.get_data(as_text=True)
    assert value not in shown.get_data(as_text=True)
    assert value not in database_text(platform)
    assert value not in worker_logs(platform)


def test_a_replay_whose_inputs_hold_redacted_or_a_secret_the_step_does_not_read_is_refused(
    platform: Stack, server: Origin, unique: str
) -> None:
    name = f"read_{unique}"
    provide(platform, name, f"tok-{uuid.uuid4().hex}")
    url = server.script("/refused", Answer(503, {"error": "down"}))
    platform.register(spec(unique, [calling_twice(url, name)]))
    run = platform.wait_finished(platform.submit(unique))
    assert run["status"] == "failed", run
    stored = run["steps"][0]["inputs"]
    (letter,) = platform.dead_letters(run["id"])

    # What a failure shows in place of the token, copied into the inputs.
    redacted = replay(platform, letter.id, {**stored, "headers": {"Authorization": "[REDACTED]"}})
    other = {"Authorization": "Bearer [SECRET:jwt_secret]", "X-Api-Key": f"[SECRET:{name}]"}
    unread = replay(platform, letter.id, {**stored, "headers": other})

    assert redacted.status_code == 422, redacted.get_json()
    assert redacted.mimetype == "application/problem+json"
    (error,) = redacted.get_json()["errors"]
    assert error["field"] == "inputs.headers.Authorization"
    assert "[REDACTED]" in error["message"] and "[SECRET:name]" in error["message"]
    assert unread.status_code == 422, unread.get_json()
    (error,) = unread.get_json()["errors"]
    assert error["field"] == "inputs.headers.Authorization"
    assert "'jwt_secret'" in error["message"] and name in error["message"]
    assert platform.dead_letters(run["id"])[0].status == "open"
    assert len(server.requests_of("/refused")) == 1


def test_a_replay_naming_a_secret_not_provided_dies_again_naming_it_and_sends_nothing(
    platform: Stack, server: Origin, unique: str
) -> None:
    name, value = f"absent_{unique}", f"tok-{uuid.uuid4().hex}"
    moved = server.script("/v1/absent", Answer(200, {"ok": True}))
    current = server.script("/v2/absent", Answer(200, {"ok": True}))
    platform.register(spec(unique, [calling_twice(moved, name)]))
    run = platform.wait_finished(platform.submit(unique))
    assert run["status"] == "failed", run
    edited = {**run["steps"][0]["inputs"], "url": current}
    (first,) = platform.dead_letters(run["id"])

    assert replay(platform, first.id, edited).status_code == 202
    run = platform.wait_finished(run["id"])

    assert run["status"] == "failed", run
    step = run["steps"][0]
    assert step["status"] == "dead" and f"secret {name!r} is not set" in step["error"], step
    assert step["inputs"] == edited
    assert server.requests_of("/v2/absent") == []
    second = platform.dead_letters(run["id"])[-1]
    assert second.id != first.id and name in second.message

    provide(platform, name, value)
    assert replay(platform, second.id, edited).status_code == 202
    run = platform.wait_finished(run["id"])

    assert run["status"] == "succeeded", run
    (request,) = server.requests_of("/v2/absent")
    assert request.headers["X-Api-Key"] == value
    assert value not in database_text(platform)


@pytest.mark.parametrize(
    ("step", "field"),
    [
        (
            {"id": "t", "action": "transform", "with": {"expression": "secrets.key"}},
            "steps[0].with.expression",
        ),
        (
            {
                "id": "t",
                "action": "transform",
                "with": {"expression": "inputs.key", "key": "{{ secrets.key }}"},
            },
            "steps[0].with.key",
        ),
        ({"id": "e", "action": "echo", "with": {"a": ["{{ secrets.key }}"]}}, "steps[0].with.a[0]"),
        ({"id": "n", "action": "noop", "with": {"all": "{{ secrets }}"}}, "steps[0].with.all"),
        ({"id": "n", "action": "noop", "with": {"k": "{{ secrets['a-b'] }}"}}, "steps[0].with.k"),
    ],
)
def test_registration_refuses_a_secret_whose_value_would_be_stored_naming_the_field(
    platform: Stack, unique: str, step: dict[str, Any], field: str
) -> None:
    response = platform.client().post(
        "/workflows",
        json=spec(unique, [step]),
        headers=platform.headers(scopes="workflows.write"),
    )
    assert response.status_code == 422, response.get_json()
    body = response.get_json()
    assert [error["field"] for error in body["errors"]] == [field], json.dumps(body)

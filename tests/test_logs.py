"""Structured logs: one JSON object per line with the ids of the request, run and step it
belongs to, an access line per request, and never a token or secret."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import logs
from tests.conftest import spec
from tests.support import services
from tests.support.stack import Stack
from web import create_app, telemetry


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a log file (a worker's output also holds Celery's banner)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


@pytest.fixture
def logged_app(database: Stack, tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    """The API logging to files under LOG_DIR; logging goes back to stderr afterwards."""
    app = create_app(database.settings.with_changes(log_dir=tmp_path))
    yield app, tmp_path
    logs.configure(database.settings, "api")


def test_a_request_with_a_token_is_logged_once_in_access_log_without_the_token(
    database: Stack, logged_app: tuple[Any, Path]
) -> None:
    app, log_dir = logged_app
    token = database.token("reader@example.com", "runs.read")
    response = app.test_client().get(
        "/runs?limit=5",
        headers={"Authorization": f"Bearer {token}", "X-Request-ID": "req-42.abc"},
    )
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "req-42.abc"

    access = [line for line in json_lines(log_dir / "access.log") if line["path"] == "/runs"]
    assert len(access) == 1
    line = access[0]
    assert {"ts", "level", "logger", "message"} <= set(line)
    assert line["ts"].endswith("Z")
    assert line["logger"] == "engine.access"
    assert line["method"] == "GET"
    assert line["status"] == 200
    assert line["request_id"] == "req-42.abc"
    assert line["caller"] == "reader@example.com"
    assert isinstance(line["duration_ms"], float | int)
    for path in (log_dir / "access.log", log_dir / "app.log"):
        text = path.read_text() if path.exists() else ""
        assert token not in text
        assert database.settings.jwt_secret not in text


def test_a_request_refused_for_a_scope_is_logged_with_its_caller(
    database: Stack, logged_app: tuple[Any, Path]
) -> None:
    app, log_dir = logged_app
    token = database.token("reader@example.com", "runs.read")
    client = app.test_client()
    # The first request verifies the token, the second is answered from memory (web.auth).
    for _ in range(2):
        response = client.post("/workflows", json={}, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 403
    access = [line for line in json_lines(log_dir / "access.log") if line["path"] == "/workflows"]
    assert [(line["status"], line["caller"]) for line in access] == [
        (403, "reader@example.com"),
        (403, "reader@example.com"),
    ]


def test_secrets_in_application_log_lines_are_redacted(
    database: Stack, logged_app: tuple[Any, Path]
) -> None:
    _app, log_dir = logged_app
    token = database.token()
    secret = database.settings.jwt_secret
    log = logging.getLogger("web.views.example")
    log.warning("called with Authorization: Bearer %s", token)
    log.warning("headers {'authorization': '%s'} and key %s", token, secret)
    log.warning("a bare token %s in a message", token)
    try:
        raise ValueError(f"bad token {token}")
    except ValueError:
        log.exception("while checking")

    lines = [line for line in json_lines(log_dir / "app.log") if line["logger"] == log.name]
    assert len(lines) == 4
    text = (log_dir / "app.log").read_text()
    assert token not in text
    assert secret not in text
    assert token.split(".")[1] not in text
    assert "[REDACTED]" in lines[0]["message"]
    assert "Traceback" in lines[3]["exc"]


def test_a_request_id_is_made_when_none_or_an_unusable_one_is_given(database: Stack) -> None:
    client = database.client()
    made = client.get("/health").headers["X-Request-ID"]
    assert len(made) == 32
    other = client.get("/health").headers["X-Request-ID"]
    assert other != made
    replaced = client.get("/health", headers={"X-Request-ID": "x" * 200}).headers["X-Request-ID"]
    assert replaced != "x" * 200 and len(replaced) == 32
    odd = client.get("/health", headers={"X-Request-ID": 'a b"c'}).headers["X-Request-ID"]
    assert odd != 'a b"c'


def test_forked_processes_make_different_request_ids() -> None:
    # gunicorn's workers are forks of one process: each must draw its own ids.
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(reader)
        os.write(writer, telemetry._new_request_id().encode())
        os._exit(0)
    os.close(writer)
    os.waitpid(child, 0)
    with os.fdopen(reader, "rb") as pipe:
        drawn_by_child = pipe.read().decode()
    assert len(drawn_by_child) == 32
    assert drawn_by_child != telemetry._new_request_id()


def test_a_runs_worker_log_lines_carry_its_run_id_and_step_id(stack: Stack, unique: str) -> None:
    stack.register(
        spec(
            unique,
            [
                {"id": "first", "action": "record"},
                # Another queue than the inline one: `second` is a message of its own.
                {"id": "second", "action": "record", "needs": ["first"], "queue": "default"},
            ],
        )
    )
    run_id = stack.submit(unique)
    assert stack.wait_finished(run_id)["status"] == "succeeded"
    worker_log = stack.workers[0].log_path

    def lines_of_the_run() -> list[dict[str, Any]] | None:
        lines = [line for line in json_lines(worker_log) if run_id in line["message"]]
        succeeded = [line for line in lines if "succeeded" in line["message"]]
        # plan_run (with `first` inline) and steps.execute for `second`.
        return lines if len(succeeded) >= 2 else None

    lines = services.wait_for(lines_of_the_run, 20, 0.1, "the run's worker log lines")
    assert all(line["run_id"] == run_id for line in lines), lines
    assert all({"ts", "level", "logger", "message", "task_id"} <= set(line) for line in lines)
    second = [line for line in lines if line["task_id"] == f"{run_id}:second:1"]
    assert second and all(line["step_id"] == "second" for line in second), lines
    assert {line["logger"] for line in second} >= {"celery.worker.strategy", "celery.app.trace"}


def test_a_failing_steps_secrets_reach_no_error_dead_letter_or_worker_log_line(
    stack: Stack, unique: str
) -> None:
    # The action quotes the run's credentials in its error, as a library quoting a request
    # would: the step's and the run's error, the dead letter (which operators without the
    # run's ownership read) and Celery's failure line (the text Flower shows) carried them.
    password, token = f"pw-{unique}", stack.token(f"svc.{unique}", "runs.read")
    stack.register(
        spec(
            unique,
            [
                {
                    "id": "login",
                    "action": "fail",
                    "with": {
                        "retryable": False,
                        "message": "login refused for {{ params.db.password }} "
                        "with {{ params.api_token }} as {{ params.user }}",
                    },
                }
            ],
        )
    )
    params = {"db": {"password": password}, "api_token": token, "user": f"user-{unique}"}
    run_id = stack.submit(unique, params)
    run = stack.wait_finished(run_id)
    assert run["status"] == "failed"
    [letter] = stack.dead_letters(run_id)
    admin = stack.headers(scopes="admin.dlq.read")
    shown = stack.client().get(f"/admin/dlq/{letter.id}", headers=admin).get_json()
    texts = {
        "run error": run["error"],
        "step error": stack.step(run_id, "login")["error"],
        "dead letter": f"{letter.message} {letter.traceback} {letter.args} {letter.kwargs}",
        "dead letter over the API": json.dumps(shown),
    }
    worker_log = stack.workers[0].log_path
    failure = services.wait_for(
        lambda: [
            line
            for line in json_lines(worker_log)
            if run_id in line["message"] and "StepDeadLettered" in line["message"]
        ],
        20,
        0.1,
        "the run's failure line",
    )
    texts["worker log"] = "\n".join(
        json.dumps(line) for line in json_lines(worker_log) if run_id in json.dumps(line)
    )
    for where, text in texts.items():
        assert password not in text and token not in text, (where, text)
        assert f"user-{unique}" in text or where == "worker log", (where, text)
    assert "login refused for [REDACTED] with [REDACTED]" in letter.message
    assert "[REDACTED]" in failure[0]["message"]


def test_the_redactor_hides_credentials_and_leaves_the_rest() -> None:
    redactor = logs.Redactor(["my-very-secret-key-123"])
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl"
    assert redactor.redact(f"token {jwt} used") == "token [REDACTED] used"
    assert redactor.redact("Authorization: Basic dXNlcjpwYXNz") == "Authorization: [REDACTED]"
    assert redactor.redact("bearer abc.def-ghi") == "bearer [REDACTED]"
    assert redactor.redact("key=my-very-secret-key-123;") == "key=[REDACTED];"
    plain = "run 1b2c: step fetch -> succeeded in 0.2s"
    assert redactor.redact(plain) == plain


def test_the_redactor_finds_credentials_whatever_their_case_as_its_patterns_would() -> None:
    """redact() runs a pattern only on a text holding its word; the case-blind patterns
    alone, run on every text, must not find anything more."""
    redactor = logs.Redactor(["my-very-secret-key-123"])
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl"
    texts = [
        f"AUTHORIZATION: BEARER {jwt}",
        "AuThOrIzAtIoN='Basic dXNlcjpwYXNz'",
        # A case-blind regex takes the Turkish dotted and dotless i for an i.
        "AUTHORİZATİON: abc123",
        "authorızation=abc123",
        "BeArEr abc.def",
        f"{{'x': '{jwt}'}} and my-very-secret-key-123",
        "nothing to hide, authorized bears",
    ]
    for text in texts:
        expected = re.sub(re.escape("my-very-secret-key-123"), "[REDACTED]", text)
        for _, pattern in logs.Redactor._PATTERNS:
            expected = pattern.sub(lambda match: match.group(1) + "[REDACTED]", expected)
        assert redactor.redact(text) == expected, text
    assert redactor.redact("AUTHORİZATİON: abc123") == "AUTHORİZATİON: [REDACTED]"

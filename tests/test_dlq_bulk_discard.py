"""Bulk discard: every open dead letter a filter matches, discarded at once after a dry run
and a confirmed count, over HTTP and the CLI, on both backends, against a real worker."""

from __future__ import annotations

from typing import Any

from click.testing import CliRunner

from cli import context as cli_context
from cli.main import main as cli
from tests.conftest import spec
from tests.support.commit_trap import refusing_commits
from tests.support.http import fields, problem
from tests.support.stack import Stack
from tests.test_dlq import (
    OPS,
    admin,
    dlq_counted,
    failed_run,
    letter_status,
    letters_of,
    planning_letter,
    register_failing,
)

URL = "/admin/dlq/discard"


def open_letter_ids(stack: Stack, run_ids: list[str]) -> set[str]:
    return {letter["id"] for run_id in run_ids for letter in letters_of(stack, run_id, "open")}


def test_a_bulk_discard_acts_only_on_the_confirmed_count_and_leaves_the_runs_failed(
    stack: Stack, unique: str
) -> None:
    other = f"{unique}_other"
    register_failing(stack, unique)
    register_failing(stack, other)
    runs = [failed_run(stack, unique)["id"] for _ in range(3)]
    bystander = failed_run(stack, other)["id"]
    letter_ids = open_letter_ids(stack, runs)
    assert len(letter_ids) == 3
    client, where = stack.client(), {"workflow": unique}

    dry = client.post(URL, json={"filter": where, "dry_run": True}, headers=admin(stack))
    assert dry.status_code == 200, dry.get_json()
    assert dry.get_json()["count"] == 3 and set(dry.get_json()["ids"]) == letter_ids

    short = client.post(
        URL, json={"filter": where, "confirm_count": 2, "reason": "obsolete"}, headers=admin(stack)
    )
    assert fields(problem(short, 409)) == ["confirm_count"]
    unexplained = client.post(URL, json={"filter": where, "confirm_count": 3}, headers=admin(stack))
    assert fields(problem(unexplained, 422)) == ["reason"]
    assert open_letter_ids(stack, runs) == letter_ids

    real = client.post(
        URL,
        json={"filter": where, "confirm_count": 3, "reason": "the leads were deleted"},
        headers=admin(stack),
    )
    assert real.status_code == 200, real.get_json()
    assert real.get_json()["count"] == 3
    assert {(item["id"], item["outcome"]) for item in real.get_json()["results"]} == {
        (letter_id, "discarded") for letter_id in letter_ids
    }
    for run_id in runs:
        [letter] = letters_of(stack, run_id, "discarded")
        assert letter["resolved_by"] == OPS
        assert stack.run(run_id)["status"] == "failed"
    assert len(letters_of(stack, bystander, "open")) == 1
    events = client.get(
        "/admin/audit",
        query_string={"action": "dlq.bulk_discard", "actor": OPS},
        headers=admin(stack),
    ).get_json()["items"]
    assert [(e["reason"], e["detail"]) for e in events if e["detail"]["filter"] == where] == [
        ("the leads were deleted", {"filter": where, "count": 3})
    ]
    again = client.post(URL, json={"filter": where, "dry_run": True}, headers=admin(stack))
    assert again.get_json() == {"count": 0, "ids": []}
    # A discarded letter is not replayed afterwards.
    replay = client.post(
        f"/admin/dlq/{letter_ids.pop()}/replay", json={"reason": "late"}, headers=admin(stack)
    )
    assert replay.status_code == 409


def test_a_bulk_discard_needs_the_discard_scope_and_takes_only_open_letters(
    stack: Stack, unique: str
) -> None:
    register_failing(stack, unique)
    run_id = failed_run(stack, unique)["id"]
    client, where = stack.client(), {"workflow": unique}
    for scopes in ("admin.dlq.read", "admin.dlq.replay"):
        denied = client.post(
            URL, json={"filter": where, "dry_run": True}, headers=admin(stack, scopes)
        )
        assert denied.status_code == 403
        assert denied.get_json()["errors"] == [
            {"field": "scopes", "message": "missing admin.dlq.discard"}
        ]
    discarded_only = {"filter": {**where, "status": "discarded"}, "dry_run": True}
    assert fields(problem(client.post(URL, json=discarded_only, headers=admin(stack)), 422)) == [
        "filter.status"
    ]
    unknown = {"filter": {"colour": "red"}, "dry_run": True}
    assert problem(client.post(URL, json=unknown, headers=admin(stack)), 422)
    assert len(letters_of(stack, run_id, "open")) == 1


def test_the_cli_discards_every_open_letter_of_a_filter_after_a_dry_run(
    stack: Stack, unique: str
) -> None:
    register_failing(stack, unique)
    runs = [failed_run(stack, unique)["id"] for _ in range(2)]
    letter_ids = open_letter_ids(stack, runs)
    runner = CliRunner()

    def engine(*args: str) -> Any:
        cli_context.settings.cache_clear()
        try:
            return runner.invoke(cli, ["dlq", *args], env=stack.env, catch_exceptions=False)
        finally:
            cli_context.settings.cache_clear()

    unconfirmed = engine("discard", "--all", "--workflow", unique, "--reason", "x")
    assert unconfirmed.exit_code == 2 and "--dry-run" in unconfirmed.output
    dry = engine("discard", "--all", "--workflow", unique, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "2 open dead letter(s) match" in dry.output
    assert all(letter_id in dry.output for letter_id in letter_ids)
    no_reason = engine("discard", "--all", "--workflow", unique, "--confirm-count", "2")
    assert no_reason.exit_code == 2 and "--reason" in no_reason.output
    both = engine("discard", letter_ids.copy().pop(), "--all", "--dry-run")
    assert both.exit_code == 2

    done = engine(
        "discard", "--all", "--workflow", unique, "--confirm-count", "2", "--reason", "obsolete"
    )
    assert done.exit_code == 0, done.output
    assert "2 dead letter(s) discarded" in done.output
    assert open_letter_ids(stack, runs) == set()
    assert all(len(letters_of(stack, run_id, "discarded")) == 1 for run_id in runs)


def test_a_bulk_discard_whose_commit_the_database_refuses_discards_and_counts_nothing(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    letter_ids = {planning_letter(database, unique) for _ in range(3)}
    refused = f"{unique}@example.com"
    headers, client = database.headers(refused, "admin.*"), database.client()
    body = {"filter": {"workflow": unique}, "confirm_count": 3, "reason": "obsolete"}
    before = dlq_counted("discarded")

    with refusing_commits(database, "dead_letters", f"NEW.resolved_by = '{refused}'"):
        assert client.post(URL, json=body, headers=headers).status_code == 500
    assert {letter_status(database, letter_id) for letter_id in letter_ids} == {"open"}
    assert dlq_counted("discarded") == before

    done = client.post(URL, json=body, headers=headers)
    assert done.status_code == 200, done.get_json()
    assert dlq_counted("discarded") == before + 3

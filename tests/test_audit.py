"""The audit trail: admin actions on other users' runs, and GET /admin/audit itself."""

from __future__ import annotations

from typing import Any

from click.testing import CliRunner

from cli import context as cli_context
from cli.main import main as cli
from engine import audit
from tests.conftest import spec
from tests.support.stack import Stack

OPS = "ops@example.com"
ALICE = "alice@example.com"


def admin(stack: Stack, scopes: str = "admin.*,runs.*") -> dict[str, str]:
    return stack.headers(OPS, scopes)


def events(stack: Stack, **query: str) -> list[dict[str, Any]]:
    response = stack.client().get("/admin/audit", query_string=query, headers=admin(stack))
    assert response.status_code == 200, response.get_json()
    return response.get_json()["items"]


def test_an_admin_retrying_another_users_run_is_audited_and_resolves_its_dead_letters(
    stack: Stack, unique: str
) -> None:
    stack.register(
        spec(
            unique,
            [
                {
                    "id": "work",
                    "action": "fail",
                    "with": {"until_attempt": 2},
                    "retry": {"max_attempts": 1},
                }
            ],
        )
    )
    run_id = stack.submit(unique)
    assert stack.wait_finished(run_id)["status"] == "failed"
    letter = (
        stack.client()
        .get("/admin/dlq", query_string={"run_id": run_id}, headers=admin(stack))
        .get_json()["items"][0]
    )

    response = stack.client().post(f"/runs/{run_id}/retry", headers=admin(stack))
    assert response.status_code == 202, response.get_json()
    assert stack.wait_finished(run_id)["status"] == "succeeded"

    trail = events(stack, target=f"run:{run_id}")
    assert [(e["actor"], e["action"]) for e in trail] == [(OPS, "run.retry")]
    assert trail[0]["detail"] == {"owner": ALICE, "steps": ["work"], "dead_letters": [letter["id"]]}
    resolved = stack.client().get(f"/admin/dlq/{letter['id']}", headers=admin(stack)).get_json()
    assert (resolved["status"], resolved["resolved_by"]) == ("replayed", OPS)


def test_cancelling_another_users_run_is_audited_from_the_api_and_the_cli(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    # No worker on this platform: the runs stay queued until cancelled.
    own, by_admin, by_cli = (database.submit(unique) for _ in range(3))
    client = database.client()

    assert client.post(f"/runs/{own}/cancel", headers=database.headers(ALICE)).status_code == 200
    assert events(database, target=f"run:{own}") == []

    assert client.post(f"/runs/{by_admin}/cancel", headers=admin(database)).status_code == 200
    trail = events(database, target=f"run:{by_admin}")
    assert [(e["actor"], e["action"], e["detail"]["owner"]) for e in trail] == [
        (OPS, "run.cancel", ALICE)
    ]

    cli_context.settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["runs", "cancel", by_cli], env=database.env)
    finally:
        cli_context.settings.cache_clear()
    assert result.exit_code == 0, result.output
    trail = events(database, target=f"run:{by_cli}")
    assert [e["action"] for e in trail] == ["run.cancel"]
    assert trail[0]["actor"].startswith("cli:")


def test_audit_events_are_listed_newest_first_with_filters_and_a_cursor(
    database: Stack, unique: str
) -> None:
    actor = f"{unique}@example.com"
    with database.sessions.begin() as session:
        for number in range(3):
            audit.record(
                session,
                actor=actor,
                action="dlq.discard",
                target=f"dead_letter:{unique}-{number}",
                reason=f"reason {number}",
            )
        audit.record(session, actor=actor, action="run.cancel", target=f"run:{unique}")
    client, headers = database.client(), admin(database)

    first = client.get(
        "/admin/audit",
        query_string={"actor": actor, "action": "dlq.discard", "limit": 2},
        headers=headers,
    ).get_json()
    assert [e["reason"] for e in first["items"]] == ["reason 2", "reason 1"]
    rest = client.get(
        "/admin/audit",
        query_string={"actor": actor, "action": "dlq.discard", "cursor": first["next_cursor"]},
        headers=headers,
    ).get_json()
    assert [e["reason"] for e in rest["items"]] == ["reason 0"]
    assert rest["next_cursor"] is None
    assert rest["items"][0]["at"].endswith("Z")

    assert len(events(database, actor=actor, since="2000-01-01T00:00:00Z")) == 4
    assert events(database, actor=actor, since="2999-01-01T00:00:00Z") == []
    assert [e["action"] for e in events(database, target=f"run:{unique}")] == ["run.cancel"]
    for query, field in (
        ({"since": "last week"}, "since"),
        ({"cursor": "abc"}, "cursor"),
        ({"since": "2030-01-02T00:00:00Z", "until": "2030-01-01T00:00:00Z"}, "until"),
    ):
        bad = client.get("/admin/audit", query_string=query, headers=headers)
        assert bad.status_code == 422
        assert bad.get_json()["errors"][0]["field"] == field
    denied = client.get("/admin/audit", headers=database.headers(OPS, "admin.dlq.read"))
    assert denied.status_code == 403
    assert denied.get_json()["errors"] == [{"field": "scopes", "message": "missing admin.audit"}]

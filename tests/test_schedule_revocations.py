"""A schedule acts with the token that created it (or that its owner last resumed or changed
it with): revoking that token pauses it at once, and a tick that still finds it enabled with
its token revoked (a revocation from before, or brought back by a restore) pauses it instead
of submitting a run (engine.schedules.tokens). Over the API and the CLI, on SQLite and
PostgreSQL, ticked at chosen times."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event, select, update
from sqlalchemy.exc import IntegrityError

from engine.auth import MintedToken, mint_token, parse_ttl
from engine.models import AuditEvent, RevokedToken, Run, in_utc, utcnow
from engine.schedules import firing
from engine.schedules.models import Schedule
from tests.conftest import spec
from tests.support.cli import failed, ok, run_engine
from tests.support.commit_trap import refusing_commits
from tests.support.http import problem
from tests.support.stack import Stack

WRITER = "runs.read,runs.write,schedules.read,schedules.write"
OWNER = "alice@example.com"
REVOKED = "the token that created this schedule was revoked"


pytestmark = pytest.mark.usefixtures("no_other_schedules")


def token(database: Stack, scopes: str = WRITER, sub: str = OWNER) -> MintedToken:
    return mint_token(database.settings, sub, scopes.split(","), parse_ttl("1h"))


def bearer(minted: MintedToken) -> dict[str, str]:
    return {"Authorization": f"Bearer {minted.token}"}


def create(database: Stack, name: str, minted: MintedToken, workflow: str) -> dict[str, Any]:
    body = {"name": name, "workflow": workflow, "cron": "*/10 * * * *"}
    created = database.client().post("/schedules", json=body, headers=bearer(minted))
    assert created.status_code == 201, created.get_json()
    return created.get_json()


def revoke(database: Stack, jti: str) -> dict[str, Any]:
    admin = database.headers("root@example.com", "admin.tokens")
    answer = database.client().post("/admin/tokens/revoke", json={"jti": jti}, headers=admin)
    assert answer.status_code == 200, answer.get_json()
    return dict(answer.get_json())


def revoked_long_ago(database: Stack, jti: str) -> None:
    """A revocation the schedules acting with it have not seen: one made before revoking
    paused them, or brought back by a restore. They are still enabled."""
    with database.sessions.begin() as session:
        session.add(RevokedToken(jti=jti, revoked_by="root@example.com"))


def stored(database: Stack, name: str) -> Schedule:
    with database.sessions() as session:
        found = session.scalars(select(Schedule).where(Schedule.name == name)).one()
        session.expunge(found)
        return found


def tick_when_due(database: Stack, name: str) -> firing.Fired:
    """Tick at the schedule's next fire time (a minute on when it has none)."""
    due = stored(database, name).next_fire_at
    with database.sessions.begin() as session:
        fired = firing.fire_due(session, database.settings, in_utc(due or utcnow()))
    fired.work.count_committed()  # as the beat task's send does, once committed
    return fired


def runs_of(database: Stack, workflow: str) -> list[Run]:
    with database.sessions() as session:
        found = list(session.scalars(select(Run).where(Run.workflow == workflow)))
        session.expunge_all()
        return found


def counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("schedule_fires_total", {"outcome": outcome}) or 0.0


def audited(database: Stack, schedule_id: str, action: str) -> list[AuditEvent]:
    """The schedule's audit events of `action`, oldest first."""
    with database.sessions() as session:
        return list(
            session.scalars(
                select(AuditEvent)
                .where(AuditEvent.target == f"schedule:{schedule_id}", AuditEvent.action == action)
                .order_by(AuditEvent.id)
            )
        )


def pauses_of(database: Stack, schedule_id: str) -> list[AuditEvent]:
    return audited(database, schedule_id, "schedule.pause")


def test_revoking_a_token_pauses_its_schedules_at_once_and_names_them(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    creator, other = token(database), token(database)
    first = create(database, f"{unique}_a", creator, unique)
    second = create(database, f"{unique}_b", creator, unique)
    create(database, f"{unique}_other", other, unique)
    before = counted("revoked")

    answer = revoke(database, creator.jti)
    assert answer["jti"] == creator.jti
    assert answer["paused_schedules"] == [
        {"id": first["id"], "name": f"{unique}_a", "owner": OWNER},
        {"id": second["id"], "name": f"{unique}_b", "owner": OWNER},
    ]
    assert counted("revoked") == before + 2
    fresh = bearer(token(database))
    for made in (first, second):
        shown = database.client().get(f"/schedules/{made['id']}", headers=fresh).get_json()
        assert not shown["enabled"] and shown["next_fire_at"] is None
        assert REVOKED in shown["last_error"] and creator.jti in shown["last_error"]
        assert "revoked by root@example.com" in shown["last_error"]
        [audited] = pauses_of(database, made["id"])
        assert (audited.actor, audited.reason) == ("root@example.com", REVOKED)
        assert audited.detail == {
            "name": made["name"],
            "owner": OWNER,
            "jti": creator.jti,
            "revoked_by": "root@example.com",
        }
    assert stored(database, f"{unique}_other").enabled
    listed = {
        line.split()[0]: line.split()
        for line in run_engine(database.env, "schedules", "list").output.splitlines()
    }
    assert listed[f"{unique}_a"][1] == "paused" and listed[f"{unique}_other"][1] == "enabled"

    # Revoked again: nothing more to pause; the tick finds none of them due.
    assert revoke(database, creator.jti)["paused_schedules"] == []
    assert counted("revoked") == before + 2
    with database.sessions.begin() as session:
        later = firing.fire_due(session, database.settings, utcnow() + timedelta(days=1))
    assert f"{unique}_a" not in later.revoked and f"{unique}_a" not in later.runs


def test_the_cli_revocation_names_the_schedules_it_paused(database: Stack, unique: str) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    creator = token(database)
    create(database, unique, creator, unique)
    before = counted("revoked")

    output = ok(run_engine(database.env, "token", "revoke", creator.jti, "--reason", "leaked"))
    assert output.splitlines() == [
        f"revoked {creator.jti}",
        f"paused schedule {unique} (owner {OWNER})",
    ]
    assert not stored(database, unique).enabled
    assert counted("revoked") == before + 1
    [audited] = pauses_of(database, stored(database, unique).id)
    assert audited.actor.startswith("cli:") and audited.reason == REVOKED


def test_a_revocation_whose_commit_the_database_refuses_pauses_and_counts_nothing(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    creator = token(database)
    create(database, unique, creator, unique)
    before = counted("revoked")
    admin = database.headers("root@example.com", "admin.tokens")

    with refusing_commits(database, "revoked_tokens", f"NEW.jti = '{creator.jti}'", "INSERT"):
        refused = database.client().post(
            "/admin/tokens/revoke", json={"jti": creator.jti}, headers=admin
        )
        assert refused.status_code == 500
    assert stored(database, unique).enabled
    assert pauses_of(database, stored(database, unique).id) == []
    assert counted("revoked") == before


def test_a_tick_pauses_an_enabled_schedule_whose_token_was_revoked_before(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    creator = token(database)
    created = create(database, unique, creator, unique)
    revoked_long_ago(database, creator.jti)
    before = counted("revoked")

    fired = tick_when_due(database, unique)
    assert fired.runs == {} and fired.work.dispatches == [] and fired.revoked == [unique]
    assert runs_of(database, unique) == []
    assert counted("revoked") == before + 1

    fresh = bearer(token(database))
    shown = database.client().get(f"/schedules/{unique}", headers=fresh).get_json()
    assert not shown["enabled"] and shown["next_fire_at"] is None
    assert REVOKED in shown["last_error"] and creator.jti in shown["last_error"]
    assert shown["last_run_id"] is None and shown["last_fired_at"] is None
    [audited] = pauses_of(database, created["id"])
    assert (audited.action, audited.actor, audited.reason) == (
        "schedule.pause",
        "schedules.fire",
        REVOKED,
    )
    assert audited.detail == {
        "name": unique,
        "owner": OWNER,
        "jti": creator.jti,
        "revoked_by": "root@example.com",
    }
    # Paused: later ticks leave it alone.
    with database.sessions.begin() as session:
        later = firing.fire_due(session, database.settings, utcnow() + timedelta(days=1))
    assert later.runs == {} and later.revoked == []


def test_its_owner_resumes_it_with_a_fresh_token_whose_scopes_its_runs_then_carry(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    creator = token(database)
    create(database, unique, creator, unique)
    revoke(database, creator.jti)
    tick_when_due(database, unique)

    fresh = token(database, "schedules.write,runs.write")
    client = database.client()
    resumed = client.post(f"/schedules/{unique}/resume", headers=bearer(fresh))
    assert resumed.status_code == 200, resumed.get_json()
    assert resumed.get_json()["enabled"] and resumed.get_json()["next_fire_at"]
    rebound = stored(database, unique)
    assert rebound.created_jti == fresh.jti
    assert rebound.created_scopes == ["schedules.write", "runs.write"]

    fired = tick_when_due(database, unique)
    [run] = runs_of(database, unique)
    assert fired.runs == {unique: run.id} and fired.revoked == []
    assert run.created_by == OWNER and run.created_scopes == ["schedules.write", "runs.write"]

    # The audit trail tells when it moved from the revoked token to the fresh one; a resume
    # with the token it already acts with records no move.
    assert client.post(f"/schedules/{unique}/pause", headers=bearer(fresh)).status_code == 200
    assert client.post(f"/schedules/{unique}/resume", headers=bearer(fresh)).status_code == 200
    moved, again = audited(database, rebound.id, "schedule.resume")
    assert (moved.actor, moved.detail) == (
        OWNER,
        {"name": unique, "owner": OWNER, "jti": {"from": creator.jti, "to": fresh.jti}},
    )
    assert again.detail == {"name": unique, "owner": OWNER}


def test_an_owners_change_with_a_fresh_token_rebinds_it_before_its_fire(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    creator = token(database)
    create(database, unique, creator, unique)
    revoked_long_ago(database, creator.jti)  # still enabled, due to fire
    fresh = token(database)
    changed = database.client().patch(
        f"/schedules/{unique}", json={"priority": 2}, headers=bearer(fresh)
    )
    assert changed.status_code == 200, changed.get_json()
    assert stored(database, unique).created_jti == fresh.jti
    [update_event] = audited(database, changed.get_json()["id"], "schedule.update")
    assert update_event.detail == {
        "name": unique,
        "owner": OWNER,
        "changed": {"priority": {"from": 0, "to": 2}},
        "jti": {"from": creator.jti, "to": fresh.jti},
    }

    fired = tick_when_due(database, unique)
    assert list(fired.runs) == [unique] and fired.revoked == []


def test_an_administrator_may_pause_but_not_resume_a_schedule_whose_token_was_revoked(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    creator, kept = token(database), token(database)
    create(database, unique, creator, unique)
    create(database, f"{unique}_kept", kept, unique)
    revoke(database, creator.jti)
    # The list tells it from the others: paused, its token revoked.
    listed = {
        line.split()[0]: line
        for line in run_engine(database.env, "schedules", "list").output.splitlines()
    }
    assert listed[unique].endswith("token revoked") and "paused" in listed[unique].split()
    assert not listed[f"{unique}_kept"].endswith("token revoked")
    admin = database.headers("root@example.com", f"{WRITER},admin.schedules")
    client = database.client()
    for name in (unique, f"{unique}_kept"):
        assert not client.post(f"/schedules/{name}/pause", headers=admin).get_json()["enabled"]

    refused = problem(client.post(f"/schedules/{unique}/resume", headers=admin), 409)
    assert refused["code"] == "schedule_token_revoked"
    assert REVOKED in refused["detail"] and f"only its owner ({OWNER})" in refused["detail"]
    assert REVOKED in failed(run_engine(database.env, "schedules", "resume", unique))
    assert not stored(database, unique).enabled
    assert stored(database, unique).created_jti == creator.jti

    # A schedule whose token stands: the administrator resumes it, and it keeps its owner's.
    assert client.post(f"/schedules/{unique}_kept/resume", headers=admin).get_json()["enabled"]
    assert stored(database, f"{unique}_kept").created_jti == kept.jti


def test_a_schedule_made_before_tokens_were_remembered_fires_on(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    creator = token(database)
    create(database, unique, creator, unique)
    with database.sessions.begin() as session:
        session.execute(update(Schedule).where(Schedule.name == unique).values(created_jti=None))
    assert revoke(database, creator.jti)["paused_schedules"] == []

    fired = tick_when_due(database, unique)
    assert list(fired.runs) == [unique] and fired.revoked == []
    assert stored(database, unique).enabled


def test_a_revocation_a_schedule_acts_with_outlives_the_pruning_of_expired_ones(
    database: Stack, unique: str
) -> None:
    """A schedule outlives its token's expiry: weeks after, the token must still be known
    as revoked (an administrator's resume is refused, a tick would pause the schedule
    again), though another revocation prunes those of tokens long expired."""
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    creator, unbound = token(database), token(database, sub="bob@example.com")
    create(database, unique, creator, unique)
    revoke(database, creator.jti)
    revoke(database, unbound.jti)
    long_ago = utcnow() - timedelta(days=30)
    with database.sessions.begin() as session:
        session.execute(
            update(RevokedToken)
            .where(RevokedToken.jti.in_([creator.jti, unbound.jti]))
            .values(expires_at=long_ago)
        )
    revoke(database, token(database).jti)  # prunes the revocations of tokens long expired
    with database.sessions() as session:
        kept = set(session.scalars(select(RevokedToken.jti)))
    assert creator.jti in kept and unbound.jti not in kept

    admin = database.headers("root@example.com", f"{WRITER},admin.schedules")
    resumed = database.client().post(f"/schedules/{unique}/resume", headers=admin)
    assert problem(resumed, 409)["code"] == "schedule_token_revoked"


def test_one_tick_looks_up_the_revocations_of_every_due_schedule_in_one_query(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    made = [token(database) for _ in range(4)]
    for index, minted in enumerate(made):
        create(database, f"{unique}_{index}", minted, unique)
    for minted in made[:2]:
        revoked_long_ago(database, minted.jti)
    due: datetime = max(in_utc(stored(database, f"{unique}_{i}").next_fire_at) for i in range(4))

    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        statements.append(statement)

    db_engine = database.db_engine
    event.listen(db_engine, "before_cursor_execute", seen)
    try:
        with database.sessions.begin() as session:
            fired = firing.fire_due(session, database.settings, due)
    finally:
        event.remove(db_engine, "before_cursor_execute", seen)
    assert sorted(fired.revoked) == [f"{unique}_0", f"{unique}_1"]
    assert sorted(fired.runs) == [f"{unique}_2", f"{unique}_3"]
    assert len([s for s in statements if "FROM revoked_tokens" in s]) == 1


def test_a_tick_whose_commit_the_database_refuses_pauses_submits_and_counts_nothing(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    revoked_token, valid = token(database), token(database)
    create(database, f"{unique}_revoked", revoked_token, unique)
    create(database, f"{unique}_valid", valid, unique)
    revoked_long_ago(database, revoked_token.jti)
    due = max(in_utc(stored(database, f"{unique}_{n}").next_fire_at) for n in ("revoked", "valid"))
    before = {outcome: counted(outcome) for outcome in ("revoked", "submitted")}

    with refusing_commits(database, "schedules", f"NEW.workflow = '{unique}'"):
        with pytest.raises(IntegrityError):
            with database.sessions.begin() as session:
                fired = firing.fire_due(session, database.settings, due)
                assert fired.revoked == [f"{unique}_revoked"] and list(fired.runs)
    assert {outcome: counted(outcome) for outcome in before} == before
    assert runs_of(database, unique) == []
    assert stored(database, f"{unique}_revoked").enabled

    with database.sessions.begin() as session:
        fired = firing.fire_due(session, database.settings, due)
    fired.work.count_committed()
    assert {outcome: counted(outcome) - before[outcome] for outcome in before} == {
        "revoked": 1,
        "submitted": 1,
    }

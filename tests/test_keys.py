"""Signing keys and revocation as operators use them: `engine token rotate` followed step
by step, kids that name no key, minting and revoking over /admin/tokens, and revocations
that survive a Redis FLUSHALL and a Redis outage — on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from sqlalchemy import event, select

from engine import revocations as revocations_module
from engine import tokens
from engine.auth import Caller, key_id, mint_token, parse_ttl
from engine.config import Settings
from engine.models import AuditEvent, RevokedToken
from engine.revocations import RevocationList
from tests.support import services
from tests.support.cli import run_engine as engine_cli
from tests.support.stack import JWT_SECRET, Stack
from web import db as web_db

ADMIN = "admin.tokens,runs.read"


def segment(part: dict[str, Any]) -> bytes:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=")


def get_runs(app: Any, token: str) -> Any:
    return app.test_client().get("/runs", headers={"Authorization": f"Bearer {token}"})


def detail(response: Any, status: int) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    return response.get_json(force=True)["detail"]


def refused_once_announced(app: Any, token: str) -> str:
    """The detail once `app` refuses `token`, revoked by another process. The announcement
    crosses a socket to `app`'s subscription, so the first request may come a moment before
    it; it must arrive well within a second (a missed one would wait for the next load,
    RESYNC_S later)."""
    response = services.wait_for(
        lambda: (answer := get_runs(app, token)).status_code == 401 and answer,
        timeout=1.0,
        interval=0.01,
        message="the revocation's announcement",
    )
    return detail(response, 401)


@pytest.fixture
def apps() -> Iterator[list[Any]]:
    """Apps a test creates with settings of its own; their pools are closed afterwards."""
    created: list[Any] = []
    yield created
    for app in created:
        web_db.dispose(app)


def new_app(apps: list[Any], settings: Settings) -> Any:
    from web import create_app

    app = create_app(settings)
    apps.append(app)
    return app


def test_following_engine_token_rotate_for_make_run_keeps_old_tokens_only_for_the_grace_period(
    database: Stack, tmp_path: Path, apps: list[Any]
) -> None:
    # `make run` leaves JWT_SECRET unset: the secret lives in <ENGINE_VAR_DIR>/jwt_secret.
    local = {**database.env, "ENGINE_VAR_DIR": str(tmp_path), "JWT_SECRET": None}
    before = Settings.from_env({k: v for k, v in local.items() if v is not None})
    old_token = mint_token(before, "alice@example.com", ["runs.read"], parse_ttl("1h")).token

    result = engine_cli(local, "token", "rotate")
    assert result.exit_code == 0, result.output
    out = result.output
    new_secret = re.search(r"^\s+([0-9a-f]{64})$", out, re.MULTILINE)[1]  # type: ignore[index]
    assert new_secret != before.jwt_secret and before.jwt_secret not in out
    assert f"the secret in {tmp_path / 'jwt_secret'}" in out
    # Step 2 as printed, run by a shell: keep the old secret as a previous one, write the new.
    step = [line.strip() for line in out.splitlines() if 'JWT_PREVIOUS_SECRETS="$(cat' in line]
    step += [line.strip() for line in out.splitlines() if line.strip().startswith("(umask 077")]
    assert len(step) == 2, out
    shell = subprocess.run(
        ["bash", "-euc", "\n".join(step) + '\nprintf %s "$JWT_PREVIOUS_SECRETS"'],
        capture_output=True,
        text=True,
        check=True,
    )
    # Step 3: `make run` builds its settings from that environment and the file.
    grace = Settings.from_env(
        {k: v for k, v in local.items() if v is not None} | {"JWT_PREVIOUS_SECRETS": shell.stdout}
    )
    assert grace.jwt_secret == new_secret and grace.jwt_previous_secrets == (before.jwt_secret,)
    app = new_app(apps, grace)
    assert get_runs(app, old_token).status_code == 200
    new_token = mint_token(grace, "alice@example.com", ["runs.read"], parse_ttl("1h")).token
    assert jwt.get_unverified_header(new_token)["kid"] == key_id(new_secret)
    assert get_runs(app, new_token).status_code == 200

    # Step 4 (and the emergency path): without the previous secret, old tokens are 401.
    after = Settings.from_env({k: v for k, v in local.items() if v is not None})
    app = new_app(apps, after)
    assert "unknown key" in detail(get_runs(app, old_token), 401)
    assert get_runs(app, new_token).status_code == 200


def test_engine_token_rotate_for_an_environment_secret_names_the_variables(
    database: Stack,
) -> None:
    result = engine_cli(database.env, "token", "rotate")
    assert result.exit_code == 0, result.output
    assert "signs with the secret in JWT_SECRET" in result.output
    assert 'export JWT_PREVIOUS_SECRETS="$JWT_SECRET"' in result.output
    assert "docker compose up -d api worker beat flower" in result.output
    assert JWT_SECRET not in result.output


@pytest.mark.parametrize(
    "kid", [["a", "list"], {"a": "dict"}, 12345, "", key_id("a-secret-dropped-long-ago" * 2)]
)
def test_a_kid_that_names_no_key_is_401_never_500(database: Stack, kid: Any) -> None:
    # Built by hand: PyJWT will not encode a kid that is not a string.
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    body = {"sub": "eve", "scopes": ["runs.read"], "jti": "e" * 32, "iat": now, "exp": now + 60}
    signing_input = b".".join(segment(part) for part in (header, body))
    signature = hmac.new(JWT_SECRET.encode(), signing_input, hashlib.sha256).digest()
    token = (signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()
    assert detail(get_runs(database.app, token), 401).startswith("invalid token")


def test_an_admin_mints_a_token_with_scopes_it_holds_and_the_mint_is_audited(
    database: Stack, unique: str
) -> None:
    admin = database.headers(f"admin.{unique}", ADMIN)
    response = database.client().post(
        "/admin/tokens",
        json={"sub": f"svc.{unique}", "scopes": ["runs.read"], "ttl": "15m"},
        headers=admin,
    )
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert set(body) == {"token", "jti", "expires_at"} and body["expires_at"].endswith("Z")
    claims = jwt.decode(
        body["token"], JWT_SECRET, algorithms=["HS256"], issuer="ai-business-engine"
    )
    assert (claims["sub"], claims["scopes"], claims["jti"]) == (
        f"svc.{unique}",
        ["runs.read"],
        body["jti"],
    )
    assert claims["exp"] - claims["iat"] == 900
    assert get_runs(database.app, body["token"]).status_code == 200
    with database.sessions() as session:
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.target == f"token:{body['jti']}")
        ).one()
    assert (event.actor, event.action) == (f"admin.{unique}", "token.mint")
    assert event.detail["scopes"] == ["runs.read"] and "token" not in event.detail


def test_an_admin_cannot_mint_a_scope_it_does_not_hold(database: Stack, unique: str) -> None:
    client = database.client()
    admin = database.headers(f"admin.{unique}", "admin.tokens,runs.*")
    for scopes, refused in [
        (["runs.read", "admin.dlq.replay"], "admin.dlq.replay"),
        (["admin.*"], "admin.*"),
    ]:
        response = client.post(
            "/admin/tokens", json={"sub": "x", "scopes": scopes, "ttl": 60}, headers=admin
        )
        assert refused in detail(response, 403)
    response = client.post(
        "/admin/tokens",
        json={"sub": "x", "scopes": ["runs.read"]},
        headers=database.headers(f"plain.{unique}", "runs.*"),
    )
    assert "admin.tokens" in detail(response, 403)
    response = client.post(
        "/admin/tokens", json={"sub": "x", "scopes": ["runs.read"], "ttl": "90d"}, headers=admin
    )
    assert response.status_code == 422
    assert [error["field"] for error in response.get_json()["errors"]] == ["ttl"]


def test_a_revoked_token_is_refused_as_revoked_and_others_still_work(
    database: Stack, unique: str
) -> None:
    client = database.client()
    admin = database.headers(f"admin.{unique}", ADMIN)
    minted = client.post(
        "/admin/tokens", json={"sub": "svc", "scopes": ["runs.read"], "ttl": "1h"}, headers=admin
    ).get_json()
    bystander = database.token(f"bystander.{unique}", "runs.read")
    assert get_runs(database.app, minted["token"]).status_code == 200

    response = client.post("/admin/tokens/revoke", json={"jti": minted["jti"]}, headers=admin)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert "revoked" in detail(get_runs(database.app, minted["token"]), 401)
    assert get_runs(database.app, bystander).status_code == 200
    # Revoking again is fine, and so is revoking a jti this API never minted (CLI tokens).
    assert (
        client.post("/admin/tokens/revoke", json={"jti": minted["jti"]}, headers=admin).status_code
        == 200
    )
    cli_token = database.token(f"cli.{unique}", "runs.read")
    cli_jti = jwt.decode(cli_token, options={"verify_signature": False})["jti"]
    assert (
        client.post("/admin/tokens/revoke", json={"jti": cli_jti}, headers=admin).status_code == 200
    )
    assert "revoked" in detail(get_runs(database.app, cli_token), 401)

    with database.sessions() as session:
        row = session.get(RevokedToken, minted["jti"])
        assert row is not None and row.revoked_by == f"admin.{unique}"
        assert row.expires_at is not None  # minted here: kept only until the token expires
        assert session.get(RevokedToken, cli_jti).expires_at is None  # type: ignore[union-attr]
        actions = session.scalars(
            select(AuditEvent.action).where(AuditEvent.actor == f"admin.{unique}")
        ).all()
    assert actions.count("token.revoke") == 3 and actions.count("token.mint") == 1
    response = client.post("/admin/tokens/revoke", json={"jti": ""}, headers=admin)
    assert response.status_code == 422


def test_a_process_that_accepted_a_token_refuses_it_once_another_process_revokes_it(
    database: Stack, apps: list[Any], unique: str
) -> None:
    token = database.token(f"svc.{unique}", "runs.read")
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    serving = new_app(apps, database.settings)
    for _ in range(3):  # accepted, and Redis's answer is now kept in this process
        assert get_runs(serving, token).status_code == 200

    admin = database.headers(f"admin.{unique}", ADMIN)
    response = (
        new_app(apps, database.settings)
        .test_client()
        .post("/admin/tokens/revoke", json={"jti": jti}, headers=admin)
    )
    assert response.status_code == 200
    assert "revoked" in refused_once_announced(serving, token)


@pytest.fixture
def private_redis(backend: str, tmp_path: Path) -> Iterator[tuple[services.RedisServer, Stack]]:
    """A redis-server of the test's own (it is flushed or stopped) and a stack on it."""
    server = services.RedisServer(tmp_path / "redis").start()
    stack = Stack(backend, tmp_path / "stack", redis_url=server.url)
    try:
        yield server, stack
    finally:
        server.stop()
        stack.close()


def jti_of(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


def revoke(stack: Stack, token: str) -> None:
    jti = jti_of(token)
    admin = stack.headers("admin@example.com", ADMIN)
    response = stack.client().post("/admin/tokens/revoke", json={"jti": jti}, headers=admin)
    assert response.status_code == 200, response.get_data(as_text=True)


def process_that_accepted(apps: list[Any], stack: Stack, token: str) -> tuple[Any, RevocationList]:
    """An API process that has accepted `token`, its revocation copy live."""
    app = new_app(apps, stack.settings)
    assert get_runs(app, token).status_code == 200
    revocations: RevocationList = app.extensions["engine.revocations"]
    assert revocations.live_copy()
    return app, revocations


def test_a_revocation_survives_a_redis_flushall_and_a_redis_outage(
    private_redis: tuple[services.RedisServer, Stack], apps: list[Any]
) -> None:
    server, stack = private_redis
    revoked, kept, later = (
        stack.token("gone@example.com", "runs.read"),
        stack.token("kept", "runs.read"),
        stack.token("later@example.com", "runs.read"),
    )
    running, revocations = process_that_accepted(apps, stack, revoked)
    revoke(stack, revoked)
    # Announced to the running process's copy: refused once the announcement arrives.
    assert "revoked" in refused_once_announced(running, revoked)

    server.client().flushall()
    assert "revoked" in detail(get_runs(running, revoked), 401)
    # A fresh process loads its copy from the database.
    app = new_app(apps, stack.settings)
    assert "revoked" in detail(get_runs(app, revoked), 401)
    assert get_runs(app, kept).status_code == 200

    server.stop()
    # Redis is gone, and the announcement with it: the database answers from the first check
    # that reads the subscription (READ_EVERY_S after the last read) and finds it closed.
    revoke(stack, later)
    time.sleep(revocations_module.READ_EVERY_S)
    assert "revoked" in detail(get_runs(running, later), 401)
    assert not revocations.live_copy()
    app = new_app(apps, stack.settings)
    assert "revoked" in detail(get_runs(app, revoked), 401)
    assert get_runs(app, kept).status_code == 200


def test_the_revocation_check_asks_neither_redis_nor_the_database_once_the_copy_is_live(
    private_redis: tuple[services.RedisServer, Stack], apps: list[Any]
) -> None:
    server, stack = private_redis
    token = stack.token("reader@example.com", "runs.read")
    app = new_app(apps, stack.settings)
    assert get_runs(app, token).status_code == 200
    asked: list[str] = []
    for engine in (app.extensions["engine.db"], app.extensions["engine.read_db"]):
        event.listen(
            engine,
            "before_cursor_execute",
            lambda _c, _k, statement, *_: asked.append(statement),
        )
    before = server.client().info("stats")["total_commands_processed"]
    for _ in range(20):
        assert get_runs(app, token).status_code == 200
    # The INFO itself, and at most a ping on the subscription; no read of the table.
    assert server.client().info("stats")["total_commands_processed"] - before <= 3
    assert asked and not [statement for statement in asked if "revoked_tokens" in statement]
    revoke(stack, token)
    assert "revoked" in refused_once_announced(app, token)


def test_a_burst_of_checks_reads_the_subscription_once_per_read_interval(
    private_redis: tuple[services.RedisServer, Stack],
    apps: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _server, stack = private_redis
    token = stack.token("reader@example.com", "runs.read")
    app, revocations = process_that_accepted(apps, stack, token)
    subscription = revocations._copy._pubsub  # type: ignore[union-attr]
    reads: list[float] = []
    read = subscription.get_message

    def counted(**options: Any) -> Any:
        reads.append(time.monotonic())
        return read(**options)

    monkeypatch.setattr(subscription, "get_message", counted)
    started = time.monotonic()
    for _ in range(40):
        assert get_runs(app, token).status_code == 200
    elapsed = time.monotonic() - started
    # One read (one call, nothing having arrived) per READ_EVERY_S at most, not per check.
    assert len(reads) <= elapsed / revocations_module.READ_EVERY_S + 1
    assert all(b - a >= revocations_module.READ_EVERY_S for a, b in itertools.pairwise(reads))
    # A check after the interval reads it again.
    time.sleep(revocations_module.READ_EVERY_S)
    count = len(reads)
    assert get_runs(app, token).status_code == 200
    assert len(reads) > count


def test_after_a_redis_restart_the_copy_subscribes_again_and_loads_what_it_missed(
    private_redis: tuple[services.RedisServer, Stack],
    apps: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, stack = private_redis
    monkeypatch.setattr(revocations_module, "REDIS_BACKOFF_S", 0.2)
    fine, missed = (
        stack.token("fine@example.com", "runs.read"),
        stack.token("missed@example.com", "runs.read"),
    )
    app, revocations = process_that_accepted(apps, stack, fine)
    server.stop()
    revoke(stack, missed)  # committed; its announcement cannot be made
    server.start()
    # The first check that reads the subscription (READ_EVERY_S after the last read) finds
    # it closed and asks the database; one after the back-off subscribes again and loads
    # the copy.
    time.sleep(revocations_module.READ_EVERY_S)
    assert get_runs(app, fine).status_code == 200
    assert not revocations.live_copy()
    time.sleep(0.3)
    assert get_runs(app, fine).status_code == 200
    assert revocations.live_copy()
    # Asked for the first time, and answered by the copy: it has what it missed.
    assert "revoked" in detail(get_runs(app, missed), 401)


def test_an_announcement_the_copy_cannot_read_makes_it_load_again_from_the_database(
    private_redis: tuple[services.RedisServer, Stack], apps: list[Any]
) -> None:
    server, stack = private_redis
    fine, lost = (
        stack.token("fine@example.com", "runs.read"),
        stack.token("lost@example.com", "runs.read"),
    )
    app, revocations = process_that_accepted(apps, stack, fine)
    # Revoked in the database only: its announcement never went out.
    with stack.sessions.begin() as session:
        tokens.revoke(session, Caller("admin@example.com", ("admin.tokens",)), jti_of(lost))
    assert get_runs(app, lost).status_code == 200  # the copy does not know yet
    server.client().publish(revocations.channel, "not an announcement")
    assert "revoked" in refused_once_announced(app, lost)
    assert revocations.live_copy()


def test_the_cli_revokes_by_jti_and_inspect_shows_the_jti_and_the_verdict(
    database: Stack, unique: str
) -> None:
    token = database.token(f"leaked.{unique}", "runs.read")
    result = engine_cli(database.env, "token", "inspect", token)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["verdict"] == "accepted"
    assert shown["claims"]["sub"] == f"leaked.{unique}"
    # `-` reads the token from standard input, out of `ps` and the shell's history.
    piped = engine_cli(database.env, "token", "inspect", "-", stdin=token + "\n")
    assert piped.exit_code == 0, piped.output
    assert json.loads(piped.output) == shown

    result = engine_cli(database.env, "token", "revoke", shown["claims"]["jti"], "--reason", "leak")
    assert result.exit_code == 0, result.output
    assert "revoked" in refused_once_announced(database.app, token)
    with database.sessions() as session:
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.target == f"token:{shown['claims']['jti']}")
        ).one()
    assert (event.action, event.reason) == ("token.revoke", "leak")
    assert event.actor.startswith("cli:")
    # As the API answers it: refused, and the exit status says so (the JSON stays).
    result = engine_cli(database.env, "token", "inspect", token)
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["verdict"] == "refused: revoked"

    rotated = {**database.env, "JWT_SECRET": "a-brand-new-secret-" + "z" * 40}
    result = engine_cli(rotated, "token", "inspect", database.token("fine@example.com"))
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["verdict"].startswith("refused: signed with a key")
    expired = mint_token(database.settings, "late@example.com", ["runs.read"], timedelta(0))
    result = engine_cli(database.env, "token", "inspect", expired.token)
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["verdict"] == "refused: expired"


def test_inspect_refuses_what_the_api_refuses_among_well_signed_tokens(database: Stack) -> None:
    # Signed with the current key, but each lacks a claim the API requires or carries one it
    # refuses: the CLI said "accepted" to them.
    now = int(time.time())
    claims = {"sub": "odd@example.com", "scopes": ["runs.read"], "jti": "b" * 32, "iat": now}
    claims |= {"exp": now + 600, "iss": database.settings.jwt_issuer}
    odd = {
        "no exp": {name: value for name, value in claims.items() if name != "exp"},
        "no jti": {name: value for name, value in claims.items() if name != "jti"},
        "an empty audience": {**claims, "aud": []},
        "a string exp": {**claims, "exp": str(now + 600)},
    }
    for case, body in odd.items():
        token = jwt.encode(body, JWT_SECRET, algorithm="HS256", headers={"kid": key_id(JWT_SECRET)})
        assert get_runs(database.app, token).status_code == 401, case
        result = engine_cli(database.env, "token", "inspect", token)
        assert result.exit_code == 1, (case, result.output)
        assert json.loads(result.stdout)["verdict"].startswith("refused: "), case

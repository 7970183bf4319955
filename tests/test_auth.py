"""Bearer tokens and dotted scopes: what is refused (401, 403, never 500) and what is not."""

from __future__ import annotations

import time
import warnings
from datetime import timedelta
from typing import Any

import jwt
import pytest

from engine.auth import (
    ALGORITHM,
    Caller,
    has_scope,
    key_id,
    mint_token,
    parse_scopes,
    parse_ttl,
)
from engine.config import Settings
from engine.errors import InvalidInput
from tests.support.stack import JWT_SECRET, Stack
from web import auth as web_auth
from web import db as web_db

OTHER_SECRET = "another-secret-" + "y" * 40


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    body = {
        "sub": "mallory@example.com",
        "scopes": ["runs.read"],
        "jti": "a" * 32,
        "iat": now,
        "exp": now + 600,
        "iss": "ai-business-engine",
    }
    body.update(changes)
    return {name: value for name, value in body.items() if value is not None}


def craft(
    body: dict[str, Any],
    secret: str | None = JWT_SECRET,
    algorithm: str = ALGORITHM,
    kid: str | None = key_id(JWT_SECRET),
) -> str:
    headers = {"kid": kid} if kid is not None else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns about short keys for HS512
        return jwt.encode(body, secret, algorithm=algorithm, headers=headers)


def get_runs(database: Stack, authorization: str | None) -> Any:
    headers = {"Authorization": authorization} if authorization is not None else {}
    return database.client().get("/runs", headers=headers)


def unauthorized(response: Any) -> str:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body = response.get_json(force=True)
    assert (body["status"], body["title"], body["code"]) == (401, "Unauthorized", "unauthorized")
    return body["detail"]


def test_a_well_formed_token_is_accepted(database: Stack) -> None:
    response = get_runs(database, "Bearer " + craft(claims()))
    assert response.status_code == 200, response.get_json()


REFUSED = {
    "no header": (None, "Missing Authorization"),
    "another scheme": ("Basic YWxpY2U6c2VjcmV0", "Bearer"),
    "an empty bearer": ("Bearer ", ""),
    "not a jwt": ("Bearer not-a-token", "invalid token"),
    "garbage segments": ("Bearer a.b.c", "invalid token"),
    "an expired token": ("Bearer " + craft(claims(exp=int(time.time()) - 5)), "expired"),
    "a wrong signature": ("Bearer " + craft(claims(), secret=OTHER_SECRET), "invalid token"),
    "an unknown kid": ("Bearer " + craft(claims(), kid="0123456789ab"), "unknown key"),
    "no kid": ("Bearer " + craft(claims(), kid=None), "unknown key"),
    "alg none": ("Bearer " + craft(claims(), secret=None, algorithm="none"), "alg"),
    "HS512": ("Bearer " + craft(claims(), algorithm="HS512"), "alg"),
    "another issuer": ("Bearer " + craft(claims(iss="someone-else")), "issuer"),
    "no jti": ("Bearer " + craft(claims(jti=None)), "jti"),
    "no exp": ("Bearer " + craft(claims(exp=None)), "exp"),
    "no sub": ("Bearer " + craft(claims(sub=None)), "sub"),
    # PyJWT reads a string exp as a number: such a token was accepted, and a revocation of
    # it stored a string among the expiry times, which the next revocation compared.
    "a string exp": ("Bearer " + craft(claims(exp=str(int(time.time()) + 600))), "exp"),
    # Accepted before: a run submitted with it was a 500 on PostgreSQL (created_by holds
    # 200 characters), and a revocation takes a jti of at most 64.
    "a sub too long to store": ("Bearer " + craft(claims(sub="s" * 201)), "sub claim is longer"),
    "a jti too long to revoke": ("Bearer " + craft(claims(jti="j" * 65)), "jti claim is longer"),
    # Meant for another service that shares the key: accepted before.
    "an audience": ("Bearer " + craft(claims(aud="billing")), "audience"),
    "an empty audience": ("Bearer " + craft(claims(aud=[])), "audience"),
    "not yet valid": ("Bearer " + craft(claims(nbf=int(time.time()) + 600)), "invalid token"),
    "a refresh token": ("Bearer " + craft(claims(type="refresh")), "invalid token"),
    # Signed with the right key, but PostgreSQL's text cannot hold them: a 500 before.
    "a NUL in sub": ("Bearer " + craft(claims(sub="a\x00b")), "NUL"),
    "a NUL in jti": ("Bearer " + craft(claims(jti="a\x00b")), "NUL"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_bad_or_missing_token_is_refused_with_401(database: Stack, case: str) -> None:
    authorization, words = REFUSED[case]
    # Twice: a token refused once is refused again (none is answered from memory).
    for _ in range(2):
        response = get_runs(database, authorization)
        assert words in unauthorized(response)
        # The problem names why, never the token.
        credential = (authorization or "").partition(" ")[2]
        body = response.get_data(as_text=True)
        assert not [part for part in credential.split(".") if len(part) >= 8 and part in body]


def test_a_token_is_not_minted_for_a_sub_too_long_to_store() -> None:
    settings = Settings(jwt_secret=JWT_SECRET)
    with pytest.raises(InvalidInput) as refused:
        mint_token(settings, "s" * 201, ["runs.read"], timedelta(hours=1))
    assert refused.value.errors[0]["field"] == "sub"
    assert mint_token(settings, "s" * 200, ["runs.read"], timedelta(hours=1)).token


def test_no_token_is_minted_in_the_name_the_audit_trail_gives_cli_operators() -> None:
    with pytest.raises(InvalidInput) as refused:
        mint_token(Settings(jwt_secret=JWT_SECRET), "cli:root", ["runs.read"], timedelta(hours=1))
    assert refused.value.errors[0]["field"] == "sub"


def test_a_token_minted_with_no_time_left_is_expired(database: Stack) -> None:
    minted = mint_token(database.settings, "alice@example.com", ["runs.read"], timedelta(0))
    assert "expired" in unauthorized(get_runs(database, "Bearer " + minted.token))


def test_a_token_accepted_before_is_refused_once_it_expires(database: Stack) -> None:
    # Each process verifies a token's signature once; its expiry still counts every time.
    minted = mint_token(database.settings, "alice@example.com", ["runs.read"], timedelta(seconds=2))
    assert get_runs(database, "Bearer " + minted.token).status_code == 200
    assert get_runs(database, "Bearer " + minted.token).status_code == 200
    time.sleep(max(0.0, minted.expires_at.timestamp() - time.time()) + 0.05)
    assert "expired" in unauthorized(get_runs(database, "Bearer " + minted.token))


def test_a_token_accepted_once_is_answered_from_memory_after(
    database: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # flask-jwt-extended checks a token the first time a request of this process brings it;
    # after that the token is answered from memory, its expiry and revocation checked again
    # (the test above, and tests/test_keys.py).
    verifications: list[str] = []
    verify = web_auth.verify_jwt_in_request

    def counted() -> Any:
        verifications.append("verified")
        return verify()

    monkeypatch.setattr(web_auth, "verify_jwt_in_request", counted)
    token = mint_token(database.settings, "alice@example.com", ["runs.read"], timedelta(hours=1))
    for _ in range(3):
        assert get_runs(database, "Bearer " + token.token).status_code == 200
    assert len(verifications) == 1
    # Another token, or the same one in a header of another form, goes the whole way.
    other = mint_token(database.settings, "bob@example.com", ["runs.read"], timedelta(hours=1))
    assert get_runs(database, "Bearer " + other.token).status_code == 200
    assert get_runs(database, "Bearer  " + token.token).status_code == 200
    assert len(verifications) == 3


def test_a_token_altered_after_one_was_accepted_is_still_refused(database: Stack) -> None:
    token = mint_token(database.settings, "alice@example.com", ["runs.read"], timedelta(hours=1))
    assert get_runs(database, "Bearer " + token.token).status_code == 200
    header, payload, signature = token.token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    assert "invalid token" in unauthorized(
        get_runs(database, "Bearer " + ".".join([header, payload, flipped]))
    )


def test_a_token_lacking_a_scope_is_forbidden_naming_the_scope(database: Stack) -> None:
    response = database.client().post(
        "/workflows", json={}, headers=database.headers(scopes="workflows.read,runs.*")
    )
    assert response.status_code == 403
    assert response.mimetype == "application/problem+json"
    body = response.get_json(force=True)
    assert body["code"] == "permission_denied"
    assert "workflows.write" in body["detail"]
    assert body["errors"] == [{"field": "scopes", "message": "missing workflows.write"}]
    # Scopes that are not a list grant nothing (rather than failing).
    odd = get_runs(database, "Bearer " + craft(claims(scopes="runs.read")))
    assert odd.status_code == 403


def test_a_wildcard_scope_covers_its_family_over_http(database: Stack) -> None:
    client = database.client()
    assert client.get("/runs", headers=database.headers(scopes="runs.*")).status_code == 200
    family = database.headers(scopes="workflows.*")
    assert client.get("/workflows", headers=family).status_code == 200
    assert client.get("/runs", headers=family).status_code == 403
    lookalike = "Bearer " + craft(claims(scopes=["runsx.*", "runs", "runs.read.*"]))
    assert get_runs(database, lookalike).status_code == 403


@pytest.mark.parametrize(
    ("granted", "required", "covered"),
    [
        ("runs.write", "runs.write", True),
        ("runs.*", "runs.write", True),
        ("runs.*", "runs.read", True),
        ("admin.*", "admin.dlq.read", True),
        ("admin.*", "admin.dlq.replay", True),
        ("admin.dlq.*", "admin.dlq.discard", True),
        ("runs.*", "runsx.read", False),
        ("runs.*", "runs", False),
        ("admin.dlq.read", "admin.dlq.replay", False),
        ("admin.dlq.*", "admin.audit", False),
        ("runs.read", "runs.write", False),
        ("runs.read.*", "runs.read", False),
        ("*", "runs.read", False),
    ],
)
def test_dotted_scopes_cover_exactly_their_family(
    granted: str, required: str, covered: bool
) -> None:
    assert has_scope([granted], required) is covered
    assert Caller("someone", (granted,)).can(required) is covered


def test_only_an_admin_sees_every_run() -> None:
    assert Caller("root", ("admin.*",)).sees_all_runs
    assert not Caller("alice", ("runs.*", "workflows.*", "admin.dlq.read")).sees_all_runs


def test_a_minted_token_carries_every_claim_and_names_its_key(database: Stack) -> None:
    minted = mint_token(
        database.settings, "alice@example.com", ["runs.read", "admin.*"], parse_ttl("15m")
    )
    header = jwt.get_unverified_header(minted.token)
    assert header["alg"] == "HS256"
    assert header["kid"] == key_id(JWT_SECRET) != JWT_SECRET
    body = jwt.decode(
        minted.token, JWT_SECRET, algorithms=["HS256"], issuer=database.settings.jwt_issuer
    )
    assert {"sub", "scopes", "jti", "iat", "exp", "iss"} <= set(body)
    assert (body["sub"], body["scopes"], body["jti"]) == (
        "alice@example.com",
        ["runs.read", "admin.*"],
        minted.jti,
    )
    assert body["exp"] - body["iat"] == 900
    assert body["exp"] == int(minted.expires_at.timestamp())
    other = mint_token(database.settings, "alice@example.com", ["runs.read"], parse_ttl("1h"))
    assert other.jti != minted.jti


def test_a_previous_secret_still_verifies_until_it_is_dropped(database: Stack) -> None:
    from web import create_app

    old_token = database.token("alice@example.com", "runs.read")
    rotated = database.settings.with_changes(
        jwt_secret=OTHER_SECRET, jwt_previous_secrets=(JWT_SECRET,)
    )
    emergency = database.settings.with_changes(jwt_secret=OTHER_SECRET, jwt_previous_secrets=())
    for settings, accepted in [(rotated, True), (emergency, False)]:
        app = create_app(settings)
        try:
            client = app.test_client()
            response = client.get("/runs", headers={"Authorization": f"Bearer {old_token}"})
            assert (response.status_code == 200) is accepted, response.get_json()
            fresh = mint_token(settings, "alice@example.com", ["runs.read"], parse_ttl("1h"))
            response = client.get("/runs", headers={"Authorization": f"Bearer {fresh.token}"})
            assert response.status_code == 200
        finally:
            web_db.dispose(app)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 604800)]
)
def test_a_ttl_is_read_in_seconds_minutes_hours_or_days(text: str, seconds: int) -> None:
    assert parse_ttl(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text", ["", "0", "-5", "1w", "h", "1.5h", "soon", "36501d", "99999999999d", "9" * 40]
)
def test_a_bad_ttl_is_refused_naming_the_field(text: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_ttl(text)
    assert raised.value.errors[0]["field"] == "ttl"


def test_scopes_are_parsed_from_a_list_or_commas_and_checked() -> None:
    assert parse_scopes(" admin.*, life.read ,runs.write,") == (
        "admin.*",
        "life.read",
        "runs.write",
    )
    assert parse_scopes(["admin.dlq.read"]) == ("admin.dlq.read",)
    for bad in ["*", "runs.", "Runs.read", "runs.*.read", "runs read"]:
        with pytest.raises(InvalidInput) as raised:
            parse_scopes(bad)
        assert raised.value.errors[0]["field"] == "scopes", bad
    with pytest.raises(InvalidInput):
        mint_token_without_sub()


def mint_token_without_sub() -> None:
    from engine.config import Settings

    mint_token(Settings(jwt_secret=JWT_SECRET), "", ["runs.read"], parse_ttl("1h"))

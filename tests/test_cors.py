"""CORS follows ALLOWED_ORIGINS: listed origins only, and never `*` with credentials."""

from __future__ import annotations

from typing import Any

import pytest

from engine.config import Settings
from engine.errors import ConfigError
from tests.support.stack import Stack
from web import create_app

CONSOLE = "https://console.example.com"


def client_for(database: Stack, *origins: str) -> Any:
    return create_app(database.settings.with_changes(allowed_origins=origins)).test_client()


def test_a_listed_origin_is_allowed_with_credentials_and_others_get_nothing(
    database: Stack,
) -> None:
    client = client_for(database, CONSOLE, "http://localhost:3000")
    headers = {"Origin": CONSOLE, **database.headers()}

    allowed = client.get("/runs", headers=headers)
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == CONSOLE
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in allowed.headers.get("Vary", "")
    assert "X-Request-ID" in allowed.headers["Access-Control-Expose-Headers"]

    other = client.get("/runs", headers={**headers, "Origin": "https://evil.example.com"})
    assert other.status_code == 200
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Access-Control-Allow-Credentials" not in other.headers


def test_a_preflight_from_a_listed_origin_allows_the_method_and_headers(database: Stack) -> None:
    client = client_for(database, CONSOLE)
    response = client.options(
        "/runs",
        headers={
            "Origin": CONSOLE,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Content-Type, Idempotency-Key",
        },
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == CONSOLE
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    assert {"authorization", "content-type", "idempotency-key"} <= {
        name.strip() for name in allowed.split(",")
    }

    refused = client.options(
        "/runs",
        headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"},
    )
    assert "Access-Control-Allow-Origin" not in refused.headers


def test_a_wildcard_allows_every_origin_but_never_with_credentials(database: Stack) -> None:
    client = client_for(database, "*", CONSOLE)
    response = client.get("/health", headers={"Origin": "https://anywhere.example.org"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response.headers
    listed = client.get("/health", headers={"Origin": CONSOLE})
    assert "Access-Control-Allow-Credentials" not in listed.headers


def test_without_allowed_origins_no_cors_headers_are_sent(database: Stack) -> None:
    client = client_for(database)
    response = client.get("/health", headers={"Origin": CONSOLE})
    assert response.status_code == 200
    assert not [name for name in response.headers.keys() if name.startswith("Access-Control")]


def test_an_allowed_origin_that_is_a_pattern_is_refused_at_start_up(database: Stack) -> None:
    # flask-cors took `https://*.example.com` for an unanchored regular expression:
    # https://xexample.com.attacker.net was allowed, with credentials.
    for entry in ("https://*.example.com", "https://console.example.com/", "console.example.com"):
        with pytest.raises(ConfigError) as refused:
            database.settings.with_changes(allowed_origins=(CONSOLE, entry))
        assert "ALLOWED_ORIGINS" in str(refused.value) and repr(entry) in str(refused.value)
    env = {**database.env, "ALLOWED_ORIGINS": f"{CONSOLE}, http://localhost:3000, *"}
    assert Settings.from_env(env).allowed_origins == (CONSOLE, "http://localhost:3000", "*")

"""Callers, dotted scopes and signing keys. Token checks on requests live in web/auth.py."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from engine.config import Settings
from engine.errors import InvalidInput

ALGORITHM = "HS256"
# Tokens we mint always carry these; one without them never expires or cannot be revoked.
REQUIRED_CLAIMS = ("sub", "jti", "exp")
# The longest sub a run can record as its creator (runs.created_by), and the longest jti a
# revocation takes (revoked_tokens.jti): a token with a longer one is refused, not half-served.
MAX_SUB_LENGTH = 200
# The CLI acts as `cli:<user>` (cli.context.operator); no token is minted under that name.
OPERATOR_PREFIX = "cli:"
MAX_JTI_LENGTH = 64
ADMIN_RUNS_SCOPE = "admin.runs"
ADMIN_LIFE_SCOPE = "admin.life"  # another subject's wellness summary (engine.life)
ADMIN_SCHEDULES_SCOPE = "admin.schedules"  # every caller's schedules (engine.schedules)
# Pausing a workflow refuses every caller's new runs of it (engine.pauses).
ADMIN_WORKFLOWS_SCOPE = "admin.workflows"
# Every scope an endpoint checks (OPERATIONS.md § 3 lists them for operators).
KNOWN_SCOPES = (
    "runs.read",
    "runs.write",
    "workflows.read",
    "workflows.write",
    "life.read",
    "schedules.read",
    "schedules.write",
    "admin.status",
    ADMIN_RUNS_SCOPE,
    ADMIN_LIFE_SCOPE,
    ADMIN_SCHEDULES_SCOPE,
    ADMIN_WORKFLOWS_SCOPE,
    "admin.dlq.read",
    "admin.dlq.replay",
    "admin.dlq.discard",
    "admin.audit",
    "admin.tokens",
)
_SCOPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*(\.\*)?$")
_TTL = re.compile(r"^(?P<amount>\d+)(?P<unit>[smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# No token outlives this (a much longer one would overflow its expiry's datetime); the API
# has its own, shorter limit (Settings.token_max_ttl_s).
_LONGEST_TTL_S = 100 * 365 * 86400


def has_scope(granted: Iterable[str], required: str) -> bool:
    """True when `required` is granted exactly or by a wildcard: `x.*` covers `x.<anything>`."""
    for scope in granted:
        if scope == required:
            return True
        if scope.endswith(".*") and required.startswith(scope[:-1]):
            return True
    return False


@dataclass(frozen=True)
class Caller:
    sub: str
    scopes: tuple[str, ...]
    # The id of the token the request came with (its jti claim); None for the CLI's operator
    # and for the owner a run or schedule acts as. A schedule remembers its creator's, so
    # that revoking that token stops it (engine.schedules.tokens).
    jti: str | None = None

    def can(self, scope: str) -> bool:
        return has_scope(self.scopes, scope)

    @property
    def sees_all_runs(self) -> bool:
        return self.can(ADMIN_RUNS_SCOPE)

    @property
    def sees_all_schedules(self) -> bool:
        return self.can(ADMIN_SCHEDULES_SCOPE)


def key_id(secret: str) -> str:
    """A short public name for a signing key: tokens say which key signed them."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


def verification_keys(settings: Settings) -> dict[str, str]:
    """kid -> secret for the current key and the previous ones still in their grace period."""
    keys = {key_id(secret): secret for secret in settings.jwt_previous_secrets}
    keys[key_id(settings.jwt_secret)] = settings.jwt_secret
    return keys


def claim_problems(payload: dict[str, Any]) -> list[str]:
    """Why a decoded, correctly signed token is still refused, by the API (web/auth.py) and
    `engine token inspect` alike: a required claim it lacks (flask-jwt-extended fills jti
    with None); a sub or jti too long to store; an `exp` that is not a number (PyJWT takes
    the string "9999999999"); an `aud`, since this platform names no audience and a token
    meant for one is not meant for it (RFC 7519, section 4.1.3)."""
    problems = [
        f"missing claim {claim}" for claim in REQUIRED_CLAIMS if payload.get(claim) in (None, "")
    ]
    for claim, longest in (("sub", MAX_SUB_LENGTH), ("jti", MAX_JTI_LENGTH)):
        if len(str(payload.get(claim) or "")) > longest:
            problems.append(f"the {claim} claim is longer than {longest} characters")
    expires = payload.get("exp")
    if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int | float)):
        problems.append("the exp claim is not a number")
    if "aud" in payload:
        problems.append("the token names an audience (aud); this platform accepts none")
    return problems


def parse_scopes(scopes: str | Iterable[str]) -> tuple[str, ...]:
    items = [s.strip() for s in (scopes.split(",") if isinstance(scopes, str) else scopes)]
    items = [s for s in items if s]
    bad = [s for s in items if not _SCOPE.match(s)]
    if bad:
        raise InvalidInput(
            "invalid scope",
            errors=[{"field": "scopes", "message": f"not a scope: {s!r}"} for s in bad],
        )
    return tuple(items)


def is_known_scope(scope: str) -> bool:
    """A scope the platform checks, or a wildcard `x.*` covering at least one of them."""
    if scope.endswith(".*"):
        return any(known.startswith(scope[:-1]) for known in KNOWN_SCOPES)
    return scope in KNOWN_SCOPES


def parse_known_scopes(scopes: str | Iterable[str]) -> tuple[str, ...]:
    """parse_scopes, refusing an empty list and a scope no endpoint checks (a typo would
    mint a token that is refused everywhere)."""
    items = parse_scopes(scopes)
    if not items:
        raise InvalidInput(
            "scopes are required", errors=[{"field": "scopes", "message": "name one or more"}]
        )
    unknown = [scope for scope in items if not is_known_scope(scope)]
    if unknown:
        raise InvalidInput(
            "unknown scope",
            errors=[
                {"field": "scopes", "message": f"no endpoint checks {scope!r}"} for scope in unknown
            ],
        )
    return items


def parse_ttl(ttl: str | int) -> timedelta:
    """'90', '90s', '15m', '1h', '7d' -> a timedelta."""
    match = _TTL.match(str(ttl).strip())
    seconds = int(match["amount"]) * _UNITS[match["unit"]] if match else 0
    if not 0 < seconds <= _LONGEST_TTL_S:
        raise InvalidInput(
            "invalid ttl",
            errors=[{"field": "ttl", "message": "use e.g. 900, 15m, 1h or 7d (at most 100 years)"}],
        )
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class MintedToken:
    token: str
    jti: str
    expires_at: datetime


def mint_token(settings: Settings, sub: str, scopes: Iterable[str], ttl: timedelta) -> MintedToken:
    """Sign an access token with the current key (kid header names it)."""
    if not sub:
        raise InvalidInput("sub is required", errors=[{"field": "sub", "message": "required"}])
    if sub.startswith(OPERATOR_PREFIX):
        raise InvalidInput(
            f"sub may not start with {OPERATOR_PREFIX!r}: the audit trail names the CLI's "
            "operators so",
            errors=[{"field": "sub", "message": f"starts with {OPERATOR_PREFIX!r}"}],
        )
    if len(sub) > MAX_SUB_LENGTH:
        raise InvalidInput(
            f"sub is longer than {MAX_SUB_LENGTH} characters",
            errors=[{"field": "sub", "message": f"at most {MAX_SUB_LENGTH} characters"}],
        )
    now = datetime.now(UTC)
    jti = uuid.uuid4().hex
    expires = now + ttl
    claims = {
        "sub": sub,
        "scopes": list(parse_scopes(list(scopes))),
        "jti": jti,
        "iss": settings.jwt_issuer,
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int(expires.timestamp()),
        "type": "access",
        "fresh": False,
    }
    token = jwt.encode(
        claims,
        settings.jwt_secret,
        algorithm=ALGORITHM,
        headers={"kid": key_id(settings.jwt_secret)},
    )
    return MintedToken(token, jti, expires.replace(microsecond=0))

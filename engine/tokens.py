"""Minting tokens for callers, and revoking them by jti.

A revocation is a row in `revoked_tokens`, the truth, which nothing Redis does can undo.
How the API checks it on every request is engine.revocations. The schedules that act with
the token are paused in the revocation's transaction (engine.schedules.tokens).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from engine import audit
from engine.auth import (
    MAX_JTI_LENGTH,
    Caller,
    MintedToken,
    mint_token,
    parse_known_scopes,
    parse_ttl,
)
from engine.config import Settings
from engine.errors import InvalidInput, PermissionDenied
from engine.models import AuditEvent, RevokedToken
from engine.schedules import tokens as schedule_tokens
from engine.schedules.models import Schedule
from engine.work import Work

MINT_ACTION = "token.mint"
REVOKE_ACTION = "token.revoke"
# Rows of tokens that expired this long ago are deleted on the next revocation, but for
# those a schedule still acts with: the schedule outlives its token's expiry, and an
# administrator's resume of it, or its fire after a restore (weeks away, maybe), must still
# find the token revoked (engine.schedules.tokens).
KEEP_EXPIRED = timedelta(days=1)


def _target(jti: str) -> str:
    return f"token:{jti}"


def lifetime(settings: Settings, ttl: str | int) -> timedelta:
    """A token's lifetime from '900', '15m', '1h', '7d'..., at most TOKEN_MAX_TTL_S."""
    parsed = parse_ttl(ttl)
    if parsed.total_seconds() > settings.token_max_ttl_s:
        raise InvalidInput(
            "ttl is too long",
            errors=[
                {"field": "ttl", "message": f"at most {settings.token_max_ttl_s:,.0f} seconds"}
            ],
        )
    return parsed


def mint(
    session: Session,
    settings: Settings,
    caller: Caller,
    *,
    sub: str,
    scopes: Iterable[str],
    ttl: str | int,
) -> MintedToken:
    """Sign a token for `sub`; the caller may grant only scopes it holds itself."""
    granted = parse_known_scopes(list(scopes))
    if not granted:
        raise InvalidInput(
            "scopes are required", errors=[{"field": "scopes", "message": "name one or more"}]
        )
    not_held = [scope for scope in granted if not caller.can(scope)]
    if not_held:
        raise PermissionDenied(
            f"you cannot grant a scope you do not hold: {', '.join(not_held)}",
            errors=[{"field": "scopes", "message": f"not held: {scope}"} for scope in not_held],
        )
    minted = mint_token(settings, sub, granted, lifetime(settings, ttl))
    audit.record(
        session,
        actor=caller.sub,
        action=MINT_ACTION,
        target=_target(minted.jti),
        detail={"sub": sub, "scopes": list(granted), "expires_at": minted.expires_at.isoformat()},
    )
    return minted


@dataclass(frozen=True)
class Revocation:
    """A token revoked: the schedules that acted with it and were paused, and the work to
    send once the caller committed (their count)."""

    jti: str
    expires_at: datetime | None
    paused: list[Schedule] = field(default_factory=list)
    work: Work = field(default_factory=Work)


def revoke(session: Session, caller: Caller, jti: str, reason: str | None = None) -> Revocation:
    """Record `jti` as revoked (again is fine) and pause the enabled schedules acting with
    it; the caller commits, sends the work, then publishes."""
    jti = (jti or "").strip()
    if not jti or len(jti) > MAX_JTI_LENGTH:
        raise InvalidInput(
            "invalid jti",
            errors=[{"field": "jti", "message": f"1 to {MAX_JTI_LENGTH} characters"}],
        )
    now = datetime.now(UTC)
    expires_at = _minted_expiry(session, jti)
    insert = (postgresql if session.get_bind().dialect.name == "postgresql" else sqlite).insert
    session.execute(
        insert(RevokedToken.__table__)
        .values(jti=jti, revoked_by=caller.sub, revoked_at=now, expires_at=expires_at)
        .on_conflict_do_nothing(index_elements=["jti"])
    )
    audit.record(
        session,
        actor=caller.sub,
        action=REVOKE_ACTION,
        target=_target(jti),
        reason=reason,
        detail={"expires_at": expires_at.isoformat() if expires_at else None},
    )
    # The row as stored: revoked again, it names the first revocation's author.
    stored = session.get_one(RevokedToken, jti)
    work = Work()
    paused = schedule_tokens.pause_bound(session, stored, caller.sub, now, work)
    bound = select(Schedule.created_jti).where(Schedule.created_jti.is_not(None))
    session.execute(
        delete(RevokedToken).where(
            RevokedToken.expires_at < now - KEEP_EXPIRED, RevokedToken.jti.not_in(bound)
        )
    )
    return Revocation(jti, expires_at, paused, work)


def _minted_expiry(session: Session, jti: str) -> datetime | None:
    """When a token minted through the API expires (from its audit event); None if unknown,
    e.g. for a token minted with the CLI: its revocation is then kept without end."""
    detail = session.scalar(
        select(AuditEvent.detail)
        .where(AuditEvent.action == MINT_ACTION, AuditEvent.target == _target(jti))
        .limit(1)
    )
    if isinstance(detail, dict) and detail.get("expires_at"):
        try:
            return datetime.fromisoformat(detail["expires_at"])
        except (TypeError, ValueError):
            return None
    return None

"""Minting tokens for callers, and revoking them by jti.

A revocation is a row in `revoked_tokens`, the truth, which nothing Redis does can undo,
and a key in Redis, which makes the check on every request one round trip. Redis also
holds a marker that says its copy is complete. The marker expires every RESYNC_S seconds
and vanishes with a FLUSHALL or a restart without persistence; whoever then finds it
missing copies the unexpired revocations from the database again. When Redis does not
answer, the check asks the database. A process that has once seen a jti revoked keeps it
in memory until the token would have expired anyway.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from engine import audit
from engine.auth import Caller, MintedToken, mint_token, parse_scopes, parse_ttl
from engine.config import Settings
from engine.errors import InvalidInput, PermissionDenied
from engine.models import AuditEvent, RevokedToken

log = logging.getLogger(__name__)

MINT_ACTION = "token.mint"
REVOKE_ACTION = "token.revoke"
MAX_JTI_LENGTH = 64
# How stale Redis's copy may be after a revocation that could not reach Redis.
RESYNC_S = 30
# After Redis fails, ask the database directly for this long before trying Redis again.
REDIS_BACKOFF_S = 5.0
# Rows of tokens that expired this long ago are deleted on the next revocation.
KEEP_EXPIRED = timedelta(days=1)
# Revocations this recent are copied again after a resync (allows for clock skew).
RECENT_MARGIN = timedelta(seconds=60)


def _target(jti: str) -> str:
    return f"token:{jti}"


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
    granted = parse_scopes(list(scopes))
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
    lifetime = parse_ttl(ttl)
    if lifetime.total_seconds() > settings.token_max_ttl_s:
        raise InvalidInput(
            "ttl is too long",
            errors=[{"field": "ttl", "message": f"at most {settings.token_max_ttl_s:g} seconds"}],
        )
    minted = mint_token(settings, sub, granted, lifetime)
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
    jti: str
    expires_at: datetime | None


def revoke(session: Session, caller: Caller, jti: str, reason: str | None = None) -> Revocation:
    """Record `jti` as revoked (again is fine); the caller commits, then publishes."""
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
    session.execute(delete(RevokedToken).where(RevokedToken.expires_at < now - KEEP_EXPIRED))
    return Revocation(jti, expires_at)


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


class RevocationList:
    """Answers "is this jti revoked?" from this process's memory, Redis, or the database."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        client: redis.Redis | None,
        key_prefix: str = "",
    ) -> None:
        self._sessions = sessions
        self._client = client
        self._prefix = key_prefix
        self._seen: dict[str, float] = {}  # jti -> when its token expires (inf: unknown)
        self._lock = threading.Lock()
        self._skip_redis_until = 0.0

    @classmethod
    def for_settings(cls, settings: Settings, sessions: sessionmaker[Session]) -> RevocationList:
        client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        return cls(sessions, client, settings.redis_key_prefix)

    @property
    def complete_key(self) -> str:
        return f"{self._prefix}revoked-tokens:complete"

    def key(self, jti: str) -> str:
        return f"{self._prefix}revoked-token:{jti}"

    def is_revoked(self, jti: str | None, expires: float | None = None) -> bool:
        """True when `jti` was revoked; `expires` (the token's exp) bounds the memory."""
        if not jti:
            return False
        if jti in self._seen:
            return True
        answer = self._ask_redis(jti)
        if answer is None:
            answer = self._ask_database(jti)
        if answer:
            self._remember(jti, expires)
        return answer

    def publish(self, revocation: Revocation) -> None:
        """Tell Redis (and this process) about a committed revocation."""
        expires = revocation.expires_at.timestamp() if revocation.expires_at else None
        self._remember(revocation.jti, expires)
        if self._client is None:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            self._add(pipe, revocation.jti, revocation.expires_at, datetime.now(UTC))
            pipe.execute()
        except redis.RedisError as exc:
            # The database holds it; Redis's copy is rebuilt within RESYNC_S.
            log.warning("revoked %s, but Redis did not take it: %s", revocation.jti, exc)

    def _ask_redis(self, jti: str) -> bool | None:
        if self._client is None or time.monotonic() < self._skip_redis_until:
            return None
        try:
            listed, complete = self._client.mget(self.key(jti), self.complete_key)
            if listed is not None:
                return True
            if complete is not None:
                return False
            return jti in self._resync()
        except redis.RedisError as exc:
            log.warning("revocation check: Redis unavailable, asking the database: %s", exc)
            self._skip_redis_until = time.monotonic() + REDIS_BACKOFF_S
            return None

    def _ask_database(self, jti: str) -> bool:
        with self._sessions() as session:
            return session.get(RevokedToken, jti) is not None

    def _resync(self) -> set[str]:
        """Copy every unexpired revocation to Redis, then mark the copy complete, at once."""
        assert self._client is not None
        started = datetime.now(UTC)
        rows = self._read(or_(RevokedToken.expires_at.is_(None), RevokedToken.expires_at > started))
        pipe = self._client.pipeline(transaction=True)
        for jti, expires_at in rows:
            self._add(pipe, jti, expires_at, started)
        pipe.set(self.complete_key, "1", ex=RESYNC_S)
        pipe.execute()
        # A revocation committed while this copy was made published its own key, but a
        # FLUSHALL in between would have taken it: copy the recent ones once more.
        recent = self._read(RevokedToken.revoked_at >= started - RECENT_MARGIN)
        pipe = self._client.pipeline(transaction=False)
        for jti, expires_at in recent:
            self._add(pipe, jti, expires_at, datetime.now(UTC))
        pipe.execute()
        log.info("revocation list copied to Redis: %d token(s)", len(rows))
        return {jti for jti, _ in rows} | {jti for jti, _ in recent}

    def _read(self, condition: Any) -> list[tuple[str, datetime | None]]:
        """(jti, expires_at) of the revocations matching `condition`."""
        with self._sessions() as session:
            rows = session.execute(
                select(RevokedToken.jti, RevokedToken.expires_at).where(condition)
            ).all()
        return [(jti, expires_at) for jti, expires_at in rows]

    def _add(self, pipe: Any, jti: str, expires_at: datetime | None, now: datetime) -> None:
        if expires_at is None:
            pipe.set(self.key(jti), "1")
        elif expires_at > now:
            pipe.set(self.key(jti), "1", ex=max(1, math.ceil((expires_at - now).total_seconds())))

    def _remember(self, jti: str, expires: float | None) -> None:
        with self._lock:
            now = time.time()
            for old in [key for key, until in self._seen.items() if until < now]:
                del self._seen[old]
            self._seen[jti] = expires if expires is not None else math.inf

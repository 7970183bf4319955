"""Is this token revoked? Asked on every API request, so answered from memory when it can be.

The database's `revoked_tokens` table is the truth (engine.tokens writes it). Each process
keeps its own copy of the unexpired revocations, loaded from the database and kept current
by a Redis pub/sub channel on which every revocation is announced after its commit
(`RevocationList.publish`). A FLUSHALL does not touch it, and a Redis restart ends the
subscription, which is then made again and the copy loaded again.

The copy is trusted only while its subscription is known to be alive: Redis spoke on it
within TRUST_S (a ping goes out after PING_S of silence, and the requests themselves read
the channel, at most every READ_EVERY_S, so no thread is needed). It is loaded again from
the database every RESYNC_S, which covers an announcement that never reached Redis. While
it is not trusted (Redis down, or the subscription silent), the check asks the database. A
process that has once seen a jti revoked keeps it in memory until the token would have
expired anyway; a revocation made through this process counts in it at once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from datetime import UTC, datetime

import redis
from sqlalchemy import or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from engine.config import Settings
from engine.models import RevokedToken
from engine.tokens import Revocation

log = logging.getLogger(__name__)

# How stale a process's copy may be after a revocation whose announcement was lost.
RESYNC_S = 30
# After Redis fails, the copy is not tried again for this long (the database answers).
REDIS_BACKOFF_S = 5.0
# The subscription is pinged after PING_S of silence; the copy is trusted while Redis spoke
# on it within TRUST_S, and a ping left unanswered for PONG_WAIT_S drops the subscription.
PING_S = 2.0
TRUST_S = 5.0
PONG_WAIT_S = 5.0
# How long subscribing may wait for Redis's confirmation.
SUBSCRIBE_WAIT_S = 0.5
# The requests read the subscription at most this often, so an announcement waits at most
# this long on the socket. Under load, one read per READ_EVERY_S instead of one per request:
# each read is a system call, which hands the interpreter lock to another of gunicorn's
# threads and costs a GET about a fifteenth of its CPU.
READ_EVERY_S = 0.1


class RevocationList:
    """Answers "is this jti revoked?" from this process's copy, or the database."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        client: redis.Redis | None,
        key_prefix: str = "",
    ) -> None:
        self._sessions = sessions
        self._client = client
        self.channel = f"{key_prefix}revoked-tokens"
        self._seen: dict[str, float] = {}  # jti -> when its token expires (inf: unknown)
        self._lock = threading.Lock()
        self._copy = _Copy(self, client) if client is not None else None

    @classmethod
    def for_settings(cls, settings: Settings, sessions: sessionmaker[Session]) -> RevocationList:
        client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        return cls(sessions, client, settings.redis_key_prefix)

    def is_revoked(self, jti: str | None, expires: float | None = None) -> bool:
        """True when `jti` was revoked; `expires` (the token's exp) bounds the memory."""
        if not jti:
            return False
        if jti in self._seen:
            return True
        answer = self._copy.answer(jti) if self._copy is not None else None
        if answer is None:
            with self._sessions() as session:
                answer = session.get(RevokedToken, jti) is not None
        if answer:
            self._remember(jti, expires)
        return answer

    def publish(self, revocation: Revocation) -> None:
        """Announce a committed revocation to every process's copy (this one's at once)."""
        expires = revocation.expires_at.timestamp() if revocation.expires_at else None
        self._remember(revocation.jti, expires)
        if self._client is None:
            return
        try:
            self._client.publish(self.channel, json.dumps([revocation.jti, expires]))
        except redis.RedisError as exc:
            # The database holds it: the copies load it within RESYNC_S.
            log.warning(
                "revoked %s, but Redis did not take the announcement: %s", revocation.jti, exc
            )

    def live_copy(self) -> bool:
        """Whether this process's copy is answering the checks."""
        return self._copy is not None and self._copy.trusted()

    def unexpired(self) -> set[str]:
        """The jtis of every revocation whose token has not expired."""
        now = datetime.now(UTC)
        with self._sessions() as session:
            return set(
                session.scalars(
                    select(RevokedToken.jti).where(
                        or_(RevokedToken.expires_at.is_(None), RevokedToken.expires_at > now)
                    )
                )
            )

    def _remember(self, jti: str, expires: float | None) -> None:
        with self._lock:
            now = time.time()
            for old in [key for key, until in self._seen.items() if until < now]:
                del self._seen[old]
            self._seen[jti] = expires if expires is not None else math.inf


class _Copy:
    """This process's copy of the unexpired revocations and its subscription, read by the
    requests themselves: each check first takes whatever announcements have arrived (a poll
    of the socket, no round trip)."""

    def __init__(self, owner: RevocationList, client: redis.Redis) -> None:
        self._owner = owner
        self._client = client
        self._lock = threading.Lock()
        self._pubsub: redis.client.PubSub | None = None
        self._pid = 0
        # Expired tokens are refused before this is asked; each load leaves theirs out.
        self._revoked: set[str] = set()
        self._loaded_at = 0.0
        self._heard_at = 0.0
        self._pinged_at = 0.0
        self._retry_at = 0.0
        self._read_at = 0.0

    def answer(self, jti: str) -> bool | None:
        """Whether `jti` is revoked, or None when the copy cannot say (ask elsewhere)."""
        with self._lock:
            try:
                if not self._subscribed() or not self._current():
                    return None
                return jti in self._revoked
            except (redis.RedisError, OSError, SQLAlchemyError) as exc:
                log.warning("revocation copy dropped, asking the database: %s", exc)
                self._drop()
                return None

    def trusted(self) -> bool:
        with self._lock:
            return self._pubsub is not None and time.monotonic() - self._heard_at <= TRUST_S

    def _subscribed(self) -> bool:
        if self._pubsub is not None and self._pid != os.getpid():
            self._pubsub = None  # the parent's subscription: this process needs its own
        if self._pubsub is not None:
            return True
        now = time.monotonic()
        if now < self._retry_at:
            return False
        self._retry_at = now + REDIS_BACKOFF_S
        pubsub = self._client.pubsub()
        self._pubsub, self._pid = pubsub, os.getpid()
        pubsub.subscribe(self._owner.channel)
        deadline = now + SUBSCRIBE_WAIT_S
        while True:
            message = pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if message is not None and message["type"] == "subscribe":
                break
            if time.monotonic() >= deadline:
                raise redis.TimeoutError("no confirmation of the subscription")
        # Subscribed first, then loaded: a revocation committed after the load started is
        # announced after it too, and arrives on the subscription.
        self._load()
        self._heard_at = time.monotonic()
        return True

    def _current(self) -> bool:
        """Take the announcements that arrived, if the subscription was not read within
        READ_EVERY_S; keep it checked and the copy fresh. False when it cannot be trusted
        right now."""
        now = time.monotonic()
        pubsub = self._pubsub
        if pubsub is None:  # called once _subscribed() said True; never trust without one
            return False
        if now - self._read_at < READ_EVERY_S:
            return now - self._heard_at <= TRUST_S
        self._read_at = now
        while (message := pubsub.get_message(timeout=0.0)) is not None:
            self._heard_at = now = time.monotonic()
            if message["type"] == "message":
                self._take(message["data"])
        if self._pinged_at > self._heard_at:  # a ping is out
            if now - self._pinged_at > PONG_WAIT_S:
                raise redis.ConnectionError(f"no answer to a ping within {PONG_WAIT_S:g} s")
        elif now - self._heard_at > PING_S:
            pubsub.ping()
            self._pinged_at = now
        if now - self._loaded_at > RESYNC_S:
            self._load()
        return now - self._heard_at <= TRUST_S

    def _take(self, data: bytes | str) -> None:
        """One announcement: [jti, when its token expires (epoch seconds) or null]."""
        try:
            jti, expires = json.loads(data)
            if expires is not None:
                float(expires)  # the pair's second half is a time or null, or it is not ours
        except (ValueError, TypeError):
            # Something was revoked: the database says what.
            log.warning("revocation announcement not understood, reloading: %r", data)
            self._loaded_at = 0.0
            return
        if isinstance(jti, str) and jti:
            self._revoked.add(jti)

    def _load(self) -> None:
        self._revoked = self._owner.unexpired()
        self._loaded_at = time.monotonic()

    def _drop(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        self._read_at = 0.0  # a new subscription is read at once
        if pubsub is not None:
            try:
                pubsub.close()
            except (redis.RedisError, OSError):
                pass

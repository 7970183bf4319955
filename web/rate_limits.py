"""Per-caller rate limits: RATE_LIMIT_WRITES for POST, PATCH and DELETE, RATE_LIMIT_READS for the
rest, each one window per caller (the token's sub) across every endpoint. Off unless set.

A request is counted once its token is verified (web.auth.require_scopes), so a request
without a valid token is a 401 that counts against nobody, and the unauthenticated
endpoints (/health, /readyz, /openapi.json) are never limited. An event stream counts once,
when it is opened.

The counters live in RATE_LIMIT_STORAGE_URL (REDIS_URL by default, shared by every API
process), a fixed window each, counted by the `limits` library: one Redis round trip per
tier and request. While that storage is unreachable, each process counts in its own memory
and requests go on being answered (the database is the record: a run submitted then is
stored and sent once the broker is back); the storage is tried again after 1, 2, 4 ... 32
seconds. Memory is counted in web.rate_limits_memory, safe across a worker's threads.
Requests under way when the storage goes away fail together: they count as one failure.
A request over a limit is a 429 in the API's error shape, with Retry-After and
X-RateLimit-* headers; the window behind them is read only then."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

from flask import Flask, Response, current_app, g
from limits import RateLimitItem, parse_many
from limits.storage import StorageTypes, storage_from_string
from limits.strategies import FixedWindowRateLimiter
from werkzeug.exceptions import TooManyRequests

from engine.config import Settings
from web.errors import problem
from web.rate_limits_memory import MemoryWindows

log = logging.getLogger(__name__)
_KEY = "engine.rate_limits"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# A Redis that hangs (paused, or gone without closing the connection) would otherwise hold
# the request: after this long the check gives up and counts in memory.
STORAGE_TIMEOUT_S = 0.5
# After the storage failed, how long requests are counted in memory before it is tried
# again: doubling from the first to the last while it keeps failing.
RETRY_FIRST_S, RETRY_LAST_S = 1.0, 32.0


@dataclass(frozen=True)
class _Bucket:
    scope: str  # "writes" or "reads": each caller has one window per scope
    tiers: tuple[RateLimitItem, ...]


class OverLimit(TooManyRequests):
    def __init__(
        self, bucket: _Bucket, tier: RateLimitItem, sub: str, limiter: FixedWindowRateLimiter
    ) -> None:
        super().__init__()
        self.bucket, self.tier, self.sub, self.limiter = bucket, tier, sub, limiter


class _Limits:
    def __init__(self, settings: Settings) -> None:
        if settings.rate_limit_storage.startswith("memory"):
            storage: StorageTypes = MemoryWindows()
        else:
            storage = storage_from_string(
                settings.rate_limit_storage,
                key_prefix=f"{settings.redis_key_prefix}ratelimit",
                socket_timeout=STORAGE_TIMEOUT_S,
                socket_connect_timeout=STORAGE_TIMEOUT_S,
            )
        self.limiter = FixedWindowRateLimiter(storage)
        self.writes = _bucket("writes", settings.rate_limit_writes)
        self.reads = _bucket("reads", settings.rate_limit_reads)
        # Where requests are counted while the storage is away, and until when. The switch
        # back and forth is under a lock a request takes only while the storage fails.
        self.fallback = FixedWindowRateLimiter(MemoryWindows())
        self.fallback_until = 0.0
        self.retry_s = RETRY_FIRST_S
        self._switching = threading.Lock()

    def counting(self) -> FixedWindowRateLimiter:
        """The storage's limiter, or this process's memory while the storage is away."""
        if self.fallback_until and time.monotonic() < self.fallback_until:
            return self.fallback
        return self.limiter

    def storage_failed(self, exc: Exception) -> None:
        with self._switching:
            now = time.monotonic()
            if now < self.fallback_until:
                # Another request's failure switched already: the requests under way when
                # the storage went away fail together, and each doubling the wait would
                # keep the storage untried for 32 s after the first failure.
                return
            if not self.fallback_until:
                log.warning(
                    "rate limits: their storage failed (%s); counting in this process's memory",
                    exc,
                )
            self.fallback_until = now + self.retry_s
            self.retry_s = min(self.retry_s * 2, RETRY_LAST_S)

    def storage_answered(self) -> None:
        if not self.fallback_until:  # it has been answering: no lock on the usual path
            return
        with self._switching:
            if self.fallback_until:
                log.warning("rate limits: their storage answers again")
                self.fallback_until, self.retry_s = 0.0, RETRY_FIRST_S


def _bucket(scope: str, limits: str) -> _Bucket | None:
    return _Bucket(scope, tuple(parse_many(limits))) if limits else None


def init_app(app: Flask) -> None:
    settings: Settings = app.config["SETTINGS"]
    if not settings.rate_limited:
        return
    app.extensions[_KEY] = _Limits(settings)
    app.register_error_handler(OverLimit, _too_many_requests)


def count(method: str) -> None:
    """Count the current caller's request against its limit: OverLimit (a 429) when it is
    over. Call once the caller is authenticated (g.caller)."""
    state: _Limits | None = current_app.extensions.get(_KEY)
    if state is None:
        return
    bucket = state.writes if method in WRITE_METHODS else state.reads
    if bucket is None:
        return
    sub = str(g.caller.sub)
    limiter = state.counting()
    try:
        breached = _breached(limiter, bucket, sub)
    except Exception as exc:  # the storage failed: never refuse a request for that
        state.storage_failed(exc)
        limiter = state.fallback
        breached = _breached(limiter, bucket, sub)
    else:
        if limiter is state.limiter:
            state.storage_answered()
    if breached is not None:
        raise OverLimit(bucket, breached, sub, limiter)


def _breached(limiter: FixedWindowRateLimiter, bucket: _Bucket, sub: str) -> RateLimitItem | None:
    """Count one request in each tier of the caller's window; the first tier it is over."""
    for tier in bucket.tiers:
        if not limiter.hit(tier, bucket.scope, sub):
            return tier
    return None


def _too_many_requests(error: OverLimit) -> Response:
    retry_after, headers = 1, {}
    try:
        stats = error.limiter.get_window_stats(error.tier, error.bucket.scope, error.sub)
    except Exception as exc:  # the storage went away since the check
        log.warning("rate limit window unreadable: %s", exc)
    else:
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        headers = {
            "X-RateLimit-Limit": str(error.tier.amount),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(math.ceil(stats.reset_time)),
        }
    scope = "writes (POST, PATCH, DELETE)" if error.bucket.scope == "writes" else "reads (GET)"
    return problem(
        429,
        "Too many requests",
        f"this caller is over its limit of {error.tier} for {scope}; retry after {retry_after} s",
        code="rate_limited",
        headers={"Retry-After": str(retry_after), **headers},
    )

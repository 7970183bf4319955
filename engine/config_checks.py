"""The checks Settings.check makes: a configuration that cannot work is refused at start-up,
every problem named by its settings. One function per area, each a list of problems."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from limits import parse_many

from engine.config import without_password

if TYPE_CHECKING:
    from engine.config import Settings

MIN_SECRET_LENGTH = 32
# Above kombu's BRPOP wait (1 s), which a socket timeout must not cut short.
BROKER_SOCKET_TIMEOUT_MIN_S = 2.0
# An ALLOWED_ORIGINS entry: an exact origin, scheme://host[:port]. flask-cors would take an
# entry holding `*`, `?`, `[`, `(`... for an unanchored regular expression.
_ORIGIN = re.compile(r"^[a-z][a-z0-9+.-]*://[a-z0-9.-]+(:[0-9]{1,5})?$", re.IGNORECASE)
# An HTTP_ALLOWED_HOSTS entry: a host name (or IP address), or *. and a domain.
_ALLOWED_HOST = re.compile(r"^(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?$|^\[?[0-9a-f:.]+\]?$")
# PostgreSQL's values for synchronous_commit, least durable first.
SYNCHRONOUS_COMMIT = ("off", "local", "remote_write", "on", "remote_apply")
# A retention of 100 years is as good as forever, and its cutoff stays a valid date.
MAX_RETENTION_DAYS = 36_500
# Where the rate limits' counters may live: a Redis, or one process's memory.
RATE_LIMIT_STORAGE_SCHEMES = ("redis", "rediss", "redis+unix", "memory")

# The furthest ahead a run may be delayed: a year and a day (a start further off belongs in
# a schedule), and its not_before stays a valid date.
MAX_RUN_DELAY_S = 366 * 86400.0

# Rows a batch (a bulk cancel, a prune) names in one statement, at most.
MAX_BATCH = 10_000


def problems(settings: Settings) -> list[str]:
    """Every problem of `settings`, in the order the areas are listed; none: it can work."""
    return [
        problem
        for area in (
            _secrets,
            _api,
            _steps,
            _http_action,
            _events,
            _rate_limits,
            _retention,
            _webhooks,
        )
        for problem in area(settings)
    ]


def _secrets(settings: Settings) -> list[str]:
    """Secrets strong enough in production."""
    # A previous secret verifies tokens as the current one does.
    return _signing_secrets(
        settings, "JWT", settings.jwt_secret, settings.jwt_previous_secrets, "a token"
    )


def _signing_secrets(
    settings: Settings, prefix: str, current: str, previous: tuple[str, ...], signed: str
) -> list[str]:
    """In production, <prefix>_SECRET and each of <prefix>_PREVIOUS_SECRETS at least
    MIN_SECRET_LENGTH long: a previous secret still signs or verifies `signed`."""
    if settings.env != "production":
        return []
    found: list[str] = []
    if len(current) < MIN_SECRET_LENGTH:
        found.append(
            f"{prefix}_SECRET is too weak: use at least {MIN_SECRET_LENGTH} characters "
            "(openssl rand -hex 32)"
        )
    weak = [s for s in previous if len(s) < MIN_SECRET_LENGTH]
    if weak:
        found.append(
            f"{prefix}_PREVIOUS_SECRETS holds {len(weak)} secret(s) under {MIN_SECRET_LENGTH} "
            f"characters: {signed} signed with one would be accepted; drop them"
        )
    return found


def _api(settings: Settings) -> list[str]:
    """The API's listeners, processes and the origins it answers."""
    found: list[str] = []
    patterns = [o for o in settings.allowed_origins if o != "*" and not _ORIGIN.match(o)]
    if patterns:
        found.append(
            f"ALLOWED_ORIGINS must list exact origins (scheme://host[:port]) or *, got "
            f"{', '.join(map(repr, patterns))}: patterns and paths are not supported"
        )
    if not 0 < settings.api_metrics_port < 65536 or settings.api_metrics_port == settings.api_port:
        found.append(
            f"API_METRICS_PORT ({settings.api_metrics_port}) must be a port from 1 to 65535 "
            f"other than API_PORT ({settings.api_port}): /metrics is never served on the "
            "public port"
        )
    if settings.web_concurrency < 1 or settings.web_threads < 1:
        found.append("WEB_CONCURRENCY and WEB_THREADS must be at least 1")
    return found


def _steps(settings: Settings) -> list[str]:
    """Steps' limits, recovery, the broker and the database, schedules, delayed runs."""
    found: list[str] = []
    if settings.step_timeout_s > settings.step_timeout_max_s:
        found.append(
            f"STEP_TIMEOUT_S ({settings.step_timeout_s:g}) must not exceed "
            f"STEP_TIMEOUT_MAX_S ({settings.step_timeout_max_s:g})"
        )
    if settings.broker_visibility_timeout_s <= settings.longest_message_hold_s():
        found.append(
            f"BROKER_VISIBILITY_TIMEOUT_S ({settings.broker_visibility_timeout_s:g}) must exceed "
            f"the longest time a worker holds a message: the hard limit of the longest "
            f"step, STEP_TIMEOUT_MAX_S ({settings.step_timeout_max_s:g}) plus its margin, plus "
            f"LEASE_GRACE_S ({settings.lease_grace_s:g}) and RETRY_MAX_BACKOFF_S "
            f"({settings.retry_max_backoff_s:g}) for a retry waiting in a worker "
            f"({settings.longest_message_hold_s():g} s in all); otherwise Redis hands a message "
            "still held by a live worker to a second one"
        )
    if settings.max_deliveries < 1 or settings.retry_max_attempts < 1:
        found.append("MAX_DELIVERIES and RETRY_MAX_ATTEMPTS must be at least 1")
    if (
        min(
            settings.reconcile_interval_s,
            settings.dispatch_grace_s,
            settings.lease_grace_s,
            settings.sqlite_busy_timeout_s,
        )
        <= 0
    ):
        found.append(
            "RECONCILE_INTERVAL_S, DISPATCH_GRACE_S, LEASE_GRACE_S and SQLITE_BUSY_TIMEOUT_S "
            "must be > 0"
        )
    if settings.schedule_tick_s <= 0 or settings.schedule_batch < 1:
        found.append("SCHEDULE_TICK_S must be > 0 and SCHEDULE_BATCH at least 1")
    if not 1 <= settings.schedule_backfill_max <= MAX_BATCH:
        # A backfill's runs are one transaction, and its fire times' keys one lookup.
        found.append(
            f"SCHEDULE_BACKFILL_MAX must be from 1 to {MAX_BATCH}, "
            f"got {settings.schedule_backfill_max}"
        )
    if not (settings.run_delay_tick_s > 0 and 0 < settings.run_delay_max_s <= MAX_RUN_DELAY_S):
        found.append(
            f"RUN_DELAY_TICK_S must be > 0 and RUN_DELAY_MAX_S > 0 and at most "
            f"{MAX_RUN_DELAY_S:.0f} (366 days), got {settings.run_delay_tick_s:g} and "
            f"{settings.run_delay_max_s:g}"
        )
    if settings.broker_socket_timeout_s < BROKER_SOCKET_TIMEOUT_MIN_S:
        found.append(
            f"BROKER_SOCKET_TIMEOUT_S must be at least {BROKER_SOCKET_TIMEOUT_MIN_S:g}: "
            "a worker's BRPOP waits a second for a message"
        )
    if settings.worker_synchronous_commit not in SYNCHRONOUS_COMMIT:
        found.append(
            f"WORKER_SYNCHRONOUS_COMMIT must be one of {', '.join(SYNCHRONOUS_COMMIT)}, "
            f"got {settings.worker_synchronous_commit!r}"
        )
    return found


def _http_action(settings: Settings) -> list[str]:
    """The http.request action's reach and limits."""
    found: list[str] = []
    hosts = [h for h in settings.http_allowed_hosts if not _ALLOWED_HOST.match(h)]
    if hosts:
        found.append(
            f"HTTP_ALLOWED_HOSTS must list host names or *.domain suffixes, got "
            f"{', '.join(map(repr, hosts))}"
        )
    if settings.http_timeout_s <= 0 or settings.http_max_response_bytes < 1:
        found.append("HTTP_TIMEOUT_S and HTTP_MAX_RESPONSE_BYTES must be > 0")
    return found


def _events(settings: Settings) -> list[str]:
    """Event streams: their timing, and the threads they may hold."""
    found: list[str] = []
    if (
        min(
            settings.events_poll_interval_s,
            settings.events_heartbeat_s,
            settings.events_max_duration_s,
        )
        <= 0
    ):
        found.append(
            "EVENTS_POLL_INTERVAL_S, EVENTS_HEARTBEAT_S and EVENTS_MAX_DURATION_S must be > 0"
        )
    if not 0 <= settings.events_max_streams < max(1, settings.web_threads):
        found.append(
            f"EVENTS_MAX_STREAMS ({settings.events_max_streams}) must be at least 0 and below "
            f"WEB_THREADS ({settings.web_threads}): each open stream holds a thread, and "
            "ordinary requests need at least one"
        )
    return found


def _rate_limits(settings: Settings) -> list[str]:
    """Rate limits that parse, and a storage they can count in."""
    found: list[str] = []
    for name, value in (
        ("RATE_LIMIT_WRITES", settings.rate_limit_writes),
        ("RATE_LIMIT_READS", settings.rate_limit_reads),
    ):
        if not value:
            continue
        try:
            tiers = parse_many(value)
        except ValueError:
            tiers = []
        if not tiers or any(tier.amount < 1 for tier in tiers):
            found.append(
                f"{name} must be rate limits such as 50/second or 50/second;1000/minute "
                f"(or empty for none), got {value!r}"
            )
    scheme = settings.rate_limit_storage.partition("://")[0].lower()
    if scheme not in RATE_LIMIT_STORAGE_SCHEMES:
        found.append(
            f"RATE_LIMIT_STORAGE_URL must be a redis://, rediss://, redis+unix:// or "
            f"memory:// URL, got {without_password(settings.rate_limit_storage)!r}"
        )
    return found


def _retention(settings: Settings) -> list[str]:
    """Retention's ages and batch, and a bulk cancel's batch."""
    found: list[str] = []
    for name, days in (
        ("RUN_RETENTION_DAYS", settings.run_retention_days),
        ("AUDIT_RETENTION_DAYS", settings.audit_retention_days),
    ):
        if not 0 <= days <= MAX_RETENTION_DAYS:  # NaN fails both comparisons
            found.append(
                f"{name} must be a number of days from 0 (keep forever) to "
                f"{MAX_RETENTION_DAYS}, got {days!r}"
            )
    for name, size in (
        ("BULK_CANCEL_BATCH", settings.bulk_cancel_batch),
        ("RETENTION_BATCH_SIZE", settings.retention_batch_size),
    ):
        # A batch's ids go in one statement, a bound parameter each: SQLite takes 32,766.
        if not 1 <= size <= MAX_BATCH:
            found.append(f"{name} must be from 1 to {MAX_BATCH}, got {size}")
    return found


def _webhooks(settings: Settings) -> list[str]:
    """The webhooks' secrets, timing and batch."""
    # A previous secret signs every delivery too: a receiver still accepting it would accept
    # a delivery forged with it.
    found = _signing_secrets(
        settings,
        "WEBHOOK",
        settings.webhook_secret,
        settings.webhook_previous_secrets,
        "a delivery",
    )
    if (
        min(settings.webhook_timeout_s, settings.webhook_max_age_hours, settings.webhook_interval_s)
        <= 0
        or not 0 <= settings.webhook_backoff_s <= settings.webhook_max_backoff_s
        or settings.webhook_batch_size < 1
    ):
        found.append(
            "WEBHOOK_TIMEOUT_S, WEBHOOK_MAX_AGE_HOURS, WEBHOOK_INTERVAL_S and "
            "WEBHOOK_BATCH_SIZE must be > 0, and WEBHOOK_BACKOFF_S from 0 to "
            "WEBHOOK_MAX_BACKOFF_S"
        )
    return found

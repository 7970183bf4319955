"""Sending run.finished events (engine.webhooks) to their URLs, at least once.

A deliverer claims the due deliveries in one short transaction, as a step is claimed: each
gets a claim token, one more attempt, and a lease (its next_attempt_at moves past the time
the sends may take), so a second deliverer, now or while these are in flight, does not
take them; on PostgreSQL the pick skips rows another deliverer has locked. The sends run
outside any transaction, through engine.outbound's checked session. Each outcome is then
recorded only by its claim's holder. A deliverer that dies mid-send leaves its deliveries
pending: when the lease ends they are due again, and sent again (at least once; the event
id lets the receiver drop the repeat).

A 2xx is delivered; a 410 Gone stops (gone); a URL the outbound policy refuses is failed
at once; anything else (another status, a timeout, a refused connection) is tried again
after an exponential backoff with jitter, counted from the end of the attempt (a slow
receiver does not shorten it), until the event is WEBHOOK_MAX_AGE_HOURS old, then failed.
Each outcome is counted in webhook_deliveries_total.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import requests
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from engine import metrics, outbound, webhooks
from engine.config import Settings
from engine.db import changed
from engine.models import Run, WebhookDelivery, new_id, utcnow
from engine.retry import RetryPolicy

log = logging.getLogger(__name__)
runs, deliveries = Run.__table__, WebhookDelivery.__table__
# Sends at once per deliverer: one slow receiver does not hold up the others.
CONCURRENCY = 8
USER_AGENT = "ai-business-engine-webhooks"


@dataclass(frozen=True)
class Attempt:
    """One claimed delivery attempt."""

    id: str
    run_id: str
    run_finished_at: datetime
    url: str
    payload: dict[str, Any]
    attempts: int
    created_at: datetime
    claim: str


@dataclass(frozen=True)
class Result:
    """What one attempt came to: `outcome` is a metrics.WEBHOOK_OUTCOMES name."""

    outcome: str
    error: str | None = None


def lease(settings: Settings) -> timedelta:
    """How long a claimed batch may take to send: every wave of sends timing out, and a
    minute's margin."""
    waves = math.ceil(settings.webhook_batch_size / CONCURRENCY)
    return timedelta(seconds=waves * settings.webhook_timeout_s + 60)


def claim_due(session: Session, settings: Settings, now: datetime) -> list[Attempt]:
    """Claim up to WEBHOOK_BATCH_SIZE deliveries due at `now`, in the caller's transaction."""
    picked = list(
        session.scalars(
            select(deliveries.c.id)
            .where(deliveries.c.status == webhooks.PENDING, deliveries.c.next_attempt_at <= now)
            .order_by(deliveries.c.next_attempt_at)
            .limit(settings.webhook_batch_size)
            .with_for_update(skip_locked=True)
        )
    )
    if not picked:
        return []
    claim = new_id()
    rows = session.execute(
        update(deliveries)
        .where(
            deliveries.c.id.in_(picked),
            deliveries.c.status == webhooks.PENDING,
            deliveries.c.next_attempt_at <= now,
        )
        .values(
            attempts=deliveries.c.attempts + 1,
            next_attempt_at=now + lease(settings),
            claim=claim,
        )
        .returning(
            deliveries.c.id,
            deliveries.c.run_id,
            deliveries.c.run_finished_at,
            deliveries.c.url,
            deliveries.c.payload,
            deliveries.c.attempts,
            deliveries.c.created_at,
        )
    ).all()
    return [Attempt(**row._mapping, claim=claim) for row in rows]


def send(attempt: Attempt, settings: Settings) -> Result:
    """POST the event, signed now with the secrets of `settings` (WEBHOOK_SECRET, then any
    WEBHOOK_PREVIOUS_SECRETS): a retry is signed with those of its own attempt; its Result."""
    secrets = (settings.webhook_secret, *settings.webhook_previous_secrets)
    body = json.dumps(attempt.payload, separators=(",", ":"), sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Engine-Event": webhooks.EVENT_TYPE,
        "Engine-Event-Id": attempt.id,
        "Engine-Signature": webhooks.sign(secrets, int(time.time()), body),
    }
    client = outbound.session(outbound.Policy.from_settings(settings), 0)
    try:
        with client.post(
            attempt.url,
            data=body,
            headers=headers,
            timeout=settings.webhook_timeout_s,
            allow_redirects=False,
            stream=True,  # the answer's body is not read
        ) as response:
            code = response.status_code
    except outbound.Refused as exc:
        return Result("refused", f"refused: {exc}")
    except requests.RequestException as exc:
        return Result("retried", f"{type(exc).__name__}")
    except (UnicodeError, ValueError) as exc:
        # A URL stored before the submit check refused such a host: it can never be sent.
        return Result("refused", f"refused: {type(exc).__name__}: {exc}")
    finally:
        client.close()
    if 200 <= code < 300:
        return Result("delivered")
    if code == 410:
        return Result("gone", "HTTP 410")
    return Result("retried", f"HTTP {code}")


def record(
    session: Session, settings: Settings, attempt: Attempt, result: Result, now: datetime
) -> str:
    """Record an attempt's outcome, if this claim still holds it; the outcome counted
    (a retry past WEBHOOK_MAX_AGE_HOURS is `expired`), or "" when the claim was lost. `now`
    is when the attempt ended: a retry is due a backoff after it."""
    outcome = result.outcome
    max_age = timedelta(hours=settings.webhook_max_age_hours)
    if outcome == "retried" and now - attempt.created_at >= max_age:
        outcome = "expired"
    values: dict[str, Any] = {"last_error": result.error, "claim": None}
    if outcome == "retried":
        policy = RetryPolicy(1, settings.webhook_backoff_s, settings.webhook_max_backoff_s)
        values["next_attempt_at"] = now + timedelta(seconds=policy.delay(attempt.attempts))
    else:
        final = {
            "delivered": webhooks.DELIVERED,
            "gone": webhooks.GONE,
        }.get(outcome, webhooks.FAILED)
        values.update(status=final, next_attempt_at=None, finished_at=now)
    won = changed(
        session.execute(
            update(deliveries)
            .where(
                deliveries.c.id == attempt.id,
                deliveries.c.claim == attempt.claim,
                deliveries.c.status == webhooks.PENDING,
            )
            .values(**values)
        )
    )
    if not won:
        return ""
    if "status" in values:
        # The run shows its latest event's delivery; an older event's outcome leaves it.
        session.execute(
            update(runs)
            .where(runs.c.id == attempt.run_id, runs.c.webhook_event_at == attempt.run_finished_at)
            .values(webhook_status=values["status"])
        )
    return outcome


def deliver_due(
    sessions: sessionmaker[Session], settings: Settings, now: datetime | None = None
) -> Counter[str]:
    """One pass: record the events of newly finished runs, then send what is due at `now`
    (the clock when None); the outcomes counted."""
    now = now or utcnow()
    started = time.monotonic()
    with sessions.begin() as session:
        webhooks.record_events(session, now, settings.webhook_batch_size)
    with sessions.begin() as session:
        claimed = claim_due(session, settings, now)
    outcomes: Counter[str] = Counter()
    if not claimed:
        return outcomes

    def deliver(attempt: Attempt) -> str:
        try:
            result = send(attempt, settings)
        except Exception as exc:  # one attempt's fault must not end the pass for the others
            log.exception("webhook %s (run %s): the attempt failed", attempt.id, attempt.run_id)
            result = Result("retried", f"{type(exc).__name__}")
        # On the pass's clock: `now` plus the time the pass has taken so far.
        ended = now + timedelta(seconds=time.monotonic() - started)
        with sessions.begin() as session:
            outcome = record(session, settings, attempt, result, ended)
        if outcome:
            metrics.webhook_deliveries_total.labels(outcome=outcome).inc()
        level = logging.WARNING if outcome in ("expired", "refused") else logging.INFO
        log.log(
            level,
            "webhook %s (run %s) attempt %d: %s%s",
            attempt.id,
            attempt.run_id,
            attempt.attempts,
            outcome or "claim lost",
            f" ({result.error})" if result.error else "",
        )
        return outcome

    with ThreadPoolExecutor(min(CONCURRENCY, len(claimed))) as pool:
        outcomes.update(outcome for outcome in pool.map(deliver, claimed) if outcome)
    return outcomes

"""Webhooks: a run submitted with a webhook_url is told there when it finishes.

Nothing is added to a run's hot paths: finishing a run writes only its own columns, as
before. The periodic deliverer (engine.webhook_delivery) finds finished runs whose latest
finish has no event yet through a partial index (ix_runs_webhook_due: runs without a
webhook are never in it) and records one run.finished event per finish in
webhook_deliveries, the body fixed then, so every attempt sends the same event with the
same id. A replayed run that finishes again gets a new finished_at, so a new event.

The body names the run as a summary built here (id, workflow, version, status, priority,
created_by, error, times and not_before; the names and shapes GET /runs/{id} uses), not the
full run: the engine does not import the API's serialiser, and params, step inputs and
outputs may be large or sensitive while the URL is the client's. A receiver wanting more reads
GET /runs/{id} with its own token.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import bindparam, func, insert, or_, select, update
from sqlalchemy.orm import Session

from engine.config import Settings
from engine.errors import InvalidInput
from engine.models import WEBHOOK_URL_MAX, Run, WebhookDelivery, in_utc, new_id, timestamp
from engine.outbound import Policy, Refused, forbidden

EVENT_TYPE = "run.finished"
PENDING, DELIVERED, GONE, FAILED = "pending", "delivered", "gone", "failed"
# What GET /runs/{id} shows before the run finishes.
WAITING = "waiting"
STATUSES = (WAITING, PENDING, DELIVERED, GONE, FAILED)
FIELD = "webhook_url"
runs, deliveries = Run.__table__, WebhookDelivery.__table__

# The same terms as ix_runs_webhook_due's, so both databases read the run from that index.
_DUE = (
    runs.c.webhook_url.is_not(None),
    runs.c.finished_at.is_not(None),
    or_(runs.c.webhook_event_at.is_(None), runs.c.webhook_event_at != runs.c.finished_at),
)
_MARK_RECORDED = (
    update(runs)
    .where(runs.c.id == bindparam("b_id"), runs.c.finished_at == bindparam("b_finished"))
    .values(webhook_event_at=bindparam("b_finished"), webhook_status=PENDING)
)


def check_url(url: Any, settings: Settings) -> str:
    """`url` when runs may be told there, else InvalidInput naming webhook_url: https (http
    too outside production or where private addresses are allowed), a host the outbound
    policy (HTTP_ALLOWED_HOSTS) allows, no user info. Names are resolved at delivery."""
    problem = _url_problem(url, settings)
    if problem:
        raise InvalidInput(f"{FIELD} {problem}", errors=[{"field": FIELD, "message": problem}])
    return url


def _url_problem(url: Any, settings: Settings) -> str | None:
    if not isinstance(url, str) or not url:
        return "must be a URL"
    if len(url) > WEBHOOK_URL_MAX:
        return f"must be at most {WEBHOOK_URL_MAX} characters"
    if any(char.isspace() or not char.isprintable() for char in url):
        return "must not hold spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a bad port raises)
    except ValueError:
        return "is not a valid URL"
    plain_http = settings.env != "production" or settings.http_allow_private_addresses
    schemes = ("https", "http") if plain_http else ("https",)
    if parts.scheme not in schemes:
        return f"must use {' or '.join(schemes)}"
    if not parts.hostname:
        return "must name a host"
    try:
        # As the connection will: a name IDNA cannot encode (an empty or overlong label)
        # would fail every delivery.
        parts.hostname.encode("idna")
    except UnicodeError:
        return "names a host that is not a valid domain name"
    if parts.username is not None or parts.password is not None:
        return "must not carry a user name or password"
    policy = Policy.from_settings(settings)
    try:
        policy.check_host(parts.hostname)
    except Refused as exc:
        return str(exc)
    try:
        address = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return None
    if forbidden(address) and not policy.allow_private:
        return "names a private or reserved address (HTTP_ALLOW_PRIVATE_ADDRESSES is off)"
    return None


def sign(secrets: Sequence[str], at: int, body: bytes) -> str:
    """The Engine-Signature header: `t=<at>`, then one `v1=` per secret, in their order (the
    current one first, then any previous ones of a rotation), each the HMAC-SHA256 of
    `<at>.<body>` under that secret. A receiver accepts the delivery if any one matches."""
    signed = str(at).encode() + b"." + body
    return ",".join(
        [f"t={at}"]
        + [
            f"v1={hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()}"
            for secret in dict.fromkeys(secrets)
        ]
    )


def run_summary(run: Any) -> dict[str, Any]:
    """The run as an event names it."""
    return {
        "id": run.id,
        "workflow": run.workflow,
        "version": run.version,
        "status": run.status,
        "priority": run.priority,
        "created_by": run.created_by,
        "created_at": timestamp(run.created_at),
        "scheduled_for": timestamp(run.scheduled_for),
        "started_at": timestamp(run.started_at),
        "finished_at": timestamp(run.finished_at),
        "error": run.error,
        "not_before": timestamp(run.not_before),
    }


def status(run: Any) -> str | None:
    """The webhook status GET /runs/{id} shows, from the run's own columns: None without a
    webhook, waiting before the run finishes, else its latest event's delivery."""
    if run.webhook_url is None:
        return None
    if run.finished_at is None:
        return WAITING
    if run.webhook_event_at != run.finished_at:
        return PENDING
    return run.webhook_status or PENDING


def record_events(session: Session, now: datetime, limit: int) -> int:
    """Record the run.finished event of up to `limit` finished runs that have none yet, in
    the caller's transaction; how many. On PostgreSQL the runs are locked, skipping those
    another deliverer holds; SQLite's BEGIN IMMEDIATE lets one writer in at a time."""
    due = session.execute(
        select(runs)
        .where(*_DUE)
        .order_by(runs.c.finished_at)
        .limit(limit)
        .with_for_update(of=runs, skip_locked=True)
    ).all()
    if not due:
        return 0
    events = []
    for run in due:
        event_id = new_id()
        payload = {
            "id": event_id,
            "type": EVENT_TYPE,
            "created": timestamp(run.finished_at),
            "data": {"run": run_summary(run)},
        }
        events.append(
            {
                "id": event_id,
                "run_id": run.id,
                "run_finished_at": run.finished_at,
                "url": run.webhook_url,
                "payload": payload,
                "status": PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
        )
    session.execute(insert(deliveries), events)
    session.execute(_MARK_RECORDED, [{"b_id": r.id, "b_finished": r.finished_at} for r in due])
    return len(events)


def lag_seconds(session: Session, now: datetime) -> float:
    """How long the most overdue run.finished event has waited past its due time (0 when
    none is): a finished run's event not yet recorded is due from the finish, a pending
    delivery from its next_attempt_at (an attempt in flight is not due until its lease
    ends). A pass every WEBHOOK_INTERVAL_S keeps it near 0 whatever the receivers answer;
    it grows while nothing delivers: beat down, no worker on `default`, passes too slow.
    One statement, each minimum read from its partial index (ix_runs_webhook_due,
    ix_webhook_deliveries_next_attempt_at)."""
    unrecorded = select(func.min(runs.c.finished_at)).where(*_DUE).scalar_subquery()
    undelivered = (
        select(func.min(deliveries.c.next_attempt_at))
        .where(deliveries.c.status == PENDING)
        .scalar_subquery()
    )
    due = [moment for moment in session.execute(select(unrecorded, undelivered)).one() if moment]
    if not due:
        return 0.0
    return max(0.0, (in_utc(now) - min(in_utc(moment) for moment in due)).total_seconds())

"""webhook_lag_seconds: how long the most overdue run.finished event has waited past its due
time, read from the database at each scrape by the API and the workers' health servers
(SQLite and PostgreSQL). Each test has a database of its own: the lag is the platform's."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from engine import webhook_delivery, webhooks
from engine.models import Run, WebhookDelivery, utcnow
from engine.webhook_delivery import Result
from tests.support.metrics import read_api_metrics
from tests.support.stack import Stack
from workers.health import HealthServer

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
# Never connected to: the deliveries here are claimed and recorded by hand.
URL = "http://127.0.0.1:9/hook"


@pytest.fixture
def platform(backend: str, tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(backend, tmp_path)
    yield stack
    stack.close()


def finished_run(stack: Stack, at: datetime, webhook_url: str | None = URL) -> str:
    """A run row as a worker leaves it when it finishes, told nothing yet."""
    with stack.sessions.begin() as session:
        run = Run(
            workflow="lag",
            version=1,
            params={},
            status="succeeded",
            created_by="alice@example.com",
            created_at=at,
            started_at=at,
            finished_at=at,
            webhook_url=webhook_url,
        )
        session.add(run)
        session.flush()
        return run.id


def lag(stack: Stack, now: datetime) -> float:
    with stack.sessions() as session:
        return webhooks.lag_seconds(session, now)


def next_attempt_at(stack: Stack, run_id: str) -> datetime:
    with stack.sessions() as session:
        query = select(WebhookDelivery.next_attempt_at).where(WebhookDelivery.run_id == run_id)
        moment = session.scalars(query).one()
    assert moment is not None
    return moment


def test_the_lag_is_how_long_the_most_overdue_event_has_waited_past_its_due_time(
    platform: Stack,
) -> None:
    settings = platform.settings
    assert lag(platform, T0) == 0.0  # no run at all
    finished_run(platform, T0 - timedelta(days=1), webhook_url=None)  # never told
    assert lag(platform, T0) == 0.0

    run_id = finished_run(platform, T0)
    # No pass has recorded its event (beat down): due since the run finished.
    assert lag(platform, T0 + timedelta(seconds=90)) == 90.0

    recorded = T0 + timedelta(seconds=120)
    with platform.sessions.begin() as session:
        assert webhooks.record_events(session, recorded, 100) == 1
    assert lag(platform, recorded) == 0.0
    with platform.sessions.begin() as session:
        [attempt] = webhook_delivery.claim_due(session, settings, recorded)
    # In flight: not due until its lease ends; then due again (its deliverer died).
    lease_end = recorded + webhook_delivery.lease(settings)
    assert lag(platform, lease_end - timedelta(seconds=1)) == 0.0
    assert lag(platform, lease_end + timedelta(seconds=30)) == 30.0

    # A receiver that answered 500: the retry is due after its backoff, not overdue before.
    with platform.sessions.begin() as session:
        failed = Result("retried", "HTTP 500")
        assert webhook_delivery.record(session, settings, attempt, failed, recorded) == "retried"
    retry_at = next_attempt_at(platform, run_id)
    assert recorded < retry_at
    assert lag(platform, retry_at - timedelta(seconds=1)) == 0.0
    assert lag(platform, retry_at + timedelta(seconds=5)) == 5.0

    # Delivered: nothing is due, however late it is.
    with platform.sessions.begin() as session:
        [attempt] = webhook_delivery.claim_due(session, settings, retry_at)
        assert webhook_delivery.record(session, settings, attempt, Result("delivered"), retry_at)
    assert lag(platform, T0 + timedelta(days=30)) == 0.0

    # The oldest of an event not recorded yet and a delivery due is the lag.
    later = finished_run(platform, T0 + timedelta(days=1))
    assert lag(platform, T0 + timedelta(days=1, seconds=10)) == 10.0
    with platform.sessions.begin() as session:
        webhooks.record_events(session, T0 + timedelta(days=1, seconds=20), 100)
    finished_run(platform, T0 + timedelta(days=1, seconds=50))
    assert next_attempt_at(platform, later) == T0 + timedelta(days=1, seconds=20)
    assert lag(platform, T0 + timedelta(days=1, seconds=60)) == 40.0


def served_lag(text: str) -> float:
    [line] = [line for line in text.splitlines() if line.startswith("webhook_lag_seconds ")]
    return float(line.split()[1])


def test_the_api_and_worker_metrics_serve_the_webhook_lag(platform: Stack) -> None:
    from web import create_app

    finished_run(platform, utcnow() - timedelta(minutes=10))
    assert 600 <= served_lag(read_api_metrics(create_app(platform.settings))) < 900

    server = HealthServer(platform.settings)
    port = server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            assert 600 <= served_lag(answer.read().decode()) < 900
    finally:
        server.stop()

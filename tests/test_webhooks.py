"""Run-finished webhooks: a run submitted with a webhook_url is POSTed one signed
run.finished event when it finishes (a real prefork worker runs it), retried with backoff
while the receiver fails, stopped by a 410, given up past its max age, sent once by two
deliverers at once, and refused where the outbound policy forbids it. The receiver is a
real HTTP server on a loopback port; the deliverer is driven with a chosen `now`."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, update

from engine import webhook_delivery, webhooks
from engine.config import Settings
from engine.errors import InvalidInput
from engine.models import Run, WebhookDelivery, utcnow
from engine.webhooks import check_url
from engine.work import WEBHOOK_TASK
from tests.conftest import spec
from tests.support import services
from tests.support.http import fields, problem
from tests.support.origin import Answer, Origin, Received, origin
from tests.support.stack import Stack
from workers.factory import make_celery

SECRET = "webhook-test-secret-" + "w" * 30
README = Path(__file__).resolve().parent.parent / "README.md"


def readme_verify() -> Callable[[str, bytes, str], bool]:
    """The `verify` of README's receiver snippet, run as a receiver would paste it."""
    text = README.read_text()
    section = text[text.index("## Being told when a run finishes") :]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    return namespace["verify"]


@pytest.fixture(scope="module")
def platform(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory: Path = tmp_path_factory.mktemp(f"webhooks-{backend}")
    env = {"HTTP_ALLOW_PRIVATE_ADDRESSES": "true", "WEBHOOK_SECRET": SECRET}
    stack = Stack(backend, directory, env=env)
    stack.start_worker(concurrency=2)
    yield stack
    stack.close()


@pytest.fixture
def receiver() -> Iterator[Origin]:
    with origin() as running:
        yield running


def finished_run(platform: Stack, name: str, url: str, *, fails: bool = False) -> dict[str, Any]:
    """Register a one-step workflow, submit it with `url` as its webhook, wait for its end."""
    step: dict[str, Any] = {"id": "only", "action": "noop"}
    if fails:
        step = {
            "id": "only",
            "action": "fail",
            "with": {"message": "boom"},
            "retry": {"max_attempts": 1},
        }
    platform.register(spec(name, [step]))
    response = platform.client().post(
        "/runs", json={"workflow": name, "webhook_url": url}, headers=platform.headers()
    )
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["webhook"] == {"url": url, "status": "waiting"}
    return platform.wait_finished(response.get_json()["id"])


def deliver(platform: Stack, now: datetime | None = None, **changes: Any) -> Counter[str]:
    settings = platform.settings.with_changes(**changes) if changes else platform.settings
    return webhook_delivery.deliver_due(platform.sessions, settings, now)


def deliveries(platform: Stack, run_id: str) -> list[WebhookDelivery]:
    with platform.sessions() as session:
        return list(
            session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.run_id == run_id)
                .order_by(WebhookDelivery.created_at)
            )
        )


def signatures(received: Received) -> tuple[str, list[str]]:
    """The timestamp and the v1 signatures of a request's Engine-Signature, in order."""
    stamp, *rest = received.headers["Engine-Signature"].split(",")
    assert stamp.startswith("t=") and all(part.startswith("v1=") for part in rest)
    return stamp[2:], [part[3:] for part in rest]


def hmac_of(secret: str, stamp: str, body: bytes) -> str:
    return hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verified(received: Received) -> dict[str, Any]:
    """The event a request carries, once its signature checks out as README tells."""
    stamp, [signature] = signatures(received)
    assert hmac.compare_digest(hmac_of(SECRET, stamp, received.body), signature)
    assert abs(time.time() - int(stamp)) < 300
    assert readme_verify()(SECRET, received.body, received.headers["Engine-Signature"])
    event = json.loads(received.body)
    assert received.method == "POST"
    assert received.headers["Engine-Event"] == "run.finished" == event["type"]
    assert received.headers["Engine-Event-Id"] == event["id"]
    return event


def counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("webhook_deliveries_total", {"outcome": outcome}) or 0.0


def test_a_run_that_succeeds_is_posted_one_signed_event_naming_it_and_its_status(
    platform: Stack, receiver: Origin, unique: str
) -> None:
    url = receiver.script("/hooks/runs", Answer(204))
    run = finished_run(platform, unique, url)
    assert run["status"] == "succeeded"
    assert run["webhook"] == {"url": url, "status": "pending"}

    before = counted("delivered")
    deliver(platform)
    deliver(platform)

    [request] = receiver.requests_of("/hooks/runs")
    event = verified(request)
    assert event["data"]["run"]["id"] == run["id"]
    assert event["data"]["run"]["status"] == "succeeded"
    assert event["data"]["run"]["workflow"] == unique
    assert event["data"]["run"]["scheduled_for"] == run["scheduled_for"]
    assert event["created"] == run["finished_at"]
    assert platform.run(run["id"])["webhook"] == {"url": url, "status": "delivered"}
    assert counted("delivered") - before >= 1
    [row] = deliveries(platform, run["id"])
    assert (row.id, row.status, row.attempts) == (event["id"], "delivered", 1)


def test_a_failed_run_is_posted_too_and_finishing_again_after_a_retry_is_a_new_event(
    platform: Stack, receiver: Origin, unique: str
) -> None:
    url = receiver.script("/hook", Answer(200, {"ok": True}))
    run = finished_run(platform, unique, url, fails=True)
    assert run["status"] == "failed"
    deliver(platform)
    [first] = [verified(request) for request in receiver.requests_of("/hook")]
    assert first["data"]["run"]["id"] == run["id"]
    assert first["data"]["run"]["status"] == "failed"
    assert "boom" in first["data"]["run"]["error"]

    response = platform.client().post(f"/runs/{run['id']}/retry", headers=platform.headers())
    assert response.status_code == 202, response.get_json()
    assert platform.wait_finished(run["id"])["status"] == "failed"
    deliver(platform)
    deliver(platform)

    events = [verified(request) for request in receiver.requests_of("/hook")]
    assert len(events) == 2
    assert events[1]["id"] != first["id"]
    assert events[1]["data"]["run"]["finished_at"] != first["data"]["run"]["finished_at"]


def test_a_receiver_that_answers_500_is_retried_with_growing_backoff_until_it_answers_2xx(
    platform: Stack, receiver: Origin, unique: str
) -> None:
    url = receiver.script("/hook", Answer(500), Answer(503), Answer(200))
    run = finished_run(platform, unique, url)
    now = utcnow()
    deliver(platform, now)
    [row] = deliveries(platform, run["id"])
    assert (row.status, row.attempts, row.last_error) == ("pending", 1, "HTTP 500")
    first_wait = row.next_attempt_at - now
    # WEBHOOK_BACKOFF_S (30 s), half of it jittered.
    assert timedelta(seconds=15) <= first_wait <= timedelta(seconds=30)

    deliver(platform, now + first_wait - timedelta(seconds=1))  # not due yet
    assert len(receiver.requests_of("/hook")) == 1
    assert platform.run(run["id"])["webhook"]["status"] == "pending"

    now = row.next_attempt_at
    deliver(platform, now)
    [row] = deliveries(platform, run["id"])
    assert (row.status, row.attempts, row.last_error) == ("pending", 2, "HTTP 503")
    assert timedelta(seconds=30) <= row.next_attempt_at - now <= timedelta(seconds=60)

    deliver(platform, row.next_attempt_at)
    requests = receiver.requests_of("/hook")
    assert len(requests) == 3
    assert len({verified(request)["id"] for request in requests}) == 1
    assert len({request.body for request in requests}) == 1
    [row] = deliveries(platform, run["id"])
    assert (row.status, row.attempts, row.last_error) == ("delivered", 3, None)
    assert platform.run(run["id"])["webhook"]["status"] == "delivered"


def test_a_retry_after_a_slow_answer_waits_its_backoff_from_the_answer_not_the_pass_start(
    platform: Stack, receiver: Origin, unique: str
) -> None:
    slow_s = 3.0
    url = receiver.script("/hook", Answer(500, delay_s=slow_s))
    run = finished_run(platform, unique, url)
    now = utcnow()
    deliver(platform, now, webhook_backoff_s=2.0)
    answered_by = utcnow()
    [row] = deliveries(platform, run["id"])
    assert (row.status, row.attempts, row.last_error) == ("pending", 1, "HTTP 500")
    # WEBHOOK_BACKOFF_S (2 s here), half of it jittered, after the answer came 3 s in.
    assert now + timedelta(seconds=slow_s + 1) <= row.next_attempt_at
    assert row.next_attempt_at <= answered_by + timedelta(seconds=2)


def test_during_a_rotation_each_attempt_is_signed_with_every_secret_set_when_it_is_sent(
    platform: Stack, receiver: Origin, unique: str
) -> None:
    new, older = "webhook-new-secret-" + "n" * 30, "webhook-older-secret-" + "o" * 30
    url = receiver.script("/hook", Answer(500), Answer(500), Answer(200))
    run = finished_run(platform, unique, url)
    deliver(platform, utcnow())  # before the rotation: SECRET alone
    [row] = deliveries(platform, run["id"])
    # The workers restart with the new secret, the old ones still signing.
    deliver(
        platform, row.next_attempt_at, webhook_secret=new, webhook_previous_secrets=(SECRET, older)
    )
    [row] = deliveries(platform, run["id"])
    deliver(platform, row.next_attempt_at, webhook_secret=new)  # the previous ones dropped
    before, during, after = receiver.requests_of("/hook")
    assert before.body == during.body == after.body  # fixed when the event was recorded

    stamp, given = signatures(during)
    assert given == [hmac_of(s, stamp, during.body) for s in (new, SECRET, older)]
    stamp, given = signatures(before)
    assert given == [hmac_of(SECRET, stamp, before.body)]
    stamp, given = signatures(after)
    assert given == [hmac_of(new, stamp, after.body)]

    verify = readme_verify()
    header = during.headers["Engine-Signature"]
    assert all(verify(secret, during.body, header) for secret in (new, SECRET, older))
    assert not verify("webhook-other-secret-" + "x" * 30, during.body, header)
    assert not verify(SECRET, during.body + b" ", header)
    assert verify(SECRET, before.body, before.headers["Engine-Signature"])
    assert not verify(new, before.body, before.headers["Engine-Signature"])
    assert verify(new, after.body, after.headers["Engine-Signature"])
    assert not verify(SECRET, after.body, after.headers["Engine-Signature"])
    assert platform.run(run["id"])["webhook"]["status"] == "delivered"


def test_the_readme_receiver_refuses_a_stale_or_unsigned_delivery() -> None:
    verify, body = readme_verify(), b'{"id":"e"}'
    now = str(int(time.time()))
    assert verify(SECRET, body, webhooks.sign([SECRET], int(now), body))
    stale = int(now) - 301
    assert not verify(SECRET, body, webhooks.sign([SECRET], stale, body))
    assert not verify(SECRET, body, f"t={now}")
    assert not verify(SECRET, body, f"v1={hmac_of(SECRET, now, body)}")


def test_the_worker_delivers_when_beat_sends_the_webhooks_task(
    platform: Stack, receiver: Origin, unique: str
) -> None:
    url = receiver.script("/hook", Answer(200))
    run = finished_run(platform, unique, url)
    sender = make_celery(platform.settings)
    try:
        sender.send_task(WEBHOOK_TASK, queue="default")
    finally:
        sender.close()
    services.wait_for(lambda: receiver.requests_of("/hook"), 30, message="the delivery")
    assert verified(receiver.requests_of("/hook")[0])["data"]["run"]["id"] == run["id"]


def test_a_410_gone_stops_the_retries(platform: Stack, receiver: Origin, unique: str) -> None:
    url = receiver.script("/hook", Answer(410))
    run = finished_run(platform, unique, url)
    before = counted("gone")
    deliver(platform)
    deliver(platform, utcnow() + timedelta(days=1))
    assert len(receiver.requests_of("/hook")) == 1
    [row] = deliveries(platform, run["id"])
    assert row.status == "gone" and row.next_attempt_at is None
    assert platform.run(run["id"])["webhook"]["status"] == "gone"
    assert counted("gone") - before >= 1


def test_a_delivery_still_failing_past_its_max_age_is_failed_and_counted(
    platform: Stack, receiver: Origin, unique: str
) -> None:
    url = receiver.script("/hook", Answer(500))
    run = finished_run(platform, unique, url)
    now = utcnow()
    deliver(platform, now)
    before = counted("expired")
    outcomes = deliver(platform, now + timedelta(hours=72, seconds=1))
    assert outcomes["expired"] >= 1
    assert counted("expired") - before == outcomes["expired"]
    [row] = deliveries(platform, run["id"])
    assert (row.status, row.attempts, row.last_error) == ("failed", 2, "HTTP 500")
    deliver(platform, now + timedelta(days=10))
    assert len(receiver.requests_of("/hook")) == 2
    assert platform.run(run["id"])["webhook"] == {"url": url, "status": "failed"}


def test_two_deliverers_at_once_send_an_event_once(
    platform: Stack, receiver: Origin, unique: str
) -> None:
    url = receiver.script("/hook", Answer(200, delay_s=0.5))
    run = finished_run(platform, unique, url)
    start = threading.Barrier(3)
    results: list[Counter[str]] = []

    def deliverer() -> None:
        start.wait()
        results.append(deliver(platform))

    threads = [threading.Thread(target=deliverer) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 3
    assert len(receiver.requests_of("/hook")) == 1
    [row] = deliveries(platform, run["id"])
    assert (row.status, row.attempts) == ("delivered", 1)


def test_a_delivery_whose_deliverer_died_mid_send_is_sent_again_after_its_lease(
    platform: Stack, receiver: Origin, unique: str
) -> None:
    url = receiver.script("/hook", Answer(200))
    run = finished_run(platform, unique, url)
    now = utcnow()
    with platform.sessions.begin() as session:  # recorded and claimed, never sent
        webhooks.record_events(session, now, 100)
    with platform.sessions.begin() as session:
        assert webhook_delivery.claim_due(session, platform.settings, now)
    deliver(platform, now + timedelta(seconds=5))
    assert receiver.requests_of("/hook") == []
    deliver(platform, now + webhook_delivery.lease(platform.settings) + timedelta(seconds=1))
    [request] = receiver.requests_of("/hook")
    assert verified(request)["data"]["run"]["id"] == run["id"]
    [row] = deliveries(platform, run["id"])
    assert (row.status, row.attempts) == ("delivered", 2)


def test_a_private_address_is_refused_at_delivery_unless_allowed(
    platform: Stack, receiver: Origin, unique: str
) -> None:
    # localhost passes the submission's checks (a name, not an address): it is refused
    # when it resolves, at delivery.
    url = receiver.script("/hook", Answer(200)).replace("127.0.0.1", "localhost")
    run = finished_run(platform, unique, url)
    before = counted("refused")
    deliver(platform, http_allow_private_addresses=False)
    assert receiver.requests_of("/hook") == []
    [row] = deliveries(platform, run["id"])
    assert row.status == "failed" and "private" in row.last_error
    assert counted("refused") - before >= 1
    assert platform.run(run["id"])["webhook"]["status"] == "failed"


def test_a_stored_url_no_connection_can_use_is_refused_and_the_pass_sends_the_others(
    platform: Stack, receiver: Origin, unique: str
) -> None:
    """A URL stored before the submission's check refused its host (a label IDNA cannot
    encode) fails at delivery, and must not end the pass for the other deliveries."""
    good = finished_run(platform, unique, receiver.script("/hook", Answer(200)))
    bad = finished_run(platform, f"{unique}_bad", receiver.script("/other", Answer(200)))
    with platform.sessions.begin() as session:
        session.execute(
            update(Run)
            .where(Run.id == bad["id"])
            .values(webhook_url="https://a..b.example.com/hook")
        )
    deliver(platform)
    [request] = receiver.requests_of("/hook")
    assert verified(request)["data"]["run"]["id"] == good["id"]
    [row] = deliveries(platform, bad["id"])
    assert row.status == "failed" and "UnicodeError" in row.last_error
    [sent] = deliveries(platform, good["id"])
    assert sent.status == "delivered"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "not a url",
        "https:///no-host",
        "https://user:secret@example.com/hook",
        "https://example.com/" + "x" * 2100,
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://example.com/a b",
        "https://a..b.example.com/hook",
        "https://" + "x" * 64 + ".example.com/hook",
        "",
        123,
    ],
)
def test_a_bad_webhook_url_is_a_422_naming_webhook_url(database: Stack, url: Any) -> None:
    name = "webhook_bad_url"
    database.register(spec(name, [{"id": "a", "action": "noop"}]))
    response = database.client().post(
        "/runs", json={"workflow": name, "webhook_url": url}, headers=database.headers()
    )
    assert "webhook_url" in fields(problem(response, 422))


def test_production_takes_https_webhooks_only_unless_private_addresses_are_allowed() -> None:
    production = Settings(env="production")
    assert check_url("https://hooks.example.com/engine", production)
    with pytest.raises(InvalidInput) as refused:
        check_url("http://hooks.example.com/engine", production)
    assert refused.value.errors[0]["field"] == "webhook_url"
    allowed = Settings(env="production", http_allow_private_addresses=True)
    assert check_url("http://hooks.example.com/engine", allowed)
    listed = Settings(http_allowed_hosts=("hooks.example.com",))
    with pytest.raises(InvalidInput):
        check_url("https://elsewhere.example.com/engine", listed)

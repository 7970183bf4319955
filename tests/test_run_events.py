"""GET /runs/{id}/events: a run's states as Server-Sent Events until it finishes, against a
real worker; ids that name the state, and a reconnection with one sent only what changed;
heartbeats, the longest stream, the access line written at its end, the latency histogram
left alone; the cap on open streams under a real gunicorn."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from engine import logs
from engine.auth import mint_token
from tests.conftest import spec
from tests.support import services
from tests.support.metrics import read_api_metrics
from tests.support.stack import Stack, private_stack
from web import create_app
from web import db as web_db
from web.events import RETRY_AFTER_S

FINISHED = {"succeeded", "failed", "cancelled"}


def sse(chunks: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    """The events of a stream as they come: {"id", "event", "data"}, or {"comment": text}
    for a comment line; after the `retry:` every stream begins with."""
    blocks = sse_blocks(chunks)
    assert next(blocks) == {"retry": str(RETRY_AFTER_S * 1000)}
    yield from blocks


def sse_blocks(chunks: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            fields: dict[str, Any] = {}
            for line in block.decode().splitlines():
                name, _, value = line.partition(":")
                if name == "":
                    fields["comment"] = value.strip()
                else:
                    fields[name] = value.lstrip(" ")
            if "data" in fields:
                fields["data"] = json.loads(fields["data"])
            yield fields
    assert buffer == b"", buffer


def stream(client: Any, run_id: str, headers: dict[str, str], **options: Any) -> Any:
    response = client.get(f"/runs/{run_id}/events", headers=headers, buffered=False, **options)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/event-stream"
    return response


@pytest.fixture(scope="module")
def platform(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A platform of its own whose worker the first test starts once a run is queued."""
    with private_stack(backend, tmp_path_factory.mktemp(f"events-{backend}")) as (stack, _):
        yield stack


def a_worker(stack: Stack) -> None:
    if not stack.workers:
        stack.start_worker(concurrency=2)


def test_a_run_streams_queued_running_succeeded_in_order_then_the_stream_ends(
    platform: Stack, unique: str
) -> None:
    platform.register(spec(unique, [{"id": "nap", "action": "record", "with": {"sleep": 1.5}}]))
    run_id = platform.submit(unique)
    response = stream(platform.client(), run_id, platform.headers())
    events = sse(response.response)
    first = next(events)
    # No worker yet: the run waits in the queue, and the first event says so, with steps.
    assert first["event"] == "run"
    assert first["data"] == platform.run(run_id)
    assert first["data"]["status"] == "queued" and first["data"]["steps"] == []
    a_worker(platform)
    rest = list(events)  # ends by itself once the run has finished
    response.close()
    received = [first, *rest]
    assert {event["event"] for event in received} == {"run"}
    # Each state its own id; a new connection gives the same state the same id.
    assert len({event["id"] for event in received}) == len(received)
    statuses = [event["data"]["status"] for event in received]
    order = ["queued", "planning", "running", "succeeded"]
    assert statuses == sorted(statuses, key=order.index), statuses
    assert {"queued", "running", "succeeded"} <= set(statuses)
    naps = [event["data"]["steps"][0] for event in received if event["data"]["steps"]]
    assert [step["status"] for step in naps][-1] == "succeeded"
    assert "running" in [step["status"] for step in naps]
    # Each event differs from the one before it, and the last is the run as it ended.
    assert all(a["data"] != b["data"] for a, b in zip(received, received[1:], strict=False))
    assert received[-1]["data"] == platform.run(run_id)
    again = stream(platform.client(), run_id, platform.headers())
    assert list(sse(again.response)) == [received[-1]]


def test_a_failing_run_streams_until_failed(platform: Stack, unique: str) -> None:
    a_worker(platform)
    failing = {"id": "bad", "action": "record", "with": {"fail": True}}
    failing["retry"] = {"max_attempts": 1}
    platform.register(spec(unique, [failing]))
    run_id = platform.submit(unique)
    response = stream(platform.client(), run_id, platform.headers())
    received = list(sse(response.response))
    response.close()
    assert received[-1]["data"]["status"] == "failed"
    assert received[-1]["data"]["steps"][0]["status"] in ("failed", "dead")
    assert all(event["data"]["status"] not in FINISHED for event in received[:-1])


def test_another_callers_run_is_a_404_as_get_answers_it(database: Stack, unique: str) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    run_id = database.submit(unique)
    client = database.client()
    other = database.headers("mallory@example.com", "runs.read")
    streamed = client.get(f"/runs/{run_id}/events", headers=other)
    read = client.get(f"/runs/{run_id}", headers=other)
    assert streamed.status_code == read.status_code == 404
    assert streamed.mimetype == "application/problem+json"
    assert streamed.get_json() == read.get_json()
    missing = client.get("/runs/nothing-here/events", headers=database.headers())
    assert missing.status_code == 404
    no_scope = database.headers("alice@example.com", "workflows.read")
    assert client.get(f"/runs/{run_id}/events", headers=no_scope).status_code == 403


@pytest.fixture
def short_streams(database: Stack, tmp_path: Path) -> Iterator[Any]:
    """The API with streams of at most 1 s and a heartbeat every 0.2 s, logging to files."""
    app = create_app(
        database.settings.with_changes(
            events_max_duration_s=1.0, events_heartbeat_s=0.2, log_dir=tmp_path
        )
    )
    yield app
    web_db.dispose(app)
    logs.configure(database.settings, "api")


@pytest.fixture
def patient_streams(database: Stack) -> Iterator[Any]:
    """The API reading runs every 0.1 s, with a heartbeat every 0.2 s."""
    app = create_app(
        database.settings.with_changes(events_heartbeat_s=0.2, events_poll_interval_s=0.1)
    )
    yield app
    web_db.dispose(app)


def test_a_quiet_stream_sends_heartbeats_and_ends_with_a_timeout_event_at_its_longest(
    database: Stack, short_streams: Any, unique: str, tmp_path: Path
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    run_id = database.submit(unique)  # no worker: it stays queued
    started = time.monotonic()
    response = stream(short_streams.test_client(), run_id, database.headers())
    received = list(sse(response.response))
    response.close()
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 5, elapsed
    assert received[0]["event"] == "run" and received[0]["data"]["status"] == "queued"
    # Its id is the state's the client has, as EventSource sends it when it reconnects.
    assert received[-1] == {"id": received[0]["id"], "event": "timeout", "data": {}}
    heartbeats = received[1:-1]
    assert len(heartbeats) >= 3 and all(event == {"comment": "keep-alive"} for event in heartbeats)
    # Its access line is written when it ends, with its whole duration.
    access = [
        json.loads(line)
        for line in (tmp_path / "access.log").read_text().splitlines()
        if f"/runs/{run_id}/events" in line
    ]
    assert len(access) == 1
    assert access[0]["status"] == 200 and access[0]["duration_ms"] >= 1000
    assert access[0]["request_id"] == response.headers["X-Request-ID"]


def whole_stream(client: Any, run_id: str, headers: dict[str, str], **options: Any) -> list[Any]:
    response = stream(client, run_id, headers, **options)
    try:
        return list(sse(response.response))
    finally:
        response.close()  # gives its slot back


def test_a_client_that_reconnects_with_the_id_of_its_state_is_sent_only_what_changed(
    database: Stack, short_streams: Any, patient_streams: Any, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    run_id = database.submit(unique)  # no worker: it stays queued until cancelled
    client, headers = short_streams.test_client(), database.headers()
    first = whole_stream(client, run_id, headers)
    has = first[0]["id"]
    assert first[0]["event"] == "run" and first[-1] == {"id": has, "event": "timeout", "data": {}}

    # The state it has, by header (EventSource) or query parameter: heartbeats, then the
    # timeout, and no event of the state again.
    for options in (
        {"headers": {**headers, "Last-Event-ID": has}},
        {"headers": headers, "query_string": {"last_event_id": has}},
    ):
        again = whole_stream(client, run_id, **options)
        assert again[0] == {"comment": "keep-alive"}
        assert [event.get("event") for event in again if "comment" not in event] == ["timeout"]
        assert again[-1]["id"] == has
    # Another id: the state at once.
    other = stream(client, run_id, {**headers, "Last-Event-ID": "3"})
    assert next(sse(other.response)) == first[0]
    other.close()

    # Waiting with the state it has, the client is sent the next one as it comes.
    waiting = stream(patient_streams.test_client(), run_id, {**headers, "Last-Event-ID": has})
    events = sse(waiting.response)
    assert next(events) == {"comment": "keep-alive"}
    writer = database.headers(scopes="runs.write")
    assert database.client().post(f"/runs/{run_id}/cancel", headers=writer).status_code == 200
    rest = [event for event in events if "comment" not in event]
    waiting.close()
    assert [(event["event"], event["data"]["status"]) for event in rest] == [("run", "cancelled")]
    assert rest[0]["data"] == database.run(run_id)
    final = rest[0]["id"]
    assert final != has

    # The run finished and the client has its last state: a 204 (EventSource stops).
    done = client.get(f"/runs/{run_id}/events", headers={**headers, "Last-Event-ID": final})
    assert (done.status_code, done.get_data()) == (204, b"")
    # One that missed it is sent it, and the stream ends.
    assert whole_stream(client, run_id, {**headers, "Last-Event-ID": has}) == rest


def test_a_stream_ends_when_its_token_expires_or_is_revoked(
    database: Stack, unique: str, tmp_path: Path
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    run_id = database.submit(unique)  # no worker: it stays queued, the stream stays open
    app = create_app(
        database.settings.with_changes(events_heartbeat_s=0.2, events_poll_interval_s=0.1)
    )
    try:
        client = app.test_client()
        short = mint_token(database.settings, "alice@example.com", ["runs.read"], timedelta(0, 1))
        started = time.monotonic()
        received = list(sse(stream(client, run_id, bearer(short.token)).response))
        assert time.monotonic() - started < 5
        assert received[0]["event"] == "run"
        assert received[-1]["event"] == "unauthorized"
        assert received[-1]["data"] == {"detail": "token expired"}

        minted = mint_token(database.settings, "alice@example.com", ["runs.read"], timedelta(1))
        events = sse(stream(client, run_id, bearer(minted.token)).response)
        assert next(events)["event"] == "run"
        admin = database.headers("ops@example.com", "admin.tokens")
        revoked = client.post("/admin/tokens/revoke", json={"jti": minted.jti}, headers=admin)
        assert revoked.status_code == 200
        rest = list(events)
        assert rest[-1]["event"] == "unauthorized"
        assert rest[-1]["data"] == {"detail": "token revoked"}
        again = client.get(f"/runs/{run_id}/events", headers=bearer(minted.token))
        assert again.status_code == 401
    finally:
        web_db.dispose(app)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def samples(text: str, name: str, endpoint: str, status: int) -> list[str]:
    labels = (f'endpoint="{endpoint}"', f'status="{status}"')
    return [
        line
        for line in text.splitlines()
        if line.startswith(name) and all(label in line for label in labels)
    ]


def test_the_latency_histogram_does_not_count_streams(
    database: Stack, short_streams: Any, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    run_id = database.submit(unique)
    client = short_streams.test_client()
    response = stream(client, run_id, database.headers())
    assert list(sse(response.response))[-1]["event"] == "timeout"
    response.close()
    metrics = read_api_metrics(short_streams)
    route = "/runs/<run_id>/events"
    assert samples(metrics, "api_requests_total", route, 200), "the stream is counted"
    # No series of streams in the histogram; answers that are not streams (a 404, POST
    # /runs above) are in it.
    assert samples(metrics, "api_request_latency_seconds", route, 200) == []
    assert samples(metrics, "api_request_latency_seconds_count", "/runs", 202)


def test_one_stream_over_the_cap_is_a_503_with_retry_after_while_others_are_served(
    database: Stack, unique: str, tmp_path: Path
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    run_id = database.submit(unique)  # no worker: its stream stays open
    port = services.free_port()
    env = {
        **database.env,
        "WEB_CONCURRENCY": "1",
        "WEB_THREADS": "2",
        "EVENTS_MAX_STREAMS": "1",
        "EVENTS_HEARTBEAT_S": "0.2",
    }
    process = services.start_gunicorn(env, tmp_path / "gunicorn.log", port)
    base = f"http://127.0.0.1:{port}"
    headers = database.headers()
    url = f"{base}/runs/{run_id}/events"

    def answering() -> bool:
        try:
            return requests.get(f"{base}/health", timeout=2).status_code == 200
        except (requests.ConnectionError, requests.Timeout):  # not started, or busy starting
            return False

    try:
        services.wait_for(answering, 60, 0.1, "gunicorn to answer")
        held = requests.get(url, headers=headers, stream=True, timeout=10)
        assert held.status_code == 200
        first = next(sse(held.iter_content(None)))
        assert first["data"]["status"] == "queued"

        refused = requests.get(url, headers=headers, timeout=10)
        assert refused.status_code == 503
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert refused.json()["code"] == "streams_busy"
        assert int(refused.headers["Retry-After"]) > 0
        # The other thread still serves ordinary requests.
        read = requests.get(f"{base}/runs/{run_id}", headers=headers, timeout=10)
        assert read.status_code == 200

        # A client gone is seen at the next heartbeat, and its slot is free again; it
        # reconnects as EventSource does, with the id of the state it has.
        held.close()
        resumed = {**headers, "Last-Event-ID": first["id"]}

        def opened() -> requests.Response | None:
            again = requests.get(url, headers=resumed, stream=True, timeout=10)
            if again.status_code == 200:
                return again
            again.close()
            return None

        again = services.wait_for(opened, 10, 0.2, "a stream to be accepted again")
        # Nothing changed: kept alive, and not sent the state it has.
        assert next(sse(again.iter_content(None))) == {"comment": "keep-alive"}
        again.close()
    finally:
        process.terminate()
        process.wait(20)


def test_a_database_gone_away_ends_the_stream_and_the_reconnection_is_a_503(
    tmp_path: Path, unique: str
) -> None:
    platform = Stack("postgres", tmp_path)
    try:
        platform.register(spec(unique, [{"id": "a", "action": "noop"}]))
        run_id = platform.submit(unique)  # no worker: it stays queued
        client = platform.client()
        response = stream(client, run_id, platform.headers())
        events = sse(response.response)
        assert next(events)["data"]["status"] == "queued"
        services.allow_connections(platform.database_url, False)
        try:
            services.end_every_session(platform.database_url)
            assert list(events) == []  # ended, without an event
            response.close()
            again = client.get(f"/runs/{run_id}/events", headers=platform.headers())
            assert again.status_code == 503 and "Retry-After" in again.headers
        finally:
            services.allow_connections(platform.database_url, True)
        stream(client, run_id, platform.headers()).close()  # back
    finally:
        platform.close()

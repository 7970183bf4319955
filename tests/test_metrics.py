"""Metrics are counted exactly across processes: prefork children of a worker and gunicorn
workers of the API (multiprocess mode), and the live gauges read what Redis really holds."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from engine import queues
from engine.work import Dispatch, Work
from tests.conftest import spec
from tests.support import services
from tests.support.metrics import api_metrics, read_api_metrics
from tests.support.stack import Stack, private_stack
from workers import dispatch
from workers.factory import make_celery


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition text, by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


def http_get(url: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture(scope="module")
def multiprocess_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """SQLite, and a prefork worker (-c 2) counting into a multiprocess directory."""
    directory = tmp_path_factory.mktemp("metrics")
    platform = Stack(
        "sqlite",
        directory,
        env={"PROMETHEUS_MULTIPROC_DIR": str(directory / "worker-metrics")},
    )
    platform.start_worker(concurrency=2)
    yield platform
    platform.close()


def test_a_prefork_worker_reports_every_step_its_children_ran_exactly_once(
    multiprocess_stack: Stack, unique: str
) -> None:
    stack = multiprocess_stack
    runs = 20
    # A short sleep keeps one child busy while the next run arrives, so both children work.
    stack.register(spec(unique, [{"id": "only", "action": "record", "with": {"sleep": 0.1}}]))
    run_ids = [stack.submit(unique) for _ in range(runs)]
    for run_id in run_ids:
        assert stack.wait_finished(run_id)["status"] == "succeeded"

    lines = (stack.directory / "executions.log").read_text().split()
    pids = {int(pid) for pid in lines[3::4]}
    worker = stack.workers[0]
    assert pids <= set(worker.children()), "steps ran in the worker's prefork children"
    assert len(pids) == 2, f"both children ran steps: {pids}"

    port = stack.env["WORKER_HEALTH_PORT"]
    status, text = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    assert value(text, "steps_total", action="record", status="succeeded") == runs
    assert value(text, "runs_total", workflow=unique, status="succeeded") == runs
    assert value(text, "step_duration_seconds_count", action="record") == runs
    assert value(text, "manager_planning_duration_seconds_count") == runs
    assert value(text, "dlq_events_total", event="added") == 0
    assert value(text, "workers_online") == 1
    assert value(text, "queue_depth", queue="steps") == 0


def test_the_api_counts_every_request_across_gunicorn_workers_even_recycled_ones(
    multiprocess_stack: Stack, tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "api-metrics"
    port, metrics_port = services.free_port(), services.free_port()
    # --max-requests recycles each worker after a few requests: the counts of workers that
    # have exited must still be in the total.
    log = tmp_path / "gunicorn.log"
    process = services.start_gunicorn(
        {**multiprocess_stack.env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
        log,
        port,
        "--workers",
        "2",
        "--threads",
        "1",
        "--max-requests",
        "7",
        "--control-socket",
        str(tmp_path / "gunicorn.ctl"),
        metrics_port=metrics_port,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def answering() -> bool:
            try:
                return http_get(f"{base}/readyz", timeout=2)[0] == 200
            except OSError:
                return False

        services.wait_for(answering, 60, 0.1, "gunicorn to answer")
        requests = 30
        for _ in range(requests):
            assert http_get(f"{base}/health")[0] == 200

        status, text = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200
        labels = {"method": "GET", "endpoint": "/health", "status": "200"}
        assert value(text, "api_requests_total", **labels) == requests
        assert value(text, "api_request_latency_seconds_count", **labels) == requests
        assert value(text, "api_requests_total", method="GET", endpoint="/readyz", status="200")
        # 31 requests with a cap of 7 per process: at least 5 processes served them.
        # The metrics listener (its pid in gunicorn's log) has counters of its own.
        listener = re.search(r"Metrics at \S+ \(pid (\d+)\)", log.read_text())
        assert listener is not None
        counters = [
            path
            for path in metrics_dir.glob("counter_*.db")
            if path.stem != f"counter_{listener[1]}"
        ]
        assert len(counters) >= 5, counters
        # The live gauges, read by the listener itself: the stack's worker is online.
        assert value(text, "workers_online") == 1
        assert value(text, "dlq_open") is not None
        for queue in ("manager", "steps", "default"):
            assert value(text, "queue_depth", queue=queue) is not None, queue
            assert value(text, "queue_lag_seconds", queue=queue) is not None, queue
        assert value(text, "dlq_events_total", event="added") == 0
        # Every route's error series is there from the start, so a first 5xx is an increase.
        for method, endpoint in (("POST", "/runs"), ("GET", "/runs/<run_id>")):
            labels = {"method": method, "endpoint": endpoint, "status": "500"}
            assert value(text, "api_errors_total", **labels) == 0, labels
    finally:
        process.terminate()
        process.wait(20)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[queues.QueueLayout, redis.Redis, object]]:
    """A sender under a key prefix of its own (no worker consumes it); keys removed after."""
    if not services.redis_alive(services.REDIS_URL):
        services.unavailable(f"Redis at {services.REDIS_URL}")
    prefix = f"metricstest-{time.monotonic_ns()}:"
    env = {
        "REDIS_URL": services.REDIS_URL,
        "REDIS_KEY_PREFIX": prefix,
        "JWT_SECRET": "s" * 40,
        "ENGINE_VAR_DIR": str(tmp_path),
    }
    from engine.config import Settings

    sender = make_celery(Settings.from_env(env))
    layout = queues.QueueLayout.from_transport_options(sender.conf.broker_transport_options)
    client = redis.Redis.from_url(services.REDIS_URL)
    yield layout, client, sender
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def test_queue_depth_counts_every_priority_list_and_lag_is_the_oldest_messages_age(
    broker: tuple[queues.QueueLayout, redis.Redis, object],
) -> None:
    layout, client, sender = broker
    sent = time.time()
    work = Work(
        [
            Dispatch("steps.execute", ("r1", "a"), "steps", "r1:a:1", priority=9),
            Dispatch("steps.execute", ("r1", "b"), "steps", "r1:b:1", priority=0),
            Dispatch("steps.execute", ("r2", "a"), "steps", "r2:a:1", priority=4),
            # Not servable for five minutes: it has not been waiting yet.
            Dispatch("steps.execute", ("r3", "a"), "default", "r3:a:1", countdown=300),
        ]
    )
    dispatch.send(work, sender)  # type: ignore[arg-type]
    # Three lists for one queue, each under the prefix.
    assert {key.decode() for key in client.scan_iter(f"{layout.prefix}steps*")} == {
        f"{layout.prefix}steps",
        f"{layout.prefix}steps:4",
        f"{layout.prefix}steps:9",
    }

    later = time.time() + 90
    stats = {
        stat.name: stat
        for stat in queues.queue_stats(client, layout, ["steps", "default", "manager"], now=later)
    }
    assert stats["steps"].depth == 3
    assert stats["steps"].lag_s is not None
    assert later - time.time() <= stats["steps"].lag_s <= later - sent
    assert stats["default"].depth == 1
    assert stats["default"].lag_s == 0.0
    assert stats["manager"].depth == 0
    assert stats["manager"].lag_s == 0.0


def test_the_api_metrics_expose_live_gauges_and_dead_letter_events_from_zero(
    database: Stack,
) -> None:
    from sqlalchemy import func, select

    from engine.models import DeadLetter
    from web import create_app

    with database.sessions() as session:
        open_letters = session.scalar(
            select(func.count()).select_from(DeadLetter).where(DeadLetter.status == "open")
        )
    text = read_api_metrics(create_app(database.settings))
    for event in ("added", "replayed", "discarded"):
        assert value(text, "dlq_events_total", event=event) is not None, event
    for queue in ("manager", "steps", "default"):
        assert value(text, "queue_depth", queue=queue) is not None, queue
        assert value(text, "queue_lag_seconds", queue=queue) is not None, queue
    assert value(text, "dlq_open") == open_letters
    # No worker consumes this stack's prefix.
    assert value(text, "workers_online") == 0


def test_every_answer_counts_once_and_a_5xx_counts_as_an_error_too(database: Stack) -> None:
    from web import create_app

    app = create_app(database.settings)

    def fail() -> None:
        raise RuntimeError("a bug")

    app.add_url_rule("/metrics-test-failure", "metrics_test_failure", fail)
    client = app.test_client()
    failed = {"method": "GET", "endpoint": "/metrics-test-failure", "status": "500"}
    answered = {"method": "GET", "endpoint": "/health", "status": "200"}
    series = [
        ("api_requests_total", failed),
        ("api_errors_total", failed),
        ("api_request_latency_seconds_count", failed),
        ("api_requests_total", answered),
        ("api_errors_total", answered),
    ]

    def counts() -> list[float]:
        # The counters are the process's: earlier tests' requests are in them too.
        text = read_api_metrics(app)
        return [value(text, name, **labels) or 0.0 for name, labels in series]

    before = counts()
    for _ in range(3):
        assert client.get("/metrics-test-failure").status_code == 500
        assert client.get("/health").status_code == 200
    added = [after - earlier for after, earlier in zip(counts(), before, strict=True)]
    assert added == [3, 3, 3, 3, 0]


def test_a_method_of_the_clients_own_counts_as_other(database: Stack) -> None:
    from web import create_app

    app = create_app(database.settings)
    client = app.test_client()
    made_up = [f"BREW{n}" for n in range(3)]
    for method in made_up:
        assert client.open("/health", method=method).status_code == 405
    text = read_api_metrics(app)
    assert value(text, "api_requests_total", method="other", endpoint="unmatched", status="405")
    for method in made_up:
        assert (
            value(text, "api_requests_total", method=method, endpoint="unmatched", status="405")
            is None
        )


def test_beat_answering_pings_is_not_counted_as_a_worker(tmp_path: Path) -> None:
    # Beat answers `celery inspect ping` (its compose healthcheck) but runs no task: counted,
    # it would keep NoWorkersOnline quiet with every worker gone.
    stack = Stack("sqlite", tmp_path)
    beat = services.start_beat(stack.env, tmp_path / "beat.log")
    try:
        control = stack.app.extensions["engine.celery"].control

        def beat_answers() -> bool:
            replies = control.ping(timeout=0.5) or []
            return any(name.startswith("celerybeat@") for reply in replies for name in reply)

        services.wait_for(beat_answers, 60, 0.2, "beat to answer a ping")
        client = stack.client()
        assert value(read_api_metrics(stack.app), "workers_online") == 0
        status = client.get("/admin/status", headers=stack.headers(scopes="admin.status"))
        assert status.get_json()["workers"]["online"] == 0

        worker = stack.start_worker(concurrency=1)
        port = stack.env["WORKER_HEALTH_PORT"]
        _, text = http_get(f"http://127.0.0.1:{port}/metrics")
        assert value(text, "workers_online") == 1
        status = client.get("/admin/status", headers=stack.headers(scopes="admin.status"))
        [name] = status.get_json()["workers"]["names"]
        assert name.startswith(worker.name.split("@")[0] + "@")
    finally:
        beat.terminate()
        beat.wait(20)
        stack.close()


def test_readiness_and_the_api_metrics_follow_the_database_and_broker_away_and_back(
    tmp_path: Path,
) -> None:
    # ReadinessFailing reads a missing dlq_open as the database failing and a missing
    # queue_depth as the broker failing: a reading that fails is left out, never 0.
    with private_stack("postgres", tmp_path) as (stack, server), api_metrics(stack.app) as read:
        client = stack.client()

        def state() -> tuple[int, list[str], str]:
            ready = client.get("/readyz")
            failing = [error["field"] for error in (ready.get_json().get("errors") or [])]
            assert client.get("/health").status_code == 200  # liveness depends on neither
            return ready.status_code, failing, read()

        def settled(status: int, failing: list[str], dlq: bool, depth: bool) -> None:
            def check() -> bool:
                code, names, text = state()
                served = value(text, "dlq_open") is not None
                queues = value(text, "queue_depth", queue="steps") is not None
                return (code, names, served, queues) == (status, failing, dlq, depth)

            services.wait_for(check, 30, 0.5, f"ready {status}, failing {failing}")

        settled(200, [], dlq=True, depth=True)

        services.allow_connections(stack.database_url, False)
        try:
            services.end_every_session(stack.database_url)
            settled(503, ["database"], dlq=False, depth=True)
        finally:
            services.allow_connections(stack.database_url, True)
        settled(200, [], dlq=True, depth=True)

        server.stop()
        settled(503, ["broker"], dlq=True, depth=False)
        server.start()
        settled(200, [], dlq=True, depth=True)


def test_a_queue_named_by_a_step_is_measured_even_with_no_worker_consuming_it(
    tmp_path: Path, unique: str
) -> None:
    # A step may name its own queue; one no worker consumes holds its runs forever, and
    # only queue_depth and queue_lag_seconds (QueueLagHigh) can show it.
    stack = Stack("sqlite", tmp_path)
    try:
        stack.start_worker(concurrency=1)  # manager, steps and default only
        queue = f"gpu-{unique}"
        stack.register(spec(unique, [{"id": "only", "action": "noop", "queue": queue}]))
        run_ids = [stack.submit(unique) for _ in range(2)]
        for run_id in run_ids:
            services.wait_for(
                lambda run_id=run_id: (
                    [s["status"] for s in stack.run(run_id)["steps"]] == ["queued"]
                ),
                30,
                0.1,
                "the step to wait in its queue",
            )
        client = stack.client()
        with api_metrics(stack.app) as read:

            def measured() -> str | None:
                text = read()
                return text if value(text, "queue_depth", queue=queue) == 2 else None

            text = services.wait_for(measured, 20, 0.5, f"queue_depth of {queue}")
        assert value(text, "queue_lag_seconds", queue=queue) is not None
        status = client.get("/admin/status", headers=stack.headers(scopes="admin.status"))
        depths = {item["name"]: item["depth"] for item in status.get_json()["queues"]["items"]}
        assert depths[queue] == 2
        assert {"manager", "steps", "default"} <= set(depths)
    finally:
        stack.close()


def test_a_worker_serves_the_outcomes_of_known_workflows_and_actions_from_zero(
    tmp_path: Path, unique: str
) -> None:
    # increase() and rate() cannot see the event a series is born with: without these, the
    # first run of a workflow to fail after a worker starts would not show as failed.
    (tmp_path / "metrics").mkdir()
    stack = Stack("sqlite", tmp_path, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")})
    try:
        stack.register(spec(unique, [{"id": "only", "action": "record"}]))
        stack.start_worker(concurrency=1)
        _, text = http_get(f"http://127.0.0.1:{stack.env['WORKER_HEALTH_PORT']}/metrics")
        for status in ("succeeded", "failed"):
            assert value(text, "runs_total", workflow=unique, status=status) == 0, status
        for action in ("record", "noop"):
            for status in ("succeeded", "retrying", "dead"):
                assert value(text, "steps_total", action=action, status=status) == 0

        stack.register(spec(f"{unique}_fails", [{"id": "x", "action": "fail"}]))
        run_id = stack.submit(f"{unique}_fails")
        assert stack.wait_finished(run_id)["status"] == "failed"
        _, text = http_get(f"http://127.0.0.1:{stack.env['WORKER_HEALTH_PORT']}/metrics")
        assert value(text, "runs_total", workflow=f"{unique}_fails", status="failed") == 1
    finally:
        stack.close()

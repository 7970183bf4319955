"""Every worker serves /health and /metrics from its main process: 200 while it can take
work, 503 naming the reason when it cannot; workers sharing a host take the next ports."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support import services
from tests.support.stack import Stack
from workers import timers


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def health_port_logged(log_path: Path) -> int | None:
    """The port a worker says its health server bound (JSON log lines)."""
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if "health_port" in entry:
                return int(entry["health_port"])
    return None


def test_two_workers_on_one_host_each_serve_health_on_their_own_port(tmp_path: Path) -> None:
    stack = Stack("sqlite", tmp_path)
    try:
        first = stack.start_worker(concurrency=1, name="first@%h")
        second = stack.start_worker(concurrency=1, name="second@%h")
        wanted = int(stack.env["WORKER_HEALTH_PORT"])
        assert health_port_logged(first.log_path) == wanted
        taken = health_port_logged(second.log_path)
        assert taken is not None and wanted < taken <= wanted + 20
        assert f"(port {wanted} was taken)" in second.log_path.read_text()

        for port, name in ((wanted, "first@"), (taken, "second@")):
            status, body = get_json(f"http://127.0.0.1:{port}/health")
            assert status == 200, body
            assert body["status"] == "ok"
            assert body["checks"] == {"broker": "ok", "database": "ok", "consumer": "ok"}
            assert body["worker"].startswith(name)

        with urllib.request.urlopen(f"http://127.0.0.1:{taken}/metrics", timeout=10) as response:
            text = response.read().decode()
        assert response.headers["Content-Type"].startswith("text/plain")
        assert "workers_online 2.0" in text
        assert 'dlq_events_total{event="added"} 0.0' in text
    finally:
        stack.close()


def test_a_worker_that_lost_its_broker_answers_503_naming_the_broker(tmp_path: Path) -> None:
    server = services.RedisServer(tmp_path / "redis").start()
    stack = Stack("sqlite", tmp_path / "stack", redis_url=server.url)
    try:
        worker = stack.start_worker(concurrency=1)
        url = f"http://127.0.0.1:{stack.env['WORKER_HEALTH_PORT']}/health"
        assert get_json(url)[0] == 200

        server.stop()

        def unhealthy() -> dict[str, Any] | None:
            status, body = get_json(url)
            return body if status == 503 else None

        body = services.wait_for(unhealthy, 20, 0.1, "/health to answer 503")
        assert body["status"] == "unavailable"
        assert body["checks"]["broker"].startswith("unreachable")
        assert body["reason"].startswith("broker unreachable")
        worker.kill()
    finally:
        stack.close()
        server.stop()


def test_a_worker_that_cannot_reach_its_database_answers_503_naming_it_until_it_is_back(
    tmp_path: Path,
) -> None:
    # Every task reads and writes the database: a worker without it can take no work.
    stack = Stack("postgres", tmp_path)
    try:
        stack.start_worker(concurrency=1)
        url = f"http://127.0.0.1:{stack.env['WORKER_HEALTH_PORT']}/health"
        assert get_json(url)[0] == 200

        def answers(wanted: int) -> dict[str, Any] | None:
            status, body = get_json(url)
            return body if status == wanted else None

        services.allow_connections(stack.database_url, False)
        try:
            services.end_every_session(stack.database_url)
            body = services.wait_for(lambda: answers(503), 20, 0.2, "/health to answer 503")
        finally:
            services.allow_connections(stack.database_url, True)
        assert body["checks"]["database"].startswith("unreachable")
        assert body["checks"]["broker"] == "ok"
        assert body["reason"].startswith("database unreachable")

        body = services.wait_for(lambda: answers(200), 20, 0.2, "/health to answer 200 again")
        assert body["checks"] == {"broker": "ok", "database": "ok", "consumer": "ok"}
    finally:
        stack.close()


def test_the_time_limit_timers_of_finished_tasks_do_not_pile_up_in_the_main_process(
    tmp_path: Path,
) -> None:
    # Every message arms a timer for its soft limit (here plan_run's: 60 s plus the step's
    # 300 s); cancelled when the task ends, it would stay in the heap until then.
    stack = Stack("sqlite", tmp_path)
    try:
        stack.start_worker(concurrency=2)
        url = f"http://127.0.0.1:{stack.env['WORKER_HEALTH_PORT']}/health"
        idle = get_json(url)[1]["timers"]
        assert isinstance(idle, int)
        stack.register({"name": "tick", "version": 1, "steps": [{"id": "t", "action": "noop"}]})
        headers = stack.headers()
        run_ids = [stack.submit("tick", headers=headers) for _ in range(150)]
        for run_id in run_ids:
            assert stack.wait_finished(run_id)["status"] == "succeeded"

        def swept() -> int | None:
            count = get_json(url)[1]["timers"]
            return count if count <= idle + 20 else None

        services.wait_for(swept, timers.SWEEP_S + 15, 0.5, "the cancelled timers to be swept")
    finally:
        stack.close()

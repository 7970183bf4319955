"""The API's gunicorn settings (web/gunicorn_conf.py), served by a real gunicorn."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support import services
from tests.support.stack import Stack


def test_one_thread_per_worker_still_keeps_connections_alive(tmp_path: Path) -> None:
    """WEB_THREADS=1 must not swap in gunicorn's sync worker, which answers every request
    with `Connection: close`: each client would pay for a new connection per request."""
    stack = Stack("sqlite", tmp_path)
    port = services.free_port()
    process = services.start_gunicorn(
        {**stack.env, "WEB_CONCURRENCY": "1", "WEB_THREADS": "1"}, tmp_path / "gunicorn.log", port
    )
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:

        def answering() -> bool:
            try:
                connection.request("GET", "/health")
                response = connection.getresponse()
                response.read()
                return response.status == 200
            except OSError:
                connection.close()
                return False

        services.wait_for(answering, 60, 0.1, "gunicorn to answer")
        assert connection.sock is not None, "the server closed the connection after answering"
        first = connection.sock.getsockname()
        for _ in range(3):
            connection.request("GET", "/health")
            response = connection.getresponse()
            response.read()
            assert response.status == 200
            assert (response.getheader("Connection") or "").lower() != "close"
            # http.client would open a new socket (another local port) after a close.
            assert connection.sock is not None and connection.sock.getsockname() == first
    finally:
        connection.close()
        process.terminate()
        process.wait(20)
        stack.close()


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def fetch(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_metrics_are_served_on_the_private_port_only_and_end_with_the_master(
    tmp_path: Path, stop: signal.Signals
) -> None:
    # No PROMETHEUS_MULTIPROC_DIR: the master makes a directory of its own (under TMPDIR).
    stack = Stack("sqlite", tmp_path)
    port, metrics_port = services.free_port(), services.free_port()
    env = {**stack.env, "TMPDIR": str(tmp_path)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process = services.start_gunicorn(
        env, tmp_path / "gunicorn.log", port, "-w", "2", metrics_port=metrics_port
    )
    try:
        services.wait_for(
            lambda: listening(port) and fetch(f"http://127.0.0.1:{port}/health")[0] == 200,
            60,
            0.1,
            "gunicorn to answer",
        )
        status, content_type, body = fetch(f"http://127.0.0.1:{port}/metrics")
        assert (status, content_type) == (404, "application/problem+json"), body
        assert "queue_depth" not in body
        for _ in range(20):
            assert fetch(f"http://127.0.0.1:{port}/health")[0] == 200

        status, _, text = fetch(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200
        # Both workers' counts, summed (the wait above made one request too).
        assert 'api_requests_total{endpoint="/health",method="GET",status="200"} 21.0' in text
        assert 'api_requests_total{endpoint="unmatched",method="GET",status="404"} 1.0' in text
        assert 'queue_depth{queue="steps"}' in text and "dlq_open 0.0" in text
        assert fetch(f"http://127.0.0.1:{metrics_port}/health")[0] == 404

        process.send_signal(stop)  # to the master only
        process.wait(20)
        # Killed, the master runs no hook: the listener sees it gone and leaves by itself.
        services.wait_for(lambda: not listening(metrics_port), 20, 0.1, "the listener to end")
        if stop == signal.SIGTERM:
            assert list(tmp_path.glob("api-metrics-*")) == [], "the master removes its directory"
    finally:
        try:  # whatever is left of gunicorn's session, should the test have failed
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(20)
        stack.close()

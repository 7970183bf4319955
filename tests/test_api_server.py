"""The API's gunicorn settings (web/gunicorn_conf.py), served by a real gunicorn."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from functools import partial
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


def listener_pids(log: Path) -> list[int]:
    """The metrics listeners gunicorn's masters started, in order, as their log names them."""
    return [int(pid) for pid in re.findall(r"Metrics at \S+ \(pid (\d+)\)", log.read_text())]


def metrics_text(port: int) -> str | None:
    """The listener's /metrics, or None while nothing answers there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return str(answer.read().decode())
    except OSError:
        return None


def served_after(log: Path, metrics_port: int, ended: int) -> str | None:
    """/metrics, once a listener other than `ended` was started and answers there."""
    if listener_pids(log)[-1] == ended:
        return None
    return metrics_text(metrics_port)


def test_a_metrics_listener_that_ends_is_started_again_by_the_master(tmp_path: Path) -> None:
    """Killed (as the kernel kills a process out of memory), the listener is started again
    by gunicorn's master within seconds, twice, each one counting the restarts before it."""
    stack = Stack("sqlite", tmp_path)
    port, metrics_port = services.free_port(), services.free_port()
    log = tmp_path / "gunicorn.log"
    process = services.start_gunicorn(stack.env, log, port, "-w", "1", metrics_port=metrics_port)
    try:
        services.wait_for(lambda: metrics_text(metrics_port), 60, 0.1, "the metrics listener")
        for restarts in (1, 2):
            ended = listener_pids(log)[-1]
            os.kill(ended, signal.SIGKILL)
            text = services.wait_for(
                partial(served_after, log, metrics_port, ended), 20, 0.1, f"restart {restarts}"
            )
            assert f"api_metrics_listener_restarts_total {restarts}.0" in text
            assert f"Metrics listener (pid {ended}) ended" in log.read_text()
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(20)
        stack.close()


def test_a_metrics_listener_whose_socket_stops_listening_ends_for_its_master_to_start_another(
    tmp_path: Path,
) -> None:
    """Its socket shut down (here through this test's copy of it), the listener's serving
    thread spins on accept() errors and serves nothing: the process ends, status 1."""
    stack = Stack("sqlite", tmp_path)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    fd = listener.fileno()
    # This test stands for gunicorn's master: the listener's parent.
    process = subprocess.Popen(
        [sys.executable, "-m", "web.metrics_listener", str(fd), str(os.getpid()), "0"],
        cwd=services.ROOT,
        env=stack.env,
        pass_fds=(fd,),
    )
    try:
        text = services.wait_for(lambda: metrics_text(port), 60, 0.1, "the metrics listener")
        assert "api_metrics_listener_restarts_total 0.0" in text
        listener.shutdown(socket.SHUT_RDWR)
        assert process.wait(10) == 1
    finally:
        listener.close()
        if process.poll() is None:
            process.kill()
            process.wait(10)
        stack.close()


def test_after_a_usr2_upgrade_the_new_master_serves_the_metrics_once_the_old_one_leaves(
    tmp_path: Path,
) -> None:
    """gunicorn's binary upgrade: the new master cannot bind the metrics port the old one's
    listener holds. It starts anyway and binds it once the old master has left; the counts
    of the old master's workers are still summed."""
    stack = Stack("sqlite", tmp_path)
    port, metrics_port = services.free_port(), services.free_port()
    log, pidfile = tmp_path / "gunicorn.log", tmp_path / "gunicorn.pid"
    env = {**stack.env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "api-metrics")}
    process = services.start_gunicorn(
        env, log, port, "-w", "1", "--pid", str(pidfile), metrics_port=metrics_port
    )
    health = f"http://127.0.0.1:{port}/health"
    try:
        services.wait_for(
            lambda: listening(port) and fetch(health)[0] == 200, 60, 0.1, "gunicorn to answer"
        )
        for _ in range(5):
            assert fetch(health)[0] == 200
        services.wait_for(lambda: metrics_text(metrics_port), 30, 0.1, "the metrics listener")
        old_listener = listener_pids(log)[-1]

        process.send_signal(signal.SIGUSR2)
        services.wait_for(
            lambda: f"Metrics port 127.0.0.1:{metrics_port} is held" in log.read_text(),
            30,
            0.1,
            "the new master to wait for the metrics port",
        )
        new_pidfile = tmp_path / "gunicorn.pid.2"
        new_master = int(
            services.wait_for(
                lambda: new_pidfile.exists() and new_pidfile.read_text().strip(),
                10,
                0.1,
                "the new master's pid file",
            )
        )
        assert metrics_text(metrics_port) is not None, "the old master's listener serves"

        process.send_signal(signal.SIGTERM)  # the old master leaves, with its listener
        process.wait(20)
        text = services.wait_for(
            lambda: served_after(log, metrics_port, old_listener), 20, 0.1, "the new listener"
        )
        os.kill(new_master, 0)  # still there
        counted = re.search(
            r'api_requests_total\{endpoint="/health",method="GET",status="200"\} (\S+)', text
        )
        assert counted is not None and float(counted[1]) >= 6, text
        assert "api_metrics_listener_restarts_total 0.0" in text
    finally:
        try:  # the new master is in the old one's process group, with its workers
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(20)
        stack.close()

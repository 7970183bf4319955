"""The API's gunicorn settings (web/gunicorn_conf.py), served by a real gunicorn."""

from __future__ import annotations

import http.client
from pathlib import Path

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

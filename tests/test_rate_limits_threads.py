"""Rate limits counted by a gunicorn worker's threads at once (web.rate_limits): in this
process's memory while their storage is away, and the switch to memory and back."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask, g

from engine.auth import Caller
from engine.config import Settings
from tests.support import services
from web import rate_limits


def limited_app(**env: str) -> Flask:
    """The rate limits alone, as create_app sets them up, on a Flask app of their own."""
    app = Flask(__name__)
    app.config["SETTINGS"] = Settings.from_env({"JWT_SECRET": "s" * 40, **env})
    rate_limits.init_app(app)
    return app


def reader(app: Flask) -> Callable[[str], bool]:
    """A GET counted for `sub`, as a request's thread counts it: True when let through."""

    def read(sub: str) -> bool:
        with app.test_request_context():
            g.caller = Caller(sub, ())
            try:
                rate_limits.count("GET")
            except rate_limits.OverLimit:
                return False
            return True

    return read


@pytest.fixture
def interleaved() -> Iterator[None]:
    """Threads switched every microsecond or so instead of every 5 ms: the interleavings a
    busy worker meets now and then, met in every window."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


# A thread that fails anywhere (a request's, or one the counting started) fails the test.
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_threads_counting_in_memory_while_the_storage_is_away_hold_the_limit(
    interleaved: None,
) -> None:
    """Nothing listens where the counters live: every request is counted in this process's
    memory, by 4 threads at once. Each window lets exactly its 5 requests through, and no
    thread fails."""
    app = limited_app(
        RATE_LIMIT_READS="5/second",
        RATE_LIMIT_STORAGE_URL=f"redis://127.0.0.1:{services.free_port()}/0",
    )
    read = reader(app)
    passed = 0
    errors: list[BaseException] = []
    counting = threading.Lock()
    stop = time.monotonic() + 3.5

    def hammer() -> None:
        nonlocal passed
        while time.monotonic() < stop:
            try:
                if read("alice@example.com"):
                    with counting:
                        passed += 1
            except Exception as exc:  # a 500 for that request
                errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    # A window opens at its first request and lasts 1 s: 4 windows in 3.5 s, 5 passes each.
    assert passed == 20


def test_requests_failing_together_on_a_hung_storage_count_as_one_failure(
    tmp_path: Path,
) -> None:
    """The counters' redis-server hangs (SIGSTOP): the 8 requests under way all fail after
    the storage's timeout. It is tried again 1 s after that, as after one failure: once it
    answers again, a request within 3 s is counted there."""
    server = services.RedisServer(tmp_path / "redis").start()
    try:
        app = limited_app(RATE_LIMIT_READS="1000/minute", RATE_LIMIT_STORAGE_URL=server.url)
        read = reader(app)
        assert read("warm-up")  # the connection pool's first connection, outside the hang
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            threads = [threading.Thread(target=read, args=(f"caller-{n}",)) for n in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        client = server.client()

        def counted_in_redis() -> bool:
            read("after")
            return any(client.scan_iter("*after*"))

        services.wait_for(counted_in_redis, 3, 0.1, "a request counted in Redis again")
        client.close()
    finally:
        server.stop()

"""The API's metrics as its private listener (web/metrics_listener.py) serves them, for an
app in this test's process: the counts of the requests its test client made, and the live
gauges read through the app's observer."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from engine.metrics import exposition_registry
from web.metrics_listener import MetricsListener


def get_text(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode())


@contextmanager
def api_metrics(app: Any) -> Iterator[Callable[[], str]]:
    """A metrics listener for `app` on a free local port; yields a reader of its /metrics."""
    settings = app.config["SETTINGS"]
    registry = exposition_registry(settings.metrics_dir, app.extensions["engine.observer"].readings)
    listener = MetricsListener(registry, socket.create_server(("127.0.0.1", 0)))
    listener.start(poll_interval=0.05)
    host, port = listener.address
    try:
        yield lambda: get_text(f"http://{host}:{port}/metrics")
    finally:
        listener.stop()


def read_api_metrics(app: Any) -> str:
    """One reading of `app`'s metrics, from a listener started for it."""
    with api_metrics(app) as read:
        return read()

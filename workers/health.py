"""The worker's health server: `/health` and `/metrics` on WORKER_HEALTH_PORT, served by a
thread of the worker's main process (started and stopped by workers/signals.py).

`/health` answers 200 when the broker answers a ping, the database a `SELECT 1`, and the
worker's consumer is running, else 503 naming what is wrong. `/metrics` sums the prefork
children's counts (multiprocess mode) and adds the live gauges. When the port is taken
(several workers on one host), the next ports are tried, up to PORT_SPAN more, and the log
says which one was bound.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any

from celery.bootsteps import RUN
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from engine.config import Settings
from engine.metrics import exposition_registry
from engine.observe import Observer, gather
from workers import timers
from workers.observer import BROKER_TIMEOUT_S, standalone_observer
from workers.probe_http import ProbeHandler, ProbeServer

log = logging.getLogger(__name__)

PORT_SPAN = 20


class HealthServer:
    """/health and /metrics for one worker process."""

    def __init__(self, settings: Settings, worker: Any = None, observer: Observer | None = None):
        self.settings = settings
        self.worker = worker
        self._observer = observer
        self._ready = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._registry: Any = None

    # --- readings -------------------------------------------------------------------

    @property
    def observer(self) -> Observer:
        if self._observer is None:
            self._observer = standalone_observer(self.settings, "engine-health")
        return self._observer

    def mark_ready(self) -> None:
        self._ready.set()

    def consumer_problem(self) -> str | None:
        """Why this worker cannot take work, or None when its consumer is running."""
        worker = self.worker
        if worker is None:
            return "no worker in this process"
        if not self._ready.is_set():
            return "starting: the consumer is not running yet"
        if getattr(worker.blueprint, "state", None) != RUN:
            return "the worker is shutting down"
        consumer = getattr(worker, "consumer", None)
        blueprint = getattr(consumer, "blueprint", None)
        if consumer is None or blueprint is None:
            return "the worker has no consumer"
        if blueprint.state != RUN:
            return f"the consumer is {blueprint.human_state()}"
        if consumer.connection is None:
            return "the consumer lost the broker and is reconnecting"
        return None

    def health(self) -> tuple[int, dict[str, Any]]:
        observer = self.observer
        probes: dict[str, Callable[[], Any]] = {"broker": observer.client.ping}
        if observer.sessions is not None:
            # Every task reads and writes the database: without it no work can be done.
            probes["database"] = observer.database_ping
        readings = gather(probes, BROKER_TIMEOUT_S + 0.5)
        checks = {
            name: "ok" if reading.ok else f"unreachable: {reading.error}"
            for name, reading in readings.items()
        }
        checks["consumer"] = self.consumer_problem() or "ok"
        body: dict[str, Any] = {
            "worker": getattr(self.worker, "hostname", None),
            "pid": os.getpid(),
            "checks": checks,
            "timers": timers.pending(self.worker),
        }
        failing = {name: state for name, state in checks.items() if state != "ok"}
        if failing:
            body["status"] = "unavailable"
            body["reason"] = "; ".join(f"{name} {state}" for name, state in failing.items())
            return 503, body
        body["status"] = "ok"
        return 200, body

    def metrics(self) -> bytes:
        if self._registry is None:
            self._registry = exposition_registry(self.settings.metrics_dir, self.observer.readings)
        return generate_latest(self._registry)

    # --- serving --------------------------------------------------------------------

    @property
    def port(self) -> int | None:
        return self._server.server_address[1] if self._server else None

    def start(self) -> int | None:
        """Bind the first free port from WORKER_HEALTH_PORT on and serve; the port, or None."""
        host, first = self.settings.worker_health_host, self.settings.worker_health_port
        last = first + PORT_SPAN if first else first
        for port in range(first, last + 1):
            try:
                self._server = ProbeServer((host, port), _handler(self))
                break
            except OSError as exc:
                if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                    raise
        else:
            log.error(
                "health server not started: ports %d to %d on %s are all taken", first, last, host
            )
            return None
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="health-server",
            daemon=True,
        )
        self._thread.start()
        note = "" if self.port == first else f" (port {first} was taken)"
        log.info(
            "health server listening on %s:%d%s: /health and /metrics",
            host,
            self.port,
            note,
            extra={"fields": {"health_port": self.port}},
        )
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def forget_in_child(self) -> None:
        """In a forked child: close the inherited listening socket, so the port is freed
        as soon as the main process goes, and never touch the parent's clients."""
        if self._server is not None:
            self._server.socket.close()
            self._server = None
        self._observer = None
        self._registry = None


def _handler(health: HealthServer) -> type[ProbeHandler]:
    class Handler(ProbeHandler):
        server_version = "engine-worker-health"
        label = "health server"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            try:
                if path == "/health":
                    status, body = health.health()
                    self.send_whole(status, json.dumps(body).encode(), "application/json")
                elif path == "/metrics":
                    self.send_whole(200, health.metrics(), CONTENT_TYPE_LATEST)
                else:
                    self.not_found()
            except Exception:
                self.failed(path)

    return Handler


_server: HealthServer | None = None


def start(settings: Settings, worker: Any) -> HealthServer:
    """Start this process's health server (once)."""
    global _server
    if _server is None:
        _server = HealthServer(settings, worker)
        _server.start()
    return _server


def current() -> HealthServer | None:
    return _server


def stop() -> None:
    global _server
    if _server is not None:
        _server.stop()
        _server = None


def after_fork() -> None:
    global _server
    if _server is not None:
        _server.forget_in_child()
        _server = None

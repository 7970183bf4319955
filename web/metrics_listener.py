"""The API's /metrics, on a listener of its own (API_METRICS_HOST:API_METRICS_PORT), never on
the public port: queue depths, workflow names and dead-letter counts are for Prometheus.

Under gunicorn this runs as a process the master starts before the workers fork
(web/gunicorn_conf.py), holding the socket the master bound: `python -m web.metrics_listener
FD MASTER_PID RESTARTS`. It serves what the API's /metrics served: every gunicorn worker's
counts, summed from PROMETHEUS_MULTIPROC_DIR, and the live gauges (queue_depth,
queue_lag_seconds, dlq_open, workers_online), read through an observer of its own, and
api_metrics_listener_restarts_total (RESTARTS: the listeners the master started before this
one). It stops on SIGTERM (the master's on_exit) and when the master is gone (killed, it
runs no on_exit). It ends with status 1 when it no longer serves (its serving thread ended,
or its socket no longer listens): the master starts another.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from engine import logs
from engine.config import Settings
from engine.metrics import exposition_registry
from workers.observer import standalone_observer
from workers.probe_http import ProbeHandler, ProbeServer

# By name: run as `python -m`, this module is __main__.
log = logging.getLogger("web.metrics_listener")

PATH = "/metrics"
# How often the process looks whether its master is still there, and whether it serves.
PARENT_CHECK_S = 1.0


class MetricsListener:
    """Serves `registry` at /metrics on an already listening socket; 404 anywhere else."""

    def __init__(self, registry: CollectorRegistry, listener: socket.socket) -> None:
        self._server = _Server(listener, _handler(registry))
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.socket.getsockname()[:2]
        return host, port

    def start(self, poll_interval: float = 0.5) -> None:
        self._thread = threading.Thread(
            target=self._serve, args=(poll_interval,), name="metrics-listener", daemon=True
        )
        self._thread.start()

    def serving(self) -> bool:
        """Whether its thread still runs and its socket still listens. A closed or shut
        down socket does not end the thread: it spins on accept() errors, serving nothing."""
        if self._thread is None or not self._thread.is_alive():
            return False
        try:
            return bool(self._server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        except OSError:  # closed
            return False

    def _serve(self, poll_interval: float) -> None:
        try:
            self._server.serve_forever(poll_interval=poll_interval)
        except Exception:  # the thread ends; serve() sees it and ends the process
            log.exception("metrics listener: its serving thread failed")

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread = None
        self._server.server_close()


class _Server(ProbeServer):
    def __init__(self, listener: socket.socket, handler: type[ProbeHandler]) -> None:
        # The socket is bound and listening already (by gunicorn's master, or a test).
        super().__init__(listener.getsockname()[:2], handler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener
        self.server_address = listener.getsockname()


def _handler(registry: CollectorRegistry) -> type[ProbeHandler]:
    class Handler(ProbeHandler):
        server_version = "engine-api-metrics"
        label = "metrics listener"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.split("?", 1)[0] != PATH:
                self.not_found()
                return
            try:
                # Prometheus asks for OpenMetrics; curl gets the classic text format.
                encoder, content_type = choose_encoder(self.headers.get("Accept") or "")
                body = encoder(registry)
            except Exception:
                self.failed("the exposition")
                return
            self.send_whole(200, body, content_type)

    return Handler


class _Restarts(Collector):
    def __init__(self, restarts: int) -> None:
        self._restarts = restarts

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "api_metrics_listener_restarts",
            "Metrics listeners gunicorn's master started again after one ended",
            value=self._restarts,
        )


def serve(settings: Settings, listener: socket.socket, master_pid: int, restarts: int = 0) -> int:
    """The process's life: serve until SIGTERM or SIGINT, or until the master is gone (0),
    or until it no longer serves (1)."""
    observer = standalone_observer(settings, "engine-api-metrics")
    registry = exposition_registry(settings.metrics_dir, observer.readings)
    registry.register(_Restarts(restarts))
    server = MetricsListener(registry, listener)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    server.start()
    log.info("metrics listener serving %s on %s:%d", PATH, *server.address)
    status = 0
    while not stopping.wait(PARENT_CHECK_S):
        if os.getppid() != master_pid:
            log.warning("metrics listener: gunicorn's master %d is gone; stopping", master_pid)
            break
        if not server.serving():
            log.error(
                "metrics listener: no longer serving; ending, for its master to start another"
            )
            status = 1
            break
    server.stop()
    return status


def main(argv: list[str] | None = None) -> int:
    fd, master_pid, restarts = (int(arg) for arg in (argv if argv is not None else sys.argv[1:]))
    settings = Settings.from_env()
    logs.configure(settings, "api")
    return serve(settings, socket.socket(fileno=fd), master_pid, restarts)


if __name__ == "__main__":
    sys.exit(main())

"""gunicorn settings for the API, from the engine's Settings (API_BIND, API_PORT,
WEB_CONCURRENCY, WEB_THREADS, API_METRICS_HOST, API_METRICS_PORT, PROMETHEUS_MULTIPROC_DIR).
Threaded workers (gthread) at any WEB_THREADS, so connections are kept alive.

/metrics is not served on the public port: the master starts a process of its own that
serves it on API_METRICS_HOST:API_METRICS_PORT (web/metrics_listener.py), summing every
worker's counts from PROMETHEUS_MULTIPROC_DIR (a temporary directory when it is unset). It
is started as a fresh interpreter, not forked from the master, and before the workers fork,
so the master never runs a thread of ours. This module imports nothing of `web`: that would
load the whole app into the master.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from engine.config import PROJECT_ROOT, Settings

# gunicorn takes this module's globals for its settings: ours have names it does not know.
engine_settings = Settings.from_env()

bind = f"{engine_settings.api_bind}:{engine_settings.api_port}"
workers = engine_settings.web_concurrency
threads = engine_settings.web_threads
# gthread even with one thread: the sync worker would close every keep-alive connection.
worker_class = "gthread"
timeout = 30
graceful_timeout = 10

# Each worker process counts requests into its own files in PROMETHEUS_MULTIPROC_DIR, and
# the metrics listener, another process, sums them all.
metrics_dir = engine_settings.metrics_dir
METRICS_STOP_TIMEOUT_S = 5


def on_starting(server):
    """In the master, before any worker forks: a clean metrics directory, so counts of an
    earlier run (or of a process whose pid is reused) never add up with this one's. Without
    PROMETHEUS_MULTIPROC_DIR, a temporary one for this master, put in the environment the
    workers and the listener inherit: the listener sees their counts only through files."""
    global metrics_dir
    if metrics_dir is None:
        metrics_dir = server.own_metrics_dir = Path(tempfile.mkdtemp(prefix="api-metrics-"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in metrics_dir.glob("*.db"):
        stale.unlink(missing_ok=True)


def when_ready(server):
    """In the master, once it listens and before the workers fork: bind the metrics port
    here (a port already taken stops gunicorn now, as a taken API port does) and hand the
    socket to the metrics listener's process."""
    host, port = engine_settings.api_metrics_host, engine_settings.api_metrics_port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host.strip("[]"), port), family=family)
    try:
        fd = listener.fileno()
        server.metrics_listener = subprocess.Popen(
            [sys.executable, "-m", "web.metrics_listener", str(fd), str(server.pid)],
            cwd=PROJECT_ROOT,
            pass_fds=(fd,),
        )
    finally:
        # The process holds the socket now; workers forked later never inherit it.
        listener.close()
    server.log.info(
        "Metrics at http://%s:%d/metrics (pid %d), counted in %s",
        host,
        port,
        server.metrics_listener.pid,
        metrics_dir,
    )


def on_exit(server):
    """The master is leaving: so does the metrics listener (and a directory of its own)."""
    process = getattr(server, "metrics_listener", None)
    if process is not None:
        process.terminate()
        try:
            process.wait(METRICS_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    own = getattr(server, "own_metrics_dir", None)
    if own is not None:
        shutil.rmtree(own, ignore_errors=True)


def child_exit(server, worker):
    """A worker ended (recycled or crashed): its counts stay, its live gauges go."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, str(metrics_dir))

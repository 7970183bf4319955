"""gunicorn settings for the API, from the engine's Settings (API_BIND, API_PORT,
WEB_CONCURRENCY, WEB_THREADS, API_METRICS_HOST, API_METRICS_PORT, PROMETHEUS_MULTIPROC_DIR).
Threaded workers (gthread) at any WEB_THREADS, so connections are kept alive.

/metrics is not served on the public port: the master starts a process of its own that
serves it on API_METRICS_HOST:API_METRICS_PORT (web/metrics_listener.py), summing every
worker's counts from PROMETHEUS_MULTIPROC_DIR (a temporary directory when it is unset). It
is started as a fresh interpreter, not forked from the master, and before the workers fork,
so the master never runs a thread of ours. The master starts it again whenever it ends.
This module imports nothing of `web`: that would load the whole app into the master.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
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
# A metrics listener that ended is started again at once when it had run this long, else
# after 1, 2, 4 ... 60 s while it keeps ending soon after its start.
METRICS_STABLE_S = 60.0
METRICS_RESTART_FIRST_S, METRICS_RESTART_LAST_S = 1.0, 60.0
# While its port cannot be bound (held by the old master during a USR2 upgrade), it is
# tried this often.
METRICS_BIND_RETRY_S = 1.0


class MetricsListenerProcess:
    """The metrics listener's process, kept running by the master: looked at on every turn
    of the master's loop (at least once a second), started again once it has ended."""

    def __init__(self, server):
        self.server = server
        self.host, self.port = engine_settings.api_metrics_host, engine_settings.api_metrics_port
        self.process = None
        self.started = 0  # listeners started by this master
        self.started_at = 0.0
        self.delay = 0.0
        self.due = 0.0  # when to start the next one (time.monotonic())
        self.port_held = False

    def start(self):
        """Bind the metrics port here (OSError when it cannot be) and hand the socket to a
        new listener process."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.create_server((self.host.strip("[]"), self.port), family=family)
        try:
            fd = listener.fileno()
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "web.metrics_listener",
                    str(fd),
                    str(self.server.pid),
                    str(self.started),  # its restarts_total: the listeners before it
                ],
                cwd=PROJECT_ROOT,
                pass_fds=(fd,),
            )
        finally:
            # The process holds the socket now; workers forked later never inherit it.
            listener.close()
        self.started += 1
        self.started_at = time.monotonic()
        self.server.log.info(
            "Metrics at http://%s:%d/metrics (pid %d), counted in %s",
            self.host,
            self.port,
            self.process.pid,
            metrics_dir,
        )

    def wait_for_port(self, error):
        """The port is held: try it again every METRICS_BIND_RETRY_S, saying so once."""
        if not self.port_held:
            self.server.log.warning(
                "Metrics port %s:%d is held (%s): it is tried every %.0f s; during a USR2 "
                "upgrade the old master's listener serves until it leaves",
                self.host,
                self.port,
                error,
                METRICS_BIND_RETRY_S,
            )
        self.port_held = True
        self.due = time.monotonic() + METRICS_BIND_RETRY_S

    def check(self):
        """Start another listener if the last one ended and its delay has passed."""
        now = time.monotonic()
        if self.process is not None:
            if self.process.poll() is None:
                return
            # Its exit status is lost when the arbiter reaped it first (as any child's).
            lived = now - self.started_at
            if lived >= METRICS_STABLE_S:
                self.delay = 0.0
            else:
                self.delay = min(
                    max(self.delay * 2, METRICS_RESTART_FIRST_S), METRICS_RESTART_LAST_S
                )
            self.server.log.error(
                "Metrics listener (pid %d) ended after %.0f s; another starts in %.0f s",
                self.process.pid,
                lived,
                self.delay,
            )
            self.process = None
            self.due = now + self.delay
        if now < self.due:
            return
        try:
            self.start()
        except OSError as error:
            self.wait_for_port(error)
        else:
            self.port_held = False

    def stop(self):
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(METRICS_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


def on_starting(server):
    """In the master, before any worker forks: a clean metrics directory, so counts of an
    earlier run (or of a process whose pid is reused) never add up with this one's. Not
    when this master is a USR2 upgrade's: the old master's workers count there still, and
    go on being summed. Without PROMETHEUS_MULTIPROC_DIR, a temporary one for this master,
    put in the environment the workers and the listener inherit: the listener sees their
    counts only through files."""
    global metrics_dir
    if metrics_dir is None:
        metrics_dir = server.own_metrics_dir = Path(tempfile.mkdtemp(prefix="api-metrics-"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    metrics_dir.mkdir(parents=True, exist_ok=True)
    if server.master_pid:
        return
    for stale in metrics_dir.glob("*.db"):
        stale.unlink(missing_ok=True)


def when_ready(server):
    """In the master, once it listens and before the workers fork: start the metrics
    listener (a port already taken stops gunicorn now, as a taken API port does; after a
    USR2, the old master holds it until it leaves), and keep it running: gunicorn has no
    hook of its own that its master runs periodically, but manage_workers runs on every
    turn of its loop, in its main thread."""
    listener = server.metrics_listener = MetricsListenerProcess(server)
    try:
        listener.start()
    except OSError as error:
        if not server.master_pid:
            raise
        listener.wait_for_port(error)
    manage_workers = server.manage_workers

    def manage_workers_and_the_metrics_listener():
        try:
            listener.check()
        except Exception:  # an error escaping the master's loop would stop the API
            server.log.exception("Metrics listener: keeping it running failed")
        manage_workers()

    server.manage_workers = manage_workers_and_the_metrics_listener


def on_exit(server):
    """The master is leaving: so does the metrics listener (and a directory of its own)."""
    listener = getattr(server, "metrics_listener", None)
    if listener is not None:
        listener.stop()
    own = getattr(server, "own_metrics_dir", None)
    if own is not None:
        shutil.rmtree(own, ignore_errors=True)


def child_exit(server, worker):
    """A worker ended (recycled or crashed): its counts stay, its live gauges go."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, str(metrics_dir))

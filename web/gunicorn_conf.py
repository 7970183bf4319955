"""gunicorn settings for the API (environment: API_PORT, WEB_CONCURRENCY, WEB_THREADS,
PROMETHEUS_MULTIPROC_DIR). Threaded workers (gthread) at any WEB_THREADS, so connections are
kept alive."""

import os

bind = f"{os.environ.get('API_BIND', '0.0.0.0')}:{os.environ.get('API_PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "4"))
# gthread even with one thread: the sync worker would close every keep-alive connection.
worker_class = "gthread"
timeout = 30
graceful_timeout = 10

# Several worker processes serve /metrics: with PROMETHEUS_MULTIPROC_DIR set, each counts
# into its own files there and whichever answers a scrape sums them all.
metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")


def on_starting(server):
    """In the master, before any worker forks: a clean directory, so counts of an earlier
    run (or of a process whose pid is reused) never add up with this one's."""
    if metrics_dir:
        from pathlib import Path

        directory = Path(metrics_dir)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)


def child_exit(server, worker):
    """A worker ended (recycled or crashed): its counts stay, its live gauges go."""
    if metrics_dir:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, metrics_dir)

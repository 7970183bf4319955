"""Live readings of the platform for /metrics and /admin/status.

Queue depth and lag come from the broker's Redis lists (engine.queues), runs by status, open
dead letters, runs waiting and the lags of schedules, webhooks and delayed runs from the
database, online workers from a ping the caller supplies (engine never imports Celery).
Every probe runs under a deadline, so a slow Redis, database or broker makes a reading
missing, never a scrape or a status request hang.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import redis
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from engine import concurrency, delayed, webhooks
from engine.metrics import Readings
from engine.models import DeadLetter, Run, Step, utcnow
from engine.queues import FirstSeen, QueueLayout, queue_stats
from engine.schedules import firing
from engine.state import RunStatus, StepStatus

log = logging.getLogger(__name__)
# The lags read from the database (probe name: what it reads, the Readings field it fills):
# how long the most overdue item of each kind has waited past its time.
LAGS: dict[str, tuple[Callable[[Session, datetime], float], str]] = {
    "schedules": (firing.lag_seconds, "schedule_lag_seconds"),
    "webhooks": (webhooks.lag_seconds, "webhook_lag_seconds"),
    "delayed_runs": (delayed.lag_seconds, "delayed_run_lag_seconds"),
}


def runs_by_status(session: Session) -> dict[str, int]:
    """How many runs are in each status (every status listed, zeros included)."""
    counts = {status.value: 0 for status in RunStatus}
    for status, count in session.execute(select(Run.status, func.count()).group_by(Run.status)):
        counts[status] = int(count)
    return counts


def runs_waiting(session: Session) -> dict[str, int]:
    """How many queued runs wait unsent, by why: for a slot of their workflow's concurrency
    limit, or for their not_before (both read from partial indexes)."""
    return {
        concurrency.REASON: concurrency.waiting(session),
        concurrency.NOT_BEFORE: delayed.waiting(session),
    }


def open_dead_letters(session: Session) -> int:
    """Dead letters nobody has replayed or discarded yet."""
    query = select(func.count()).select_from(DeadLetter).where(DeadLetter.status == "open")
    return int(session.execute(query).scalar_one())


def waiting_step_queues(session: Session) -> list[str]:
    """The queues steps waiting to run were sent to: a step may name a queue of its own."""
    query = (
        select(Step.queue)
        .where(Step.status.in_((StepStatus.QUEUED, StepStatus.RETRYING)))
        .distinct()
    )
    return list(session.scalars(query))


@dataclass
class Reading:
    value: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:300]


def gather(probes: Mapping[str, Callable[[], Any]], timeout: float) -> dict[str, Reading]:
    """Run the probes side by side, each in a daemon thread, and take what has answered by
    the deadline: a probe still running then is reported as an error and left behind."""
    boxes: dict[str, dict[str, Any]] = {}
    threads: dict[str, threading.Thread] = {}
    for name, probe in probes.items():
        box: dict[str, Any] = {}

        def target(probe: Callable[[], Any] = probe, box: dict[str, Any] = box) -> None:
            try:
                box["value"] = probe()
            except Exception as exc:  # a failing probe is a reading, not a crash
                box["error"] = describe_error(exc)

        thread = threading.Thread(target=target, name=f"observe-{name}", daemon=True)
        thread.start()
        boxes[name], threads[name] = box, thread
    deadline = time.monotonic() + timeout
    readings = {}
    for name, thread in threads.items():
        thread.join(max(0.0, deadline - time.monotonic()))
        box = boxes[name]
        if thread.is_alive():
            readings[name] = Reading(error=f"no answer within {timeout:g} s")
        elif "error" in box:
            readings[name] = Reading(error=box["error"])
        else:
            readings[name] = Reading(value=box.get("value"))
    return readings


class Observer:
    """Reads the platform for one process: the API or a worker's health server.

    `ping(timeout)` returns the names of the workers that answered; `ttl` is how long
    /metrics readings are reused, so scrapes in a row cost one round of probes.

    Queues are `queues` plus every queue a waiting step was sent to, learnt from the
    database by each reading and measured from the next one on (and from then on, so a
    queue that empties shows 0): a step may name a queue of its own, which no worker may
    consume. Learnt apart from the broker's reading, so a slow database never makes the
    broker's readings missing.
    """

    def __init__(
        self,
        client: redis.Redis,
        layout: QueueLayout,
        queues: Sequence[str],
        *,
        sessions: Callable[[], Session] | None = None,
        ping: Callable[[float], Sequence[str]] | None = None,
        timeout: float = 2.0,
        ping_timeout: float = 0.8,
        ttl: float = 5.0,
    ) -> None:
        self.client = client
        self.layout = layout
        self.queues = tuple(queues)
        self._step_queues: set[str] = set()
        self._lock_queues = threading.Lock()
        self.sessions = sessions
        self.ping = ping
        self.timeout = timeout
        self.ping_timeout = min(ping_timeout, timeout)
        self.ttl = ttl
        self._first_seen = FirstSeen()
        self._lock = threading.Lock()
        self._cached: tuple[float, Readings] | None = None

    def probes(
        self, *, runs: bool = False, database: bool = False, lags: bool = False
    ) -> dict[str, Callable[[], Any]]:
        probes: dict[str, Callable[[], Any]] = {
            "broker": self.client.ping,
            "queues": lambda: queue_stats(
                self.client, self.layout, self.measured_queues(), first_seen=self._first_seen
            ),
        }
        if self.sessions is not None:
            probes["step_queues"] = self._learn_step_queues
            probes["dead_letters"] = lambda: self._query(open_dead_letters)
            if lags:
                for name, (lag, _) in LAGS.items():
                    probes[name] = partial(self._lag, lag)
                probes["runs_waiting"] = lambda: self._query(runs_waiting)
            if runs:
                probes["runs"] = lambda: self._query(runs_by_status)
                probes["delayed_waiting"] = lambda: self._query(delayed.waiting)
            if database:
                probes["database"] = self.database_ping
        ping = self.ping
        if ping is not None:

            def workers() -> list[str]:
                # A broker that is down fails fast here; a ping would retry its connection
                # long after the deadline, leaving a thread behind on every reading.
                self.client.ping()
                return sorted(ping(self.ping_timeout))

            probes["workers"] = workers
        return probes

    def measured_queues(self) -> list[str]:
        """The platform's queues, then those steps named, in name order."""
        with self._lock_queues:
            extra = sorted(self._step_queues.difference(self.queues))
        return [*self.queues, *extra]

    def _learn_step_queues(self) -> list[str]:
        found = self._query(waiting_step_queues)
        with self._lock_queues:
            self._step_queues.update(found)
        return found

    def _lag(self, lag: Callable[[Session, datetime], float]) -> float:
        return float(self._query(lambda session: lag(session, utcnow())))

    def database_ping(self) -> Any:
        """A `SELECT 1` through a session: raises when the database cannot be read."""
        return self._query(lambda session: session.execute(text("SELECT 1")).scalar_one())

    def _query(self, read: Callable[[Session], Any]) -> Any:
        assert self.sessions is not None
        with self.sessions() as session:
            return read(session)

    def snapshot(
        self, *, runs: bool = False, database: bool = False, lags: bool = False
    ) -> dict[str, Reading]:
        """Every reading now (not cached), each with its value or its error."""
        return gather(self.probes(runs=runs, database=database, lags=lags), self.timeout)

    def readings(self) -> Readings:
        """The gauges for /metrics, reused for `ttl` seconds; what failed is left out."""
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < self.ttl:
                return self._cached[1]
            snapshot = self.snapshot(lags=True)
            readings = Readings()
            queues = snapshot["queues"]
            if queues.ok:
                for stat in queues.value:
                    readings.queue_depth[stat.name] = stat.depth
                    if stat.lag_s is not None:
                        readings.queue_lag_seconds[stat.name] = stat.lag_s
            letters = snapshot.get("dead_letters")
            if letters is not None and letters.ok:
                readings.dlq_open = letters.value
            for name, (_, field) in LAGS.items():
                lag = snapshot.get(name)
                if lag is not None and lag.ok:
                    setattr(readings, field, lag.value)
            waiting = snapshot.get("runs_waiting")
            if waiting is not None and waiting.ok:
                readings.runs_waiting = waiting.value
            workers = snapshot.get("workers")
            if workers is not None:
                # No answer means no worker, as far as this process can tell.
                readings.workers_online = len(workers.value) if workers.ok else 0
            failed = {name: reading.error for name, reading in snapshot.items() if not reading.ok}
            if failed:
                log.warning("metrics readings failed: %s", failed)
            self._cached = (time.monotonic(), readings)
            return readings

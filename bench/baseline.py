"""The raw Celery side of each comparison, on the platform's broker and worker settings
(bench/raw_app.py): no-op tasks end to end and drained from a full queue, a chain of no-ops,
a chord of no-ops. Completion is seen through the tasks' Redis counter, and timed by the end
each task stamps beside it, so the bench polls as seldom as it does for the platform and
takes no CPU from the raw worker while it waits."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from celery import chain, chord

from bench import raw_app
from bench.harness import Platform
from bench.measure import BenchError, latency_figures, paced, wait_until
from bench.processes import Process, pause, resume

POLL_S = 0.05  # as for the platform's runs (bench.harness.wait_runs)


class RawSide:
    """A raw Celery worker and its sender, under the bench prefix plus `raw:`."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.prefix = platform.prefix + "raw:"
        self.settings = platform.settings.with_changes(redis_key_prefix=self.prefix)
        self.app = raw_app.make_app(self.settings)
        self.counter = raw_app.counter_key(self.settings)
        self.joined = raw_app.joined_key(self.settings)
        self.starts = raw_app.starts_key(self.settings)
        self.worker: Process | None = None

    def start(self, warm: int = 50) -> None:
        self.worker = self.platform.start_worker("bench.raw_app", prefix=self.prefix)
        self._reset()
        self._send(warm)
        self._wait_count(warm, "raw warm-up tasks")

    def stop(self) -> None:
        if self.worker is not None:
            self.platform.stop(self.worker)
            self.worker = None
        self.app.close()

    def _count(self, key: str) -> int:
        return int(self.platform.redis.get(key) or 0)

    def _end(self, which: str, key: str | None = None) -> float:
        """When the first or the last counted task ended (time.time() of its worker)."""
        stamp = self.platform.redis.hget(raw_app.ends_key(key or self.counter), which)
        if stamp is None:
            raise BenchError(f"no raw task stamped its end under {key or self.counter}")
        return float(stamp)

    def _reset(self) -> None:
        self.platform.redis.delete(
            self.counter,
            raw_app.ends_key(self.counter),
            self.joined,
            raw_app.ends_key(self.joined),
            self.starts,
        )

    def _send(self, tasks: int) -> None:
        for _ in range(tasks):
            # ignore_result as the task itself has it: without it, send_task would subscribe
            # to the task's result channel around every send, two round trips the
            # platform's sender (which has no result backend) does not make.
            self.app.send_task(raw_app.NOOP, ignore_result=True)

    def _wait_count(self, tasks: int, what: str, key: str | None = None) -> None:
        self._wait(lambda: self._count(key or self.counter), tasks, what)

    def _wait(self, done: Callable[[], int], tasks: int, what: str) -> None:
        """Until `done()` (how many tasks have finished) reaches `tasks`."""
        wait_until(lambda: done() >= tasks, max(60, tasks / 20), what, POLL_S)

    def end_to_end(self, tasks: int) -> dict[str, Any]:
        """Send `tasks` no-ops in a loop; time from the first send to the last completion."""
        self._reset()
        started = time.time()
        self._send(tasks)
        sent = time.time() - started
        self._wait_count(tasks, f"{tasks} raw tasks")
        elapsed = self._end("last") - started
        return {"tasks": tasks, "elapsed_s": elapsed, "submit_s": sent, "per_s": tasks / elapsed}

    def drain(self, tasks: int) -> dict[str, Any]:
        """Queue `tasks` no-ops while the worker does not consume, then time the drain from
        the first completion to the last (resuming a consumer waits out a broker poll), as
        the platform's drain is timed."""
        assert self.worker is not None
        self._reset()
        pause(self.app, self.worker)
        self._send(tasks)
        resume(self.app, self.worker)
        self._wait_count(tasks, f"{tasks} queued raw tasks")
        elapsed = self._end("last") - self._end("first")
        return {"tasks": tasks, "elapsed_s": elapsed, "per_s": (tasks - 1) / elapsed}

    def latency(self, rate: float, seconds: float) -> dict[str, Any]:
        """Tasks sent at a steady rate; per task, its start minus the moment before its send
        (what the platform's figure is: first step started_at minus the run's created_at),
        split where its send returned."""
        self._reset()
        count = max(1, round(rate * seconds))
        sent: dict[float, float] = {}

        def send() -> None:
            begun = time.time()
            self.app.send_task(raw_app.STAMP, args=(begun,), ignore_result=True)
            sent[begun] = time.time()

        pace = paced(count, rate, send)
        self._wait(
            lambda: self.platform.redis.llen(self.starts), count, f"{count} raw latency tasks"
        )
        # Each task's argument comes back as it went out (JSON keeps a float exactly).
        times = [
            (begun, sent[begun], started)
            for begun, started in map(json.loads, self.platform.redis.lrange(self.starts, 0, -1))
        ]
        return {"tasks": count, **pace, **latency_figures(times)}

    def chain(self, length: int) -> float:
        """A chain of immutable no-op signatures (each task sends the next; no backend)."""
        self._reset()
        links = chain(*(self.app.signature(raw_app.NOOP, immutable=True) for _ in range(length)))
        started = time.time()
        links.apply_async()
        self._wait_count(length, f"a raw chain of {length}")
        return self._end("last") - started

    def chord(self, width: int) -> float:
        """A chord of `width` no-ops and a join; the Redis result backend counts members."""
        self._reset()
        header = [self.app.signature(raw_app.NOOP_KEPT, immutable=True) for _ in range(width)]
        body = self.app.signature(raw_app.JOIN, immutable=True)
        started = time.time()
        chord(header, body, app=self.app).apply_async()
        self._wait_count(1, f"a raw chord of {width}", self.joined)
        return self._end("last", self.joined) - started

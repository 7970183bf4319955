"""What the broker's queues hold, read straight from Redis: where kombu keeps each queue
(one list per priority step), how many messages wait and since when the oldest has waited
(the `sent_at` header our dispatcher puts on every message, or its ETA). /metrics and
/admin/status show it (engine.observe); the reconciler uses it to leave alone work that
merely waits in a backlog (workers.broker)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from engine.config import Settings

# Header our dispatcher puts on every message (epoch seconds), so lag is read exactly.
SENT_AT_HEADER = "sent_at"
# kombu's Redis transport defaults, used when the broker options do not say otherwise.
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
KOMBU_SEP = "\x06\x16"


@dataclass(frozen=True)
class QueueLayout:
    """Where kombu's Redis transport keeps a queue: one list per priority step, named
    `<prefix><queue>` for priority 0 and `<prefix><queue><sep><priority>` for the others."""

    prefix: str = ""
    priority_steps: tuple[int, ...] = KOMBU_PRIORITY_STEPS
    sep: str = KOMBU_SEP

    @classmethod
    def from_transport_options(cls, options: Mapping[str, Any]) -> QueueLayout:
        """The layout for Celery's `broker_transport_options`."""
        return cls(
            prefix=options.get("global_keyprefix") or "",
            priority_steps=tuple(options.get("priority_steps") or KOMBU_PRIORITY_STEPS),
            sep=options.get("sep") or KOMBU_SEP,
        )

    def keys(self, queue: str) -> list[str]:
        return [
            f"{self.prefix}{queue}{self.sep}{step}" if step else f"{self.prefix}{queue}"
            for step in self.priority_steps
        ]


@dataclass(frozen=True)
class QueueStat:
    name: str
    depth: int
    # Seconds the oldest waiting message has waited; None when no message says.
    lag_s: float | None


def _epoch(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def waiting_since(raw: bytes | str) -> tuple[float | None, str | None]:
    """(since when the message may be served, its delivery tag) for one kombu message: the
    time it was sent, or its ETA when that is later (it cannot wait before its ETA)."""
    try:
        message = json.loads(raw)
    except (ValueError, TypeError):
        return None, None
    if not isinstance(message, dict):
        return None, None
    headers = message.get("headers") or {}
    properties = message.get("properties") or {}
    tag = properties.get("delivery_tag") if isinstance(properties, dict) else None
    if not isinstance(headers, dict):
        return None, tag
    sent = _epoch(headers.get(SENT_AT_HEADER))
    eta = _epoch(headers.get("eta"))
    moments = [moment for moment in (sent, eta) if moment is not None]
    return (max(moments) if moments else None), tag


class FirstSeen:
    """Remembers when a message without a send time was first seen at the head of a list,
    so its age is still known (from below) on later readings."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def since(self, key: str, tag: str | None, now: float) -> float | None:
        if tag is None:
            return None
        with self._lock:
            known = self._seen.get(key)
            if known is None or known[0] != tag:
                self._seen[key] = (tag, now)
                return now
            return known[1]


def queue_stats(
    client: redis.Redis,
    layout: QueueLayout,
    queues: Sequence[str],
    *,
    now: float | None = None,
    first_seen: FirstSeen | None = None,
) -> list[QueueStat]:
    """Depth (every priority list) and lag (the oldest waiting message) of each queue, in
    one round trip. kombu pushes on the left and pops on the right: the oldest is last."""
    now = time.time() if now is None else now
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        for key in layout.keys(queue):
            pipe.llen(key)
            pipe.lindex(key, -1)
    answers = iter(pipe.execute())
    stats = []
    for queue in queues:
        depth = 0
        oldest: float | None = None
        unknown = False
        for key in layout.keys(queue):
            length, tail = int(next(answers) or 0), next(answers)
            if not length or tail is None:
                continue
            depth += length
            since, tag = waiting_since(tail)
            if since is None and first_seen is not None:
                since = first_seen.since(key, tag, now)
            if since is None:
                unknown = True
                continue
            oldest = since if oldest is None else min(oldest, since)
        if depth == 0:
            lag: float | None = 0.0
        elif oldest is None:
            lag = None if unknown else 0.0
        else:
            lag = max(0.0, now - oldest)
        stats.append(QueueStat(queue, depth, lag))
    return stats


def broker_client(settings: Settings, timeout: float = 1.0) -> redis.Redis:
    """A Redis client on the broker for readings: short timeouts, never a retry loop."""
    return redis.Redis.from_url(
        settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
    )

"""What the broker still holds, as the reconciler asks it: when the oldest message waiting
in each queue was sent."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from functools import lru_cache

import redis
from celery import Celery

from engine.config import Settings
from engine.queues import QueueLayout, broker_client, queue_stats

READ_TIMEOUT_S = 2.0


@lru_cache(maxsize=4)
def _client(settings: Settings) -> redis.Redis:
    return broker_client(settings, READ_TIMEOUT_S)


def oldest_waiting(
    settings: Settings, app: Celery, queues: Sequence[str]
) -> Mapping[str, float | None]:
    """For each queue, the epoch time its oldest waiting message was sent; None when the
    queue is empty. A queue holding messages that do not say when they were sent (sent by
    another client) is left out: nothing can be concluded about it. Raises RedisError."""
    layout = QueueLayout.from_transport_options(app.conf.broker_transport_options or {})
    now = time.time()
    reading: dict[str, float | None] = {}
    for stat in queue_stats(_client(settings), layout, queues, now=now):
        if stat.depth == 0:
            reading[stat.name] = None
        elif stat.lag_s is not None:
            reading[stat.name] = now - stat.lag_s
    return reading

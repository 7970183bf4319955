"""The raw Celery baseline: the platform worker's own settings (celeryconfig.build) on kombu's
own Redis transport, no database, no engine. `celery -A bench.raw_app worker` runs it.

Every task does the same trivial work, one Redis call under the bench's private key prefix: a
script that counts the task and stamps when it ended (the first and the last end). That is
how the bench sees raw tasks complete and times them without polling fast (platform runs are
counted and timed from the database instead, where the platform records them anyway).
Chords need a result backend, so this app has one, a Redis backend under the same prefix;
the plain no-op tasks keep `task_ignore_result` as the platform sets it and store nothing
there.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from typing import Any

import redis
from celery import Celery

import celeryconfig
from engine.config import Settings

NOOP = "bench.noop"
NOOP_KEPT = "bench.noop_kept"
JOIN = "bench.join"
STAMP = "bench.stamp"
# Celery as shipped: kombu's own Redis transport.
RAW_TRANSPORT = "kombu.transport.redis:Transport"


def counter_key(settings: Settings) -> str:
    return f"{settings.redis_key_prefix}raw-counter"


def ends_key(counter: str) -> str:
    """The hash of `first` and `last`: when the first and the last counted task ended."""
    return f"{counter}:ends"


# KEYS: the counter and its ends hash; ARGV: the time the task ended.
_FINISH = """
redis.call('INCR', KEYS[1])
redis.call('HSETNX', KEYS[2], 'first', ARGV[1])
redis.call('HSET', KEYS[2], 'last', ARGV[1])
"""


def joined_key(settings: Settings) -> str:
    return f"{settings.redis_key_prefix}raw-joined"


def starts_key(settings: Settings) -> str:
    """The list of the latency scenario's [sent_at, started] pairs."""
    return f"{settings.redis_key_prefix}raw-starts"


def make_app(settings: Settings) -> Celery:
    """A Celery app configured exactly like the platform's, plus a prefixed result backend."""
    raw = Celery("bench_raw", set_as_current=False)
    config = celeryconfig.build(settings)
    config.update(
        # Not the platform's transport (workers/redis_transport.py, one Redis client per
        # channel): that is the platform's own work.
        broker_transport=RAW_TRANSPORT,
        result_backend=settings.redis_url,
        result_backend_transport_options={"global_keyprefix": settings.redis_key_prefix},
        result_expires=600,
        beat_schedule={},
    )
    raw.config_from_object(config)

    @lru_cache(maxsize=1)
    def client() -> redis.Redis:
        # Created on first use, so each prefork child opens its own connection.
        return redis.Redis.from_url(settings.redis_url)

    @lru_cache(maxsize=1)
    def finish_script() -> Any:
        return client().register_script(_FINISH)

    def finish(counter: str) -> None:
        finish_script()(keys=[counter, ends_key(counter)], args=[repr(time.time())])

    @raw.task(name=NOOP, shared=False)
    def noop() -> None:
        finish(counter_key(settings))

    @raw.task(name=NOOP_KEPT, ignore_result=False, shared=False)
    def noop_kept() -> None:
        """A chord member: its result is stored, which the chord's counting needs."""
        finish(counter_key(settings))

    @raw.task(name=STAMP, shared=False)
    def stamp(sent_at: float) -> None:
        """Records when this task started beside when it was sent (the latency scenario)."""
        client().rpush(starts_key(settings), json.dumps([sent_at, time.time()]))

    @raw.task(name=JOIN, shared=False)
    def join() -> None:
        finish(joined_key(settings))

    return raw


def __getattr__(name: str) -> Any:
    # The worker's app is built on first access, so the bench process can import make_app
    # without reading the environment of a worker.
    if name in ("app", "celery"):
        built = globals()["app"] = make_app(Settings.from_env())
        return built
    raise AttributeError(name)

"""The engine's Observer (engine.observe) wired to a Celery app's broker: the same key prefix
and priority lists as the app, and its workers' ping. The API's /metrics and /admin/status
and each worker's /health read through one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery
from celery.beat import NODENAME_DEFAULT
from sqlalchemy.orm import Session

from engine.config import Settings
from engine.db import make_engine, make_session_factory
from engine.observe import Observer
from engine.queues import QueueLayout, broker_client

BROKER_TIMEOUT_S = 1.0
# Beat started with --enable-remote-control answers a ping too (its health check), under
# this node name; it runs no task, so it is never counted as a worker.
BEAT_NODE_PREFIX = f"{NODENAME_DEFAULT}@"


def is_worker(node: str) -> bool:
    """Whether a node answering remote control is a worker (not beat)."""
    return not node.startswith(BEAT_NODE_PREFIX)


def ping_workers(app: Celery, timeout: float) -> list[str]:
    """Names of the workers that answer a ping within `timeout` seconds (beat left out)."""
    replies = app.control.ping(timeout=timeout) or []
    return sorted(name for reply in replies for name in reply if is_worker(name))


def make_observer(
    settings: Settings,
    app: Celery,
    sessions: Callable[[], Session] | None,
    queues: Sequence[str],
) -> Observer:
    """An observer of the broker this Celery app uses (same key prefix and priority lists)."""
    layout = QueueLayout.from_transport_options(app.conf.broker_transport_options or {})
    return Observer(
        broker_client(settings, BROKER_TIMEOUT_S),
        layout,
        queues,
        sessions=sessions,
        ping=lambda timeout: ping_workers(app, timeout),
    )


def standalone_observer(settings: Settings, name: str) -> Observer:
    """An observer for a process that serves metrics beside the work (a worker's health
    server, the API's metrics listener): a small database pool of its own, read-only, and
    a Celery app of its own to ping the workers."""
    import celeryconfig

    options: dict[str, Any] = {} if settings.is_sqlite else {"pool_size": 1, "max_overflow": 2}
    db_engine = make_engine(settings, **options)
    sender = Celery(name, set_as_current=False)
    sender.config_from_object(celeryconfig.build(settings))
    return make_observer(
        settings,
        sender,
        make_session_factory(db_engine, read_only=True),
        celeryconfig.QUEUES,
    )

"""Celery settings, built from the engine's one settings object (itself read from the
environment). `workers.celery_app` applies them; a sender app (the API) uses the same."""

from __future__ import annotations

from typing import Any

from kombu import Queue

from engine.config import Settings
from engine.work import (
    DELAY_TASK,
    MANAGER_QUEUE,
    PRUNE_INTERVAL_S,
    PRUNE_TASK,
    RECONCILE_TASK,
    SCHEDULE_TASK,
    WEBHOOK_TASK,
)
from workers import redis_transport

QUEUES = (MANAGER_QUEUE, "steps", "default")


def beat_schedule(settings: Settings) -> dict[str, Any]:
    """What beat sends: the reconciler, the schedules' fires, the delayed runs' tick and the
    webhook deliverer always; the prune when a retention is set."""
    schedule: dict[str, Any] = {
        "reconcile": {
            "task": RECONCILE_TASK,
            "schedule": settings.reconcile_interval_s,
            "options": {"queue": MANAGER_QUEUE, "expires": settings.reconcile_interval_s * 2},
        },
        # Submits the runs of due schedules (engine.schedules.firing). A tick that expired
        # unsent is no loss: the next one fires what is still due.
        "schedules": {
            "task": SCHEDULE_TASK,
            "schedule": settings.schedule_tick_s,
            "options": {"queue": MANAGER_QUEUE, "expires": settings.schedule_tick_s * 2},
        },
        # Sends the plan messages of the delayed runs now due (engine.delayed). A tick may
        # wait in a busy manager queue up to DISPATCH_GRACE_S and still be of use; past
        # that the reconciler sends those runs anyway.
        "delayed_runs": {
            "task": DELAY_TASK,
            "schedule": settings.run_delay_tick_s,
            "options": {
                "queue": MANAGER_QUEUE,
                "expires": max(settings.run_delay_tick_s * 2, settings.dispatch_grace_s),
            },
        },
        # On the default queue: a slow receiver does not hold up planning. Two passes at
        # once are safe (engine.webhook_delivery claims each delivery once).
        "webhooks": {
            "task": WEBHOOK_TASK,
            "schedule": settings.webhook_interval_s,
            "options": {"queue": "default", "expires": settings.webhook_interval_s * 2},
        },
    }
    if settings.retention_on:
        # On the default queue: a long prune does not hold up planning on the manager's.
        schedule["prune"] = {
            "task": PRUNE_TASK,
            "schedule": PRUNE_INTERVAL_S,
            "options": {"queue": "default", "expires": PRUNE_INTERVAL_S},
        }
    return schedule


def build(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for these settings."""
    redis_transport.install()
    return {
        "broker_url": settings.redis_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            # Must exceed the longest step (Settings.check enforces it), or Redis would hand
            # a running step's message to a second worker.
            "visibility_timeout": settings.broker_visibility_timeout_s,
            # Without these a publish waits forever on a Redis that hangs (kombu's docs).
            "socket_timeout": settings.broker_socket_timeout_s,
            "socket_connect_timeout": settings.broker_socket_timeout_s,
            "global_keyprefix": settings.redis_key_prefix,
            "queue_order_strategy": "priority",
            "priority_steps": list(range(10)),
            "sep": ":",
        },
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        # The database holds every result; the broker only carries work.
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A step killed at its hard limit is recorded and retried by the engine
        # (workers.limits.StepRequest); its message is acknowledged, not requeued.
        "task_acks_on_failure_or_timeout": True,
        # On a lost broker connection running steps finish and record their outcome in the
        # database; the reconciler re-sends whatever the broker lost meanwhile.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": "default",
        "task_queues": [Queue(name) for name in QUEUES],
        "task_routes": {
            "manager.*": {"queue": MANAGER_QUEUE},
            "schedules.*": {"queue": MANAGER_QUEUE},
            "steps.*": {"queue": "steps"},
        },
        # Flower shows tasks from the workers' events (received, started, succeeded...). A
        # "sent" event per message would cost a second publish on every send, a third of
        # the send: a task waiting in its queue is seen in Flower's broker page, in
        # /admin/status and in the queue metrics instead, and its step row has its task id.
        "worker_send_task_events": True,
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "beat_schedule": beat_schedule(settings),
    }

"""Send what a use case asked for, after its transaction committed."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery

from engine.queues import SENT_AT_HEADER
from engine.work import Dispatch, Work

log = logging.getLogger(__name__)
# Messages per Redis pipeline: large enough to save the round trips, small enough that
# workers start on a fan-out's first steps while the rest are still being sent.
BATCH = 100


def send(work: Work, app: Celery | None = None) -> None:
    """Send messages and revocations. A failed send is logged, not raised: the rows are
    committed, and the reconciler sends their work again after its grace period."""
    if not work:
        return
    if app is None:
        from workers.celery_app import app

    if work.dispatches:
        try:
            # One producer (one pooled connection) for every message, and its messages go
            # out together (kombu's publish batch: a Redis pipeline per BATCH), so a
            # fan-out of a thousand steps costs a third of sending them one by one.
            with app.producer_or_acquire() as producer:
                if len(work.dispatches) == 1:
                    # A batch of one would cost a pipeline for nothing.
                    _send_one(app, producer, work.dispatches[0])
                else:
                    with producer.batch(BATCH):
                        for dispatch in work.dispatches:
                            _send_one(app, producer, dispatch)
        except Exception:
            log.exception(
                "%d message(s) not sent; the reconciler will send them again",
                len(work.dispatches),
            )
    if work.revoke:
        try:
            app.control.revoke(work.revoke, terminate=True, signal="SIGTERM")
        except Exception:
            log.exception("revoking %d task(s) failed", len(work.revoke))


def _send_one(app: Celery, producer: Any, dispatch: Dispatch) -> None:
    try:
        app.send_task(
            dispatch.task,
            args=dispatch.args,
            queue=dispatch.queue,
            task_id=dispatch.task_id,
            countdown=dispatch.countdown,
            soft_time_limit=dispatch.soft_time_limit,
            time_limit=dispatch.time_limit,
            priority=dispatch.priority,
            producer=producer,
            # queue_lag_seconds reads how long a message has waited from this.
            headers={SENT_AT_HEADER: time.time()},
            # What Flower shows as the task's arguments: a run id and a step id, whose plain
            # repr costs a tenth of the generic one Celery would compute for every message.
            argsrepr=repr(dispatch.args),
            kwargsrepr="{}",
            # Nothing to declare per message: Celery publishes to a direct queue through the
            # default exchange, which on Redis is a push onto the queue's own list, whatever
            # bindings exist. The workers declare their queues when they start consuming.
            # Declaring would cost a copy of the queue and a retry wrapper on every send.
            declare=[],
        )
    except Exception:
        log.exception("task %s: send failed; the reconciler will send it again", dispatch.task_id)

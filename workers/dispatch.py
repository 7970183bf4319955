"""Send what a use case asked for, after its transaction committed."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError

from engine.queues import SENT_AT_HEADER
from engine.work import Dispatch, Work

log = logging.getLogger(__name__)
# Messages per Redis pipeline: large enough to save the round trips, small enough that
# workers start on a fan-out's first steps while the rest are still being sent.
BATCH = 100


def send(work: Work, app: Celery | None = None) -> bool:
    """Add the committed counts, then send messages and revocations; True when all went out.
    A failed send is logged, not raised: the rows are committed, and the reconciler sends
    their work again after its grace period."""
    if not work:
        return True
    if work.counts:
        work.count_committed()
    delivered = True
    if app is None:
        from workers.celery_app import app as default_app

        app = default_app

    if work.dispatches:
        sent = 0
        try:
            # One producer (one pooled connection) for every message, and its messages go
            # out together (kombu's publish batch: a Redis pipeline per BATCH), so a
            # fan-out of a thousand steps costs a third of sending them one by one.
            lineage = _lineage(app)
            with app.producer_or_acquire() as producer:
                unreachable = _unreachable_errors(producer)
                if len(work.dispatches) == 1:
                    # A batch of one would cost a pipeline for nothing.
                    delivered = _send_one(app, producer, work.dispatches[0], lineage, unreachable)
                else:
                    with producer.batch(BATCH):
                        for dispatch in work.dispatches:
                            delivered = (
                                _send_one(app, producer, dispatch, lineage, unreachable)
                                and delivered
                            )
                            sent += 1
        except BrokerUnreachable as exc:
            # Each send would wait out its own connection retries (about 0.6 s): a fan-out
            # would hold its task for minutes (and plan_run's inline step, whose lease is
            # running). The rest waits for the reconciler, like the one that failed.
            delivered = False
            log.warning(
                "the broker is unreachable (%s): sending stopped after %d of %d message(s); "
                "the reconciler will send again what did not go out",
                exc.__cause__,
                sent,
                len(work.dispatches),
            )
        except Exception:
            delivered = False
            log.exception(
                "%d message(s) not sent; the reconciler will send them again",
                len(work.dispatches),
            )
    if work.revoke:
        try:
            app.control.revoke(work.revoke, terminate=True, signal="SIGTERM")
        except Exception:
            delivered = False
            log.exception("revoking %d task(s) failed", len(work.revoke))
    return delivered


def _lineage(app: Celery) -> tuple[str | None, str | None]:
    """(root id, parent id) of the messages sent from here: a message sent from inside a
    task carries that task as its parent, and its root, as send_task would set them (Flower
    shows the tree)."""
    parent = app.current_worker_task
    if parent is None:
        return None, None
    return parent.request.root_id or parent.request.id, parent.request.id


class BrokerUnreachable(Exception):
    """A send failed because the broker could not be reached: the sends after it would too."""


def _unreachable_errors(producer: Any) -> tuple[type[BaseException], ...]:
    """What a publish raises when the broker cannot be reached (kombu wraps the transport's
    connection errors in its OperationalError once its retries are spent)."""
    return (KombuOperationalError, *producer.connection.connection_errors)


def _send_one(
    app: Celery,
    producer: Any,
    dispatch: Dispatch,
    lineage: tuple[str | None, str | None],
    unreachable: tuple[type[BaseException], ...] = (),
) -> bool:
    """One message, built and published by Celery's own message layer (`app.amqp`) with
    what `send_task` would give it here. `send_task` itself resolves options for any task,
    any broker and any result backend on every call, which cost a quarter of a publish; the
    platform's messages name their queue and have no result to wait for."""
    root_id, parent_id = lineage
    try:
        message = app.amqp.create_task_message(
            dispatch.task_id,
            dispatch.task,
            dispatch.args,
            countdown=dispatch.countdown,
            reply_to=app.thread_oid,
            time_limit=dispatch.time_limit,
            soft_time_limit=dispatch.soft_time_limit,
            # Off in celeryconfig: Flower learns of a task when a worker receives it.
            create_sent_event=app.conf.task_send_sent_event,
            root_id=root_id,
            parent_id=parent_id,
            # What Flower shows as the task's arguments: a run id and a step id, whose plain
            # repr costs a tenth of the generic one Celery would compute for every message.
            argsrepr=repr(dispatch.args),
            kwargsrepr="{}",
            # As send_task leaves it: the task's own setting decides.
            ignore_result=None,
        )
        app.amqp.send_task_message(
            producer,
            dispatch.task,
            message,
            queue=dispatch.queue,
            priority=dispatch.priority,
            # queue_lag_seconds reads how long a message has waited from this.
            headers={SENT_AT_HEADER: time.time()},
            # Nothing to declare per message: Celery publishes to a direct queue through the
            # default exchange, which on Redis is a push onto the queue's own list, whatever
            # bindings exist. The workers declare their queues when they start consuming.
            # Declaring would cost a copy of the queue and a retry wrapper on every send.
            declare=[],
        )
    except unreachable as exc:
        raise BrokerUnreachable(dispatch.task_id) from exc
    except Exception:
        log.exception("task %s: send failed; the reconciler will send it again", dispatch.task_id)
        return False
    return True

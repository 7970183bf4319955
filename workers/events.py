"""Task events (what Flower shows: received, started, succeeded...) go out in batches.

Celery's worker buffers task events and publishes what the buffer holds on the next turn of
its event loop: with prefetch 1 that is one Redis PUBLISH for every event or two, made by
the main process, which also receives, hands out and acknowledges every message. That
publish was a quarter of the main process's time in a drain. This consumer bootstep lets the
buffer fill for FLUSH_S instead (or until Celery's own buffer limit), so a busy worker
publishes a few batches a second; Flower sees a task's events at most FLUSH_S later. What
the buffer holds is published when the consumer stops, before its connection closes.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps

FLUSH_S = 0.1


class EventBatching(bootsteps.StartStopStep):
    requires = ("celery.worker.consumer.events:Events",)

    def __init__(self, consumer: Any, **options: Any) -> None:
        super().__init__(consumer, **options)
        self.flush_due = False

    def start(self, consumer: Any) -> None:
        dispatcher = consumer.event_dispatcher
        if consumer.hub is None or dispatcher is None:
            return  # no event loop: Celery does not buffer

        def flush() -> None:
            self.flush_due = False
            consumer._flush_events()

        def on_buffered() -> None:
            if not self.flush_due:
                self.flush_due = True
                consumer.hub.call_later(FLUSH_S, flush)

        self.flush_due = False
        dispatcher.on_send_buffered = on_buffered

    def stop(self, consumer: Any) -> None:
        if consumer.event_dispatcher is not None:
            consumer._flush_events()

    def shutdown(self, consumer: Any) -> None:
        self.stop(consumer)

"""Worker signal handlers: process set-up only, never run state."""

from __future__ import annotations

from celery.signals import worker_process_init

from workers.runtime import after_fork


@worker_process_init.connect
def _after_fork(**_: object) -> None:
    after_fork()

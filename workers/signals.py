"""Worker signal handlers: process set-up only (logging, metrics files, the health server,
log context), never run state."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Mapping
from contextvars import Token
from typing import Any

from celery.signals import (
    setup_logging,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from engine import actions, logs
from engine import workflows as workflow_specs
from engine.work import PLAN_TASK, STEP_TASK
from workers import runtime
from workers.runtime import after_fork, settings

# settings() makes the metrics directory, which prometheus_client needs before the first
# metric is created: it runs before engine.metrics is imported (here, and by the tasks).
settings()

from engine import metrics  # noqa: E402
from workers import health  # noqa: E402

log = logging.getLogger(__name__)


class TaskIds(logging.Filter):
    """Celery logs a task's id in its record arguments (`Task x[id] received`); our ids are
    `run:step:attempt` and `run:plan`, so such a line can name its run and step."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, dict) and isinstance(args.get("id"), str):
            parts = args["id"].split(":")
            if len(parts) >= 2 and not getattr(record, "run_id", None):
                record.run_id = parts[0]
                record.task_id = args["id"]
                if len(parts) == 3 and parts[1] != "plan":
                    record.step_id = parts[1]
        return True


class NoResultBackendNote(logging.Filter):
    """A revoke (a run's cancel) has each worker try to mark every revoked task revoked in
    the result backend, and warn for each that it could not: this platform keeps results in
    its database and has no result backend, so the warning says nothing but alarms."""

    MESSAGE = "Failed to mark task %s as revoked in backend: %s"

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (
            record.msg == self.MESSAGE
            and isinstance(args, tuple)
            and len(args) == 2
            and isinstance(args[1], NotImplementedError)
        )


# Celery's remote control logs under this name (celery.worker.control).
logging.getLogger("celery.worker.control").addFilter(NoResultBackendNote())


def _configure_logging(level: int | str | None) -> None:
    logs.configure(settings(), "worker", level or None, filters=[TaskIds()])


@setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
    # Connected, so Celery leaves logging to us (worker, beat and their children).
    _configure_logging(loglevel)


@worker_init.connect
def _worker_starting(sender: Any, **_: Any) -> None:
    _configure_logging(getattr(sender, "loglevel", None))
    configured = settings()
    if configured.metrics_dir is not None:
        # This process's own files are open already; those of earlier runs go.
        removed = metrics.prepare_directory(configured.metrics_dir, keep_pid=os.getpid())
        log.info(
            "metrics directory %s ready (%d stale file(s) removed)",
            configured.metrics_dir,
            removed,
        )
    else:
        pool = getattr(sender, "pool_cls", None)
        if "prefork" in str(pool).lower():
            log.warning(
                "PROMETHEUS_MULTIPROC_DIR is not set: the prefork children's counts will "
                "not reach this worker's /metrics"
            )
    _expect_outcomes()
    health.start(configured, sender)
    # What is loaded by now lives as long as the worker. Out of the collector's sight, it
    # no longer makes every full collection longer (planning a 10k-step run spent a third
    # of its time there), and the prefork children share its pages instead of copying
    # them when a collection writes to them.
    gc.collect()
    gc.freeze()


def _expect_outcomes() -> None:
    """The outcome series of every registered workflow and known action, at 0 from the
    start (before the prefork children fork, so they are counted once)."""
    try:
        with runtime.sessions()() as session:
            names = [workflow.name for workflow in workflow_specs.list_latest(session)]
    except Exception as exc:  # metrics set-up must never keep a worker from starting
        log.warning("outcome series of workflows not created: %s", exc)
        names = []
    metrics.expect_outcomes(names, actions.names())
    # The prefork children connect on their own: hand them no connection of this process.
    runtime.db_engine().dispose()


@worker_ready.connect
def _worker_ready(**_: Any) -> None:
    server = health.current()
    if server is not None:
        server.mark_ready()


@worker_shutdown.connect
def _worker_stopping(**_: Any) -> None:
    health.stop()


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    after_fork()
    health.after_fork()


@worker_process_shutdown.connect
def _child_exiting(pid: int | None = None, **_: Any) -> None:
    metrics.process_exited(settings().metrics_dir, pid)


# Task id -> the log context bound for it (a task runs in one process, start to end).
_bound: dict[str, Token[Mapping[str, str]]] = {}


@task_prerun.connect
def _bind_task(task_id: str | None = None, task: Any = None, args: Any = None, **_: Any) -> None:
    if task_id is None:
        return
    name = getattr(task, "name", "")
    args = list(args or [])
    fields: dict[str, str | None] = {"task_id": task_id}
    if name in (STEP_TASK, PLAN_TASK) and args:
        fields["run_id"] = str(args[0])
        if name == STEP_TASK and len(args) > 1:
            fields["step_id"] = str(args[1])
    _bound[task_id] = logs.bind(**fields)


@task_postrun.connect
def _unbind_task(task_id: str | None = None, **_: Any) -> None:
    token = _bound.pop(task_id, None) if task_id is not None else None
    if token is not None:
        logs.reset(token)

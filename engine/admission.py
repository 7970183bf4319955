"""Admitting the runs that wait for a slot of their workflow's concurrency limit
(engine.concurrency): in the transaction that submits a run of a workflow with a limit, in
the one that finishes such a run (its slot goes to the next waiting run at once), and at
every delay tick (beat, RUN_DELAY_TICK_S), the backstop that admits whatever a finish left
waiting (a finish whose admission failed, a run failed by the reconciler).

Waiting runs are admitted in priority order, then oldest first, each while the limit of its
own version leaves a slot. An admitted run is sent as a submitted one is (its plan message),
or, when it waited as a retry of a failed run (engine.resume), resumed at its failed steps.
The caller commits, then sends the work returned."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from engine import concurrency, delayed, resume
from engine.config import Settings
from engine.models import Run, utcnow
from engine.work import Work

log = logging.getLogger(__name__)
runs = Run.__table__
# Waiting runs one admission reads at most (the next finish or tick takes the rest).
BATCH = 500


def admit(session: Session, settings: Settings, name: str) -> Work:
    """Admit the runs of workflow `name` waiting for a slot, as many as the limit leaves
    free; returns their messages. Takes the workflow's lock (engine.concurrency.lock)."""
    concurrency.lock(session, name)
    candidates = session.execute(
        select(runs.c.id, runs.c.version)
        .where(concurrency.WAITING, runs.c.workflow == name)
        .order_by(runs.c.priority.desc(), runs.c.created_at, runs.c.id)
        .limit(BATCH)
        # Whoever holds the lock never waits for a run's row (a cancel of one, which takes
        # the lock after its rows): no deadlock. A run skipped is being cancelled.
        .with_for_update(skip_locked=True)
    ).all()
    if not candidates:
        return Work()
    taken = concurrency.active(session, name)
    chosen = []
    for row in candidates:
        limit = concurrency.limit_of(session, settings, name, row.version)
        if limit is None or taken < limit:
            chosen.append(row.id)
            taken += 1
    if not chosen:
        return Work()
    admitted = session.execute(
        update(runs)
        .where(runs.c.id.in_(chosen), concurrency.WAITING)
        .values(waiting=None, dispatched_at=utcnow())
        .returning(runs.c.id, runs.c.version, runs.c.priority, runs.c.started_at)
    ).all()
    work = Work()
    for run in sorted(admitted, key=lambda row: chosen.index(row.id)):
        log.info("run %s: a slot of workflow %s is free, the run is admitted", run.id, name)
        if run.started_at is not None:  # a retry of a failed run: resumed where it failed
            work.extend(_resume(session, settings, run.id))
        else:
            work.dispatches.append(
                delayed.plan_message(session, settings, run.id, name, run.version, run.priority)
            )
    return work


def _resume(session: Session, settings: Settings, run_id: str) -> Work:
    """Resume a retried run admitted to a slot at its failed steps (engine.resume)."""
    run = session.get(Run, run_id)
    if run is None:
        return Work()
    return resume.resume(session, settings, run, resume.failed_steps(session, run_id))


def admit_all(session: Session, settings: Settings) -> Work:
    """admit() for every workflow with a run waiting for a slot."""
    names = session.scalars(
        select(runs.c.workflow).where(concurrency.WAITING).distinct().order_by(runs.c.workflow)
    ).all()
    work = Work()
    for name in names:
        work.extend(admit(session, settings, name))
    return work


def tick(sessions: sessionmaker[Session], settings: Settings) -> Iterator[Work]:
    """The delay tick: send the delayed runs now due (engine.delayed; those of a workflow
    with a limit are set waiting for a slot instead), then admit the runs waiting for a slot
    of each workflow, in a transaction of its own; yields each transaction's work after its
    commit, for the caller to send."""
    yield from delayed.start_due_batches(sessions, settings)
    with sessions.begin() as session:
        work = admit_all(session, settings)
    if work:
        yield work

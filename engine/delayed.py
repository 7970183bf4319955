"""Delayed runs: a run submitted with a not_before ahead waits, queued, its plan message
unsent, until the delay tick (beat, every RUN_DELAY_TICK_S) finds it due and sends it.

The database holds the wait; the broker carries the run only once it is due (a Celery ETA
message would be held unacknowledged by a worker, and handed to another one after the
broker's visibility timeout). A waiting run is stamped dispatched at its not_before: to the
reconciler (engine.recovery) it is a run sent at that time, so it is never sent before then
and, should no tick send it (beat down), it is sent DISPATCH_GRACE_S after. The tick stamps
each run it sends with its own time, after not_before: from then on a lost message is found
as any run's is. A run submitted with a not_before already past (or now) is sent at once,
as any other, its not_before kept for the record.

A due run of a workflow with a concurrency limit is not sent by the tick: it is set waiting
for a slot (engine.concurrency), and admitted as any waiting run is (engine.admission).

A run cancelled while it waits is no longer queued: nothing sends it. The delayed runs of a
paused workflow start when due, as its other queued runs go on (engine.pauses); pausing it
with cancel_running cancels them with its other live runs."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, TextClause, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from engine import concurrency, workflows
from engine.config import Settings
from engine.errors import InvalidInput, InvalidSpec
from engine.models import DELAYED, Run, in_utc, timestamp, utcnow
from engine.state import RunStatus
from engine.work import Dispatch, Work, plan_dispatch, uncompiled_plan_dispatch

log = logging.getLogger(__name__)
runs = Run.__table__
FIELD = "not_before"
# Runs one transaction of a tick sends at most, and the transactions one tick takes at most
# (the next tick takes the rest).
BATCH = 500
MAX_BATCHES = 20
# RFC 3339's date-time: a full date and time, then its offset (Z, or +hh:mm / -hh:mm).
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?(?P<offset>[Zz]|[+-]\d{2}:\d{2})?"
)
EXAMPLE = "2026-12-07T09:00:00Z"

# A run waiting for its not_before: ix_runs_not_before's terms (as text, so that both
# databases read it from that index), then submitted delayed, and not sent since (whoever
# sends it, the tick or the reconciler, stamps it with a time after its not_before).
WAITING: tuple[ColumnElement[bool] | TextClause, ...] = (
    text(DELAYED),
    runs.c.created_at < runs.c.not_before,
    runs.c.dispatched_at <= runs.c.not_before,
)


def _refused(problem: str) -> InvalidInput:
    return InvalidInput(f"{FIELD} {problem}", errors=[{"field": FIELD, "message": problem}])


def parse(value: Any) -> datetime | None:
    """A not_before as sent (an RFC 3339 time with its offset, or Z), in UTC; None for None.
    Anything else is InvalidInput naming not_before: a time without an offset is refused,
    not guessed."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise _refused(f"must be a string: an RFC 3339 time such as {EXAMPLE}")
    found = _RFC3339.fullmatch(value.strip())
    if found is None:
        raise _refused(f"is not an RFC 3339 time such as {EXAMPLE}")
    if found["offset"] is None:
        raise _refused("has no offset: end it with Z for UTC, or with its offset (+01:00)")
    try:
        return in_utc(datetime.fromisoformat(found[0].upper()))
    except (ValueError, OverflowError) as exc:
        raise _refused("is not a valid time within the years 1 to 9999") from exc


def check_ahead(not_before: datetime, settings: Settings, now: datetime) -> None:
    """InvalidInput naming not_before when it is more than RUN_DELAY_MAX_S ahead of `now`."""
    if not_before - now > timedelta(seconds=settings.run_delay_max_s):
        raise _refused(
            f"is more than RUN_DELAY_MAX_S ({settings.run_delay_max_s:g} s) ahead; "
            "a run further off belongs in a schedule"
        )


def plan_message(
    session: Session, settings: Settings, run_id: str, name: str, version: int, priority: int
) -> Dispatch:
    """The plan message of a queued run read back from its row (by the delay tick, and by
    the reconciler)."""
    try:
        workflow = workflows.compiled(session, settings, name, version)
    except InvalidSpec as exc:
        # Not here (an action plugin this process lacks): plan_run fails the run, naming
        # why, and the other runs' plans go out all the same.
        log.warning("run %s: its plan is sent uncompiled: %s %s", run_id, exc.detail, exc.errors)
        return uncompiled_plan_dispatch(run_id, name, version, settings, priority)
    return plan_dispatch(run_id, workflow, settings, priority)


def start_due(session: Session, settings: Settings, now: datetime, limit: int = BATCH) -> Work:
    """Stamp up to `limit` delayed runs due at `now` sent (the longest due first) and return
    their plan messages, for the caller to send once it committed. On PostgreSQL the runs
    another tick holds are skipped (SKIP LOCKED); SQLite's writers take turns. Each run is
    stamped by a conditional UPDATE, so two ticks at once send it once."""
    due = (*WAITING, runs.c.not_before < now)
    run_ids = session.scalars(
        select(runs.c.id)
        .where(*due)
        .order_by(runs.c.not_before)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if not run_ids:
        return Work()
    stamped = session.execute(
        update(runs)
        .where(runs.c.id.in_(run_ids), *due)
        .values(dispatched_at=now)
        .returning(runs.c.id, runs.c.workflow, runs.c.version, runs.c.priority, runs.c.not_before)
    ).all()
    work = Work()
    held = []
    for run in sorted(stamped, key=lambda row: row.not_before):
        if concurrency.limit_of(session, settings, run.workflow, run.version) is not None:
            held.append(run.id)
            continue
        log.info("run %s: due since %s, its plan is sent", run.id, timestamp(run.not_before))
        work.dispatches.append(
            plan_message(session, settings, run.id, run.workflow, run.version, run.priority)
        )
    if held:
        hold(session, held)
    return work


def hold(session: Session, run_ids: list[str]) -> None:
    """Set due delayed runs of workflows with a limit waiting for a slot: engine.admission
    admits them (the tick does, right after) as a slot frees, in priority order."""
    session.execute(
        update(runs)
        .where(runs.c.id.in_(run_ids), runs.c.status == RunStatus.QUEUED)
        .values(waiting=concurrency.REASON)
    )
    log.info("%d due delayed run(s) wait for a slot of their workflow", len(run_ids))


def start_due_batches(sessions: sessionmaker[Session], settings: Settings) -> Iterator[Work]:
    """start_due, a batch per transaction, until none is left due (MAX_BATCHES at most: the
    next tick takes the rest); yields each batch's work after its commit, for the caller to
    send."""
    for _ in range(MAX_BATCHES):
        with sessions.begin() as session:
            work = start_due(session, settings, utcnow())
        if work:
            yield work
        if len(work.dispatches) < BATCH:
            return


def lag_seconds(session: Session, now: datetime) -> float:
    """How long the most overdue delayed run has waited past its not_before unsent (0 when
    none has): a tick every RUN_DELAY_TICK_S keeps it near 0. It grows while nothing sends
    them: beat down, no worker on the manager queue, or ticks that keep failing. Read from
    ix_runs_not_before."""
    # ORDER BY and LIMIT rather than min(): the index is read in order up to the first
    # waiting run, where min() of a filtered scan would read all of it.
    oldest = session.scalar(
        select(runs.c.not_before).where(*WAITING).order_by(runs.c.not_before).limit(1)
    )
    if oldest is None:
        return 0.0
    return max(0.0, (in_utc(now) - in_utc(oldest)).total_seconds())


def waiting(session: Session) -> int:
    """How many delayed runs wait unsent, due or not (ix_runs_not_before)."""
    return int(session.scalar(select(func.count()).select_from(runs).where(*WAITING)) or 0)

"""Bulk replay: every open dead letter a filter matches, redriven at a bounded rate.

plan_bulk answers the dry run (count and ids) and checks the confirmation. replay_batches then
replays the planned ids a batch per transaction with set-based statements (a handful per batch
instead of about eight per letter), and replays a batch that cannot go through whole one letter
per transaction, so one bad letter never takes the others down. The caller sends each batch's
work after its commit, paced by a Pacer.

A letter whose run is of a workflow version with a concurrency limit (engine.concurrency) goes
one per transaction through replay(), as a single replay does: its run takes a free slot or
waits for one, so a bulk replay never starts more runs of the workflow than its limit allows.
Letters of workflows without a limit keep the batch path.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session, sessionmaker

from engine import audit, concurrency, metrics, replay_batch
from engine.auth import Caller
from engine.config import Settings
from engine.dlq_query import OPEN, LetterFilter, letters
from engine.errors import Conflict, EngineError, InvalidInput, InvalidTransition, NotFound
from engine.models import Run
from engine.replay import replay, require_reason
from engine.replay_batch import ItemResult

__all__ = [
    "BATCH_MAX",
    "BulkPlan",
    "ItemResult",
    "Pacer",
    "batch_size",
    "plan_bulk",
    "replay_batches",
]
log = logging.getLogger(__name__)
runs = Run.__table__
# Letters per transaction at most: big enough that statements, not round trips, dominate.
BATCH_MAX = 200


@dataclass(frozen=True)
class BulkPlan:
    ids: list[str]
    batch: str
    # The letters whose run's version has a concurrency limit: replayed one by one.
    limited: frozenset[str] = frozenset()


def plan_bulk(
    session: Session,
    settings: Settings,
    where: LetterFilter,
    caller: Caller,
    *,
    confirm_count: int | None = None,
    reason: str | None = None,
    action: str = "replay",
) -> BulkPlan:
    """The open letters matching `where`, oldest first, for a bulk `action` (replay, or
    discard: engine.bulk_discard). A dry run passes no confirm_count; a real call must
    confirm exactly the number matching now (else Conflict), and is audited as
    dlq.bulk_<action>. More than settings.bulk_replay_max letters is refused."""
    if where.status not in (None, OPEN):
        raise InvalidInput(
            f"only open dead letters are {action}ed",
            errors=[{"field": "filter.status", "message": "leave it out or use open"}],
        )
    if confirm_count is not None:
        reason = require_reason(reason)
    open_only = replace(where, status=OPEN)
    limit = settings.bulk_replay_max
    # The run's workflow and version come in the same read (a run never changes either).
    rows = session.execute(
        select(letters.c.id, runs.c.workflow, runs.c.version)
        .select_from(letters.outerjoin(runs, runs.c.id == letters.c.run_id))
        .where(*open_only.clauses())
        .order_by(letters.c.failed_at, letters.c.id)
        .limit(limit + 1)
    ).all()
    ids = [row.id for row in rows]
    if len(ids) > limit:
        total = session.scalar(select(func.count()).where(*open_only.clauses()))
        raise InvalidInput(
            f"{total} dead letters match; one bulk {action} takes at most {limit}",
            errors=[{"field": "filter", "message": f"narrow it to at most {limit} letters"}],
        )
    batch = uuid.uuid4().hex
    if confirm_count is not None:
        if confirm_count != len(ids):
            raise Conflict(
                f"confirm_count is {confirm_count} but {len(ids)} open dead letters match now;"
                " run the dry run again",
                errors=[
                    {
                        "field": "confirm_count",
                        "message": f"{len(ids)} match, {confirm_count} given",
                    }
                ],
            )
        audit.record(
            session,
            actor=caller.sub,
            action=f"dlq.bulk_{action}",
            target=f"dead_letter_batch:{batch}",
            reason=reason,
            detail={"filter": where.describe(), "count": len(ids)},
        )
    if confirm_count is None or action != "replay":
        return BulkPlan(ids, batch)
    return BulkPlan(ids, batch, _limited(session, settings, rows))


def _limited(session: Session, settings: Settings, rows: Sequence[Row[Any]]) -> frozenset[str]:
    """The letters of `rows` whose run's version has a concurrency limit (one compiled
    lookup per version, cached: no statement per letter)."""
    limits: dict[tuple[str, int], int | None] = {}
    found = set()
    for row in rows:
        if row.workflow is None:
            continue  # a letter of no run, or of one deleted since
        key = (row.workflow, row.version)
        if key not in limits:
            limits[key] = concurrency.limit_of(session, settings, *key)
        if limits[key] is not None:
            found.add(row.id)
    return frozenset(found)


def batch_size(settings: Settings) -> int:
    """Letters per transaction. A batch's steps are queued at its commit and sent over the
    next size/rate seconds; keeping that well inside dispatch_grace_s means the reconciler
    never sends a step the pacer is still about to send."""
    rate = settings.bulk_replay_rate
    if rate <= 0:
        return BATCH_MAX
    return max(1, min(BATCH_MAX, int(rate * settings.dispatch_grace_s / 4)))


def replay_batches(
    sessions: sessionmaker[Session],
    settings: Settings,
    plan: BulkPlan,
    caller: Caller,
    reason: str,
) -> Iterator[list[ItemResult]]:
    """Replay the planned letters a batch per transaction; yields each batch's results, in
    plan order, after its commit (the caller then sends their work, at its own pace)."""
    size = batch_size(settings)
    for start in range(0, len(plan.ids), size):
        chunk = plan.ids[start : start + size]
        together = [letter_id for letter_id in chunk if letter_id not in plan.limited]
        done, rest = _replay_together(sessions, settings, together, caller, reason, plan.batch)
        rest += [letter_id for letter_id in chunk if letter_id in plan.limited]
        replayed = sum(1 for item in done.values() if item.outcome == "replayed")
        if replayed:
            metrics.dlq_events_total.labels(event="replayed").inc(replayed)
        for letter_id in rest:
            done[letter_id] = _replay_one(sessions, settings, letter_id, caller, reason, plan.batch)
        yield [done[letter_id] for letter_id in chunk]


def _replay_together(
    sessions: sessionmaker[Session],
    settings: Settings,
    ids: list[str],
    caller: Caller,
    reason: str,
    batch: str,
) -> tuple[dict[str, ItemResult], list[str]]:
    """replay_batch.replay_letters in a transaction of its own; on any failure, every letter
    is left for replay one by one."""
    if not ids:
        return {}, []
    try:
        with sessions.begin() as session:
            return replay_batch.replay_letters(session, settings, ids, caller, reason, batch)
    except replay_batch.Mismatch as exc:
        log.info("bulk replay %s: %s; this batch goes letter by letter", batch, exc)
    except Exception:  # the letters are retried one by one, and each reports its own error
        log.exception("bulk replay %s: a batch of %d failed", batch, len(ids))
    return {}, list(ids)


def _replay_one(
    sessions: sessionmaker[Session],
    settings: Settings,
    letter_id: str,
    caller: Caller,
    reason: str,
    batch: str,
) -> ItemResult:
    try:
        with sessions.begin() as session:
            replayed = replay(session, settings, letter_id, caller, reason, batch=batch)
    except (Conflict, InvalidTransition, NotFound) as exc:
        return ItemResult(letter_id, "conflict", exc.detail)
    except EngineError as exc:
        return ItemResult(letter_id, "error", exc.detail)
    except Exception as exc:  # reported per item and logged: the rest still go
        log.exception("dead letter %s: bulk replay failed", letter_id)
        return ItemResult(letter_id, "error", f"{type(exc).__name__}: see the API log")
    replayed.work.count_committed()  # as a batch's count: once committed, not when sent
    return ItemResult(
        letter_id,
        "replayed",
        run_id=replayed.run_id,
        work=replayed.work,
        waiting=replayed.waiting,
    )


class Pacer:
    """Spaces events at most `rate` per second. It only says how long to wait before the
    next one; the caller does the waiting (the engine never sleeps)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.clock = clock
        self.next_at: float | None = None

    def delay(self) -> float:
        now = self.clock()
        at = now if self.next_at is None else max(now, self.next_at)
        self.next_at = at + self.interval
        return at - now

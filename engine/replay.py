"""The dead-letter queue, operator side: list, show, replay (one or by filter), discard.

A replay re-enters the dead letter's run at its step (engine.runs.resume). Who may act is
checked by the caller (scopes); every change here is audited in the same transaction.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from engine import actions, audit, metrics, runs
from engine.auth import Caller
from engine.config import Settings
from engine.errors import Conflict, EngineError, InvalidInput, InvalidTransition, NotFound
from engine.models import DeadLetter, Run, Step, utcnow
from engine.work import Work

log = logging.getLogger(__name__)
letters = DeadLetter.__table__
steps = Step.__table__
OPEN, REPLAYED, DISCARDED = "open", "replayed", "discarded"
STATUSES = (OPEN, REPLAYED, DISCARDED)
FILTER_FIELDS = (
    "status",
    "workflow",
    "step",
    "exception_type",
    "fingerprint",
    "run_id",
    "since",
    "until",
)


@dataclass(frozen=True)
class LetterFilter:
    """Which dead letters: every field optional; no status means every status."""

    status: str | None = None
    workflow: str | None = None
    step: str | None = None
    exception_type: str | None = None
    fingerprint: str | None = None
    run_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any], prefix: str = "") -> LetterFilter:
        """From query arguments or a JSON object; InvalidInput names `<prefix><field>`."""
        values = {name: str(raw[name]) for name in FILTER_FIELDS if raw.get(name) not in (None, "")}
        status = values.get("status")
        if status is not None and status not in STATUSES:
            raise InvalidInput(
                "unknown dead-letter status",
                errors=[{"field": prefix + "status", "message": f"one of {', '.join(STATUSES)}"}],
            )
        since = audit.parse_time(values.pop("since", None), prefix + "since")
        until = audit.parse_time(values.pop("until", None), prefix + "until")
        if since is not None and until is not None and until <= since:
            raise InvalidInput(
                "until must be after since",
                errors=[{"field": prefix + "until", "message": "must be after since"}],
            )
        return cls(since=since, until=until, **values)

    def clauses(self) -> list[ColumnElement[bool]]:
        exact = {
            letters.c.status: self.status,
            letters.c.workflow: self.workflow,
            letters.c.step_id: self.step,
            letters.c.exception_type: self.exception_type,
            letters.c.fingerprint: self.fingerprint,
            letters.c.run_id: self.run_id,
        }
        where = [column == value for column, value in exact.items() if value is not None]
        if self.since is not None:
            where.append(letters.c.failed_at >= self.since)
        if self.until is not None:
            where.append(letters.c.failed_at < self.until)
        return where

    def describe(self) -> dict[str, str]:
        """The filter as JSON, for the audit trail."""
        return {
            name: value.isoformat() if isinstance(value, datetime) else value
            for name in FILTER_FIELDS
            if (value := getattr(self, name)) is not None
        }


@dataclass(frozen=True)
class Group:
    fingerprint: str
    exception_type: str
    count: int
    last_failed_at: datetime


@dataclass
class Replayed:
    """A replayed letter; the caller commits, then sends `work`."""

    letter: DeadLetter
    run_id: str
    work: Work


@dataclass(frozen=True)
class BulkPlan:
    ids: list[str]
    batch: str


@dataclass
class ItemResult:
    """One letter of a bulk replay: replayed (send `work`), conflict or error."""

    id: str
    outcome: str
    detail: str | None = None
    run_id: str | None = None
    work: Work = field(default_factory=Work)


def get_letter(session: Session, letter_id: str) -> DeadLetter:
    letter = session.get(DeadLetter, letter_id)
    if letter is None:
        raise NotFound(f"dead letter {letter_id} does not exist")
    return letter


def list_letters(
    session: Session, where: LetterFilter, *, limit: int, cursor: str | None = None
) -> tuple[list[DeadLetter], str | None]:
    """Dead letters newest first, one page at a time (the cursor of GET /runs)."""
    query = select(DeadLetter).where(*where.clauses())
    if cursor:
        at, row_id = runs.decode_cursor(cursor)
        query = query.where(
            or_(
                DeadLetter.failed_at < at,
                and_(DeadLetter.failed_at == at, DeadLetter.id < row_id),
            )
        )
    rows = list(
        session.scalars(
            query.order_by(DeadLetter.failed_at.desc(), DeadLetter.id.desc()).limit(limit + 1)
        )
    )
    following = None
    if len(rows) > limit:
        following = runs.encode_cursor(rows[limit - 1].failed_at, rows[limit - 1].id)
    return rows[:limit], following


def group_letters(session: Session, where: LetterFilter, limit: int = 100) -> list[Group]:
    """Counts by fingerprint over the whole filter (not one page), largest first."""
    count = func.count().label("count")
    query = (
        select(
            letters.c.fingerprint,
            letters.c.exception_type,
            count,
            func.max(letters.c.failed_at).label("last_failed_at"),
        )
        .where(*where.clauses())
        .group_by(letters.c.fingerprint, letters.c.exception_type)
        .order_by(count.desc(), letters.c.fingerprint)
        .limit(limit)
    )
    return [Group(*row) for row in session.execute(query)]


def count_open(session: Session) -> int:
    """Open dead letters now: the dlq_open gauge, read when /metrics is scraped."""
    return session.scalar(select(func.count()).where(letters.c.status == OPEN)) or 0


def _require_reason(reason: str | None) -> str:
    if reason is None or not reason.strip():
        raise InvalidInput(
            "a reason is required", errors=[{"field": "reason", "message": "required, non-empty"}]
        )
    return reason.strip()


def _check_inputs(session: Session, settings: Settings, letter: DeadLetter, inputs: Any) -> None:
    """Edited inputs must pass the step action's input schema, as rendered ones do."""
    if letter.step_id is None:
        raise InvalidInput(
            "this dead letter is a run's planning; it takes no inputs",
            errors=[{"field": "inputs", "message": "only a step's dead letter takes inputs"}],
        )
    name = session.scalar(
        select(steps.c.action).where(
            steps.c.run_id == letter.run_id, steps.c.step_id == letter.step_id
        )
    )
    if name is None:
        raise InvalidTransition(f"step {letter.step_id!r} of run {letter.run_id} is gone")
    actions.load_plugins(settings.action_modules)
    action = actions.get(name)
    if action is None:
        raise InvalidInput(
            f"unknown action {name!r}",
            errors=[{"field": "inputs", "message": f"action {name!r} is not installed here"}],
        )
    action.check_inputs(inputs)


def replay(
    session: Session,
    settings: Settings,
    letter_id: str,
    caller: Caller,
    reason: str | None,
    inputs: dict[str, Any] | None = None,
    *,
    batch: str | None = None,
) -> Replayed:
    """Mark an open letter replayed (a conditional UPDATE: the loser of a race gets
    Conflict) and re-enter its run at its step, with `inputs` replacing the rendered ones."""
    reason = _require_reason(reason)
    letter = get_letter(session, letter_id)
    if letter.status != OPEN:
        raise Conflict(f"dead letter {letter_id} is {letter.status}; only an open one is replayed")
    if letter.run_id is None:
        raise InvalidTransition(f"dead letter {letter_id} belongs to no run; discard it")
    if inputs is not None:
        _check_inputs(session, settings, letter, inputs)
    resolution: dict[str, Any] = {"reason": reason, "inputs": inputs}
    if batch:
        resolution["batch"] = batch
    if not session.execute(
        update(letters)
        .where(letters.c.id == letter_id, letters.c.status == OPEN)
        .values(
            status=REPLAYED, resolved_by=caller.sub, resolved_at=utcnow(), resolution=resolution
        )
    ).rowcount:
        raise Conflict(f"dead letter {letter_id} was resolved by someone else just now")
    run = session.get(Run, letter.run_id)
    if run is None:
        raise InvalidTransition(f"run {letter.run_id} of dead letter {letter_id} is gone")
    if letter.step_id is None:
        work = runs.requeue_plan(session, settings, run)
    else:
        override = {letter.step_id: inputs} if inputs is not None else None
        work = runs.resume(session, settings, run, [letter.step_id], inputs_override=override)
    detail: dict[str, Any] = {"run_id": run.id, "step_id": letter.step_id}
    if inputs is not None:
        detail["inputs"] = inputs
    if batch:
        detail["batch"] = batch
    audit.record(
        session,
        actor=caller.sub,
        action="dlq.replay",
        target=f"dead_letter:{letter_id}",
        reason=reason,
        detail=detail,
    )
    session.refresh(letter)
    metrics.dlq_events_total.labels(event="replayed").inc()
    return Replayed(letter, run.id, work)


def discard(session: Session, letter_id: str, caller: Caller, reason: str | None) -> DeadLetter:
    """Stop showing an open letter as open; the row stays for the audit trail."""
    reason = _require_reason(reason)
    letter = get_letter(session, letter_id)
    if not session.execute(
        update(letters)
        .where(letters.c.id == letter_id, letters.c.status == OPEN)
        .values(
            status=DISCARDED,
            resolved_by=caller.sub,
            resolved_at=utcnow(),
            resolution={"reason": reason},
        )
    ).rowcount:
        session.refresh(letter)
        raise Conflict(f"dead letter {letter_id} is {letter.status}; only an open one is discarded")
    audit.record(
        session,
        actor=caller.sub,
        action="dlq.discard",
        target=f"dead_letter:{letter_id}",
        reason=reason,
        detail={"run_id": letter.run_id, "step_id": letter.step_id},
    )
    session.refresh(letter)
    metrics.dlq_events_total.labels(event="discarded").inc()
    return letter


def plan_bulk(
    session: Session,
    settings: Settings,
    where: LetterFilter,
    caller: Caller,
    *,
    confirm_count: int | None = None,
    reason: str | None = None,
) -> BulkPlan:
    """The open letters matching `where`, oldest first. A dry run passes no confirm_count;
    a real call must confirm exactly the number matching now (else Conflict), and is
    audited. More than settings.bulk_replay_max letters is refused."""
    if where.status not in (None, OPEN):
        raise InvalidInput(
            "only open dead letters are replayed",
            errors=[{"field": "filter.status", "message": "leave it out or use open"}],
        )
    if confirm_count is not None:
        reason = _require_reason(reason)
    open_only = replace(where, status=OPEN)
    limit = settings.bulk_replay_max
    ids = list(
        session.scalars(
            select(letters.c.id)
            .where(*open_only.clauses())
            .order_by(letters.c.failed_at, letters.c.id)
            .limit(limit + 1)
        )
    )
    if len(ids) > limit:
        total = session.scalar(select(func.count()).where(*open_only.clauses()))
        raise InvalidInput(
            f"{total} dead letters match; one bulk replay takes at most {limit}",
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
            action="dlq.bulk_replay",
            target=f"dead_letter_batch:{batch}",
            reason=reason,
            detail={"filter": where.describe(), "count": len(ids)},
        )
    return BulkPlan(ids, batch)


def replay_each(
    sessions: sessionmaker[Session],
    settings: Settings,
    plan: BulkPlan,
    caller: Caller,
    reason: str,
) -> Iterator[ItemResult]:
    """Replay the planned letters, each in its own short transaction; one failing does not
    stop the rest. Yields after each commit: the caller sends the work, at its own pace."""
    for letter_id in plan.ids:
        try:
            with sessions.begin() as session:
                replayed = replay(session, settings, letter_id, caller, reason, batch=plan.batch)
        except (Conflict, InvalidTransition, NotFound) as exc:
            yield ItemResult(letter_id, "conflict", exc.detail)
        except EngineError as exc:
            yield ItemResult(letter_id, "error", exc.detail)
        except Exception as exc:  # reported per item and logged: the rest still go
            log.exception("dead letter %s: bulk replay failed", letter_id)
            yield ItemResult(letter_id, "error", f"{type(exc).__name__}: see the API log")
        else:
            yield ItemResult(letter_id, "replayed", run_id=replayed.run_id, work=replayed.work)


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

"""Schedule use cases: create, list, read, pause, resume, delete (engine.schedules.edit
changes one). A caller sees and changes its own schedules; admin.schedules, every one.
Callers commit."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine import audit, cursors, workflows
from engine.auth import Caller
from engine.config import Settings
from engine.db import changed
from engine.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from engine.models import utcnow
from engine.schedules import timing, tokens
from engine.schedules.models import Schedule

# Submitting runs is what a schedule does: its creator must be allowed to.
SUBMIT_SCOPE = "runs.write"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True)
class NewSchedule:
    name: str
    workflow: str
    cron: str
    timezone: str = "UTC"
    version: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    enabled: bool = True


def create(
    session: Session,
    settings: Settings,
    request: NewSchedule,
    caller: Caller,
    now: datetime | None = None,
) -> Schedule:
    """A new schedule, checked as a submission of its workflow would be (the workflow and
    version exist, the params match its schema); its first fire is the first time after
    now. Its runs will act as the caller, with the scopes of the caller's token, until that
    token is revoked (engine.schedules.tokens)."""
    check_can_submit(caller)
    check_name(request.name)
    timing.check_cron(request.cron)
    timing.zone(request.timezone)
    check_submission(session, settings, request.workflow, request.version, request.params)
    now = now or utcnow()
    schedule = Schedule(
        name=request.name,
        workflow=request.workflow,
        version=request.version,
        cron=request.cron,
        timezone=request.timezone,
        params=request.params,
        priority=request.priority,
        enabled=request.enabled,
        next_fire_at=(
            timing.next_after(request.cron, request.timezone, now) if request.enabled else None
        ),
        created_by=caller.sub,
        created_scopes=list(caller.scopes),
        created_jti=caller.jti,
        created_at=now,
        updated_at=now,
    )
    with name_taken_as_conflict(request.name):
        with session.begin_nested():
            session.add(schedule)
    return schedule


def check_can_submit(caller: Caller) -> None:
    """PermissionDenied unless the caller may submit runs, which its schedule will do."""
    if not caller.can(SUBMIT_SCOPE):
        raise PermissionDenied(f"a schedule submits runs: it needs the scope {SUBMIT_SCOPE}")


def check_name(name: str) -> None:
    """InvalidInput naming the field `name` unless it is a valid schedule name."""
    if not _NAME.match(name):
        raise InvalidInput(
            "invalid schedule name",
            errors=[{"field": "name", "message": "1-100 letters, digits, '_', '.', '-'"}],
        )
    if _UUID.match(name.lower()):
        # /schedules/{ref} takes an id or a name: a name shaped like an id could stand for
        # another schedule's.
        raise InvalidInput(
            "invalid schedule name",
            errors=[{"field": "name", "message": "must not have the shape of a schedule id"}],
        )


def check_submission(
    session: Session,
    settings: Settings,
    workflow_name: str,
    version: int | None,
    params: dict[str, Any],
) -> None:
    """InvalidInput naming the field unless the workflow (and version) exist and take the
    params, as a submission of it now would be checked."""
    try:
        workflow = workflows.compiled_for_submit(session, settings, workflow_name, version)
    except NotFound as exc:
        where = "workflow"
        if version is not None and _exists(session, settings, workflow_name):
            where = "version"
        raise InvalidInput(str(exc), errors=[{"field": where, "message": str(exc)}]) from exc
    workflow.check_params(params)


@contextmanager
def name_taken_as_conflict(name: str) -> Iterator[None]:
    """A unique-name violation within the block is a Conflict naming the field `name`."""
    try:
        yield
    except IntegrityError as exc:
        raise Conflict(
            f"a schedule named {name!r} already exists",
            errors=[{"field": "name", "message": "already taken"}],
        ) from exc


def get(session: Session, ref: str, caller: Caller, *, lock: bool = False) -> Schedule:
    """A schedule the caller may see, by id or by name: its own, or any with
    admin.schedules. Another caller's schedule is NotFound, like a missing one (as a run
    is). `lock` holds its row until the commit."""
    condition = Schedule.name == ref
    if _UUID.match(ref):
        condition = or_(Schedule.id == ref, condition)
    query = _visible(select(Schedule).where(condition), caller)
    found = session.scalars(query.with_for_update() if lock else query).first()
    if found is None:
        raise NotFound(f"schedule {ref!r} does not exist")
    return found


def list_schedules(
    session: Session, caller: Caller, *, limit: int, cursor: str | None = None
) -> tuple[list[Schedule], str | None]:
    """The schedules the caller may see (its own; all with admin.schedules) by name, one
    page at a time."""
    query = _visible(select(Schedule).order_by(Schedule.name).limit(limit + 1), caller)
    if cursor:
        (after,) = cursors.decode(cursor, 1)
        if not isinstance(after, str):
            raise cursors.invalid()
        query = query.where(Schedule.name > after)
    found = list(session.scalars(query))
    following = cursors.encode(found[limit - 1].name) if len(found) > limit else None
    return found[:limit], following


def pause(session: Session, ref: str, caller: Caller) -> Schedule:
    """Stop firing until resumed (pausing a paused schedule changes nothing)."""
    schedule = get(session, ref, caller)
    if schedule.enabled:
        schedule.enabled = False
        schedule.next_fire_at = None
        schedule.updated_at = utcnow()
        _record(session, caller, "schedule.pause", schedule)
    return schedule


def resume(session: Session, ref: str, caller: Caller, now: datetime | None = None) -> Schedule:
    """Fire again from the first time after now: the times missed while paused are not
    made up for. Its owner's resume binds it to the owner's token (who needs runs.write,
    as on create; the audit event records a move to another token as `jti`: from, to);
    another's keeps the token it has, and is refused when that token was revoked
    (engine.schedules.tokens)."""
    schedule = get(session, ref, caller)
    if not schedule.enabled:
        moved = None
        if schedule.created_by == caller.sub:
            check_can_submit(caller)
            moved = tokens.bind(schedule, caller)
        else:
            tokens.check_not_revoked(session, schedule)
        now = now or utcnow()
        schedule.enabled = True
        schedule.next_fire_at = timing.next_after(schedule.cron, schedule.timezone, now)
        schedule.updated_at = now
        _record(session, caller, "schedule.resume", schedule, {"jti": moved} if moved else {})
    return schedule


def delete(session: Session, ref: str, caller: Caller) -> None:
    """Remove a schedule; the runs it submitted stay."""
    schedule = get(session, ref, caller)
    _record(session, caller, "schedule.delete", schedule)
    session.delete(schedule)


def pause_all(session: Session, caller: Caller) -> int:
    """Pause every enabled schedule (an emergency stop); how many were paused."""
    count = changed(
        session.execute(
            update(Schedule)
            .where(Schedule.enabled.is_(True))
            .values(enabled=False, next_fire_at=None, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    )
    audit.record(
        session,
        actor=caller.sub,
        action="schedule.pause",
        target="schedule:*",
        detail={"paused": count},
    )
    return count


def _visible(query: Select[tuple[Schedule]], caller: Caller) -> Select[tuple[Schedule]]:
    if caller.sees_all_schedules:
        return query
    return query.where(Schedule.created_by == caller.sub)


def _exists(session: Session, settings: Settings, workflow: str) -> bool:
    try:
        workflows.compiled_for_submit(session, settings, workflow)
    except NotFound:
        return False
    return True


def _record(
    session: Session,
    caller: Caller,
    action: str,
    schedule: Schedule,
    extra: dict[str, Any] | None = None,
) -> None:
    audit.record(
        session,
        actor=caller.sub,
        action=action,
        target=f"schedule:{schedule.id}",
        detail={"name": schedule.name, "owner": schedule.created_by, **(extra or {})},
    )

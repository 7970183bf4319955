"""Tables. Typed SQLAlchemy 2.x models; no behaviour lives here."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def timestamp(value: datetime | None) -> str | None:
    """A time as JSON shows it: ISO 8601 in UTC, to the millisecond, with a Z."""
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def in_utc(moment: datetime) -> datetime:
    """`moment` in UTC (a naive one is taken as UTC); OverflowError when that falls outside
    the years 1 to 9999."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored in UTC and always read back timezone-aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        value = in_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


WEBHOOK_URL_MAX = 2048
# A finished run with a webhook whose latest finish has no event yet (ix_runs_webhook_due).
WEBHOOK_DUE = (
    "webhook_url IS NOT NULL AND finished_at IS NOT NULL"
    " AND (webhook_event_at IS NULL OR webhook_event_at <> finished_at)"
)
# A queued run submitted with a not_before (ix_runs_not_before): the delayed runs, waiting
# or just sent; a run submitted without one is never in it (engine.delayed).
DELAYED = "status = 'queued' AND not_before IS NOT NULL"
# A queued run waiting for a slot of its workflow's concurrency limit (ix_runs_waiting,
# engine.concurrency): unsent until admitted; every other run is never in it.
HELD = "status = 'queued' AND waiting IS NOT NULL"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    # Every model here is mapped to a table (no joins, no selectables), so its __table__ is
    # a Table: what Core's insert(), update() and delete() take.
    __table__: ClassVar[Table]
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, Any: JSON}


class Workflow(Base):
    __tablename__ = "workflows"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    spec: Mapped[dict[str, Any]]
    spec_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WorkflowPause(Base):
    """A paused workflow (every version of it): no new run of it is submitted while this row
    exists (engine.pauses); resuming deletes it. Runs already submitted go on."""

    __tablename__ = "workflow_pauses"

    workflow: Mapped[str] = mapped_column(String(100), primary_key=True)
    reason: Mapped[str] = mapped_column(String(500))
    paused_by: Mapped[str] = mapped_column(String(200))
    paused_at: Mapped[datetime] = mapped_column(default=utcnow)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("created_by", "idempotency_key", name="uq_runs_idempotency"),
        Index("ix_runs_created_by_created_at", "created_by", "created_at"),
        Index("ix_runs_status_dispatched_at", "status", "dispatched_at"),
        Index("ix_runs_created_at", "created_at"),
        # Finished runs only: retention's lookup (engine.retention); a submission skips it.
        Index(
            "ix_runs_finished_at",
            "finished_at",
            postgresql_where=text("finished_at IS NOT NULL"),
            sqlite_where=text("finished_at IS NOT NULL"),
        ),
        # Finished runs whose run.finished event is not recorded yet (engine.webhooks): the
        # webhook scan reads only those; a run without a webhook_url is never in it.
        Index(
            "ix_runs_webhook_due",
            "finished_at",
            postgresql_where=text(WEBHOOK_DUE),
            sqlite_where=text(WEBHOOK_DUE),
        ),
        # Queued runs with a not_before only: the delay tick's lookup of what is due
        # (engine.delayed), the longest due first; a submission without one skips it.
        Index(
            "ix_runs_not_before",
            "not_before",
            postgresql_where=text(DELAYED),
            sqlite_where=text(DELAYED),
        ),
        # Runs waiting for a slot only (engine.concurrency): the admissions' lookup by
        # workflow; a run of a workflow without a limit is never in it.
        Index(
            "ix_runs_waiting",
            "workflow",
            "priority",
            "created_at",
            postgresql_where=text(HELD),
            sqlite_where=text(HELD),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workflow: Mapped[str] = mapped_column(String(100))
    version: Mapped[int]
    params: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="queued")
    priority: Mapped[int] = mapped_column(default=0)
    created_by: Mapped[str] = mapped_column(String(200))
    # The scopes of the token that submitted it: its steps act with that authority (a domain
    # action may do for another subject only what its submitter may). None before 0005.
    created_scopes: Mapped[list[str] | None] = mapped_column(JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # Leaf steps (no step needs them) not yet succeeded. A leaf runs only after all its
    # ancestors succeeded, so when this reaches zero every step has and the run succeeds;
    # counting leaves alone keeps the run row out of most steps' transactions.
    leaves_left: Mapped[int] = mapped_column(default=0)
    # Deliveries of plan_run whose worker never finished them (the delivery cap).
    plan_deliveries: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    dispatched_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Where to POST the run.finished event (engine.webhooks), and the finished_at of the
    # latest event recorded for it: a run that finishes again (a replay) is a new event.
    webhook_url: Mapped[str | None] = mapped_column(String(WEBHOOK_URL_MAX))
    webhook_event_at: Mapped[datetime | None]
    # The latest event's delivery: pending, delivered, gone or failed (engine.webhooks).
    webhook_status: Mapped[str | None] = mapped_column(String(16))
    # The fire time a schedule submitted it for (a tick's or a backfill's), or the moment it
    # was triggered; None for a run submitted otherwise. Its steps read it as
    # run.scheduled_for (engine.run_context).
    scheduled_for: Mapped[datetime | None]
    # Not started before this time (engine.delayed): while it is ahead the run waits queued,
    # its plan message unsent. None for a run that starts at once.
    not_before: Mapped[datetime | None]
    # Why a queued run waits unsent besides its not_before: "concurrency" while its
    # workflow's limit has no slot free (engine.concurrency). None otherwise.
    waiting: Mapped[str | None] = mapped_column(String(16))


class Step(Base):
    __tablename__ = "steps"
    __table_args__ = (
        Index("ix_steps_status_lease_expires_at", "status", "lease_expires_at"),
        Index("ix_steps_status_dispatched_at", "status", "dispatched_at"),
    )

    run_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    step_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    position: Mapped[int]
    action: Mapped[str] = mapped_column(String(100))
    queue: Mapped[str] = mapped_column(String(100), default="steps")
    depends_on: Mapped[list[str]] = mapped_column(JSON, default=list)
    pending_deps: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=1)
    timeout_s: Mapped[float] = mapped_column(Float)
    inputs: Mapped[Any | None] = mapped_column(JSON)
    # Inputs given by an operator on replay; they replace the spec's templates.
    inputs_override: Mapped[Any | None] = mapped_column(JSON)
    output: Mapped[Any | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    error_type: Mapped[str | None] = mapped_column(String(200))
    task_id: Mapped[str | None] = mapped_column(String(200))
    worker: Mapped[str | None] = mapped_column(String(200))
    # The broker's tag of the delivery that started the running attempt: its own message's,
    # or for a step run inline, that of the message carrying it. A redelivery keeps its tag,
    # a new send gets a new one, so only that delivery redelivered proves the attempt lost.
    delivery_tag: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]
    dispatched_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class DeadLetter(Base):
    __tablename__ = "dead_letters"
    __table_args__ = (
        Index("ix_dead_letters_status_failed_at", "status", "failed_at"),
        Index("ix_dead_letters_fingerprint", "fingerprint"),
        Index("ix_dead_letters_run_id_step_id", "run_id", "step_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    task_name: Mapped[str] = mapped_column(String(100))
    task_id: Mapped[str | None] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(100))
    args: Mapped[Any] = mapped_column(JSON, default=list)
    kwargs: Mapped[Any] = mapped_column(JSON, default=dict)
    run_id: Mapped[str | None] = mapped_column(String(36))
    step_id: Mapped[str | None] = mapped_column(String(100))
    workflow: Mapped[str | None] = mapped_column(String(100))
    exception_type: Mapped[str] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(Text, default="")
    traceback: Mapped[str] = mapped_column(Text, default="")
    fingerprint: Mapped[str] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(default=0)
    failed_at: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default="open")
    resolved_by: Mapped[str | None] = mapped_column(String(200))
    resolved_at: Mapped[datetime | None]
    resolution: Mapped[Any | None] = mapped_column(JSON)


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100))
    target: Mapped[str] = mapped_column(String(300))
    reason: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[Any | None] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class RevokedToken(Base):
    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    revoked_by: Mapped[str] = mapped_column(String(200))
    revoked_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]


# Domain modules keep their tables in modules of their own, on the same metadata: imported
# here so that whoever sees Base.metadata (alembic, the schema checks) sees every table.
from engine.life import models as _life_models  # noqa: E402, F401
from engine.schedules import models as _schedule_models  # noqa: E402, F401


class WebhookDelivery(Base):
    """One run.finished event and its delivery to the run's webhook_url (engine.webhooks)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_run_id", "run_id"),
        # Pending deliveries only: the deliverer's lookup of what is due.
        Index(
            "ix_webhook_deliveries_next_attempt_at",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    run_id: Mapped[str] = mapped_column(String(36), ForeignKey("runs.id", ondelete="CASCADE"))
    # The run's finished_at this event is about.
    run_finished_at: Mapped[datetime]
    url: Mapped[str] = mapped_column(String(WEBHOOK_URL_MAX))
    # The body sent, fixed when the event is recorded: every attempt sends the same one.
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    # Due time while pending; while an attempt is in flight, the end of its lease.
    next_attempt_at: Mapped[datetime | None]
    # The attempt in flight: only its deliverer may record its outcome.
    claim: Mapped[str | None] = mapped_column(String(36))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

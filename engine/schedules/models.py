"""The schedules table, on the project's metadata. No behaviour lives here."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from engine.models import Base, new_id, utcnow


class Schedule(Base):
    """A workflow submitted at each time its cron expression names, in its timezone. Its
    runs are submitted as its creator, with the scopes of the creator's token that created
    it (or last resumed or changed it)."""

    __tablename__ = "schedules"
    __table_args__ = (Index("ix_schedules_enabled_next_fire_at", "enabled", "next_fire_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    workflow: Mapped[str] = mapped_column(String(100))
    # None: the latest version registered when it fires.
    version: Mapped[int | None]
    cron: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    priority: Mapped[int] = mapped_column(default=0)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # None while paused.
    next_fire_at: Mapped[datetime | None]
    last_fired_at: Mapped[datetime | None]
    last_run_id: Mapped[str | None] = mapped_column(String(36))
    # Why its last fire submitted no run (the workflow gone, its params no longer valid).
    last_error: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(200))
    created_scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The jti of the token whose scopes it acts with (the one that created it, or last resumed
    # or changed it as its owner): once that token is revoked, it fires no more
    # (engine.schedules.tokens). None for a schedule made before revision 0010: it goes on.
    created_jti: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

"""The life module's tables, on the project's metadata. No behaviour lives here."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, Float, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from engine.models import Base, new_id, utcnow


class WellnessEntry(Base):
    """One check-in of a subject for a day. Written by a workflow step: (run_id, step_id)
    is unique, so a step delivered twice records its entry once."""

    __tablename__ = "life_wellness_entries"
    __table_args__ = (
        UniqueConstraint("run_id", "step_id", name="uq_life_wellness_entries_run_step"),
        Index("ix_life_wellness_entries_subject_day", "subject", "day"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    subject: Mapped[str] = mapped_column(String(200))
    day: Mapped[date] = mapped_column(Date)
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
    sleep_hours: Mapped[float | None] = mapped_column(Float)
    steps: Mapped[int | None] = mapped_column(Integer)
    mood: Mapped[int | None] = mapped_column(Integer)
    note: Mapped[str | None] = mapped_column(String(280))
    run_id: Mapped[str] = mapped_column(String(36))
    step_id: Mapped[str] = mapped_column(String(100))


class DailySummary(Base):
    """A subject's day, aggregated from its entries when a summary step last ran."""

    __tablename__ = "life_daily_summaries"

    subject: Mapped[str] = mapped_column(String(200), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    entries: Mapped[int] = mapped_column(Integer, default=0)
    sleep_hours_avg: Mapped[float | None] = mapped_column(Float)
    steps_total: Mapped[int | None] = mapped_column(BigInteger)
    mood_avg: Mapped[float | None] = mapped_column(Float)
    computed_at: Mapped[datetime] = mapped_column(default=utcnow)

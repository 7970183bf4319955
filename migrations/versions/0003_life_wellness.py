"""life: wellness entries and daily summaries

The domain module's own tables. An entry is keyed on the workflow step that recorded it
(run_id, step_id), so a step delivered twice records it once; a summary is one row per
subject and day.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 10:16:33
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import engine.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "life_wellness_entries",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("recorded_at", engine.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("sleep_hours", sa.Float(), nullable=True),
        sa.Column("steps", sa.Integer(), nullable=True),
        sa.Column("mood", sa.Integer(), nullable=True),
        sa.Column("note", sa.String(length=280), nullable=True),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("step_id", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_life_wellness_entries")),
        sa.UniqueConstraint("run_id", "step_id", name="uq_life_wellness_entries_run_step"),
    )
    op.create_index(
        "ix_life_wellness_entries_subject_day", "life_wellness_entries", ["subject", "day"]
    )
    op.create_table(
        "life_daily_summaries",
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("sleep_hours_avg", sa.Float(), nullable=True),
        sa.Column("steps_total", sa.BigInteger(), nullable=True),
        sa.Column("mood_avg", sa.Float(), nullable=True),
        sa.Column("computed_at", engine.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("subject", "day", name=op.f("pk_life_daily_summaries")),
    )


def downgrade() -> None:
    op.drop_table("life_daily_summaries")
    op.drop_index("ix_life_wellness_entries_subject_day", table_name="life_wellness_entries")
    op.drop_table("life_wellness_entries")

"""runs remember the fire time they are for: runs.scheduled_for

A run a schedule submitted carries the fire time it is for (a tick's or a backfill's), or the
moment it was triggered; a run submitted by POST /runs has none. Steps read it as
`run.scheduled_for` in their templates (a daily report for the day before its fire time).
Runs submitted before the upgrade have none.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 20:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import engine.models

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.add_column(
            sa.Column("scheduled_for", engine.models.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.drop_column("scheduled_for")

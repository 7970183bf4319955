"""runs may start later: runs.not_before

A run submitted with a not_before in the future is stored queued and its plan message is
not sent; a periodic tick (engine.delayed) sends the plan messages of those due, found
through the partial index ix_runs_not_before (queued runs with a not_before: a run
submitted without one is never in it). Runs submitted before the upgrade have none.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 20:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import engine.models

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

DELAYED = sa.text("status = 'queued' AND not_before IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.add_column(
            sa.Column("not_before", engine.models.UTCDateTime(timezone=True), nullable=True)
        )
    op.create_index(
        "ix_runs_not_before",
        "runs",
        ["not_before"],
        postgresql_where=DELAYED,
        sqlite_where=DELAYED,
    )


def downgrade() -> None:
    op.drop_index("ix_runs_not_before", table_name="runs")
    with op.batch_alter_table("runs") as batch_op:
        batch_op.drop_column("not_before")

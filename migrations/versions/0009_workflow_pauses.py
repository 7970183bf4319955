"""a workflow can be paused: workflow_pauses

One row per paused workflow name (every version of it), with who paused it, when and why.
While a workflow's row exists no new run of it is submitted (engine.pauses): the run's
INSERT is guarded by the row's absence in the same statement. Resuming deletes the row.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-28 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import engine.models

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workflow_pauses",
        sa.Column("workflow", sa.String(100), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("paused_by", sa.String(200), nullable=False),
        sa.Column("paused_at", engine.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("workflow", name="pk_workflow_pauses"),
    )


def downgrade() -> None:
    op.drop_table("workflow_pauses")

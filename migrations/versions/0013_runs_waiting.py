"""runs may wait for a slot: runs.waiting

A workflow version's spec may set `concurrency`, the most runs of the workflow active at
once; a run that would exceed it is stored queued, unsent, with waiting = 'concurrency'
until a slot frees (engine.concurrency). The partial index ix_runs_waiting holds those runs
only, by workflow, priority and age: a run of a workflow without a limit is never in it.
Runs submitted before the upgrade wait for nothing.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-09 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

HELD = sa.text("status = 'queued' AND waiting IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.add_column(sa.Column("waiting", sa.String(16), nullable=True))
    op.create_index(
        "ix_runs_waiting",
        "runs",
        ["workflow", "priority", "created_at"],
        postgresql_where=HELD,
        sqlite_where=HELD,
    )


def downgrade() -> None:
    op.drop_index("ix_runs_waiting", table_name="runs")
    with op.batch_alter_table("runs") as batch_op:
        batch_op.drop_column("waiting")

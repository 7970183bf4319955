"""runs finished before a time are found without a scan: ix_runs_finished_at

Retention (engine.retention) deletes finished runs older than a cutoff, in batches. The
index holds finished runs only (a partial index, finished_at IS NOT NULL): submitting a run
writes nothing to it, and the prune reads just the finished runs older than its cutoff.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-14 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

FINISHED = sa.text("finished_at IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        "ix_runs_finished_at",
        "runs",
        ["finished_at"],
        postgresql_where=FINISHED,
        sqlite_where=FINISHED,
    )


def downgrade() -> None:
    op.drop_index("ix_runs_finished_at", table_name="runs")

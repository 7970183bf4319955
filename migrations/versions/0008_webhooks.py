"""runs may name a webhook told when they finish: runs.webhook_*, webhook_deliveries

Three columns on runs (webhook_url, webhook_event_at, webhook_status), and the
webhook_deliveries table of run.finished events. A run submitted with a webhook_url is told
there when it finishes (engine.webhooks). The periodic deliverer finds finished runs whose
latest finish has no event yet through the partial index ix_runs_webhook_due (runs without
a webhook are never in it), records one event per finish in webhook_deliveries, and sends
what is due through the partial index ix_webhook_deliveries_next_attempt_at (pending
deliveries only). Deliveries go with their run (ON DELETE CASCADE).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-21 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import engine.models

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

WEBHOOK_DUE = sa.text(
    "webhook_url IS NOT NULL AND finished_at IS NOT NULL"
    " AND (webhook_event_at IS NULL OR webhook_event_at <> finished_at)"
)
PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.add_column(sa.Column("webhook_url", sa.String(2048), nullable=True))
        batch_op.add_column(
            sa.Column("webhook_event_at", engine.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("webhook_status", sa.String(16), nullable=True))
    op.create_index(
        "ix_runs_webhook_due",
        "runs",
        ["finished_at"],
        postgresql_where=WEBHOOK_DUE,
        sqlite_where=WEBHOOK_DUE,
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("run_finished_at", engine.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", engine.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("claim", sa.String(36), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", engine.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", engine.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
            name="fk_webhook_deliveries_run_id_runs",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
    )
    op.create_index("ix_webhook_deliveries_run_id", "webhook_deliveries", ["run_id"])
    op.create_index(
        "ix_webhook_deliveries_next_attempt_at",
        "webhook_deliveries",
        ["next_attempt_at"],
        postgresql_where=PENDING,
        sqlite_where=PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_next_attempt_at", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_run_id", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_runs_webhook_due", table_name="runs")
    with op.batch_alter_table("runs") as batch_op:
        batch_op.drop_column("webhook_status")
        batch_op.drop_column("webhook_event_at")
        batch_op.drop_column("webhook_url")

"""steps record the delivery that started their attempt: steps.delivery_tag

A message the broker hands back (`redelivered`) proves its attempt lost only when it is the
delivery that started the attempt, not another copy of the same attempt's message (a
reconciler's resend, a retry's countdown copy held by a busy worker). The broker's delivery
tag tells them apart: a redelivery keeps it, a new send gets a new one. Attempts running at
the upgrade have none; the lease recovers them if their worker dies.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 11:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("steps") as batch_op:
        batch_op.add_column(sa.Column("delivery_tag", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("steps") as batch_op:
        batch_op.drop_column("delivery_tag")

"""schedules remember the token they act with: schedules.created_jti

A schedule's runs act with the scopes of the token that created it (or, as its owner, last
resumed or changed it); its jti is kept so that revoking that token stops the schedule at
its next fire (engine.schedules.tokens). Schedules created before the upgrade have none:
they go on firing with the scopes they recorded, revoked token or not, until their owner
resumes or changes them with a token.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 18:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("schedules") as batch_op:
        batch_op.add_column(sa.Column("created_jti", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("schedules") as batch_op:
        batch_op.drop_column("created_jti")

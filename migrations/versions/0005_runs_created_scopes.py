"""runs record the scopes of the token that submitted them: runs.created_scopes

A run's steps act with its submitter's authority: a domain action that does something for a
subject (life.record_entry records a check-in) does it for another subject than the
submitter only when the submitter held the scope for that. Runs submitted before the upgrade
have none recorded: their steps act for their submitter's own subject only.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.add_column(sa.Column("created_scopes", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.drop_column("created_scopes")

"""runs count their leaf steps: steps_left becomes leaves_left

A run now succeeds when its last leaf step (one no other step needs) succeeds, so only a
leaf's transaction touches the run row. Runs in flight are converted by counting their leaf
steps that have not succeeded yet.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 18:05:00
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# A leaf: no step of the same run lists it in depends_on (a JSON array of ids).
_LEAVES_LEFT = {
    "sqlite": """
        UPDATE runs SET leaves_left = (
            SELECT count(*) FROM steps AS s
            WHERE s.run_id = runs.id AND s.status != 'succeeded'
              AND NOT EXISTS (
                SELECT 1 FROM steps AS c, json_each(c.depends_on) AS d
                WHERE c.run_id = s.run_id AND d.value = s.step_id))
        WHERE status IN ('running', 'failed')""",
    "postgresql": """
        UPDATE runs SET leaves_left = (
            SELECT count(*) FROM steps AS s
            WHERE s.run_id = runs.id AND s.status != 'succeeded'
              AND NOT EXISTS (
                SELECT 1 FROM steps AS c
                WHERE c.run_id = s.run_id
                  AND (c.depends_on::jsonb) ? s.step_id))
        WHERE status IN ('running', 'failed')""",
}
_STEPS_LEFT = """
    UPDATE runs SET steps_left = (
        SELECT count(*) FROM steps AS s WHERE s.run_id = runs.id AND s.status != 'succeeded')
    WHERE status IN ('running', 'failed')"""


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.alter_column("steps_left", new_column_name="leaves_left")
    op.execute(_LEAVES_LEFT[op.get_bind().dialect.name])


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch_op:
        batch_op.alter_column("leaves_left", new_column_name="steps_left")
    op.execute(_STEPS_LEFT)

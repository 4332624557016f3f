"""test sends: touch points a manager sends to their own phone or email

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 13:12:43.053625
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("touch_points", schema=None) as batch_op:
        batch_op.add_column(sa.Column("test", sa.Boolean(), server_default=sa.false(),
                                      nullable=False))
        batch_op.alter_column("patient_id", existing_type=sa.INTEGER(), nullable=True)


def downgrade() -> None:
    # Test sends have no patient; they cannot survive the NOT NULL constraint.
    op.execute("DELETE FROM touch_point_history WHERE touch_point_id IN "
               "(SELECT id FROM touch_points WHERE patient_id IS NULL)")
    op.execute("DELETE FROM touch_points WHERE patient_id IS NULL")
    with op.batch_alter_table("touch_points", schema=None) as batch_op:
        batch_op.alter_column("patient_id", existing_type=sa.INTEGER(), nullable=False)
        batch_op.drop_column("test")

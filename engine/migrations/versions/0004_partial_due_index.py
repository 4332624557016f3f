"""index only pending touch points by due time

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 14:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_PLANNED = sa.text("status = 'planned'")


def upgrade() -> None:
    with op.batch_alter_table("touch_points", schema=None) as batch_op:
        batch_op.drop_index("ix_touch_points_status_due_at")
    op.create_index("ix_touch_points_due_planned", "touch_points", ["due_at"],
                    sqlite_where=_PLANNED, postgresql_where=_PLANNED)


def downgrade() -> None:
    op.drop_index("ix_touch_points_due_planned", table_name="touch_points")
    with op.batch_alter_table("touch_points", schema=None) as batch_op:
        batch_op.create_index("ix_touch_points_status_due_at", ["status", "due_at"],
                              unique=False)

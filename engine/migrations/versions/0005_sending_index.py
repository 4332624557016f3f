"""index touch points left in 'sending' (recovery looks for them every tick)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 14:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_SENDING = sa.text("status = 'sending'")


def upgrade() -> None:
    op.create_index("ix_touch_points_sending", "touch_points", ["sending_at"],
                    sqlite_where=_SENDING, postgresql_where=_SENDING)


def downgrade() -> None:
    op.drop_index("ix_touch_points_sending", table_name="touch_points")

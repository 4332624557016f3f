"""index provider ids only where there is one

The unique constraint on ``touch_point_history.provider_event_id`` indexed every history
row, though only provider events have an id: the dispatcher wrote a NULL entry for each of
its two rows a message. The index on ``touch_points.provider_message_id`` held every
planned row under NULL and moved it when it was sent. Partial indexes keep the lookups
(and the uniqueness) and skip those writes: two fewer pages written per message.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22 16:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_HAS_EVENT_ID = sa.text("provider_event_id IS NOT NULL")
_HAS_MESSAGE_ID = sa.text("provider_message_id IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_touch_points_provider_message_id", table_name="touch_points")
    op.create_index("ix_touch_points_provider_message_id", "touch_points",
                    ["provider_message_id"],
                    sqlite_where=_HAS_MESSAGE_ID, postgresql_where=_HAS_MESSAGE_ID)
    with op.batch_alter_table("touch_point_history") as batch_op:
        batch_op.drop_constraint("uq_touch_point_history_provider_event_id", type_="unique")
    op.create_index("ix_touch_point_history_provider_event_id", "touch_point_history",
                    ["provider_event_id"], unique=True,
                    sqlite_where=_HAS_EVENT_ID, postgresql_where=_HAS_EVENT_ID)


def downgrade() -> None:
    op.drop_index("ix_touch_point_history_provider_event_id",
                  table_name="touch_point_history")
    with op.batch_alter_table("touch_point_history") as batch_op:
        batch_op.create_unique_constraint("uq_touch_point_history_provider_event_id",
                                          ["provider_event_id"])
    op.drop_index("ix_touch_points_provider_message_id", table_name="touch_points")
    op.create_index("ix_touch_points_provider_message_id", "touch_points",
                    ["provider_message_id"])

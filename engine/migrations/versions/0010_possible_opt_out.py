"""inbound messages can be flagged for staff, with a due time

A reply that might revoke consent to texts but is not clear ("too many messages", "wrong
number") goes to staff flagged "possible opt-out", due within 10 business days (FCC 24-24).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 18:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inbound_messages") as batch_op:
        batch_op.add_column(sa.Column("flag", sa.String(length=24), server_default="",
                                      nullable=False))
        batch_op.add_column(sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("inbound_messages") as batch_op:
        batch_op.drop_column("due_at")
        batch_op.drop_column("flag")

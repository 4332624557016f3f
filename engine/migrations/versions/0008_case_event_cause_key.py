"""case events remember the cause they noted

A second failed delivery (or complaint) for a patient whose case of that cause is still
open goes onto that case as a note. The note now keeps the cause's key, so the case desk,
which looks at recent failures again on every tick, sees it was handled and does not note
it again.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22 17:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("case_events") as batch_op:
        batch_op.add_column(sa.Column("cause_key", sa.String(length=120), nullable=True))
        batch_op.create_unique_constraint("uq_case_events_cause_key", ["cause_key"])


def downgrade() -> None:
    with op.batch_alter_table("case_events") as batch_op:
        batch_op.drop_constraint("uq_case_events_cause_key", type_="unique")
        batch_op.drop_column("cause_key")

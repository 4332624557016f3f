"""patients can be erased: their personal data removed, the row kept for the counts

`touchpoint patient erase ID` blanks a patient's personal data and sets ``erased_at``; a
later import of that patient_id is refused (engine/patient_data.py).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05 05:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("patients") as batch_op:
        batch_op.add_column(sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("patients") as batch_op:
        batch_op.drop_column("erased_at")

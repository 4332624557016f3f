"""patients, appointments, contacts and referrers that left the practice's records

A full sync (``touchpoint import … --full``), an HL7 S17 or an API DELETE deactivates a
record instead of deleting it: its history (and every touch point's) stays, and it comes
back (removed_at cleared) if the source sends it again.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 05:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

TABLES = ("patients", "appointments", "contacts", "referrers")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("removed_at", sa.DateTime(timezone=True),
                                          nullable=True))


def downgrade() -> None:
    for table in reversed(TABLES):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("removed_at")

"""events that could not be planned are set aside with their error

An event whose planning raised (a value that passed the import but that no timing rule
can work with) used to roll back its whole batch, so no later event was ever planned
again. Such an event is now set aside: ``error`` says what went wrong, ``failed_at``
when; it is not retried, and `touchpoint log`, `why --event` and /healthz show it. Few
events are ever set aside, so only they are indexed (/healthz counts them).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 17:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_SET_ASIDE = sa.text("failed_at IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("events") as batch_op:
        batch_op.add_column(sa.Column("error", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_events_failed_at", "events", ["failed_at"],
                    sqlite_where=_SET_ASIDE, postgresql_where=_SET_ASIDE)


def downgrade() -> None:
    op.drop_index("ix_events_failed_at", table_name="events")
    with op.batch_alter_table("events") as batch_op:
        batch_op.drop_column("failed_at")
        batch_op.drop_column("error")

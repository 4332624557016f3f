"""the plan of care: visits prescribed, visits a week, start and end; intake and booking

Optional columns of patients.csv (and the API, and FHIR CarePlans): the daily plan check
(engine/plan_of_care.py) nudges under-scheduled patients and opens "at risk of dropping
out" cases from them; ``intake_completed`` and ``booking_url`` make the per-patient links
of templates (``patient.intake_link``, ``patient.booking_link``).

Revision ID: 0020
Revises: 0018 (the merge re-chains it after 0019)
Create Date: 2026-12-05 08:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("patients") as batch_op:
        batch_op.add_column(sa.Column("plan_visits", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("plan_visits_per_week", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("plan_start", sa.Date(), nullable=True))
        batch_op.add_column(sa.Column("plan_end", sa.Date(), nullable=True))
        batch_op.add_column(sa.Column("intake_completed", sa.Boolean(),
                                      server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column("booking_url", sa.String(length=500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("patients") as batch_op:
        for column in ("booking_url", "intake_completed", "plan_end", "plan_start",
                       "plan_visits_per_week", "plan_visits"):
            batch_op.drop_column(column)

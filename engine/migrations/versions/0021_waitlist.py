"""the waitlist: patients waiting for an earlier visit, freed slots and who was offered them

``waitlist_entries`` hold each waiting patient's preferences (days, times, therapist,
location, visit type, earliest and latest date); ``slots`` are freed visit times (a
cancellation's, or opened through the API or the console) and ``slot_offers`` who was
offered which slot in which wave, and how they answered (engine/waitlist.py).

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-05 17:13:41
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "waitlist_entries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("days", sa.JSON(), nullable=False),
        sa.Column("time_from", sa.Time(), nullable=True),
        sa.Column("time_until", sa.Time(), nullable=True),
        sa.Column("therapist", sa.String(length=100), nullable=False),
        sa.Column("location", sa.String(length=200), nullable=False),
        sa.Column("visit_type", sa.String(length=100), nullable=False),
        sa.Column("earliest", sa.Date(), nullable=True),
        sa.Column("latest", sa.Date(), nullable=True),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("source", sa.String(length=300), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source_updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"],
            name=op.f("fk_waitlist_entries_patient_id_patients")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_waitlist_entries")),
        sa.UniqueConstraint("patient_id", name=op.f("uq_waitlist_entries_patient_id"))
    )
    op.create_table(
        "slots",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(length=64), nullable=True),
        sa.Column("appointment_id", sa.Integer(), nullable=True),
        sa.Column("freed_by_patient_id", sa.Integer(), nullable=True),
        sa.Column("start_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_minutes", sa.Integer(), nullable=False),
        sa.Column("visit_type", sa.String(length=100), nullable=False),
        sa.Column("therapist", sa.String(length=100), nullable=False),
        sa.Column("location", sa.String(length=200), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("waves", sa.Integer(), nullable=False),
        sa.Column("next_wave_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by_patient_id", sa.Integer(), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("booked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["appointment_id"], ["appointments.id"],
            name=op.f("fk_slots_appointment_id_appointments")),
        sa.ForeignKeyConstraint(["claimed_by_patient_id"], ["patients.id"],
            name=op.f("fk_slots_claimed_by_patient_id_patients")),
        sa.ForeignKeyConstraint(["freed_by_patient_id"], ["patients.id"],
            name=op.f("fk_slots_freed_by_patient_id_patients")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slots")),
        sa.UniqueConstraint("appointment_id", name=op.f("uq_slots_appointment_id")),
        sa.UniqueConstraint("external_id", name=op.f("uq_slots_external_id"))
    )
    with op.batch_alter_table("slots") as batch_op:
        batch_op.create_index(batch_op.f("ix_slots_status_start_at"), ["status", "start_at"],
            unique=False)

    op.create_table(
        "slot_offers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slot_id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("offered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"],
            name=op.f("fk_slot_offers_patient_id_patients")),
        sa.ForeignKeyConstraint(["slot_id"], ["slots.id"],
            name=op.f("fk_slot_offers_slot_id_slots")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slot_offers")),
        sa.UniqueConstraint("slot_id", "patient_id",
            name=op.f("uq_slot_offers_slot_id_patient_id"))
    )
    with op.batch_alter_table("slot_offers") as batch_op:
        batch_op.create_index(batch_op.f("ix_slot_offers_patient_id_status"), ["patient_id", "status"],
            unique=False)



def downgrade() -> None:
    with op.batch_alter_table("slot_offers") as batch_op:
        batch_op.drop_index(batch_op.f("ix_slot_offers_patient_id_status"))

    op.drop_table("slot_offers")
    with op.batch_alter_table("slots") as batch_op:
        batch_op.drop_index(batch_op.f("ix_slots_status_start_at"))

    op.drop_table("slots")
    op.drop_table("waitlist_entries")

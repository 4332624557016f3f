"""email opt-outs are stored in lower case

An unsubscribe from ``Pat@Example.com`` must stop mail to ``pat@example.com``: opt-outs
now store email addresses in lower case and look them up that way. This lower-cases the
email opt-outs already stored (in Python, as the code does, not with the database's
``lower()``, which on SQLite folds ASCII only); where two spellings of one address had
opted out of the same purpose, the oldest row is kept.

The downgrade changes nothing: the original spelling is not kept, and lower-case
addresses are what the older code wrote for most inboxes anyway.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 17:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_opt_outs = sa.table("opt_outs", sa.column("id", sa.Integer), sa.column("channel", sa.String),
                     sa.column("address", sa.String), sa.column("purpose", sa.String))


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.select(_opt_outs.c.id, _opt_outs.c.address, _opt_outs.c.purpose)
                        .where(_opt_outs.c.channel == "email")
                        .order_by(_opt_outs.c.id)).all()
    kept: dict[tuple[str, str], int] = {}
    for row in rows:  # oldest first: the first spelling of an address and purpose stays
        kept.setdefault((row.address.strip().lower(), row.purpose), row.id)
    keep_ids = set(kept.values())
    extra = [row.id for row in rows if row.id not in keep_ids]
    if extra:
        conn.execute(sa.delete(_opt_outs).where(_opt_outs.c.id.in_(extra)))
    for (address, _purpose), row_id in kept.items():
        conn.execute(sa.update(_opt_outs).where(_opt_outs.c.id == row_id,
                                                _opt_outs.c.address != address)
                     .values(address=address))


def downgrade() -> None:
    pass

"""Alembic environment: runs on the connection Touchpoint hands it (see store/database.py).

For autogenerate during development: ``alembic -c alembic.ini revision --autogenerate -m …``
with ``TOUCHPOINT_DATABASE_URL`` pointing at a scratch database.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection, create_engine

from engine.store.schema import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies tables
        compare_type=True,
    )


connection = config.attributes.get("connection")
if connection is not None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()
else:
    url = os.environ.get("TOUCHPOINT_DATABASE_URL", "sqlite:///touchpoint.db")
    with create_engine(url).begin() as own:
        _configure(own)
        with context.begin_transaction():
            context.run_migrations()

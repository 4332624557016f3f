"""`touchpoint db upgrade|current`: the database schema."""

from __future__ import annotations

import click

from engine.cli.common import app_of
from engine.cli.root import cli
from engine.store.database import head_revision, safe_url


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Create the schema, or upgrade it to this version of Touchpoint."""
    database = app_of(ctx).db(check=False)
    before = database.revision()
    database.upgrade()
    after = database.revision()
    where = safe_url(database.url)
    if before == after:
        click.echo(f"{where} is up to date (schema revision {after}).")
    else:
        click.echo(f"{where}: schema upgraded from {before or 'empty'} to {after}.")


@db.command("current")
@click.pass_context
def db_current(ctx: click.Context) -> None:
    """Show the schema revision of the database and the one this Touchpoint needs."""
    database = app_of(ctx).db(check=False)
    click.echo(f"database: {database.revision() or 'empty'}; this Touchpoint: {head_revision()}")

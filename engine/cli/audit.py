"""`touchpoint audit`: the audit log, for owners and auditors."""

from __future__ import annotations

import click

from engine import audit
from engine.cli.common import app_of, echo_json, since_day
from engine.cli.root import cli as _cli
from engine.timing import zone


@_cli.command("audit")
@click.option("--since", metavar="DATE", help="From this day (YYYY-MM-DD, the practice's "
              "timezone) [default: everything].")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON (one list).")
@click.pass_context
def audit_cmd(ctx: click.Context, since: str | None, as_json: bool) -> None:
    """Who did what, when and from where: staff commands, API requests, console actions."""
    app = app_of(ctx)
    start = since_day(since, zone(app.settings().practice.timezone or "UTC")) \
        if since is not None else None
    with app.db().transaction() as conn:
        found = [entry.as_dict() for entry in audit.entries(conn, since=start)]
    if as_json:
        echo_json(found)
        return
    if not found:
        click.echo("The audit log is empty" + (f" since {since}." if since else "."))
        return
    for entry in found:
        target = f" {entry['target']}" if entry["target"] else ""
        where = f" from {entry['address']}" if entry["address"] else ""
        click.echo(f"{entry['at']}  {entry['actor']}  {entry['action']}{target}{where}")

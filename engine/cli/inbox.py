"""`touchpoint inbox`: replies from patients that staff should read, and what staff do
with them (`done`, `opt-out`)."""

from __future__ import annotations

from datetime import datetime

import click

from engine import clock
from engine.channels import build_channels
from engine.cli.common import app_of, echo_json
from engine.cli.root import cli
from engine.conversations import staff_opt_out
from engine.timing import zone
from engine.touch_point_log import inbox, mark_done


@cli.group("inbox", invoke_without_command=True)
@click.option("--all", "show_all", is_flag=True, help="Include handled messages.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--reveal", is_flag=True, help="Show full phone numbers.")
@click.pass_context
def inbox_cmd(ctx: click.Context, show_all: bool, as_json: bool, reveal: bool) -> None:
    """Replies from patients that staff should read (reschedule requests, free text)."""
    if ctx.invoked_subcommand is not None:
        return
    with app_of(ctx).db().transaction() as conn:
        rows = inbox(conn, include_done=show_all, reveal=reveal)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("Nothing waiting for staff.")
    tz = zone(app_of(ctx).settings().practice.timezone or "UTC")
    for row in rows:
        who = f"{row['patient_id']} {row['patient_name']}" if row["patient_id"] else \
            f"unknown number {row['from']}"
        received = datetime.fromisoformat(row["received_at"].replace("Z", "+00:00"))
        flag = ""
        if row["flag"]:
            due = datetime.fromisoformat(row["due_at"].replace("Z", "+00:00"))
            flag = f", {row['flag']}, due {due.astimezone(tz):%a %d %b %H:%M}"
        click.echo(f"#{row['id']}  {received.astimezone(tz):%a %d %b %H:%M}  {who}  "
                   f"[{row['intent']}{flag}{', done' if row['staff_status'] == 'done' else ''}]")
        click.echo(f"      \"{row['body']}\"")


@inbox_cmd.command("done")
@click.argument("message_id", type=int)
@click.pass_context
def inbox_done_cmd(ctx: click.Context, message_id: int) -> None:
    """Mark a message in the inbox as handled."""
    with app_of(ctx).db().transaction() as conn:
        if not mark_done(conn, message_id):
            raise click.ClickException(f"no inbox message {message_id} — see `touchpoint inbox`")
    click.echo(f"message {message_id} marked done.")


@inbox_cmd.command("opt-out")
@click.argument("message_id", type=int)
@click.pass_context
def inbox_opt_out_cmd(ctx: click.Context, message_id: int) -> None:
    """A text staff read as "stop texting me" (a possible opt-out): opt its number out of
    every text, confirm it to them once, and mark the message done."""
    app = app_of(ctx)
    settings = app.settings()
    done = staff_opt_out(app.db(), app.definitions(), settings, build_channels(settings),
                         message_id, clock.now())
    if done.already:
        click.echo(f"message {message_id} marked done; {done.number} had already opted out of "
                   f"texts (no second confirmation).")
        return
    click.echo(f"message {message_id} marked done; {done.number} is opted out of every text"
               + ("; the confirmation was sent." if done.confirmed else
                  "; the confirmation could not be sent (see `touchpoint log --journey "
                  "replies`)."))

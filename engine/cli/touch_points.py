"""`touchpoint log|why|unknown|settle`: the touch points in the ledger — list them,
explain one, and settle those whose delivery is unknown."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any, TextIO

import click
from rich.console import Console
from rich.table import Table

from engine import clock
from engine.cli.common import app_of, echo_json, iso
from engine.cli.root import cli
from engine.csv_export import write_csv
from engine.definitions import Definitions
from engine.errors import UserError
from engine.outcomes import Status
from engine.reconcile import settle, unknown_touch_points
from engine.timing import zone
from engine.touch_point_log import LOG_FIELDS, log_rows, set_aside_rows, why, why_event


@cli.command("log")
@click.option("--patient", metavar="ID", help="Only this patient (imported patient_id).")
@click.option("--journey", metavar="NAME", help="Only this journey.")
@click.option("--status", type=click.Choice([s.value for s in Status]), help="Only this status.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many rows.")
@click.option("--json", "as_json", is_flag=True, help="JSON array of rows.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header row.")
@click.option("--reveal", is_flag=True, help="Show full phone numbers and emails.")
@click.pass_context
def log_cmd(ctx: click.Context, patient: str | None, journey: str | None, status: str | None,
            limit: int | None, as_json: bool, as_csv: bool, reveal: bool) -> None:
    """List touch points: when, to whom, what happened and why; then any events set aside."""
    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    database = app_of(ctx).db()
    with database.transaction() as conn:
        rows = log_rows(conn, patient=patient, journey=journey, status=status, reveal=reveal,
                        limit=limit)
        # events planning set aside have no touch point: listed after them (see why --event)
        aside = set_aside_rows(conn, patient=patient) if journey is None and status is None \
            else []
        if as_json:
            _stream_json(rows, sys.stdout)
        elif as_csv:
            write_csv(sys.stdout, LOG_FIELDS,
                      ({**row, "events": " ".join(row["events"])} for row in rows))
        else:
            _print_log_table(list(rows))
            _print_set_aside(aside)
    if aside and (as_json or as_csv):
        click.echo(f"note: {len(aside)} event(s) could not be planned and were set aside — "
                   "`touchpoint log` without --json/--csv lists them", err=True)


def _stream_json(rows: Iterator[dict[str, Any]], out: TextIO) -> None:
    out.write("[")
    for index, row in enumerate(rows):
        out.write(("," if index else "") + "\n  " + json.dumps(row, ensure_ascii=False))
    out.write("\n]\n")


def _print_log_table(rows: list[dict[str, Any]]) -> None:
    console = Console()
    if not rows:
        console.print("No touch points match.")
        return
    table = Table(box=None, header_style="bold")
    for column in ("id", "due_at", "patient_id", "journey", "step", "channel", "status",
                   "reason", "recipient", "events"):
        table.add_column(column)
    for row in rows:
        # what providers reported since (opened, clicked…), and a visit confirmed by reply
        reported = [*row["events"], *(["confirmed"] if row["appointment_confirmed"] else [])]
        table.add_row(str(row["id"]), (row["due_at"] or "")[:16].replace("T", " "),
                      row["patient_id"], row["journey"], row["step"], row["channel"] or "",
                      row["status"], row["reason"] or "", row["recipient"] or "",
                      ", ".join(reported))
    console.print(table)


def _print_set_aside(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    click.echo(f"\n{len(rows)} event(s) could not be planned and were set aside (nothing was "
               "planned from them):")
    for row in rows:
        at = (row["occurred_at"] or "")[:16].replace("T", " ")
        click.echo(f"  event {row['event_id']}  {at}  {row['patient_id']}  {row['kind']}  "
                   f"from {row['source']}\n    {row['error']} — "
                   f"`touchpoint why --event {row['event_id']}`")


@cli.command("why")
@click.argument("touch_point_id", type=int, required=False)
@click.option("--event", "event_id", type=int, metavar="ID",
              help="Explain an event that planning set aside (listed by `touchpoint log`).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def why_cmd(ctx: click.Context, touch_point_id: int | None, event_id: int | None,
            as_json: bool) -> None:
    """Explain one touch point: what was planned, what happened, and why."""
    app = app_of(ctx)
    if (touch_point_id is None) == (event_id is None):
        raise click.UsageError("give a touch point id, or --event ID for an event set aside")
    database = app.db()
    if event_id is not None:
        with database.transaction() as conn:
            story = why_event(conn, event_id)
        if as_json:
            echo_json(story)
            return
        click.echo(f"Event {story['event_id']} — {story['kind']}, set aside\n"
                   f"  patient     {story['patient_id']}\n"
                   f"  happened    {story['occurred_at']} ({story['source']})\n"
                   f"  set aside   {story['set_aside_at']}\n"
                   f"  error       {story['error']}\n"
                   f"  why         {story['explanation']}")
        return
    assert touch_point_id is not None
    try:
        definitions: Definitions | None = app.definitions()
    except UserError:
        definitions = None  # explain from the ledger even if definitions are broken
    with database.transaction() as conn:
        answer = why(conn, touch_point_id, definitions)
    data = answer.as_dict()
    if as_json:
        echo_json(data)
        return
    echo = click.echo
    echo(f"Touch point {data['id']} — {data['journey']} / {data['step']}")
    echo(f"  patient     {data['patient_id']} {answer.patient_name}")
    if data["appointment_id"]:
        echo(f"  appointment {data['appointment_id']} (anchor {data['anchor']})")
    echo(f"  status      {data['status']}" + (f" ({data['reason']})" if data["reason"] else ""))
    echo(f"  why         {data['explanation']}")
    echo(f"  due         {data['due_at']}" + (f", deadline {data['expires_at']}"
                                              if data["expires_at"] else ""))
    if data["event"]:
        event = data["event"]
        echo(f"  planned by  {event['kind']} at {event['occurred_at']} ({event['source']})")
    echo(f"  step        {data['definition']}")
    if answer.touch_point.content:
        echo("  message     " + answer.touch_point.content.replace("\n", "\n              "))
    echo("  history")
    for entry in data["history"]:
        move = f"{entry['previous_status']} → {entry['status']}" if entry["previous_status"] \
            else entry["status"] or entry["kind"]
        extra = ", ".join(filter(None, (entry["reason"], entry["detail"])))
        echo(f"    {entry['at']}  {move:<22} {entry['source']:<10} {extra}")


@cli.command("unknown")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def unknown_cmd(ctx: click.Context, as_json: bool) -> None:
    """Touch points whose delivery is unknown: texts still being looked up at Twilio, and
    those staff must settle (`touchpoint settle ID`)."""
    app = app_of(ctx)
    settings = app.settings()
    looked_up = frozenset({"sms"}) if settings.channels.sms_provider == "twilio" \
        else frozenset()
    with app.db().transaction() as conn:
        rows = unknown_touch_points(conn, looked_up)
    if as_json:
        echo_json([{key: iso(value) if isinstance(value, datetime) else value
                     for key, value in row.items()} for row in rows])
        return
    if not rows:
        click.echo("No touch point is unknown.")
        return
    tz = zone(settings.practice.timezone or "UTC")
    table = Table(box=None, pad_edge=False)
    for column in ("id", "patient", "journey / step", "channel", "to", "attempted",
                   "deadline", "waiting for"):
        table.add_column(column)
    for row in rows:
        attempted, deadline = row["attempted_at"], row["deadline"]
        table.add_row(str(row["id"]), row["patient_id"] or "-",
                      f"{row['journey']} / {row['step']}", row["channel"] or "-",
                      row["address"] or "-",
                      f"{attempted.astimezone(tz):%a %d %b %H:%M}" if attempted else "-",
                      f"{deadline.astimezone(tz):%a %d %b %H:%M}" if deadline else "-",
                      row["waiting_for"])
    Console().print(table)
    click.echo("Settle one with: touchpoint settle ID --sent|--resend|--drop --note TEXT")


@cli.command("settle")
@click.argument("touch_point_id", type=int)
@click.option("--sent", is_flag=True,
              help="It reached the patient (you checked the provider's records).")
@click.option("--resend", is_flag=True,
              help="Send it again on the next run (its deadline no longer applies).")
@click.option("--drop", is_flag=True, help="Do not send it (cancelled).")
@click.option("--note", "note", required=True, metavar="TEXT",
              help="Why: kept in the touch point's history.")
@click.pass_context
def settle_cmd(ctx: click.Context, touch_point_id: int, sent: bool, resend: bool, drop: bool,
               note: str) -> None:
    """Settle an unknown touch point: --sent, --resend or --drop, with --note TEXT."""
    chosen = [name for name, given in (("sent", sent), ("resend", resend), ("drop", drop))
              if given]
    if len(chosen) != 1:
        raise click.UsageError("say what happened: one of --sent, --resend or --drop")
    settled = settle(app_of(ctx).db(), touch_point_id, chosen[0], note, clock.now())
    click.echo(f"Touch point {settled.id}: unknown → {settled.status} ({settled.reason}); "
               f"the note is in its history (touchpoint why {settled.id}).")


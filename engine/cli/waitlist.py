"""`touchpoint waitlist list|slots|confirm|withdraw`: the waitlist and its freed slots for
the front desk (engine/waitlist.py); confirm and withdraw are audited."""

from __future__ import annotations

from datetime import datetime

import click
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from engine import audit, clock, waitlist, waitlist_board
from engine.cli.common import app_of, echo_json
from engine.cli.root import cli
from engine.errors import UserError
from engine.store.schema import patients, slots, waitlist_entries
from engine.timing import zone


@cli.group("waitlist")
def waitlist_group() -> None:
    """The waitlist: who waits for an earlier visit, and the freed slots offered to them."""


@waitlist_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def list_cmd(ctx: click.Context, as_json: bool) -> None:
    """The patients waiting for a slot, with their preferences, longest waiting first."""
    app = app_of(ctx)
    with app.db().transaction() as conn:
        found = waitlist_board.waiting(conn)
    if as_json:
        echo_json([entry.as_json() for entry in found])
        return
    if not found:
        click.echo("Nobody is on the waitlist. Add patients with `touchpoint import "
                   "waitlist FILE`, the API or the console.")
        return
    tz = zone(app.settings().practice.timezone or "UTC")
    table = Table(box=None, pad_edge=False)
    for column in ("patient", "preferences", "since"):
        table.add_column(column)
    for entry in found:
        table.add_row(entry.patient_id, entry.described(),
                      f"{entry.since.astimezone(tz):%a %d %b %H:%M}")
    Console(width=200).print(table)


@waitlist_group.command("slots")
@click.option("--all", "every", is_flag=True,
              help="Every slot (booked, expired, closed too), not only open and claimed.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def slots_cmd(ctx: click.Context, every: bool, as_json: bool) -> None:
    """Freed slots: status, start (practice time), waves offered, who claimed it."""
    app = app_of(ctx)
    tz = zone(app.settings().practice.timezone or "UTC")
    with app.db().transaction() as conn:
        found = waitlist_board.slot_list(conn, tz, every=every)
    if as_json:
        echo_json(found)
        return
    if not found:
        click.echo("No slots." if every else "No open or claimed slots.")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("slot", "status", "start", "minutes", "therapist", "location", "waves",
                   "claimed by"):
        table.add_column(column)
    for slot in found:
        start = datetime.fromisoformat(slot["start_at"])
        table.add_row(str(slot["id"]), slot["status"], f"{start:%a %d %b %H:%M}",
                      str(slot["duration_minutes"]), slot["therapist"] or "-",
                      slot["location"] or "-", str(slot["waves"]),
                      slot["claimed_by_patient_id"] or "-")
    Console(width=200).print(table)


@waitlist_group.command("confirm")
@click.argument("slot_id", type=int)
@click.pass_context
def confirm_cmd(ctx: click.Context, slot_id: int) -> None:
    """Confirm a claimed slot: it is booked (book it in the EMR too). Audited."""
    app = app_of(ctx)
    now = clock.now()
    with app.db().transaction() as conn:
        status = conn.execute(select(slots.c.status).where(slots.c.id == slot_id)).scalar()
        if status is None:
            raise UserError(f"no slot {slot_id} — see `touchpoint waitlist slots`")
        change = waitlist.confirm_slot(conn, slot_id, now=now)
        if change == "refused":
            raise UserError(f"slot {slot_id} is {status}: only a claimed slot can be "
                            "confirmed")
        audit.record(conn, actor=audit.cli_actor(), action="waitlist.confirm", now=now,
                     target=f"slot:{slot_id}", address="cli", detail={"result": change})
    click.echo(f"Slot {slot_id} is booked." if change == "changed"
               else f"Slot {slot_id} was booked already; nothing changed.")


@waitlist_group.command("withdraw")
@click.argument("patient_id")
@click.pass_context
def withdraw_cmd(ctx: click.Context, patient_id: str) -> None:
    """Take a patient off the waitlist (no more offers). Audited."""
    app = app_of(ctx)
    now = clock.now()
    with app.db().transaction() as conn:
        row = conn.execute(select(waitlist_entries.c.status, patients.c.id)
                           .join(patients, patients.c.id == waitlist_entries.c.patient_id)
                           .where(patients.c.external_id == patient_id)).first()
        if row is None:
            raise UserError(f"patient {patient_id} is not on the waitlist — see `touchpoint "
                            "waitlist list`")
        withdrawn = waitlist.withdraw_entry(conn, row.id, now=now)
        audit.record(conn, actor=audit.cli_actor(), action="waitlist.withdraw", now=now,
                     target=f"patient:{patient_id}", address="cli",
                     detail={"result": "withdrawn" if withdrawn else "unchanged"})
    click.echo(f"{patient_id} is off the waitlist." if withdrawn
               else f"{patient_id} was not waiting ({row.status}); nothing changed.")

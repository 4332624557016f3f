"""`touchpoint cases` and `touchpoint case ID …`: recovery cases — who owns them, when
they are due, and resolving, noting and assigning them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from engine import clock
from engine.audit import os_user
from engine.cases import CAUSES, Case, get_case, list_cases
from engine.cases import assign as assign_case
from engine.cases import history as case_history
from engine.cases import note as note_case
from engine.cases import resolve as resolve_case
from engine.cli.common import age, app_of, echo_json, iso
from engine.cli.root import cli
from engine.errors import UserError
from engine.store.records import patient_names
from engine.timing import zone


def _case_dict(case: Case, names: dict[int, str], now: datetime) -> dict[str, Any]:
    return {"id": case.id, "status": case.status, "cause": case.cause,
            "patient_id": case.patient_id, "patient": names.get(case.patient_id, "?"),
            "owner": case.owner, "detail": case.detail,
            "opened_at": iso(case.opened_at), "due_at": iso(case.due_at),
            "overdue": case.overdue(now), "alerted_at": iso(case.alerted_at),
            "escalated_at": iso(case.escalated_at), "resolved_at": iso(case.resolved_at),
            "resolution": case.resolution}



@cli.command("cases")
@click.option("--open", "open_only", is_flag=True, help="Only cases still open.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def cases_cmd(ctx: click.Context, open_only: bool, as_json: bool) -> None:
    """Recovery cases: low scores, complaints, failed deliveries, no-shows, late
    cancellations — who owns them and when they are due."""
    app = app_of(ctx)
    now = clock.now()
    with app.db().transaction() as conn:
        found = list_cases(conn, open_only=open_only)
        names = patient_names(conn, {c.patient_id for c in found})
    rows = [_case_dict(c, names, now) for c in found]
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("No open recovery cases." if open_only else "No recovery cases yet.")
        return
    tz = zone(app.settings().practice.timezone or "UTC")
    table = Table(box=None, pad_edge=False)
    for column in ("case", "status", "cause", "patient", "owner", "opened", "due / resolved"):
        table.add_column(column)
    for case in found:
        if case.is_open:
            due = f"{case.due_at.astimezone(tz):%a %d %b %H:%M}"
            due = f"[red]OVERDUE {due}[/red]" if case.overdue(now) else due
            status = f"open {age(now - case.opened_at)}"
        else:
            assert case.resolved_at is not None
            due, status = f"{case.resolved_at.astimezone(tz):%a %d %b %H:%M}", "resolved"
        table.add_row(str(case.id), status, case.cause.replace("_", " "),
                      names.get(case.patient_id, "?"), case.owner or "-",
                      f"{case.opened_at.astimezone(tz):%a %d %b %H:%M}", due)
    Console().print(table)


@cli.command("case")
@click.argument("case_id", type=int)
@click.argument("action", type=click.Choice(["show", "resolve", "note", "assign"]),
                default="show")
@click.option("--note", "text", metavar="TEXT",
              help="What was done (resolve) or what happened (note); kept in its history.")
@click.option("--to", "owner", metavar="NAME", help="Who owns it now (assign).")
@click.option("--by", default=None, help="Who did it [default: your user name].")
@click.option("--json", "as_json", is_flag=True, help="Print the case as JSON.")
@click.pass_context
def case_cmd(ctx: click.Context, case_id: int, action: str, text: str | None, owner: str | None,
             by: str | None, as_json: bool) -> None:
    """One recovery case: `case ID` shows it and its history; `case ID resolve --note …`
    closes it (pending recovery messages for it are cancelled); `case ID note --note …`
    adds to its history; `case ID assign --to NAME` gives it to someone."""
    app = app_of(ctx)
    now = clock.now()
    if action == "assign":
        if not owner:
            raise click.UsageError(f"say who: touchpoint case {case_id} assign --to \"Dana\"")
        with app.db().transaction() as conn:
            assign_case(conn, case_id, owner, by or os_user(), now)
        click.echo(f"case {case_id} is now {' '.join(owner.split())}'s.")
        return
    if action != "show":
        if text is None:
            raise click.UsageError(f"say what {'was done' if action == 'resolve' else 'happened'}"
                                   f": touchpoint case {case_id} {action} --note \"…\"")
        with app.db().transaction() as conn:
            if action == "resolve":
                resolve_case(conn, case_id, text, by or os_user(), now)
            else:
                note_case(conn, case_id, text, by or os_user(), now)
        click.echo(f"case {case_id} resolved." if action == "resolve"
                   else f"note added to case {case_id}.")
        return
    with app.db().transaction() as conn:
        case = get_case(conn, case_id)
        if case is None:
            raise UserError(f"there is no case {case_id} — `touchpoint cases` lists them")
        steps = case_history(conn, case_id)
        names = patient_names(conn, {case.patient_id})
    if as_json:
        echo_json({**_case_dict(case, names, now),
                    "history": [{"at": iso(e.at), "kind": e.kind, "detail": e.detail,
                                 "by": e.by} for e in steps]})
        return
    tz = zone(app.settings().practice.timezone or "UTC")
    state = "open" if case.is_open else "resolved"
    click.echo(f"case {case.id} · {state} · {CAUSES.get(case.cause, case.cause)}")
    click.echo(f"  patient  {names.get(case.patient_id, '?')}")
    click.echo(f"  owner    {case.owner or '-'}")
    click.echo(f"  detail   {case.detail}")
    click.echo(f"  due      {case.due_at.astimezone(tz):%a %d %b %Y %H:%M}"
               + ("  (overdue)" if case.overdue(now) else ""))
    click.echo("history:")
    for entry in steps:
        who = f" ({entry.by})" if entry.by else ""
        click.echo(f"  {entry.at.astimezone(tz):%a %d %b %H:%M}  {entry.kind:<12} "
                   f"{entry.detail}{who}")
    if case.is_open:
        click.echo(f"\nWhen it is handled: touchpoint case {case.id} resolve --note \"…\"")


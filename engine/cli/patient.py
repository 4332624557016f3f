"""`touchpoint patient export ID` and `touchpoint patient erase ID`: a patient's data, on
request (docs/privacy.md). Both are audited in the same transaction as what they do."""

from __future__ import annotations

import json
from pathlib import Path

import click

from engine import audit, clock, patient_data
from engine.cli.common import app_of, echo_json
from engine.cli.root import cli as _cli
from engine.errors import UserError


@_cli.group("patient")
def patient_group() -> None:
    """One patient's data: everything held on them, or erased at their request."""


@patient_group.command("export")
@click.argument("patient_id", metavar="ID")
@click.option("--output", "output", type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE", help="Write the JSON to FILE [default: standard output].")
@click.pass_context
def export_cmd(ctx: click.Context, patient_id: str, output: Path | None) -> None:
    """Everything Touchpoint holds on patient ID (the imported patient_id), as JSON."""
    now = clock.now()
    with app_of(ctx).db().transaction() as conn:
        exported = patient_data.export(conn, patient_id, now)
        text = json.dumps(exported, indent=2, ensure_ascii=False, default=str) + "\n"
        if output is not None:
            try:
                output.write_text(text, encoding="utf-8")
            except OSError as exc:
                raise UserError(f"cannot write {output}: {exc.strerror} — choose another "
                                "--output file") from None
        # (recorded once the export was written; a failure above leaves no entry)
        audit.record(conn, actor=audit.cli_actor(), action="patient.export", now=now,
                     target=patient_data.target(patient_id), address="cli",
                     detail={"rows": patient_data.counts(exported),
                             "to": "file" if output is not None else "stdout"})
    if output is None:
        click.echo(text, nl=False)
    else:
        total = sum(patient_data.counts(exported).values())
        click.echo(f"Wrote {total} row(s) held on patient {patient_id} to {output}.", err=True)


@patient_group.command("erase")
@click.argument("patient_id", metavar="ID")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@click.pass_context
def erase_cmd(ctx: click.Context, patient_id: str, yes: bool, as_json: bool) -> None:
    """Remove patient ID's personal data for good; keep the counts reports show."""
    database = app_of(ctx).db()
    with database.transaction() as conn:
        patient_data.find(conn, patient_id)  # (an unknown id fails before the question)
    if not yes:
        click.echo(f"This removes patient {patient_id}'s name, phone, email, date of birth, "
                   "custom fields, their contacts' details and the text of every message "
                   "to and from them, for good. Pending messages are cancelled. Counts in "
                   "reports stay.", err=True)
        typed = click.prompt(f"Type {patient_id} to erase", default="", show_default=False,
                             err=True)
        if typed.strip() != patient_id:
            raise UserError("not erased: the id typed did not match")
    now = clock.now()
    with database.transaction() as conn:
        done = patient_data.erase(conn, patient_id, now)
        if not done.already:
            audit.record(conn, actor=audit.cli_actor(), action="patient.erase", now=now,
                         target=patient_data.target(patient_id), address="cli",
                         detail={"changed": done.changed, "cancelled": done.cancelled})
    if as_json:
        echo_json(done.as_dict())
    elif done.already:
        click.echo(f"Patient {patient_id} was already erased on "
                   f"{done.erased_at:%Y-%m-%d %H:%M} UTC; nothing to do.")
    else:
        changed = sum(done.changed.values())
        click.echo(f"Erased patient {patient_id}: {changed} row(s) de-identified, "
                   f"{done.cancelled} pending message(s) cancelled. A later import of "
                   f"{patient_id} will be refused.")

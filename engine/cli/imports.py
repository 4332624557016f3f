"""`touchpoint import patients|appointments|contacts|referrers|waitlist`: sync from an
EMR's CSV exports, each through one runner (:func:`_run_import`). `import hl7` and `import fhir`
live in engine/cli/hl7.py and engine/cli/fhir.py."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from sqlalchemy import Connection

from engine import audit, clock
from engine.cli.common import app_of, echo_json, progress_bar
from engine.cli.root import cli
from engine.importer import (
    ImportSummary,
    import_appointments,
    import_contacts,
    import_patients,
    import_referrers,
    import_waitlist,
)
from engine.settings import Settings


@cli.group("import")
def import_() -> None:
    """Import (sync) patients or appointments from an EMR's CSV export."""


def _report_import(summary: ImportSummary, as_json: bool) -> None:
    if as_json:
        echo_json(summary.as_dict())
    else:
        parts = [f"{summary.rows} rows", f"{summary.created} new", f"{summary.updated} updated",
                 f"{summary.unchanged} unchanged"]
        if summary.historical:
            parts.append(f"{summary.historical} stored without starting journeys (past, or "
                         "already cancelled)")
        if summary.reactivated:
            parts.append(f"{summary.reactivated} back in the records (reactivated)")
        if summary.removed and summary.kind == "waitlist":
            parts.append(f"{summary.removed} withdrawn (not in the file)")
        elif summary.removed:
            parts.append(f"{summary.removed} removed (not in the file; {summary.cancelled} "
                         "pending messages cancelled)")
        click.echo(f"{summary.file}: {', '.join(parts)}, {summary.rejected} rejected.")
        if summary.events:
            click.echo("events: " + ", ".join(f"{n} {k}" for k, n in
                                              sorted(summary.events.items())))
        for problem in summary.problems:
            click.echo(f"  {summary.file}: {problem}", err=True)
    if summary.problems:
        sys.exit(3)


def _run_import(ctx: click.Context, kind: str, file: Path, as_json: bool,
                run: Callable[[Connection, Settings, Any], ImportSummary],
                audited: bool = False) -> None:
    """Run one CSV import in one transaction, with a progress bar, and report it; an
    ``audited`` one records ``import.<kind>`` (the counts) in the same transaction."""
    app = app_of(ctx)
    settings, database = app.settings(), app.db()
    with progress_bar(f"importing {kind}", _count_lines(file)) as bar, \
            database.transaction() as conn:
        summary = run(conn, settings, bar)
        if audited:
            counts = summary.as_dict()
            audit.record(conn, actor=audit.cli_actor(), action=f"import.{kind}",
                         now=clock.now(), target=f"file:{file.name}", address="cli",
                         detail={name: counts[name] for name in (
                             "rows", "created", "updated", "unchanged", "rejected",
                             "removed")})
    _report_import(summary, as_json)


def _count_lines(path: Path) -> int | None:
    try:
        with path.open("rb") as fh:
            return max(sum(1 for _ in fh) - 1, 0)
    except OSError:
        return None


@import_.command("patients")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--baseline", is_flag=True,
              help="These are existing patients: store them without starting journeys "
                   "triggered by patient.created (no welcome messages).")
@click.option("--full", is_flag=True,
              help="FILE holds every patient: active ones not in it are removed (their "
                   "pending messages cancelled, patient_removed). Refused if no row is good.")
@click.pass_context
def import_patients_cmd(ctx: click.Context, file: Path, as_json: bool, baseline: bool,
                        full: bool) -> None:
    """Sync patients from FILE.CSV (bad rows are reported; good rows are kept).

    Exits 3 if any row was rejected.
    """
    _run_import(ctx, "patients", file, as_json, lambda conn, settings, bar: import_patients(
        conn, file, region=settings.phone_region, now=clock.now(), baseline=baseline,
        progress=bar, full=full))


@import_.command("appointments")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--full", is_flag=True,
              help="FILE holds every appointment (past ones too): active ones not in it "
                   "are removed (their pending messages cancelled, patient_removed). Refused "
                   "if no row is good.")
@click.pass_context
def import_appointments_cmd(ctx: click.Context, file: Path, as_json: bool, full: bool) -> None:
    """Sync appointments from FILE.CSV (bad rows are reported; good rows are kept).

    Exits 3 if any row was rejected.
    """
    _run_import(ctx, "appointments", file, as_json, lambda conn, settings, bar: (
        import_appointments(conn, file, practice_tz=settings.require("practice.timezone"),
                            now=clock.now(), progress=bar, full=full)))


@import_.command("contacts")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--full", is_flag=True,
              help="FILE holds every contact: active ones not in it are removed (their "
                   "pending messages cancelled, patient_removed). Refused if no row is good.")
@click.pass_context
def import_contacts_cmd(ctx: click.Context, file: Path, as_json: bool, full: bool) -> None:
    """Sync patients' contacts (parents, guardians, spouses, caregivers) from FILE.CSV.

    Columns: patient_id, contact_id, relationship, first_name, phone, email, language,
    timezone, sms_consent, email_consent, receives (optional: marketing_consent). Import
    patients first. Bad rows are reported; good rows are kept. Exits 3 if any was rejected.
    """
    _run_import(ctx, "contacts", file, as_json, lambda conn, settings, bar: import_contacts(
        conn, file, region=settings.phone_region, now=clock.now(), progress=bar, full=full))


@import_.command("referrers")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--full", is_flag=True,
              help="FILE holds every referrer: active ones not in it are removed (no longer "
                   "sent updates; pending ones cancelled). Refused if no row is good.")
@click.pass_context
def import_referrers_cmd(ctx: click.Context, file: Path, as_json: bool, full: bool) -> None:
    """Sync referral sources (physicians, clinics) from FILE.CSV.

    Columns: referrer_id, name, contact_name, email (optional: fax). Patients name theirs
    in a referral_source column. Bad rows are reported; good rows are kept. Exits 3 if
    any was rejected.
    """
    _run_import(ctx, "referrers", file, as_json, lambda conn, settings, bar: import_referrers(
        conn, file, region=settings.phone_region, now=clock.now(), progress=bar, full=full))



@import_.command("waitlist")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--full", is_flag=True,
              help="FILE holds the whole waitlist: waiting patients not in it are withdrawn "
                   "(no more offers). Refused if no row is good.")
@click.pass_context
def import_waitlist_cmd(ctx: click.Context, file: Path, as_json: bool, full: bool) -> None:
    """Sync the waitlist (patients who want an earlier visit) from FILE.CSV.

    Columns: patient_id (a known patient), then optional days (mon,wed or mon-fri),
    time_from, time_until, therapist, location, visit_type, earliest, latest; an empty
    cell matches anything. Bad rows are reported with their line and field; good rows are
    kept. Audited. Exits 3 if any row was rejected. See docs/waitlist-records.md.
    """
    _run_import(ctx, "waitlist", file, as_json, lambda conn, settings, bar: import_waitlist(
        conn, file, now=clock.now(), progress=bar, full=full), audited=True)

"""`touchpoint import fhir FILE` and `touchpoint fhir sync|jwks`: patients, contacts and
appointments from an EMR's FHIR R4 data."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from engine import clock
from engine.cli.common import app_of, echo_json
from engine.cli.imports import import_
from engine.cli.root import cli as _cli
from engine.fhir.client import FhirClient, SigningKey
from engine.fhir.imports import ORDER, FhirSummary, apply, read_file
from engine.fhir.sync import SyncReport, options_from, sync


def _report(summary: FhirSummary, lead: str) -> None:
    parts = []
    for kind in ORDER:
        if not summary.read[kind]:
            continue
        part = summary.parts.get(kind)
        refused = sum(1 for p in summary.problems if p.resource.startswith(f"{kind}/"))
        counts = (f"{part.created} new, {part.updated} updated, {part.unchanged} unchanged"
                  + (f", {part.removed} removed" if part.removed else "")
                  if part else "0 new")
        parts.append(f"{kind} {summary.read[kind]} ({counts}, {refused} refused)")
    click.echo(f"{lead}: {'; '.join(parts) or 'nothing to apply'}.")
    if summary.skipped:
        click.echo("skipped (not imported): " + ", ".join(
            f"{n} {kind}" for kind, n in sorted(summary.skipped.items())))
    if summary.events:
        click.echo("events: " + ", ".join(f"{n} {k}" for k, n in sorted(summary.events.items())))
    for kind, why in summary.not_full.items():
        click.echo(f"--full not applied to {kind}: {why}", err=True)
    for problem in summary.problems:
        click.echo(f"  {summary.source}: {problem}", err=True)


@import_.command("fhir")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--full", is_flag=True,
              help="The file is the whole source: for each resource type it holds, remove "
                   "the active records not in it (their pending messages are cancelled).")
@click.pass_context
def import_fhir_cmd(ctx: click.Context, file: Path, as_json: bool, full: bool) -> None:
    """Sync patients, contacts (RelatedPerson) and appointments from a FHIR R4 Bundle
    (JSON) or ndjson FILE.

    Other resource types are counted and skipped. A refused resource is named with its
    reason (Patient/123: …); the others are kept. Exits 3 if any was refused.
    """
    app = app_of(ctx)
    settings, database = app.settings(), app.db()
    entries = read_file(file)
    with database.transaction() as conn:
        summary = apply(conn, entries, file.name, options_from(settings), clock.now(),
                        full=full)
    if as_json:
        echo_json(summary.as_dict())
    else:
        _report(summary, file.name)
    if summary.problems:
        sys.exit(3)


@_cli.group("fhir")
def fhir() -> None:
    """Sync from the EMR's FHIR R4 API (SMART Backend Services)."""


@fhir.command("sync")
@click.option("--json", "as_json", is_flag=True, help="Print the counts and cursors as JSON.")
@click.pass_context
def fhir_sync_cmd(ctx: click.Context, as_json: bool) -> None:
    """Pull the Patients, RelatedPersons and Appointments changed since the last sync.

    Each page is committed with its cursor: an interrupted sync resumes where it stopped.
    A refused resource is remembered and read again at the next sync (forgotten once
    applied, or gone from the server). Exits 3 if any resource was refused.
    """
    app = app_of(ctx)
    settings, database = app.settings(), app.db()
    client = FhirClient.from_settings(settings)
    try:
        report: SyncReport = sync(database, settings, client)
    finally:
        client.close()
    if as_json:
        echo_json(report.as_dict())
    elif not report.ran:
        click.echo("another worker is syncing from the FHIR server; nothing done.")
    else:
        _report(report.summary, "fhir sync")
        pages = ", ".join(f"{kind} {n}" for kind, n in report.pages.items())
        click.echo(f"pages: {pages}")
        click.echo("cursor: " + (", ".join(f"{kind} {at}" for kind, at in
                                           report.cursors.items()) or "none yet"))
        if report.retried:
            applied = report.retried - report.still_refused - report.gone
            click.echo(f"retried: {report.retried} refused before ({applied} applied, "
                       f"{report.still_refused} still refused, {report.gone} gone)")
        for error in report.retry_errors:
            click.echo(f"  kept for the next sync: {error}", err=True)
    if report.summary.problems:
        sys.exit(3)


@fhir.command("jwks")
@click.pass_context
def fhir_jwks_cmd(ctx: click.Context) -> None:
    """Print the public key set (JWKS) of fhir.private_key_file, to register with the EMR."""
    settings = app_of(ctx).settings()
    key = SigningKey(Path(settings.require("fhir.private_key_file")), settings.fhir.key_id)
    echo_json(key.jwks())

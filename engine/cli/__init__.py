"""The `touchpoint` command: a thin shell over the engine.

Global options come before the command: ``touchpoint --db URL --now ISO8601 log``.
Every error a user can cause is printed as one line (``Error: …``), never a traceback;
set ``TOUCHPOINT_DEBUG=1`` to see the traceback of an unexpected error.
"""

from __future__ import annotations

import html
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from engine import __version__, clock, plan_of_care
from engine.audit import os_user
from engine.cases import CAUSES, Case, get_case, list_cases
from engine.cases import assign as assign_case
from engine.cases import history as case_history
from engine.cases import note as note_case
from engine.cases import resolve as resolve_case
from engine.channels import build_channels
from engine.conversations import staff_opt_out
from engine.csv_export import write_csv
from engine.definitions import Definitions
from engine.errors import TouchpointError, UserError
from engine.forecast import LIMITS_DAYS, Change, Limits, diff, forecast_limits
from engine.importer import (
    ImportSummary,
    import_appointments,
    import_contacts,
    import_patients,
    import_referrers,
)
from engine.outbound_webhooks.delivery import deliver_due
from engine.outcomes import Status
from engine.preview import Preview, RenderedPreview, preview, send_test
from engine.privacy import mask_address, redact
from engine.reconcile import settle, unknown_touch_points
from engine.report import build_report, sparkline
from engine.runner import Runner, TickReport
from engine.settings import Settings, load_settings, parse_flag
from engine.simulate import Feed, simulate
from engine.sms_segments import analyse
from engine.store.database import (
    Database,
    head_revision,
    normalise_url,
    open_database,
    safe_url,
)
from engine.store.records import patient_names
from engine.timing import at_local, parse_duration, zone
from engine.touch_point_log import (
    LOG_FIELDS,
    inbox,
    log_rows,
    mark_done,
    set_aside_rows,
    why,
    why_event,
)
from engine.validate import check_definitions

# --------------------------------------------------------------------------- plumbing


@dataclass
class App:
    """What every command shares: settings, database and definitions, loaded on demand."""

    config: str | None
    flags: dict[str, object]
    _settings: Settings | None = None
    _db: Database | None = None
    _definitions: Definitions | None = None
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config, self.flags)
        return self._settings

    def db(self, check: bool = True) -> Database:
        if self._db is None:
            self._db = open_database(self.settings().database_url, check=check)
            self.cleanups.append(self._db.dispose)
        return self._db

    def definitions(self) -> Definitions:
        """Schedules and templates that passed every check (errors stop the command)."""
        if self._definitions is None:
            self._definitions = check_definitions(self.settings(), clock.now())
            self._definitions.raise_for_errors()
        return self._definitions


class TouchpointGroup(click.Group):
    """Turns UserError into one printed line; hides tracebacks of the unexpected."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            raise click.ClickException(exc.message) from None
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None
        except BrokenPipeError:
            raise  # the reader went away (`| head`); main() exits quietly
        except Exception as exc:
            if os.environ.get("TOUCHPOINT_DEBUG"):
                raise
            kind = "Touchpoint error" if isinstance(exc, TouchpointError) else "unexpected error"
            raise click.ClickException(
                f"{kind}: {type(exc).__name__}: {redact(str(exc))[:300]} — run again with "
                "TOUCHPOINT_DEBUG=1 for the details, and please report it") from None
        finally:
            app = ctx.obj
            if isinstance(app, App):
                for cleanup in reversed(app.cleanups):
                    cleanup()
                app.cleanups.clear()


def _parse_now(value: str | None, option: str = "--now") -> datetime | None:
    if value is None:
        return None
    try:
        instant = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter("write an ISO 8601 instant, e.g. 2026-11-24T09:00-05:00",
                                 param_hint=f"'{option}'") from None
    if instant.tzinfo is None:
        raise click.BadParameter("give a UTC offset, e.g. 2026-11-24T09:00-05:00 or …T14:00Z",
                                 param_hint=f"'{option}'")
    return instant


def _interactive() -> bool:
    return sys.stdout.isatty() and sys.stderr.isatty()


@contextmanager
def progress_bar(label: str, total: float | None) -> Iterator[Callable[[float], None] | None]:
    """A progress bar on a terminal; nothing when output is piped."""
    if not _interactive():
        yield None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda amount: bar.update(task, advance=amount)


def _echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _app(ctx: click.Context) -> App:
    app = ctx.obj
    assert isinstance(app, App)
    return app


# --------------------------------------------------------------------------- the group


@click.group(cls=TouchpointGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", "db_url", metavar="URL", help="Database URL [env TOUCHPOINT_DATABASE_URL; "
              "default sqlite:///touchpoint.db].")
@click.option("--config", "config", metavar="FILE", type=click.Path(dir_okay=False),
              help="Settings file [env TOUCHPOINT_CONFIG; default ./touchpoint.toml].")
@click.option("--now", "now", metavar="ISO8601",
              help="Pretend it is this instant (a virtual clock for dry runs and tests).")
@click.option("--schedules", type=click.Path(file_okay=False), metavar="DIR",
              help="Journey definitions folder [default ./schedules].")
@click.option("--templates", type=click.Path(file_okay=False), metavar="DIR",
              help="Message templates folder [default ./message_templates].")
@click.option("--sms-provider", type=click.Choice(["twilio", "fake", "console"]),
              help="Channel for SMS [env TOUCHPOINT_SMS_PROVIDER].")
@click.option("--email-provider", type=click.Choice(["sendgrid", "fake", "console"]),
              help="Channel for email [env TOUCHPOINT_EMAIL_PROVIDER].")
@click.option("--set", "assignments", metavar="KEY=VALUE", multiple=True,
              help="Any setting by its key, e.g. --set twilio.from_number=+13125550100 "
                   "(repeatable; overrides env and file; keep secrets in the environment).")
@click.version_option(__version__, prog_name="touchpoint")
@click.pass_context
def cli(ctx: click.Context, db_url: str | None, config: str | None, now: str | None,
        schedules: str | None, templates: str | None, sms_provider: str | None,
        email_provider: str | None, assignments: tuple[str, ...]) -> None:
    """Touchpoint: patient journeys, a touch-point ledger, SMS and email."""
    instant = _parse_now(now)
    if instant is not None:
        # (run in-process, as tests and scripts do, the caller's clock comes back after)
        previous = clock.pinned()
        clock.set_now(instant)
        ctx.call_on_close(lambda: clock.set_now(previous))
    flags: dict[str, object] = {}
    for assignment in assignments:
        key, value = parse_flag(assignment)
        flags[key] = value
    if db_url:
        flags["database.url"] = db_url
    if schedules:
        flags["paths.schedules"] = schedules
    if templates:
        flags["paths.templates"] = templates
    if sms_provider:
        flags["channels.sms_provider"] = sms_provider
    if email_provider:
        flags["channels.email_provider"] = email_provider
    ctx.obj = App(config, flags)


@cli.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def config_cmd(ctx: click.Context, as_json: bool) -> None:
    """Show every setting's effective value (secrets masked) and the file it came from."""
    settings = _app(ctx).settings()
    values = settings.describe()
    if as_json:
        _echo_json({"config_file": str(settings.config_file or ""), "settings": values})
        return
    click.echo(f"config file: {settings.config_file or '(none)'}")
    for key, value in values.items():
        click.echo(f"  {key} = {value}")


# --------------------------------------------------------------------------- db


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Create the schema, or upgrade it to this version of Touchpoint."""
    database = _app(ctx).db(check=False)
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
    database = _app(ctx).db(check=False)
    click.echo(f"database: {database.revision() or 'empty'}; this Touchpoint: {head_revision()}")


# --------------------------------------------------------------------------- import


@cli.group("import")
def import_() -> None:
    """Import (sync) patients or appointments from an EMR's CSV export."""


def _report_import(summary: ImportSummary, as_json: bool) -> None:
    if as_json:
        _echo_json(summary.as_dict())
    else:
        parts = [f"{summary.rows} rows", f"{summary.created} new", f"{summary.updated} updated",
                 f"{summary.unchanged} unchanged"]
        if summary.historical:
            parts.append(f"{summary.historical} stored without starting journeys (past, or "
                         "already cancelled)")
        if summary.reactivated:
            parts.append(f"{summary.reactivated} back in the records (reactivated)")
        if summary.removed:
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
                run: Callable[[Connection, Settings, Any], ImportSummary]) -> None:
    """Run one CSV import in one transaction, with a progress bar, and report it."""
    app = _app(ctx)
    settings, database = app.settings(), app.db()
    with progress_bar(f"importing {kind}", _count_lines(file)) as bar, \
            database.transaction() as conn:
        summary = run(conn, settings, bar)
    _report_import(summary, as_json)


def since_day(since: str, tz: ZoneInfo) -> datetime:
    """The start of the day ``--since`` names (YYYY-MM-DD) in ``tz``."""
    try:
        day = date.fromisoformat(since)
    except ValueError:
        raise click.BadParameter("write a day as YYYY-MM-DD, e.g. 2026-11-01",
                                 param_hint="'--since'") from None
    return at_local(day, dtime(0, 0), tz)


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


# --------------------------------------------------------------------------- run


def _describe_tick(report: TickReport) -> str:
    d = report.dispatch
    parts = []
    if report.edits:
        e = report.edits
        parts.append(f"schedules changed: {e.retimed} re-timed, {e.added} added, "
                     f"{e.cancelled} cancelled, {e.skipped} skipped")
    if report.recovered:
        parts.append(f"{report.recovered} interrupted send(s) marked unknown")
    found, resent, left = (report.reconciled.get(k, 0) for k in ("found", "resent", "left"))
    if found or resent or left:
        parts.append(f"unknown texts reconciled: {found} found sent, {resent} sent again, "
                     f"{left} left for staff")
    if report.lapses:
        parts.append(f"{report.lapses} lapse(s) found")
    parts.append(f"{report.events} event(s) planned into {report.planned} touch point(s)")
    if report.exited:
        parts.append(f"{report.exited} cancelled by exits")
    if report.set_aside:
        parts.append(f"{report.set_aside} event(s) could not be planned and were set aside "
                     "(see `touchpoint log`)")
    parts.append(f"{d.sent} sent")
    for label, counter in (("skipped", d.skipped), ("cancelled", d.cancelled)):
        if counter:
            parts.append(f"{sum(counter.values())} {label} (" + ", ".join(
                f"{n} {r}" for r, n in counter.most_common()) + ")")
    if d.deferred:
        parts.append(f"{d.deferred} deferred to daytime")
    if d.retried:
        parts.append(f"{d.retried} to retry")
    if d.failed:
        parts.append(f"{d.failed} failed")
    if d.unknown:
        parts.append(f"{d.unknown} unknown")
    return "; ".join(parts) + "."


@cli.command()
@click.option("--once", is_flag=True, help="Run one pass and exit.")
@click.option("--dry-run", is_flag=True,
              help="Print what would be sent; call no provider and record nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def run(ctx: click.Context, once: bool, dry_run: bool, as_json: bool) -> None:
    """Plan pending events and send what is due now."""
    if not once:
        raise click.UsageError("run needs --once (to keep running, use `touchpoint daemon`)")
    app = _app(ctx)
    settings, database, definitions = app.settings(), app.db(), app.definitions()
    out = sys.stderr if as_json else sys.stdout
    channels = build_channels(settings, dry_run=dry_run, out=out)
    runner = Runner(database, settings, definitions, channels)
    if dry_run:
        with database.rolled_back():
            report = runner.tick()
    else:
        report = runner.tick()
    hooks = None if dry_run else deliver_due(database)  # after the messages: never before
    if as_json:
        _echo_json({**report.as_dict(), "dry_run": dry_run,
                    **({"webhooks": hooks.as_dict()} if hooks else {})})
    else:
        prefix = "dry run (nothing recorded): " if dry_run else ""
        click.echo(prefix + _describe_tick(report) + (
            f" Webhooks: {hooks.delivered} delivered, {hooks.retried} to retry, "
            f"{hooks.failed} failed." if hooks and hooks.attempts else ""))


@cli.command("simulate")
@click.option("--until", "until", required=True, metavar="ISO8601",
              help="Run the virtual clock until this instant (start: --now).")
@click.option("--tick", "tick", default="5m", show_default=True, metavar="DURATION",
              help="Step of the virtual clock (e.g. 1m, 5m, 1h).")
@click.option("--feed", "feed_dir", type=click.Path(file_okay=False, path_type=Path),
              metavar="DIR", help="Replay feed_patients.csv / feed_appointments.csv from DIR.")
@click.option("--json", "as_json", is_flag=True, help="Print the totals as JSON.")
@click.pass_context
def simulate_cmd(ctx: click.Context, until: str, tick: str, feed_dir: Path | None,
                 as_json: bool) -> None:
    """Advance a virtual clock from --now to --until, running the engine each tick.

    Only the fake and console channels are allowed.
    """
    start = clock.pinned()
    if start is None:
        raise click.UsageError("simulate needs a start: give --now before the command, e.g. "
                               "touchpoint --now 2026-10-05T08:00-05:00 simulate --until …")
    end = _parse_now(until, "--until")
    assert end is not None
    try:
        step = parse_duration(tick)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--tick") from None
    app = _app(ctx)
    settings, database, definitions = app.settings(), app.db(), app.definitions()
    runner = Runner(database, settings, definitions, build_channels(settings))
    feed = Feed.load(feed_dir) if feed_dir else None
    with progress_bar("simulating", 1.0) as bar:
        last = [0.0]

        def advance(fraction: float) -> None:
            if bar:
                bar(fraction - last[0])
                last[0] = fraction
        result = simulate(runner, start, end, step, feed, progress=advance)
    totals: dict[str, Any] = {"start": start.isoformat(), "until": end.isoformat(),
                              "ticks": result.ticks,
                              "planned": sum(r.planned for r in result.reports),
                              "sent": result.sent,
                              "failed": sum(r.dispatch.failed for r in result.reports)}
    if as_json:
        _echo_json(totals)
    else:
        click.echo(f"simulated {start.isoformat()} → {end.isoformat()} in {result.ticks} ticks: "
                   f"{totals['planned']} touch points planned, {totals['sent']} sent, "
                   f"{totals['failed']} failed. See `touchpoint log`.")


# --------------------------------------------------------------------------- reports


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
    database = _app(ctx).db()
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
    app = _app(ctx)
    if (touch_point_id is None) == (event_id is None):
        raise click.UsageError("give a touch point id, or --event ID for an event set aside")
    database = app.db()
    if event_id is not None:
        with database.transaction() as conn:
            story = why_event(conn, event_id)
        if as_json:
            _echo_json(story)
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
        _echo_json(data)
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


# --------------------------------------------------------------------------- unknown


@cli.command("unknown")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def unknown_cmd(ctx: click.Context, as_json: bool) -> None:
    """Touch points whose delivery is unknown: texts still being looked up at Twilio, and
    those staff must settle (`touchpoint settle ID`)."""
    app = _app(ctx)
    settings = app.settings()
    looked_up = frozenset({"sms"}) if settings.channels.sms_provider == "twilio" \
        else frozenset()
    with app.db().transaction() as conn:
        rows = unknown_touch_points(conn, looked_up)
    if as_json:
        _echo_json([{key: _iso(value) if isinstance(value, datetime) else value
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
    settled = settle(_app(ctx).db(), touch_point_id, chosen[0], note, clock.now())
    click.echo(f"Touch point {settled.id}: unknown → {settled.status} ({settled.reason}); "
               f"the note is in its history (touchpoint why {settled.id}).")


# --------------------------------------------------------------------------- definitions


@cli.command("validate")
@click.option("--json", "as_json", is_flag=True, help="Print findings as JSON.")
@click.pass_context
def validate_cmd(ctx: click.Context, as_json: bool) -> None:
    """Check every schedule and template; exit 1 on any error."""
    app = _app(ctx)
    settings = app.settings()
    definitions = check_definitions(settings, clock.now())
    found = list(definitions.diagnostics)
    errors = [d for d in found if d.severity == "error"]
    limits = _limits(app, definitions) if not errors else \
        "the limits are forecast once the errors are fixed"
    if as_json:
        _echo_json({"ok": not errors, "errors": len(errors),
                    "warnings": len(found) - len(errors),
                    "journeys": sorted(definitions.journeys),
                    "diagnostics": [d.as_dict() for d in found],
                    "limits": limits.as_dict() if isinstance(limits, Limits) else
                    {"mode": settings.caps.mode, "days": LIMITS_DAYS, "note": limits}})
    else:
        for diagnostic in found:
            click.echo(str(diagnostic), err=diagnostic.severity == "error")
        for line in limits.lines() if isinstance(limits, Limits) else [
                f"Limits (caps.mode = {settings.caps.mode}): not forecast — {limits}."]:
            click.echo(line)
        click.echo(f"{len(definitions.journeys)} journeys, {len(errors)} error(s), "
                   f"{len(found) - len(errors)} warning(s).")
    if errors:
        sys.exit(1)


def _limits(app: App, definitions: Definitions) -> Limits | str:
    """What the limits would defer or skip in the next 14 days, from the patients and
    appointments on file; or why that cannot be said (no database yet)."""
    settings = app.settings()
    try:
        url = make_url(normalise_url(settings.database_url))
    except ArgumentError:
        return "database.url is not a database URL"
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
            and not Path(url.database).exists():
        return f"no database yet at {url.database} (import patients and appointments first)"
    try:
        database = app.db(check=False)
        database.check_schema(create_if_empty=False)
        return forecast_limits(database, settings, definitions, clock.now())[1]
    except UserError as exc:
        return exc.message.split(" — ")[0]
    except OperationalError as exc:
        return f"cannot open the database: {str(exc.orig or exc).strip().splitlines()[0]}"


@cli.command("segments")
@click.argument("text")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"encoding", "segments", "characters"} as JSON.')
def segments_cmd(text: str, as_json: bool) -> None:
    """Count SMS segments of TEXT the way carriers do (GSM-7 or UCS-2)."""
    info = analyse(text)
    if as_json:
        _echo_json(info.as_dict())
        return
    limit = (160, 153) if info.encoding == "GSM-7" else (70, 67)
    click.echo(f"{info.encoding}, {info.segments} segment{'s' if info.segments != 1 else ''}, "
               f"{info.characters} characters (one segment holds {limit[0]}; each part of a "
               f"longer message {limit[1]})")
    for char in info.non_gsm:
        click.echo(f"  {char.describe()}")


@cli.command("preview")
@click.argument("journey")
@click.argument("step")
@click.option("--patient", "patient_id", metavar="ID",
              help="Render for this imported patient instead of the built-in sample.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE", help="Write the email's HTML to FILE (one file per language).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def preview_cmd(ctx: click.Context, journey: str, step: str, patient_id: str | None,
                html_file: Path | None, as_json: bool) -> None:
    """Show exactly what a step sends: every channel and language, when, and how long."""
    app = _app(ctx)
    settings, definitions = app.settings(), app.definitions()
    if patient_id is not None:
        with app.db().transaction() as conn:
            result = preview(definitions, settings, journey, step, clock.now(), conn,
                             patient_id)
    else:
        result = preview(definitions, settings, journey, step, clock.now())
    written = _write_html(result, html_file) if html_file else []
    if as_json:
        _echo_json({**result.as_dict(), "html_files": [str(p) for p in written]})
        return
    echo = click.echo
    for number, entry in enumerate(result.recipients):
        if number:
            echo("")
        echo(f"{result.journey} / {result.step} ({result.purpose}) for {entry.recipient}")
        skipped = entry.status not in ("planned", "not_planned", "skipped")
        echo(f"  when: {entry.when}" + (f" — would be skipped: {entry.status}" if skipped
                                        else ""))
        _echo_messages(entry.messages, written)


def _echo_messages(messages: list[RenderedPreview], written: list[Path]) -> None:
    echo = click.echo
    for message in messages:
        header = f"\n── {message.channel} · {message.language} · {message.template_file}"
        echo(header + (f" · {message.note}" if message.note else ""))
        if message.error:
            echo(f"  cannot render: {message.error}")
            continue
        if message.subject is not None:
            echo(f"Subject: {message.subject}\n")
        echo(message.body)
        if message.segments:
            seg = message.segments
            echo(f"  [{seg['encoding']}, {seg['segments']} segment"
                 f"{'s' if seg['segments'] != 1 else ''}, {seg['characters']} characters]")
            for problem in message.problems:
                echo(f"  {problem}")
        if message.html:
            echo("  [HTML part" + (f" written to {', '.join(map(str, written))}]"
                                   if written else ": see --html FILE]"))


@cli.command("test-send")
@click.argument("journey")
@click.argument("step")
@click.option("--to", "to", required=True, metavar="PHONE_OR_EMAIL",
              help="Your own phone number or email address.")
@click.option("--patient", "patient_id", metavar="ID",
              help="Render for this imported patient instead of the built-in sample.")
@click.option("--language", metavar="CODE", help="Render this language variant (e.g. es).")
@click.pass_context
def test_send_cmd(ctx: click.Context, journey: str, step: str, to: str,
                  patient_id: str | None, language: str | None) -> None:
    """Send one rendered message of a step to your own phone or email, through the
    configured provider. It is recorded in the log as a test."""
    app = _app(ctx)
    settings, definitions, database = app.settings(), app.definitions(), app.db()
    channels = build_channels(settings)
    tp = send_test(database, definitions, settings, channels, journey, step, to, clock.now(),
                   patient_id=patient_id, language=language)
    if tp.status == Status.SENT:
        click.echo(f"test message sent by {tp.channel} via {tp.provider} to "
                   f"{mask_address(tp.address)} (touch point {tp.id}, provider id "
                   f"{tp.provider_message_id}).")
        return
    raise click.ClickException(f"the test message was not sent: {tp.status}"
                               f"{f' ({tp.reason})' if tp.reason else ''} — {tp.detail or ''}"
                               f" (touch point {tp.id})")


def _write_html(result: Preview, target: Path) -> list[Path]:
    """One file per email: FILE, then FILE's name with the language (the sample) or the
    recipient (``welcome.contact-3.html``) before its suffix."""
    written: list[Path] = []
    several = len(result.recipients) > 1
    for entry in result.recipients:
        for message in entry.messages:
            if message.channel != "email" or not message.html:
                continue
            which = entry.key.replace(":", "-") if several else message.language
            path = target if not written else target.with_suffix(f".{which}{target.suffix}")
            path.write_text(f"<!doctype html>\n<meta charset=\"utf-8\">\n"
                            f"<title>{html.escape(message.subject or '')}</title>\n"
                            f"{message.html}\n", encoding="utf-8")
            written.append(path)
    return written


@cli.command("forecast")
@click.option("--days", type=click.FloatRange(min=0, min_open=True), default=7,
              show_default=True, help="How far ahead to look.")
@click.option("--diff", "show_diff", is_flag=True,
              help="Show what changed since the last full forecast (e.g. after an edit).")
@click.option("--journey", metavar="NAME", help="Only this journey.")
@click.option("--patient", "patient_id", metavar="ID", help="Only this patient.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def forecast_cmd(ctx: click.Context, days: float, show_diff: bool, journey: str | None,
                 patient_id: str | None, as_json: bool) -> None:
    """What the next days hold: what would be sent to whom and when, what would be
    skipped and why. Changes nothing in the ledger; a full forecast (no --journey or
    --patient) is kept to diff against."""
    app = _app(ctx)
    settings, database, definitions = app.settings(), app.db(), app.definitions()
    now = clock.now()
    until = now + timedelta(days=days)
    entries, limits = forecast_limits(database, settings, definitions, now, days)
    full = journey is None and patient_id is None
    changes, previous = diff(database, entries, now, until, save=full)
    shown = [e for e in entries if (journey is None or e.journey == journey)
             and (patient_id is None or e.patient_id == patient_id)]
    if as_json:
        data: dict[str, Any] = {"from": now.isoformat(), "until": until.isoformat(),
                                "entries": [e.as_dict() for e in shown],
                                "limits": limits.as_dict()}
        if show_diff:
            data["diff"] = {"previous": previous, "changes": [
                c.as_dict() for c in changes
                if (journey is None or c.journey == journey)
                and (patient_id is None or c.patient_id == patient_id)]}
        _echo_json(data)
        return
    tz = zone(settings.require("practice.timezone"))
    if show_diff:
        _print_diff(changes, previous, tz, journey, patient_id, full)
        return
    day = None
    for entry in shown:
        local = entry.at.astimezone(tz)
        if local.date() != day:
            day = local.date()
            click.echo(f"\n{local:%a %d %b %Y}")
        what = f"{entry.channel} to {entry.recipient}" if entry.outcome == "send" else \
            f"{'skipped' if entry.outcome == 'skip' else 'cancelled'}: {entry.reason}"
        click.echo(f"  {local:%H:%M}  {entry.patient_id:<8} {entry.patient_name[:18]:<18} "
                   f"{entry.journey + '/' + entry.step:<32} {what}")
    sends = sum(1 for e in shown if e.outcome == "send")
    reasons = Counter(e.reason for e in shown if e.outcome != "send")
    click.echo("")
    for line in limits.lines():
        click.echo(line)
    click.echo(f"Next {days:g} days ({tz.key}): {sends} to send"
               + (", " + ", ".join(f"{n} {r}" for r, n in reasons.most_common())
                  if reasons else "") + ". Nothing was changed.")


def _print_diff(changes: list[Change], previous: str | None, tz: ZoneInfo,
                journey: str | None, patient_id: str | None, kept: bool) -> None:
    if previous is None and kept:
        click.echo("No earlier forecast to compare with; this one is kept as the baseline. "
                   "Edit schedules/ or message_templates/, then run `forecast --diff` again.")
        return
    if previous is None:
        click.echo("No earlier forecast to compare with, and one limited to a journey or a "
                   "patient is not kept as the baseline: run `touchpoint forecast` first.")
        return
    shown = [c for c in changes if (journey is None or c.journey == journey)
             and (patient_id is None or c.patient_id == patient_id)]
    click.echo(f"Compared with the forecast of {previous}: {len(shown)} change(s).")
    for change in shown:
        after, before = change.after or {}, change.before or {}
        at = datetime.fromisoformat((after or before)["at"].replace("Z", "+00:00"))
        where = f"{at.astimezone(tz):%a %d %b %H:%M}  {change.patient_id:<8} " \
                f"{change.journey}/{change.step}"
        if change.kind == "added":
            click.echo(f"  + {where}: now {_outcome(after)}")
        elif change.kind == "removed":
            click.echo(f"  - {where}: no longer {_outcome(before)}")
        else:
            notes = []
            if "at" in change.what:
                old = datetime.fromisoformat(before["at"].replace("Z", "+00:00"))
                notes.append(f"moved from {old.astimezone(tz):%a %d %b %H:%M}")
            if {"outcome", "channel", "reason"} & set(change.what):
                notes.append(f"was {_outcome(before)}, now {_outcome(after)}")
            if "digest" in change.what and after.get("outcome") == "send":
                notes.append("the wording changed")
            click.echo(f"  ~ {where}: {'; '.join(notes)}")


def _outcome(entry: dict[str, Any]) -> str:
    if entry.get("outcome") == "send":
        return f"sent by {entry.get('channel')}"
    return f"{'skipped' if entry.get('outcome') == 'skip' else 'cancelled'} " \
           f"({entry.get('reason')})"


@cli.command("daemon")
@click.option("--dry-run", is_flag=True,
              help="Print each message once on the console; call no provider, record nothing.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="One line per event, as text or JSON.")
@click.option("--no-watch", is_flag=True,
              help="Do not watch schedules/ and message_templates/ (SIGHUP still reloads).")
@click.pass_context
def daemon_cmd(ctx: click.Context, dry_run: bool, log_format: str, no_watch: bool) -> None:
    """Run the engine until stopped: plan and send on every tick, sweep for lapses,
    reload edited definitions. SIGTERM stops it gracefully; SIGHUP reloads."""
    from engine import logs
    from engine.daemon import Daemon, definitions_to_run

    if clock.pinned() is not None:
        raise click.UsageError("the daemon runs on the real clock; to move time, use "
                               "`touchpoint --now … simulate --until …`")
    app = _app(ctx)
    settings = app.settings()
    logs.configure(log_format, secrets=_secrets(settings))
    channels = build_channels(settings, dry_run=dry_run, once=True)
    database = app.db()

    def load() -> Definitions:
        return check_definitions(settings, clock.now()).raise_for_errors()

    # (invalid files: the last good definitions kept in the database, if any)
    definitions, restored = definitions_to_run(settings, database, load)
    daemon = Daemon(settings, database, definitions, channels, load, dry_run=dry_run,
                    watch=not no_watch, restored=restored)
    code = daemon.run()
    for channel in channels.values():
        channel.close()
    sys.exit(code)


def _secrets(settings: Settings) -> list[str]:
    return [s for s in (settings.twilio.auth_token, settings.sendgrid.api_key,
                        settings.webhooks.secret_key) if s]


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535),
              help="Port to listen on.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="One line per event, as text or JSON.")
@click.option("--mllp-port", type=click.IntRange(1, 65535), default=None,
              help="Also receive HL7 v2 over MLLP on this port [env TOUCHPOINT_MLLP_PORT].")
@click.pass_context
def serve_cmd(ctx: click.Context, host: str, port: int, log_format: str,
              mllp_port: int | None) -> None:
    """Receive provider webhooks (delivery reports, replies) and unsubscribe clicks.

    Providers must reach it at TOUCHPOINT_PUBLIC_URL (put it behind your https proxy).
    With --mllp-port, HL7 v2 messages (SIU, ADT) over MLLP too (docs/hl7.md).
    """
    import uvicorn

    from engine import logs
    from engine.webhooks.app import Services, create_app

    app = _app(ctx)
    if mllp_port is not None:
        app.flags["hl7.mllp_port"] = mllp_port
    settings = app.settings()
    logs.configure(log_format, secrets=_secrets(settings))
    services = Services(settings, app.db(), app.definitions(), build_channels(settings))
    for problem in _serve_warnings(settings):
        click.echo(f"warning: {problem}", err=True)
    click.echo(f"touchpoint serve: listening on http://{host}:{port} "
               f"(public URL {settings.webhooks.public_url or 'not set'})", err=True)
    if settings.hl7.mllp_port is not None:
        from engine.hl7.mllp import serve_with_mllp

        click.echo(f"touchpoint serve: HL7 over MLLP on {host}:{settings.hl7.mllp_port}",
                   err=True)
        serve_with_mllp(create_app(services), settings, app.db(), host=host, port=port)
        return
    uvicorn.run(create_app(services), host=host, port=port, log_level="info",
                access_log=False, log_config=None)


def _serve_warnings(settings: Settings) -> list[str]:
    problems = []
    if not settings.webhooks.public_url:
        problems.append("TOUCHPOINT_PUBLIC_URL is not set: Twilio signatures are checked "
                        "against the URL as received, which fails behind a proxy")
    if not settings.twilio.auth_token:
        problems.append("TWILIO_AUTH_TOKEN is not set: every Twilio webhook will get 403")
    if not settings.sendgrid.webhook_public_key:
        problems.append("SENDGRID_WEBHOOK_PUBLIC_KEY is not set: every SendGrid event will "
                        "get 403")
    return problems


@cli.group("inbox", invoke_without_command=True)
@click.option("--all", "show_all", is_flag=True, help="Include handled messages.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--reveal", is_flag=True, help="Show full phone numbers.")
@click.pass_context
def inbox_cmd(ctx: click.Context, show_all: bool, as_json: bool, reveal: bool) -> None:
    """Replies from patients that staff should read (reschedule requests, free text)."""
    if ctx.invoked_subcommand is not None:
        return
    with _app(ctx).db().transaction() as conn:
        rows = inbox(conn, include_done=show_all, reveal=reveal)
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo("Nothing waiting for staff.")
    tz = zone(_app(ctx).settings().practice.timezone or "UTC")
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
    with _app(ctx).db().transaction() as conn:
        if not mark_done(conn, message_id):
            raise click.ClickException(f"no inbox message {message_id} — see `touchpoint inbox`")
    click.echo(f"message {message_id} marked done.")


@inbox_cmd.command("opt-out")
@click.argument("message_id", type=int)
@click.pass_context
def inbox_opt_out_cmd(ctx: click.Context, message_id: int) -> None:
    """A text staff read as "stop texting me" (a possible opt-out): opt its number out of
    every text, confirm it to them once, and mark the message done."""
    app = _app(ctx)
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


# --------------------------------------------------------------------------- cases


def _case_dict(case: Case, names: dict[int, str], now: datetime) -> dict[str, Any]:
    return {"id": case.id, "status": case.status, "cause": case.cause,
            "patient_id": case.patient_id, "patient": names.get(case.patient_id, "?"),
            "owner": case.owner, "detail": case.detail,
            "opened_at": _iso(case.opened_at), "due_at": _iso(case.due_at),
            "overdue": case.overdue(now), "alerted_at": _iso(case.alerted_at),
            "escalated_at": _iso(case.escalated_at), "resolved_at": _iso(case.resolved_at),
            "resolution": case.resolution}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _age(delta: timedelta) -> str:
    hours = int(delta.total_seconds() // 3600)
    return f"{hours // 24}d {hours % 24}h" if hours >= 24 else f"{hours}h"


@cli.command("cases")
@click.option("--open", "open_only", is_flag=True, help="Only cases still open.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def cases_cmd(ctx: click.Context, open_only: bool, as_json: bool) -> None:
    """Recovery cases: low scores, complaints, failed deliveries, no-shows, late
    cancellations — who owns them and when they are due."""
    app = _app(ctx)
    now = clock.now()
    with app.db().transaction() as conn:
        found = list_cases(conn, open_only=open_only)
        names = patient_names(conn, {c.patient_id for c in found})
    rows = [_case_dict(c, names, now) for c in found]
    if as_json:
        _echo_json(rows)
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
            status = f"open {_age(now - case.opened_at)}"
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
    app = _app(ctx)
    now = clock.now()
    if action == "assign":
        if not owner:
            raise click.UsageError(f"say who: touchpoint case {case_id} assign --to \"Dana\"")
        with app.db().transaction() as conn:
            assign_case(conn, case_id, owner, by or _user(), now)
        click.echo(f"case {case_id} is now {' '.join(owner.split())}'s.")
        return
    if action != "show":
        if text is None:
            raise click.UsageError(f"say what {'was done' if action == 'resolve' else 'happened'}"
                                   f": touchpoint case {case_id} {action} --note \"…\"")
        with app.db().transaction() as conn:
            if action == "resolve":
                resolve_case(conn, case_id, text, by or _user(), now)
            else:
                note_case(conn, case_id, text, by or _user(), now)
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
        _echo_json({**_case_dict(case, names, now),
                    "history": [{"at": _iso(e.at), "kind": e.kind, "detail": e.detail,
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


def _user() -> str:
    return os_user()


# --------------------------------------------------------------------------- report


@cli.command("report")
@click.option("--since", metavar="DATE", help="From this day (YYYY-MM-DD, practice's "
              "timezone) [default: 30 days ago].")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def report_cmd(ctx: click.Context, since: str | None, as_json: bool) -> None:
    """How the practice's messages are doing: per journey and step, win-back conversion,
    satisfaction, recovery cases and referrals."""
    app = _app(ctx)
    settings = app.settings()
    tz = zone(settings.practice.timezone or "UTC")
    now = clock.now()
    start = now - timedelta(days=30) if since is None else since_day(since, tz)
    definitions = app.definitions()
    with app.db().transaction() as conn:
        data = build_report(conn, definitions, start, now, tz)
    if as_json:
        _echo_json(data)
        return
    _print_report(data, start, tz)


def _print_report(data: dict[str, Any], start: datetime, tz: ZoneInfo) -> None:
    # (piped, rich would wrap at 80 columns: a report is read whole, so give it room)
    console = Console(width=None if sys.stdout.isatty() else 132)
    console.print(f"[bold]Since {start.astimezone(tz):%a %d %b %Y}[/bold]")
    table = Table(title="Touch points by journey and step", box=None, pad_edge=False,
                  title_justify="left")
    numbers = ("planned", "sent", "delivered", "failed", "pending", "replies", "confirmed")
    for column in ("journey/step", *numbers, "skipped or cancelled: why"):
        table.add_column(column, justify="right" if column in numbers else "left",
                         no_wrap=column == "journey/step")
    for line in data["journeys"]:
        why = Counter(line["skipped"]) + Counter(line["cancelled"])
        table.add_row(f"{line['journey']}/{line['step']}", str(line["planned"]),
                      str(line["sent"]), str(line["delivered"]), str(line["failed"]),
                      str(line["pending"]), str(line["replies"]), str(line["confirmations"]),
                      ", ".join(f"{n} {reason}" for reason, n in why.most_common()) or "-")
    console.print(table if data["journeys"] else "No touch points in this period.")
    win = data["win_back"]
    if win["messaged"]:
        console.print(f"\n[bold]Win-back[/bold]: {win['booked_within_14_days']} of "
                      f"{win['messaged']} patients messaged booked within 14 days "
                      f"({win['conversion']:.0%}).")
    else:
        console.print("\n[bold]Win-back[/bold]: nobody was sent a win-back message.")
    score = data["satisfaction"]
    if score["answers"]:
        trend = sparkline([w["average"] for w in score["weekly"]])
        console.print(f"[bold]Satisfaction[/bold]: average {score['average']}/10 from "
                      f"{score['answers']} answers ({score['promoters']} promoters, "
                      f"{score['detractors']} detractors); weekly  {trend}")
    else:
        console.print("[bold]Satisfaction[/bold]: no answers to the 0-10 question yet.")
    cases = data["cases"]
    opened = ", ".join(f"{n} {cause.replace('_', ' ')}" for cause, n in cases["opened"].items())
    console.print(f"[bold]Recovery[/bold]: opened {opened or 'none'}; {cases['resolved']} "
                  f"resolved; {len(cases['open'])} open.")
    for case in cases["open"]:
        overdue = " [red]overdue[/red]" if case["overdue"] else ""
        console.print(f"  case {case['id']:<4} {case['cause'].replace('_', ' '):<18} "
                      f"{case['patient']:<24} open {_age(timedelta(hours=case['age_hours']))}"
                      f"{overdue}")
    if data["referrals"]:
        refs = Table(title="\nReferrals", box=None, pad_edge=False, title_justify="left")
        for column in ("source", "referred", "seen", "discharged", "messages"):
            refs.add_column(column, justify="left" if column == "source" else "right")
        for row in data["referrals"]:
            refs.add_row(row["referrer"], str(row["referred"]), str(row["seen"]),
                         str(row["discharged"]), str(row["messages"]))
        console.print(refs)
    console.print("\n".join(plan_of_care.report_lines(data["plan_of_care"])), highlight=False)


# --------------------------------------------------------------------------- demo


@cli.command("demo")
@click.option("--days", type=click.IntRange(1, 365), default=60, show_default=True,
              help="Days to simulate.")
@click.pass_context
def demo_cmd(ctx: click.Context, days: int) -> None:
    """Simulate a fictional practice for 60 days and show what Touchpoint did.

    Uses its own database (touchpoint-demo.db unless --db is given) and the fake channels.
    """
    from engine.demo import demo_account, print_report, run_demo
    from engine.demo.generate import START

    app = _app(ctx)
    if "database.url" not in app.flags:
        Path("touchpoint-demo.db").unlink(missing_ok=True)
        for suffix in ("-wal", "-shm"):
            Path(f"touchpoint-demo.db{suffix}").unlink(missing_ok=True)
        app.flags["database.url"] = "sqlite:///touchpoint-demo.db"
    if app.config is None and not os.environ.get("TOUCHPOINT_CONFIG") \
            and not Path("touchpoint.toml").is_file():
        app.config = str(Path(__file__).parent.parent / "demo" / "practice.toml")
    settings = app.settings()
    database, definitions = app.db(), app.definitions()
    began = time.monotonic()
    with progress_bar(f"simulating {days} days", 1.0) as bar:
        last = [0.0]

        def advance(fraction: float) -> None:
            if bar:
                bar(fraction - last[0])
                last[0] = fraction
        result = run_demo(database, settings, definitions, days=days, progress=advance)
    console = Console(soft_wrap=True, width=None if _interactive() else 110)
    patients = next(s for s in result.imports if s.kind == "patients")
    appointments = next(s for s in result.imports if s.kind == "appointments")
    console.print(f"[bold]Touchpoint demo[/] — {settings.practice.name}: {patients.created} "
                  f"patients and {appointments.created} appointments on file, then {days} days "
                  f"of bookings, visits, cancellations, moves and no-shows from the EMR feed "
                  f"({sum(s.rows for s in result.simulation.imports)} changes), simulated in "
                  f"{result.simulation.ticks} ticks.")
    print_report(console, database, settings, days)
    url = safe_url(database.url)
    # Cases and the report read "now"; point them at the end of the simulated days.
    then = f"--now {(START + timedelta(days=days)).astimezone(UTC):%Y-%m-%dT%H:%MZ}"
    console.print(f"\nDone in {time.monotonic() - began:.1f} s. Explore it:\n"
                  f"  touchpoint --db {url} log --patient P1004\n"
                  f"  touchpoint --db {url} log --status skipped\n"
                  f"  touchpoint --db {url} why 1\n"
                  f"  touchpoint --db {url} {then} cases --open\n"
                  f"  touchpoint --db {url} {then} report --since {START:%Y-%m-%d}")
    email, password = demo_account(database, clock.now())
    config = f" --config {app.config}" if app.config else ""
    console.print(f"\nOpen the console on the demo's data:\n"
                  f"  touchpoint --db {url}{config} serve\n"
                  f"  then http://127.0.0.1:8000/ — sign in as {email}, password {password}",
                  highlight=False)


def main() -> None:
    try:
        cli(prog_name="touchpoint")
    except BrokenPipeError:
        # Output was piped into a program that stopped reading: not an error worth a word.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


# Command groups that live in their own module register themselves on `cli` when imported
# (engine/cli/<group>.py: `from engine.cli import cli` at its top).
from engine.cli import (  # noqa: E402
    api_keys,  # noqa: F401
    audit,  # noqa: F401
    fhir,  # noqa: F401
    hl7,  # noqa: F401
    plans,  # noqa: F401
    users,  # noqa: F401
    webhooks,  # noqa: F401
)
from engine.cli import patient as patient_commands  # noqa: E402, F401

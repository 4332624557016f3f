"""`touchpoint validate|segments|preview|test-send|forecast`: tools for whoever edits
schedules/ and message_templates/ — check them, see what a step sends, try it on your
own phone, and see what the next days hold."""

from __future__ import annotations

import html
import sys
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from engine import clock
from engine.channels import build_channels
from engine.cli.common import App, app_of, echo_json
from engine.cli.root import cli
from engine.definitions import Definitions
from engine.errors import UserError
from engine.forecast import LIMITS_DAYS, Change, Limits, diff, forecast_limits
from engine.outcomes import Status
from engine.preview import Preview, RenderedPreview, preview, send_test
from engine.privacy import mask_address
from engine.sms_segments import analyse
from engine.store.database import normalise_url
from engine.timing import zone
from engine.validate import check_definitions


@cli.command("validate")
@click.option("--json", "as_json", is_flag=True, help="Print findings as JSON.")
@click.pass_context
def validate_cmd(ctx: click.Context, as_json: bool) -> None:
    """Check every schedule and template; exit 1 on any error."""
    app = app_of(ctx)
    settings = app.settings()
    definitions = check_definitions(settings, clock.now())
    found = list(definitions.diagnostics)
    errors = [d for d in found if d.severity == "error"]
    limits = _limits(app, definitions) if not errors else \
        "the limits are forecast once the errors are fixed"
    if as_json:
        echo_json({"ok": not errors, "errors": len(errors),
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
        echo_json(info.as_dict())
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
    app = app_of(ctx)
    settings, definitions = app.settings(), app.definitions()
    if patient_id is not None:
        with app.db().transaction() as conn:
            result = preview(definitions, settings, journey, step, clock.now(), conn,
                             patient_id)
    else:
        result = preview(definitions, settings, journey, step, clock.now())
    written = _write_html(result, html_file) if html_file else []
    if as_json:
        echo_json({**result.as_dict(), "html_files": [str(p) for p in written]})
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
    app = app_of(ctx)
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
    app = app_of(ctx)
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
        echo_json(data)
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

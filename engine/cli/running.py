"""`touchpoint run|simulate|daemon|serve|demo`: the engine at work — one pass, a
virtual clock, the unattended daemon, the web server (webhooks, API, console) and the
demo practice."""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from engine import clock
from engine.channels import build_channels
from engine.cli.common import app_of, echo_json, interactive, parse_now, progress_bar
from engine.cli.root import cli
from engine.definitions import Definitions
from engine.outbound_webhooks.delivery import deliver_due
from engine.runner import Runner, TickReport
from engine.settings import Settings
from engine.simulate import Feed, simulate
from engine.store.database import safe_url
from engine.timing import parse_duration
from engine.validate import check_definitions


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
    app = app_of(ctx)
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
        echo_json({**report.as_dict(), "dry_run": dry_run,
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
    end = parse_now(until, "--until")
    assert end is not None
    try:
        step = parse_duration(tick)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--tick") from None
    app = app_of(ctx)
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
        echo_json(totals)
    else:
        click.echo(f"simulated {start.isoformat()} → {end.isoformat()} in {result.ticks} ticks: "
                   f"{totals['planned']} touch points planned, {totals['sent']} sent, "
                   f"{totals['failed']} failed. See `touchpoint log`.")



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
    app = app_of(ctx)
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
    from engine.live_definitions import LiveDefinitions
    from engine.webhooks.app import Services, create_app

    app = app_of(ctx)
    if mllp_port is not None:
        app.flags["hl7.mllp_port"] = mllp_port
    settings = app.settings()
    logs.configure(log_format, secrets=_secrets(settings))
    # (the console and the webhooks follow hand edits of the definitions: LiveDefinitions)
    definitions = LiveDefinitions(settings, app.db(), app.definitions(), follow=True)
    services = Services(settings, app.db(), definitions, build_channels(settings))
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

    app = app_of(ctx)
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
    console = Console(soft_wrap=True, width=None if interactive() else 110)
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

"""The `touchpoint` group itself: its global options, how errors reach the user, and
:func:`main`, the console script.

Global options come before the command: ``touchpoint --db URL --now ISO8601 log``.
Every error a user can cause is printed as one line (``Error: …``), never a traceback;
set ``TOUCHPOINT_DEBUG=1`` to see the traceback of an unexpected error.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from engine import __version__, clock
from engine.cli.common import App, parse_now
from engine.errors import TouchpointError, UserError
from engine.privacy import redact
from engine.settings import parse_flag


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
    instant = parse_now(now)
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


def main() -> None:
    try:
        cli(prog_name="touchpoint")
    except BrokenPipeError:
        # Output was piped into a program that stopped reading: not an error worth a word.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)

"""What the command modules share: the :class:`App` a command reads settings, database
and definitions from, and small helpers for options and output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as dtime
from zoneinfo import ZoneInfo

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from engine import clock
from engine.definitions import Definitions
from engine.settings import Settings, load_settings
from engine.store.database import Database, open_database
from engine.timing import at_local
from engine.validate import check_definitions


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


def app_of(ctx: click.Context) -> App:
    """The App the root group put on the context."""
    app = ctx.obj
    assert isinstance(app, App)
    return app


def parse_now(value: str | None, option: str = "--now") -> datetime | None:
    """An ISO 8601 instant with its UTC offset (``--now``, ``--until``), or None."""
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


def interactive() -> bool:
    """Output goes to a terminal (not piped): progress bars and full-width tables."""
    return sys.stdout.isatty() and sys.stderr.isatty()


@contextmanager
def progress_bar(label: str, total: float | None) -> Iterator[Callable[[float], None] | None]:
    """A progress bar on a terminal; nothing when output is piped."""
    if not interactive():
        yield None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda amount: bar.update(task, advance=amount)


def echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def since_day(since: str, tz: ZoneInfo) -> datetime:
    """The start of the day ``--since`` names (YYYY-MM-DD) in ``tz``."""
    try:
        day = date.fromisoformat(since)
    except ValueError:
        raise click.BadParameter("write a day as YYYY-MM-DD, e.g. 2026-11-01",
                                 param_hint="'--since'") from None
    return at_local(day, dtime(0, 0), tz)


def iso(value: datetime | None) -> str | None:
    """An instant as JSON shows it: ISO 8601, ``Z`` for UTC."""
    return value.isoformat().replace("+00:00", "Z") if value else None


def age(delta: timedelta) -> str:
    """How long something has been open: ``5h`` or ``2d 3h``."""
    hours = int(delta.total_seconds() // 3600)
    return f"{hours // 24}d {hours % 24}h" if hours >= 24 else f"{hours}h"


"""`touchpoint config`: every setting's effective value and where it came from."""

from __future__ import annotations

import click

from engine.cli.common import app_of, echo_json
from engine.cli.root import cli


@cli.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def config_cmd(ctx: click.Context, as_json: bool) -> None:
    """Show every setting's effective value (secrets masked) and the file it came from."""
    settings = app_of(ctx).settings()
    values = settings.describe()
    if as_json:
        echo_json({"config_file": str(settings.config_file or ""), "settings": values})
        return
    click.echo(f"config file: {settings.config_file or '(none)'}")
    for key, value in values.items():
        click.echo(f"  {key} = {value}")

"""`touchpoint plan-check`: the daemon's daily check of plans of care, run once now."""

from __future__ import annotations

import click

from engine import clock, plan_of_care
from engine.cli.common import app_of, echo_json
from engine.cli.root import cli


@cli.command("plan-check")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def plan_check_cmd(ctx: click.Context, as_json: bool) -> None:
    """Record plan.under_scheduled for patients with fewer visits booked than their plan
    of care needs (at most once a week each) and open "at risk of dropping out" cases, as
    the daemon does every day at daemon.plan_cron; the next tick plans the nudges."""
    app = app_of(ctx)
    found = plan_of_care.check(app.db(), app.settings(), clock.now())
    if as_json:
        echo_json({"under_scheduled": found.under_scheduled, "at_risk": found.at_risk})
        return
    click.echo(f"{found.under_scheduled} patient(s) under-scheduled (nudge planned at the "
               f"next tick), {found.at_risk} at-risk case(s) opened.")

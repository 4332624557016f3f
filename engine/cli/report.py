"""`touchpoint report`: how the practice's messages are doing."""

from __future__ import annotations

import sys
from collections import Counter
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import click
from rich.console import Console
from rich.table import Table

from engine import clock, plan_of_care
from engine.cli.common import age, app_of, echo_json, since_day
from engine.cli.root import cli
from engine.report import build_report, sparkline, waitlist_lines
from engine.timing import zone


@cli.command("report")
@click.option("--since", metavar="DATE", help="From this day (YYYY-MM-DD, practice's "
              "timezone) [default: 30 days ago].")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def report_cmd(ctx: click.Context, since: str | None, as_json: bool) -> None:
    """How the practice's messages are doing: per journey and step, win-back conversion,
    satisfaction, recovery cases, referrals, plans of care and the waitlist."""
    app = app_of(ctx)
    settings = app.settings()
    tz = zone(settings.practice.timezone or "UTC")
    now = clock.now()
    start = now - timedelta(days=30) if since is None else since_day(since, tz)
    definitions = app.definitions()
    with app.db().transaction() as conn:
        data = build_report(conn, definitions, start, now, tz, settings=settings)
    if as_json:
        echo_json(data)
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
                      f"{case['patient']:<24} open {age(timedelta(hours=case['age_hours']))}"
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
    console.print("\n" + "\n".join(waitlist_lines(data["waitlist"])), highlight=False)

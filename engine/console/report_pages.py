"""The numbers, as pictures, and the rows behind them.

=========================  ==========================================================
GET  /dashboard            the `report` data as SVG charts (since a day, default 30 days)
GET  /log                  touch points by patient, journey, status, day (the rows behind)
GET  /touch-points/{id}    one touch point's story: the `why` of `touchpoint why`
=========================  ==========================================================

Charts are SVG drawn on the server: each series has its own fill pattern and a label, so
they read without colour, and every number links to the touch points it counts.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from datetime import time as dtime
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse

from engine import clock
from engine.console.core import Console, Guard, render
from engine.errors import NotFound
from engine.report import build_report, days, open_cases_by_age, reminder_confirmations
from engine.timing import at_local, zone
from engine.touch_point_log import log_rows, why

LOG_LIMIT = 500
CHART_HEIGHT = 160
#: The day series drawn, each with the statuses its number counts in the log.
SERIES = (("sent", "sent,delivered"), ("delivered", "delivered"), ("failed", "failed"))


def add_routes(app: FastAPI, console: Console, guard: Guard) -> None:
    practice = console.settings.practice.name
    tz = zone(console.settings.practice.timezone or "UTC")

    def day_window(day: date) -> tuple[datetime, datetime]:
        start = at_local(day, dtime(0, 0), tz)
        return start, at_local(day + timedelta(days=1), dtime(0, 0), tz)

    @app.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    def dashboard(request: Request, since: str = "") -> Response:
        session = guard(request, "read")
        now = clock.now()
        try:
            first = date.fromisoformat(since) if since else \
                (now - timedelta(days=30)).astimezone(tz).date()
        except ValueError:
            first = (now - timedelta(days=30)).astimezone(tz).date()
        start = at_local(first, dtime(0, 0), tz)
        with console.db.transaction() as conn:
            data = build_report(conn, console.definitions, start, now, tz)
            series = days(conn, start, now, tz)
        lines = data["journeys"]
        return render(
            "dashboard.html", session=session, practice=practice, since=first, data=data,
            chart=bar_chart([d.as_dict() for d in series], [name for name, _ in SERIES]),
            links={name: statuses for name, statuses in SERIES},
            totals={name: sum(getattr(d, name) for d in series)
                    for name in ("sent", "delivered", "failed", "replies", "no_shows",
                                 "late_cancellations")},
            series=series, confirmations=reminder_confirmations(lines, console.definitions),
            case_ages=open_cases_by_age(data["cases"]["open"]),
            trend=line_chart(data["satisfaction"]["weekly"]))

    @app.get("/log", response_class=HTMLResponse, include_in_schema=False)
    def log_page(request: Request, patient: str = "", journey: str = "", status: str = "",
                 day: str = "") -> Response:
        session = guard(request, "read")
        between = None
        if day:
            try:
                between = day_window(date.fromisoformat(day))
            except ValueError:
                day = ""
        statuses = [s for s in status.split(",") if s] or None
        with console.db.transaction() as conn:
            rows = list(log_rows(conn, patient=patient or None, journey=journey or None,
                                 statuses=statuses, between=between, limit=LOG_LIMIT))
        filters = {k: v for k, v in (("patient", patient), ("journey", journey),
                                     ("status", status), ("day", day)) if v}
        return render("log.html", session=session, practice=practice, rows=rows,
                      filters=filters, limit=LOG_LIMIT)

    @app.get("/touch-points/{tp_id}", response_class=HTMLResponse, include_in_schema=False)
    def touch_point(request: Request, tp_id: int) -> Response:
        session = guard(request, "read")
        try:
            with console.db.transaction() as conn:
                story = why(conn, tp_id, console.definitions).as_dict()
        except NotFound:
            return render("not_found.html", 404, session=session, practice=practice,
                          what=f"touch point {tp_id}")
        return render("touch_point.html", session=session, practice=practice, story=story)


def log_link(**filters: str) -> str:
    return "/log?" + urlencode({k: v for k, v in filters.items() if v})


def bar_chart(rows: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Bars per day for each series in ``names``: geometry for the template's SVG."""
    top = max([row[name] for row in rows for name in names] + [1])
    width = max(len(names) * 6 + 4, 12)
    bars = []
    for index, row in enumerate(rows):
        for n, name in enumerate(names):
            value = row[name]
            height = round(value / top * CHART_HEIGHT, 1)
            bars.append({"x": index * width + n * 6 + 2, "y": CHART_HEIGHT - height,
                         "height": height, "value": value, "series": name, "day": row["day"],
                         "link": log_link(status=dict(SERIES).get(name, name),
                                          day=row["day"])})
    return {"bars": bars, "width": max(len(rows) * width, 1), "height": CHART_HEIGHT,
            "top": top, "day_width": width,
            "ticks": [{"x": i * width, "day": row["day"][5:]} for i, row in enumerate(rows)
                      if i % 7 == 0]}


def line_chart(weekly: list[dict[str, Any]]) -> dict[str, Any]:
    """Weekly satisfaction averages (0-10) as points joined by a line."""
    points = [{"x": 20 + i * 60, "y": round(CHART_HEIGHT - w["average"] / 10 * CHART_HEIGHT, 1),
               "week": w["week_of"], "average": w["average"], "answers": w["answers"]}
              for i, w in enumerate(weekly) if w["average"] is not None]
    return {"points": points, "path": " ".join(f"{p['x']},{p['y']}" for p in points),
            "width": 40 + max(len(weekly) - 1, 0) * 60, "height": CHART_HEIGHT}

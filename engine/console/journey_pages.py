"""Journeys on a timeline: trigger, exits, and each step relative to its anchor with its
channels, purpose, priority, and who it will reach in the next 14 days.

=======================  ============================================================
GET  /journeys           every journey, its trigger and how many it reaches
GET  /journeys/{name}    its steps on a timeline around the anchor
=======================  ============================================================
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse

from engine import clock
from engine.console.core import Console, Guard, render
from engine.definitions.journeys import PRIORITIES, Journey, Step
from engine.forecast import LIMITS_DAYS, Reach, forecast, reach

_PRIORITY_NAMES = {value: name for name, value in PRIORITIES.items()}


def add_routes(app: FastAPI, console: Console, guard: Guard) -> None:
    practice = console.settings.practice.name

    def reached() -> dict[tuple[str, str], Reach]:
        return reach(forecast(console.db, console.settings, console.definitions, clock.now(),
                              LIMITS_DAYS))

    @app.get("/journeys", response_class=HTMLResponse, include_in_schema=False)
    def journeys(request: Request) -> Response:
        session = guard(request, "read")
        counts = reached()
        rows = [{"journey": j, "patients": sum(counts[(j.name, s.id)].patients
                                               for s in j.steps if (j.name, s.id) in counts)}
                for j in sorted(console.definitions.journeys.values(), key=lambda j: j.name)]
        return render("journeys.html", session=session, practice=practice, rows=rows,
                      days=LIMITS_DAYS, rejected=console.live.problems)

    @app.get("/journeys/{name}", response_class=HTMLResponse, include_in_schema=False)
    def journey(request: Request, name: str) -> Response:
        session = guard(request, "read")
        found = console.definitions.journey(name)
        if found is None:
            return render("not_found.html", 404, session=session, practice=practice,
                          what=f"journey {name}")
        counts = reached()
        return render("journey.html", session=session, practice=practice, journey=found,
                      steps=timeline(found, counts), days=LIMITS_DAYS,
                      file=f"schedules/{found.file.rsplit('/', 1)[-1]}",
                      rejected=console.live.problems)


def timeline(journey: Journey, counts: dict[tuple[str, str], Reach]) -> list[dict[str, Any]]:
    """The steps in time order around their anchor (the visit, or the trigger event)."""
    rows = []
    for step in journey.steps:
        rows.append({
            "step": step, "when": step.when.describe(), "before": step.when.before_anchor,
            "order": _offset(step),
            "anchor": f"the visit ({journey.trigger_for(step).describe()})"
            if journey.step_anchored_on_appointment(step)
            else journey.trigger_for(step).describe(),
            "channels": " then ".join(step.channels), "purpose": journey.purpose,
            "priority": journey.priority_of(step),
            "priority_name": _PRIORITY_NAMES.get(journey.priority_of(step), "custom"),
            "reach": counts.get((journey.name, step.id))})
    return sorted(rows, key=lambda r: r["order"])


def _offset(step: Step) -> timedelta:
    """Where the step falls relative to its anchor (negative: before it)."""
    when = step.when
    span = when.offset if when.kind in ("before", "after") else timedelta(days=when.days)
    if when.at is not None:
        span += timedelta(hours=when.at.hour, minutes=when.at.minute) - timedelta(hours=12)
    return -span if when.before_anchor else span

"""The dashboard: the report's numbers as SVG charts, every number linking to the rows it
counts (the log page), and each touch point's story."""

from __future__ import annotations

import re

from engine import clock
from engine.demo import run_demo
from engine.demo.generate import START
from tests.console_support import HTML, Console


def test_the_dashboard_draws_the_days_and_its_numbers_open_their_rows(
        console: Console) -> None:
    clinic = console.clinic
    run_demo(clinic.db, clinic.settings, clinic.definitions, days=7)
    console.sign_in("viewer@clinic.example.com")
    page = console.client.get("/dashboard", params={"since": f"{START:%Y-%m-%d}"},
                              headers=HTML)
    assert page.status_code == 200
    text = page.text
    assert "<svg" in text and 'class="sent"' in text and '<pattern id="hatch"' in text
    assert "Satisfaction by week" in text and "Open cases by age" in text
    assert "Referrals per source" in text
    total = int(re.search(r'href="/log\?status=sent,delivered">(\d+)</a>', text).group(1))
    assert total > 0
    rows = console.client.get("/log", params={"status": "sent,delivered"}, headers=HTML)
    assert f"{total} touch point" in rows.text
    day_links = re.findall(r'href="/log\?status=failed&amp;day=([\d-]+)">(\d+)</a>', text)
    for day, count in day_links:
        listed = console.client.get("/log", params={"status": "failed", "day": day},
                                    headers=HTML)
        assert f"{count} touch point" in listed.text
    tp_id = re.search(r'href="/touch-points/(\d+)"', rows.text).group(1)
    story = console.client.get(f"/touch-points/{tp_id}", headers=HTML)
    assert story.status_code == 200 and "Why:" in story.text and "History" in story.text
    assert console.client.get("/touch-points/999999", headers=HTML).status_code == 404
    clock.set_now(None)

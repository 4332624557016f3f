"""The console's journey pages: trigger, exits, steps in time order around the visit, and
who each step reaches in the next 14 days (from the forecast)."""

from __future__ import annotations

from datetime import timedelta

from tests.console_support import HTML, NOW, Console
from tests.support import appointment, patient


def test_a_journey_shows_its_steps_around_the_visit_with_their_reach(console: Console) -> None:
    console.clinic.patients(patient("P1"), patient("P2", phone="(312) 555-0102"))
    console.clinic.appointments(
        appointment("A1", "P1", start=(NOW + timedelta(days=4)).isoformat()),
        appointment("A2", "P2", start=(NOW + timedelta(days=5)).isoformat()))
    console.clinic.tick()
    console.sign_in("viewer@clinic.example.com")
    listing = console.client.get("/journeys", headers=HTML)
    assert listing.status_code == 200
    assert 'href="/journeys/pre-visit"' in listing.text
    page = console.client.get("/journeys/pre-visit", headers=HTML)
    assert page.status_code == 200
    text = page.text
    assert text.index("three-days-before") < text.index("two-hours-before") \
        < text.index("the visit (appointment.booked)")
    assert "3 days before at 10:00" in text and "2h before" in text
    assert "priority reminder (40)" in text
    assert "Will reach <strong>2</strong> patients" in text
    assert "edit its words" not in text  # a viewer does not edit
    assert console.client.get("/journeys/nope", headers=HTML).status_code == 404

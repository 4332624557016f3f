"""The console's patients: search by name, id and phone; the timeline; reveal (audited)."""

from __future__ import annotations

from datetime import timedelta

from engine import clock
from tests.console_support import HTML, NOW, Console
from tests.support import appointment, contact, patient


def seed(console: Console) -> None:
    clinic = console.clinic
    clinic.patients(patient("P1004", first_name="Lucia", last_name="Rivera",
                            phone="(312) 555-0142", date_of_birth="2012-03-04"),
                    patient("P2001", first_name="Tom", last_name="Rivers",
                            phone="(312) 555-0199"),
                    patient("P3000", first_name="Ana", last_name="Ng", phone="(312) 555-0123"))
    clinic.contacts(contact("C1", "P1004", first_name="Marta", phone="(312) 555-0177"))
    clinic.appointments(appointment("A1", "P1004", start=(NOW + timedelta(days=3))
                                    .isoformat()))
    clinic.tick()


def test_search_finds_by_name_id_and_phone_with_numbers_masked(console: Console) -> None:
    seed(console)
    console.sign_in("viewer@clinic.example.com")
    by_name = console.client.get("/patients", params={"q": "rive"}, headers=HTML)
    assert by_name.status_code == 200
    assert "Lucia Rivera" in by_name.text
    assert "Tom Rivers" in by_name.text
    assert "Ana Ng" not in by_name.text
    assert "555-0142" not in by_name.text and "5550142" not in by_name.text
    assert "+1••••••••42" in by_name.text
    by_id = console.client.get("/patients", params={"q": "P10"}, headers=HTML)
    assert "Lucia Rivera" in by_id.text
    assert "Tom Rivers" not in by_id.text
    by_phone = console.client.get("/patients", params={"q": "555 0199"}, headers=HTML)
    assert "Tom Rivers" in by_phone.text
    assert "Lucia Rivera" not in by_phone.text
    by_last_first = console.client.get("/patients", params={"q": "Ng, Ana"}, headers=HTML)
    assert "Ana Ng" in by_last_first.text
    none = console.client.get("/patients", params={"q": "100%_"}, headers=HTML)
    assert "No patient matches" in none.text


def test_the_timeline_shows_touch_points_with_why_events_and_contacts(
        console: Console) -> None:
    seed(console)
    console.sign_in("desk@clinic.example.com")
    page = console.client.get("/patients/P1004", headers=HTML)
    assert page.status_code == 200
    text = page.text
    assert "Lucia Rivera" in text
    assert "Minor: messages go to a parent or guardian" in text
    assert "Marta" in text and "parent" in text
    assert "Visit booked (A1)" in text
    assert "Added to Touchpoint" in text
    assert "pre-visit / " in text  # a reminder planned for the visit
    assert "It is planned for" in text  # its why, in words
    assert "+1••••••••42" in text
    assert "(312) 555-0142" not in text and "+13125550142" not in text
    assert "+13125550177" not in text
    missing = console.client.get("/patients/P9999", headers=HTML)
    assert missing.status_code == 404


def test_reveal_shows_full_numbers_is_audited_and_needs_the_role_and_token(
        console: Console) -> None:
    seed(console)
    console.sign_in("viewer@clinic.example.com")
    page = console.client.get("/patients/P1004", headers=HTML)
    assert "Reveal full numbers" not in page.text
    refused = console.client.post("/patients/P1004/reveal", data={"csrf_token": console.csrf()})
    assert refused.status_code == 403
    assert "+13125550142" not in refused.text

    clock.set_now(NOW + timedelta(minutes=1))
    console.sign_in("desk@clinic.example.com")
    page = console.client.get("/patients/P1004", headers=HTML)
    assert "Reveal full numbers" in page.text
    assert console.client.post("/patients/P1004/reveal").status_code == 403  # no CSRF token
    shown = console.client.post("/patients/P1004/reveal", data={"csrf_token": console.csrf()})
    assert shown.status_code == 200
    assert "+13125550142" in shown.text
    assert "+13125550177" in shown.text
    assert "recorded in the audit log" in shown.text
    reveals = [entry for entry in console.audit() if entry[1] == "patient.reveal"]
    assert reveals == [("staff:desk@clinic.example.com", "patient.reveal")]


def test_the_timeline_shows_what_providers_reported(console: Console) -> None:
    from sqlalchemy import insert

    from engine.store.schema import history

    seed(console)
    [welcome] = console.clinic.touch_points(patient="P1004", step="welcome")
    with console.clinic.db.transaction() as conn:
        conn.execute(insert(history).values(
            touch_point_id=welcome.id, at=NOW + timedelta(minutes=1), kind="delivery",
            status="delivered", previous_status="sent", reason="delivered", detail="",
            source="twilio", provider_event_id="SM1-delivered"))
    console.sign_in("desk@clinic.example.com")
    page = console.client.get("/patients/P1004", headers=HTML)
    assert "sms delivered: welcome / welcome" in page.text
    assert "reported by twilio" in page.text


def test_the_patients_page_shows_the_plan_of_care_and_intake(console: Console) -> None:
    clinic = console.clinic
    start = (NOW - timedelta(days=14)).date()
    clinic.patients(patient("P1", plan_visits="12", plan_visits_per_week="2",
                            plan_start=start.isoformat(), intake_completed="yes"),
                    patient("P2"))
    clinic.appointments(
        appointment("A0", "P1", start=(NOW - timedelta(days=30)).isoformat(),
                    status="completed"),  # before the plan: not one of its visits
        appointment("A1", "P1", start=(NOW - timedelta(days=10)).isoformat(),
                    status="completed"),
        appointment("A2", "P1", start=(NOW - timedelta(days=7)).isoformat(),
                    status="completed"))
    console.sign_in("desk@clinic.example.com")
    page = console.client.get("/patients/P1", headers=HTML).text
    assert f"2 of 12 visits done, 2 a week, from {start.isoformat()}." in page
    assert "Intake: complete" in page
    other = console.client.get("/patients/P2", headers=HTML).text
    assert "Plan of care" in other and "Intake: not complete" in other

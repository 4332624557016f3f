"""The console's /waitlist page: waiting patients and their preferences, open and claimed
slots (the claimant shown, Confirm and Withdraw for the front desk and above, no buttons
for a viewer), the forms to add an entry and open a slot — CSRF-checked and audited. Then
the same page in Chromium (screenshots/waitlist-*.png).

The clock is Monday 2026-12-07 09:00 CST (America/Chicago).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect
from sqlalchemy import select

from engine import waitlist
from engine.store.schema import patients, slots, waitlist_entries
from tests.browser import console_clinic, screenshot_path, serving_console
from tests.console_support import HTML, NOW, PASSWORD, Console
from tests.support import Clinic, patient


def seed(clinic: Clinic) -> tuple[int, int]:
    """Lucia waits for Monday/Wednesday mornings; Tom claimed one slot; another is open."""
    clinic.patients(patient("P1", first_name="Lucia", last_name="Rivera"),
                    patient("P2", first_name="Tom", last_name="Rivers",
                            phone="(312) 555-0199"))
    with clinic.db.transaction() as conn:
        ids = dict(conn.execute(select(patients.c.external_id, patients.c.id)).all())
        waitlist.put_entry(conn, ids["P1"], waitlist.parse_preferences(
            {"days": "mon,wed", "time_from": "08:00", "time_until": "12:00",
             "therapist": "Maya Chen, DPT"}), source="test", now=NOW)
        open_id = waitlist.open_slot(conn, waitlist.NewSlot(
            NOW + timedelta(days=1), 45, therapist="Maya Chen, DPT", location="Main St"),
            source="cancellation", now=NOW)
        claimed_id = waitlist.open_slot(conn, waitlist.NewSlot(
            NOW + timedelta(days=2), 60, therapist="Sam Ortiz, PT"), source="api", now=NOW)
        assert open_id is not None and claimed_id is not None
        conn.execute(slots.update().where(slots.c.id == claimed_id).values(
            status="claimed", claimed_by_patient_id=ids["P2"], claimed_at=NOW, waves=1))
    return open_id, claimed_id


def slot_status(console: Console, slot_id: int) -> str:
    with console.clinic.db.transaction() as conn:
        return str(conn.execute(select(slots.c.status).where(slots.c.id == slot_id)).scalar())


def test_the_page_shows_who_waits_and_who_claimed_which_slot(console: Console) -> None:
    open_id, claimed_id = seed(console.clinic)
    console.sign_in("desk@clinic.example.com")
    page = console.client.get("/waitlist", headers=HTML)
    assert page.status_code == 200
    text = page.text
    assert 'href="/waitlist"' in text  # (the nav link)
    assert "Lucia Rivera" in text and "mon, wed · 08:00–12:00 · Maya Chen, DPT" in text
    assert "claimed by" in text and "Tom Rivers" in text
    assert "Tue Dec 08 09:00" in text  # the open slot's start, practice time
    assert f'action="/waitlist/slots/{claimed_id}/confirm"' in text
    assert f'action="/waitlist/slots/{open_id}/confirm"' not in text  # (only claimed)
    assert f'action="/waitlist/slots/{open_id}/withdraw"' in text


def test_a_viewer_sees_the_page_without_buttons_and_may_not_post(console: Console) -> None:
    _, claimed_id = seed(console.clinic)
    console.sign_in("viewer@clinic.example.com")
    page = console.client.get("/waitlist", headers=HTML)
    assert page.status_code == 200 and "Tom Rivers" in page.text
    assert "<button" not in page.text.split("<main", 1)[1].replace(
        'type="submit">Sign out', "")
    assert "Confirm" not in page.text and "Open slot" not in page.text
    refused = console.client.post(f"/waitlist/slots/{claimed_id}/confirm",
                                  data={"csrf_token": console.csrf()})
    assert refused.status_code == 403
    assert slot_status(console, claimed_id) == "claimed"


def test_confirm_and_withdraw_need_the_csrf_token_and_are_audited(console: Console) -> None:
    open_id, claimed_id = seed(console.clinic)
    console.sign_in("desk@clinic.example.com")
    forged = console.client.post(f"/waitlist/slots/{claimed_id}/confirm",
                                 data={"csrf_token": "nope"})
    assert forged.status_code == 403 and slot_status(console, claimed_id) == "claimed"
    token = console.csrf()
    early = console.client.post(f"/waitlist/slots/{open_id}/confirm",
                                data={"csrf_token": token})
    assert early.status_code == 409 and "is open: it cannot be confirmed" in early.text
    done = console.client.post(f"/waitlist/slots/{claimed_id}/confirm",
                               data={"csrf_token": token})
    assert done.status_code == 200 and f"Slot {claimed_id} is booked" in done.text
    assert slot_status(console, claimed_id) == "booked"
    gone = console.client.post(f"/waitlist/slots/{open_id}/withdraw",
                               data={"csrf_token": token})
    assert gone.status_code == 200 and slot_status(console, open_id) == "closed"
    assert ("staff:desk@clinic.example.com", "slot.confirm") in console.audit()
    assert ("staff:desk@clinic.example.com", "slot.withdraw") in console.audit()


def test_the_entry_form_names_each_bad_field_and_saves_a_good_entry(console: Console) -> None:
    seed(console.clinic)
    console.sign_in("desk@clinic.example.com")
    token = console.csrf()
    bad = console.client.post("/waitlist/entries", data={
        "csrf_token": token, "patient_id": "P9", "time_from": "13:00",
        "time_until": "09:00", "earliest": "2026-12-20", "latest": "2026-12-10"})
    assert bad.status_code == 422
    assert "no patient P9" in bad.text
    assert "time_until must be later than time_from" in bad.text
    assert "latest is before earliest" in bad.text
    saved = console.client.post("/waitlist/entries", data={
        "csrf_token": token, "patient_id": "P2", "day_tue": "yes", "day_thu": "yes",
        "time_from": "14:00", "location": "Main St"})
    assert saved.status_code == 200 and "P2 is on the waitlist." in saved.text
    assert "tue, thu · from 14:00 · Main St" in saved.text
    again = console.client.post("/waitlist/entries", data={
        "csrf_token": token, "patient_id": "P2", "day_tue": "yes", "day_thu": "yes",
        "time_from": "14:00", "location": "Main St"})
    assert "with these preferences already" in again.text
    off = console.client.post("/waitlist/entries/P2/withdraw", data={"csrf_token": token})
    assert off.status_code == 200 and "P2 is off the waitlist." in off.text
    with console.clinic.db.transaction() as conn:
        assert sorted(conn.execute(select(waitlist_entries.c.status)).scalars()) == [
            "waiting", "withdrawn"]
    assert [a for _, a in console.audit() if a.startswith("waitlist.")] == [
        "waitlist.put", "waitlist.put", "waitlist.withdraw"]


def test_the_slot_form_opens_a_slot_in_practice_time_and_refuses_the_past(
        console: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    seed(console.clinic)
    woken: list[str] = []
    monkeypatch.setattr("engine.wake.notify", lambda database: woken.append(database.url))
    console.sign_in("desk@clinic.example.com")
    token = console.csrf()
    past = console.client.post("/waitlist/slots", data={
        "csrf_token": token, "start": "2026-12-07T08:00", "duration_minutes": "45"})
    assert past.status_code == 422 and "start is in the past" in past.text
    zero = console.client.post("/waitlist/slots", data={
        "csrf_token": token, "start": "2026-12-09T10:30", "duration_minutes": "0"})
    assert zero.status_code == 422 and "duration_minutes must be" in zero.text
    assert woken == []
    made = console.client.post("/waitlist/slots", data={
        "csrf_token": token, "start": "2026-12-09T10:30", "duration_minutes": "30",
        "therapist": "Maya Chen, DPT"})
    assert made.status_code == 200 and "is open: the waitlist is offered it" in made.text
    with console.clinic.db.transaction() as conn:
        row = conn.execute(select(slots).order_by(slots.c.id.desc())).first()
    assert row is not None
    assert (row.start_at.isoformat(), row.source, row.status) == (
        "2026-12-09T16:30:00+00:00", "console", "open")
    assert woken == [console.clinic.db.url]


# --------------------------------------------------------------------------- browser


@pytest.fixture
def site(database_url: str, tmp_path: Path) -> Iterator[str]:
    clinic = console_clinic(database_url, tmp_path, NOW, PASSWORD, {
        "desk@clinic.example.com": "front-desk", "viewer@clinic.example.com": "viewer"})
    seed(clinic)
    with serving_console(clinic) as url:
        yield url
    clinic.close()


@pytest.mark.browser
def test_the_front_desk_confirms_a_claim_in_the_browser_and_a_viewer_sees_no_buttons(
        browser: Browser, site: str, database_url: str) -> None:
    shots = database_url.startswith("sqlite")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{site}/login?next=/waitlist")
    page.get_by_label("Email").fill("desk@clinic.example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Waitlist")).to_be_visible()
    page.get_by_role("link", name="Waitlist").first.click()
    expect(page.get_by_role("table").first).to_contain_text("claimed by Tom Rivers")
    expect(page.get_by_text("mon, wed · 08:00–12:00 · Maya Chen, DPT")).to_be_visible()
    if shots:
        page.screenshot(path=screenshot_path("waitlist-1280"), full_page=True)
    page.get_by_role("button", name="Confirm").click()
    expect(page.get_by_role("status")).to_contain_text("is booked")
    page.get_by_label("Patient id").fill("P2")
    page.get_by_label("Tue").check()
    page.get_by_label("From (time of day)").fill("14:00")
    page.get_by_role("button", name="Save entry").click()
    expect(page.get_by_role("status")).to_contain_text("P2 is on the waitlist.")
    if shots:
        page.screenshot(path=screenshot_path("waitlist-after-confirm-1280"), full_page=True)
    page.get_by_role("button", name="Sign out").click()

    page.set_viewport_size({"width": 390, "height": 800})
    page.goto(f"{site}/login?next=/waitlist")
    page.get_by_label("Email").fill("viewer@clinic.example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Waitlist")).to_be_visible()
    expect(page.get_by_role("button", name="Withdraw")).to_have_count(0)
    expect(page.get_by_role("button", name="Save entry")).to_have_count(0)
    if shots:
        page.screenshot(path=screenshot_path("waitlist-viewer-390"), full_page=True)
    page.close()

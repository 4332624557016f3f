"""The console in a real browser (Debian's Chromium through Playwright): sign in, see the
day, sign out — at a desk's 1280 px and on a phone. Screenshots: screenshots/*.png."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from engine import clock, staff
from tests.browser import console_clinic, screenshot_path, serving_console
from tests.support import (
    Clinic,
    appointment,
    contact,
    patient,
)

NOW = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)
PASSWORD = "a long and private passphrase"
pytestmark = pytest.mark.browser


@pytest.fixture
def site(database_url: str, tmp_path: Path) -> Iterator[str]:
    clinic = console_clinic(database_url, tmp_path, NOW, PASSWORD, {
        "desk@clinic.example.com": "front-desk", "manager@clinic.example.com": "manager"})
    clinic.patients(patient("P1004", first_name="Lucia", last_name="Rivera",
                            phone="(312) 555-0142", date_of_birth="2012-03-04"),
                    patient("P2001", first_name="Tom", last_name="Rivers",
                            phone="(312) 555-0199"))
    clinic.contacts(contact("C1", "P1004", first_name="Marta", phone="(312) 555-0177"))
    clinic.appointments(appointment("A1", "P1004",
                                    start=(NOW + timedelta(days=3)).isoformat()))
    clinic.tick()
    with serving_console(clinic) as url:
        yield url
    clinic.close()


def sign_in(page: Page, url: str, password: str = PASSWORD,
            email: str = "desk@clinic.example.com") -> None:
    page.goto(f"{url}/")
    expect(page).to_have_url(f"{url}/login?next=/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


@pytest.mark.parametrize("width", [1280, 390])
def test_sign_in_see_the_day_and_sign_out(browser: Browser, site: str, width: int,
                                         database_url: str) -> None:
    page = browser.new_page(viewport={"width": width, "height": 800})
    page.goto(f"{site}/login")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    if database_url.startswith("sqlite"):
        page.screenshot(path=screenshot_path(f"login-{width}"), full_page=True)

    sign_in(page, site, "a wrong passphrase!")
    expect(page.get_by_role("alert")).to_contain_text("do not match an active account")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()

    expect(page).to_have_url(f"{site}/")
    expect(page.get_by_role("heading", name="Today")).to_be_visible()
    expect(page.get_by_text("desk@clinic.example.com")).to_be_visible()
    expect(page.get_by_role("list", name="What needs a person")).to_contain_text("replies to read")
    if database_url.startswith("sqlite"):
        page.screenshot(path=screenshot_path(f"today-{width}"), full_page=True)
    session = next(c for c in page.context.cookies() if c["name"] == "tp_session")
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Lax"

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{site}/login")
    page.goto(f"{site}/")
    expect(page).to_have_url(f"{site}/login?next=/")
    page.close()


def test_find_a_patient_read_the_timeline_and_reveal_the_number(
        browser: Browser, site: str, database_url: str) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    sign_in(page, site)
    page.get_by_role("link", name="Patients").click()
    page.get_by_label("Find a patient by name, id or phone").fill("rive")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("table")).to_contain_text("Tom Rivers")
    if database_url.startswith("sqlite"):
        page.screenshot(path=screenshot_path("patients-search-1280"), full_page=True)
    page.get_by_role("link", name="Lucia Rivera").click()
    expect(page.get_by_role("heading", name="Lucia Rivera")).to_be_visible()
    expect(page.get_by_text("Minor: messages go to a parent or guardian")).to_be_visible()
    expect(page.get_by_text("+1••••••••42")).to_be_visible()
    expect(page.get_by_text("It is planned for").first).to_be_visible()
    if database_url.startswith("sqlite"):
        page.screenshot(path=screenshot_path("patient-timeline-1280"), full_page=True)
    page.get_by_role("button", name="Reveal full numbers and emails").click()
    expect(page.get_by_text("+13125550142")).to_be_visible()
    page.close()


def test_reply_from_the_inbox(browser: Browser, site: str, database_url: str,
                              tmp_path: Path) -> None:
    from engine.replies import record_inbound
    from engine.settings import load_settings
    from engine.store.database import open_database

    settings = load_settings(tmp_path / "touchpoint.toml", {"database.url": database_url})
    database = open_database(database_url)
    clock.set_now(NOW + timedelta(minutes=20))
    with database.transaction() as conn:
        record_inbound(conn, settings, provider="twilio", message_id="SM1",
                       from_number="+13125550199", to_number="+13125550100",
                       body="Can I bring my son along?", now=clock.now())
        record_inbound(conn, settings, provider="twilio", message_id="SM2",
                       from_number="+13125550142", to_number="+13125550100",
                       body="please don't text me anymore", now=clock.now())
    database.dispose()
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    sign_in(page, site)
    page.get_by_role("link", name="Inbox").click()
    expect(page.get_by_text("Possible opt-out: read it")).to_be_visible()
    if database_url.startswith("sqlite"):
        page.screenshot(path=screenshot_path("inbox-1280"), full_page=True)
    reply = page.get_by_role("article").filter(has_text="Tom Rivers")
    reply.get_by_label("Reply by text").fill("Of course, see you Thursday!")
    reply.get_by_role("button", name="Send reply").click()
    expect(page.get_by_role("status")).to_contain_text("Reply sent")
    expect(page.get_by_text("Of course, see you Thursday!")).to_be_visible()
    page.close()


def test_resolve_a_case(browser: Browser, site: str, database_url: str) -> None:
    from engine import cases
    from engine.settings import load_settings
    from engine.store.database import open_database
    from engine.store.records import patient_by_external_id

    database = open_database(database_url)
    with database.transaction() as conn:
        found = patient_by_external_id(conn, "P2001")
        assert found is not None
        case_id = cases.open_case(conn, load_settings(None, {"database.url": database_url,
                                                             "practice.timezone": "UTC"}),
                                  patient_id=found.id, cause="complaint", key="browser:1",
                                  detail="Said the front desk was rude", now=NOW)
    database.dispose()
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    sign_in(page, site)
    page.get_by_role("link", name="Cases").click()
    page.get_by_role("link", name=f"Case {case_id}").click()
    page.get_by_label("Assign to").fill("Dana")
    page.get_by_role("button", name="Assign").click()
    expect(page.get_by_role("status")).to_contain_text("Assigned to Dana.")
    page.get_by_label("Resolve: what was done").fill("Called him and apologised")
    if database_url.startswith("sqlite"):
        page.screenshot(path=screenshot_path("case-1280"), full_page=True)
    page.get_by_role("button", name="Resolve case").click()
    expect(page.get_by_role("status")).to_contain_text("Resolved")
    expect(page.get_by_text("Called him and apologised").first).to_be_visible()
    page.close()


def test_edit_a_template_see_the_error_at_its_line_fix_it_and_publish(
        browser: Browser, site: str, database_url: str, tmp_path: Path) -> None:
    sms = tmp_path / "message_templates/pre-visit/three-days-before.sms.j2"
    original = sms.read_text(encoding="utf-8")
    shoot = database_url.startswith("sqlite")
    desk = browser.new_page(viewport={"width": 1280, "height": 900})
    sign_in(desk, site)
    expect(desk.get_by_role("link", name="Edit", exact=True)).to_have_count(0)
    desk.goto(f"{site}/edit/message_templates/pre-visit/three-days-before.sms.j2")
    expect(desk.get_by_role("heading", name="Not for your role")).to_be_visible()
    desk.close()

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    sign_in(page, site, email="manager@clinic.example.com")
    page.get_by_role("link", name="Edit", exact=True).click()
    page.get_by_role("link", name="message_templates/pre-visit/three-days-before.sms.j2").click()
    source = page.get_by_label("Text", exact=True)
    source.fill("\n" + original.replace("recipient.first_name", "recipient.frist_name"))
    problems = page.get_by_role("list", name="Problems in this file")
    expect(problems).to_contain_text("line 2")
    expect(problems).to_contain_text("frist_name")
    expect(page.locator(".gutter .bad")).to_have_count(1)
    expect(page.locator(".gutter .bad")).to_have_text("2")
    if shoot:
        page.screenshot(path=screenshot_path("editor-error-1280"), full_page=True)

    source.fill(original.replace("Reply C to confirm", "Free parking out back. Reply C to "
                                                       "confirm"))
    expect(page.locator("#preview .sms-body").first).to_contain_text("Free parking out back")
    expect(page.locator(".gutter .bad")).to_have_count(0)
    if shoot:  # (the emails' sandboxed frames paint a moment after the preview arrives)
        for frame in range(2):
            expect(page.frame_locator("iframe.email-html").nth(frame).locator("p").first
                   ).to_be_visible()
        page.screenshot(path=screenshot_path("editor-preview-1280"), full_page=True)
    page.get_by_role("button", name="Save draft").click()
    expect(page.get_by_role("status")).to_contain_text("Draft saved")
    assert sms.read_text(encoding="utf-8") == original  # a draft is not live

    page.get_by_role("link", name="Review and publish").click()
    expect(page.get_by_role("heading", name="What publishing changes in the next 14 days")
           ).to_be_visible()
    expect(page.get_by_role("table")).to_contain_text("wording")
    if shoot:
        page.screenshot(path=screenshot_path("publish-1280"), full_page=True)
    page.get_by_label("What changed, and why").fill("parking directions")
    page.get_by_role("button", name="Publish").click()
    expect(page.get_by_role("status")).to_contain_text("Published version 1")
    assert "Free parking out back. Reply C to confirm" in sms.read_text(encoding="utf-8")
    page.close()


def test_a_journey_on_its_timeline(browser: Browser, site: str, database_url: str) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    sign_in(page, site)
    page.get_by_role("link", name="Journeys", exact=True).click()
    page.get_by_role("link", name="pre-visit").click()
    expect(page.get_by_text("the visit (appointment.booked)")).to_be_visible()
    expect(page.get_by_text("Will reach").first).to_be_visible()
    if database_url.startswith("sqlite"):
        page.screenshot(path=screenshot_path("journey-1280"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 800})
    if database_url.startswith("sqlite"):
        page.screenshot(path=screenshot_path("journey-390"), full_page=True)
    page.close()


def test_the_dashboard_on_a_week_of_the_demo(browser: Browser, database_url: str,
                                             tmp_path: Path) -> None:
    from engine.demo import run_demo
    from engine.demo.generate import START

    clock.set_now(NOW)
    clinic = Clinic(database_url, tmp_path)
    with clinic.db.transaction() as conn:
        staff.add_user(conn, "desk@clinic.example.com", "front-desk", PASSWORD, NOW)
    run_demo(clinic.db, clinic.settings, clinic.definitions, days=14)
    with serving_console(clinic) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        sign_in(page, url)
        page.goto(f"{url}/dashboard?since={START:%Y-%m-%d}")
        expect(page.get_by_role("heading", name="Messages per day")).to_be_visible()
        if database_url.startswith("sqlite"):
            page.screenshot(path=screenshot_path("dashboard-1280"), full_page=True)
        page.locator("svg.bars a").first.click()
        expect(page.get_by_role("heading", name="Log")).to_be_visible()
        expect(page.get_by_role("table")).to_contain_text("sent")
        page.close()
    clinic.close()

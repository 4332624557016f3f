"""`touchpoint serve` follows hand edits of schedules/ and message_templates/ (a manager's
editor, a `git pull`): the next request after the poll interval runs the new definitions,
and an edit that fails a check leaves the last good ones running and shown, its problems
on the journey and editor pages (engine/live_definitions.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import clock, last_good
from engine.live_definitions import POLL
from tests.console_support import HTML, NOW, Console


@pytest.fixture
def serving(database_url: str, tmp_path: Path) -> Iterator[Console]:
    rig = Console(database_url, tmp_path, follow=True)
    rig.sign_in("manager@clinic.example.com")
    yield rig
    rig.close()


def welcome_page(rig: Console) -> str:
    page = rig.client.get("/journeys/welcome", headers=HTML)
    assert page.status_code == 200
    return page.text


def test_an_edit_on_disk_shows_on_the_next_request_after_the_poll(serving: Console) -> None:
    path = serving.schedules / "welcome.yaml"
    path.write_text(path.read_text().replace("id: what-to-expect", "id: what-to-bring"),
                    encoding="utf-8")
    assert "what-to-bring" not in welcome_page(serving)  # (read at most once every POLL)

    clock.set_now(NOW + POLL)
    assert "what-to-bring" in welcome_page(serving)
    # the webhooks and the API run the same definitions as the pages
    assert serving.services.definitions.journeys["welcome"].step("what-to-bring")
    # ... and they are kept as the last good ones, as the daemon keeps them
    kept = last_good.restore(serving.clinic.db, serving.clinic.settings, clock.now())
    assert kept is not None and kept.definitions.journeys["welcome"].step("what-to-bring")
    kept.remove()


def test_a_template_edit_is_followed_too(serving: Console) -> None:
    before = serving.services.definitions
    path = serving.templates / "welcome" / "welcome.sms.j2"
    path.write_text("Hello from the front desk, {{ patient.first_name | shout }}!\n",
                    encoding="utf-8")
    clock.set_now(NOW + POLL)
    editor = serving.client.get("/edit", headers=HTML).text
    assert "welcome.sms.j2:1: unknown filter &#39;shout&#39;" in editor  # as the daemon checks
    assert serving.services.definitions is before

    path.write_text("Hello from the front desk, {{ patient.first_name }}!\n",
                    encoding="utf-8")
    clock.set_now(NOW + 2 * POLL)
    assert "still running" not in serving.client.get("/edit", headers=HTML).text
    assert serving.services.definitions is not before


def test_a_broken_edit_keeps_the_last_good_definitions_and_says_why(serving: Console) -> None:
    path = serving.schedules / "welcome.yaml"
    good = path.read_text()
    path.write_text(good.replace("trigger: patient.created", "trigger: patient.creatd"),
                    encoding="utf-8")
    clock.set_now(NOW + POLL)
    text = welcome_page(serving)
    assert "patient.created" in text  # the last good welcome journey is still served
    assert "last good journeys and templates are still running" in text
    assert "unknown trigger event" in text and "patient.creatd" in text
    editor = serving.client.get("/edit", headers=HTML).text
    assert "unknown trigger event" in editor
    assert serving.services.definitions.journeys["welcome"].triggers[0].event \
        == "patient.created"

    path.write_text(good, encoding="utf-8")  # fixed: picked up, and the warning is gone
    clock.set_now(NOW + 2 * POLL)
    assert "still running" not in welcome_page(serving)
    assert serving.services.live.problems == ()


def test_without_follow_the_files_are_not_read_on_requests(console: Console) -> None:
    path = console.schedules / "welcome.yaml"
    path.write_text(path.read_text().replace("id: what-to-expect", "id: what-to-bring"),
                    encoding="utf-8")
    console.sign_in("manager@clinic.example.com")
    clock.set_now(NOW + POLL)
    assert "what-to-bring" not in welcome_page(console)

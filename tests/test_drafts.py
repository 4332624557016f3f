"""Drafts of journeys and templates: checked, forecast against what runs now, published
to the files with a version kept, and any version put back."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine import clock, drafts
from engine.errors import UserError
from tests.support import (
    LIBRARY_SCHEDULES,
    LIBRARY_TEMPLATES,
    Clinic,
    appointment,
    contact,
    patient,
)

NOW = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)
SMS = "message_templates/pre-visit/three-days-before.sms.j2"
SCHEDULE = "schedules/pre-visit.yaml"


@pytest.fixture
def clinic(database_url: str, tmp_path: Path) -> Iterator[Clinic]:
    schedules, templates = tmp_path / "schedules", tmp_path / "message_templates"
    shutil.copytree(LIBRARY_SCHEDULES, schedules)
    shutil.copytree(LIBRARY_TEMPLATES, templates)
    clock.set_now(NOW)
    found = Clinic(database_url, tmp_path, schedules=schedules, templates=templates)
    found.patients(patient("P1"))
    found.appointments(appointment("A1", "P1", start=(NOW + timedelta(days=4)).isoformat()))
    found.tick()
    yield found
    found.close()


def test_a_misspelt_field_is_an_error_at_its_line_and_blocks_publishing(
        clinic: Clinic) -> None:
    original = drafts.read_file(clinic.settings, SMS)
    assert original is not None
    broken = "\n" + original.replace("recipient.first_name", "recipient.frist_name")
    with clinic.db.transaction() as conn:
        drafts.save_draft(conn, clinic.settings, SMS, broken, "dana@clinic.example.com", NOW)
    found = drafts.check(clinic.settings, {SMS: broken}, NOW).of(SMS)
    assert [(p.line, p.severity) for p in found][:1] == [(2, "error")]
    assert "frist_name" in found[0].message and "first_name" in found[0].fix
    with pytest.raises(UserError, match="must be fixed before publishing"), \
            clinic.db.transaction() as conn:
        drafts.publish(conn, clinic.settings, "dana@clinic.example.com", NOW)
    assert drafts.read_file(clinic.settings, SMS) == original  # nothing written


def test_publishing_writes_the_files_and_keeps_a_version_to_put_back(clinic: Clinic) -> None:
    original = drafts.read_file(clinic.settings, SMS)
    assert original is not None
    edited = original.replace("Reply C to confirm", "Free parking behind us. Reply C to confirm")
    with clinic.db.transaction() as conn:
        assert drafts.save_draft(conn, clinic.settings, SMS, edited, "dana", NOW) is not None
        assert drafts.save_draft(conn, clinic.settings, SCHEDULE,
                                 drafts.read_file(clinic.settings, SCHEDULE) or "", "dana",
                                 NOW) is None  # unchanged: no draft
        published = drafts.publish(conn, clinic.settings, "dana", NOW, note="parking")
    assert drafts.read_file(clinic.settings, SMS) == edited
    with clinic.db.transaction() as conn:
        assert drafts.drafts(conn) == {}
        [kept] = drafts.versions(conn)
    assert kept.id == published.id and kept.author == "dana" and kept.note == "parking"
    assert kept.files == {SMS: {"before": original, "after": edited}}

    with clinic.db.transaction() as conn:
        assert drafts.restore(conn, clinic.settings, kept.id, "before", "sam", NOW) == [SMS]
        drafts.publish(conn, clinic.settings, "sam", NOW)
    assert drafts.read_file(clinic.settings, SMS) == original
    with clinic.db.transaction() as conn:
        assert [v.author for v in drafts.versions(conn)] == ["sam", "dana"]


def test_a_hand_edit_after_the_draft_began_is_not_overwritten(clinic: Clinic) -> None:
    original = drafts.read_file(clinic.settings, SMS) or ""
    with clinic.db.transaction() as conn:
        drafts.save_draft(conn, clinic.settings, SMS, original + " ", "dana", NOW)
    drafts.real_path(clinic.settings, SMS).write_text(original + "  (by hand)",
                                                      encoding="utf-8")
    with pytest.raises(UserError, match="changed on disk since this draft began"), \
            clinic.db.transaction() as conn:
        drafts.publish(conn, clinic.settings, "dana", NOW)
    assert drafts.read_file(clinic.settings, SMS) == original + "  (by hand)"


def test_the_forecast_shows_what_a_draft_moves_and_rewords(clinic: Clinic) -> None:
    schedule = drafts.read_file(clinic.settings, SCHEDULE) or ""
    moved = schedule.replace('at: "10:00"', 'at: "09:00"')
    changes = drafts.forecast_changes(clinic.db, clinic.settings, clinic.definitions,
                                      {SCHEDULE: moved}, NOW)
    [change] = [c for c in changes if c.step == "three-days-before"]
    assert change.kind == "changed" and "at" in change.what
    assert change.before and change.after
    assert change.after["at"] < change.before["at"]  # an hour earlier
    wording = (drafts.read_file(clinic.settings, SMS) or "").replace("Reply C", "Text C")
    reworded = drafts.forecast_changes(clinic.db, clinic.settings, clinic.definitions,
                                       {SMS: wording}, NOW)
    assert [(c.step, c.what) for c in reworded] == [("three-days-before", ("digest",))]
    assert drafts.summary(reworded)["reworded"] == 1


def test_only_files_inside_the_two_folders(clinic: Clinic) -> None:
    for bad in ("schedules/../touchpoint.toml", "/etc/passwd", "schedules/x.txt",
                "engine/cli.py", "message_templates/../../x.j2", "schedules"):
        with pytest.raises(UserError):
            drafts.real_path(clinic.settings, bad)
    assert SMS in drafts.files(clinic.settings)
    assert SCHEDULE in drafts.files(clinic.settings)


def test_an_edit_is_checked_and_previewed_for_the_sample_and_a_real_minor(
        clinic: Clinic) -> None:
    clinic.patients(patient("P2", first_name="Lucia", date_of_birth="2014-01-02",
                            phone="(312) 555-0142"))
    clinic.contacts(contact("C1", "P2", first_name="Marta", phone="(312) 555-0177"))
    clinic.appointments(appointment("A2", "P2", start=(NOW + timedelta(days=4)).isoformat()))
    original = drafts.read_file(clinic.settings, SMS) or ""
    with clinic.db.transaction() as conn:
        typo = drafts.try_edit(conn, clinic.settings, SMS,
                               original.replace("recipient.first_name", "recipient.frist_name"),
                               NOW)
        assert [(p.line, p.code) for p in typo.problems][:1] == [(1, "undefined")]
        assert typo.steps == [("pre-visit", "three-days-before")]
        fixed = drafts.try_edit(conn, clinic.settings, SMS,
                                original.replace("Reply C", "Free parking. Reply C"), NOW)
        assert [p for p in fixed.problems if p.severity == "error"] == []
        [sample] = fixed.previews
        texts = [m for m in sample.messages if m.channel == "sms" and m.language == "en"]
        assert "Free parking. Reply C to confirm" in texts[0].body
        assert texts[0].segments is not None and texts[0].segments["segments"] >= 1
        [minor] = drafts.try_edit(conn, clinic.settings, SMS, original, NOW, "P2").previews
    assert "parent Marta" in minor.recipient
    assert "Hi Marta, Lucia's visit is" in minor.messages[0].body


def test_the_field_picker_lists_what_templates_may_use(clinic: Clinic) -> None:
    fields = drafts.template_fields(clinic.settings, NOW)
    assert "first_name" in fields["patient"]
    assert "start" in fields["appointment"]
    assert "name" in fields["practice"]

"""The practice manager's tools: validate, segments, preview, test-send, forecast, edits.

Structural YAML/Jinja errors are covered in tests/test_definitions.py; here the checks of
engine/validate.py (links, language variants, rendering without an appointment, SMS
warnings), the commands a manager runs before and after editing, and what an edit of
schedules/ or message_templates/ does to touch points already planned.

Practice timezone: America/Chicago (CST, UTC-6, after DST ended on 2026-11-01).
Monday 2026-11-02 14:00Z is 08:00 in Chicago and 06:00 in Los Angeles.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from freezegun import freeze_time
from sqlalchemy import select

from engine import clock
from engine.cli import cli
from engine.errors import TransientChannelError
from engine.outcomes import Status
from engine.preview import send_test
from engine.store.database import open_database
from engine.store.schema import events, history, touch_points
from engine.touch_point_log import summary
from tests.support import (
    LIBRARY_SCHEDULES,
    LIBRARY_TEMPLATES,
    ONE_REMINDER_JOURNEY,
    Clinic,
    appointment,
    contact,
    patient,
    write_config,
    write_csv,
)

NOW = "2026-11-02T14:00:00Z"  # Mon 08:00 CST


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def write_files(folder: Path, files: Mapping[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    return folder


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} is not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def copy_library(folder: Path) -> tuple[Path, Path]:
    """Editable copies of the shipped schedules/ and message_templates/."""
    schedules = folder / "schedules"
    templates = folder / "message_templates"
    shutil.copytree(LIBRARY_SCHEDULES, schedules)
    shutil.copytree(LIBRARY_TEMPLATES, templates)
    return schedules, templates


def run_cli(*args: str, db: str | None = None, schedules: Path = LIBRARY_SCHEDULES,
            templates: Path = LIBRARY_TEMPLATES, now: str | None = NOW,
            env: Mapping[str, str] | None = None) -> Result:
    """`touchpoint [--db] --schedules --templates [--now] ARGS` in the test's folder."""
    head = ["--schedules", str(schedules), "--templates", str(templates)]
    if db is not None:
        head = ["--db", db, *head]
    if now is not None:
        head += ["--now", now]
    return CliRunner().invoke(cli, [*head, *args], env=dict(env or {}))


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --------------------------------------------------------------------------- validate

# A one-step journey about an appointment, and one that starts when a patient is added.
REMINDERS = ONE_REMINDER_JOURNEY
HELLO = """\
version: 1
journey: hello
trigger: patient.created
steps:
  - id: hi
    when: immediately
    channels: [email]
    template: hello/hi
"""
PROMO = """\
version: 1
journey: promo
purpose: marketing
trigger: {event: patient.lapsed, after: 30d}
steps:
  - id: offer
    when: {days_after: 30, at: "11:00"}
    channels: [sms]
    template: promo/offer
"""
# Clean: one GSM-7 segment, practice name and phone, STOP.
GOOD_SMS = ("{{ practice.name }}: see you at {{ appointment.start | time }}, "
            "{{ patient.first_name }}. {{ practice.phone }}. STOP to opt out\n")
GOOD_ES_SMS = ("{{ practice.name }}: le esperamos a las {{ appointment.start | time }}, "
               "{{ patient.first_name }}. {{ practice.phone }}. STOP para salir\n")


# Templates the engine itself needs in every library (replies to texts, staff alerts).
SYSTEM_TEMPLATES = ("replies", "staff", "referrals")


def validate(tmp_path: Path, journeys: Mapping[str, str], templates: Mapping[str, str],
             config_extra: str = "") -> tuple[int, list[dict[str, Any]], Path]:
    """Validate a small library: (exit code, its own findings from --json, templates folder).

    The shipped system templates are copied in so the library is complete; findings
    about them are left out (the shipped-library test covers those).
    """
    write_config(tmp_path, config_extra)
    schedules = write_files(tmp_path / "schedules", journeys)
    folder = write_files(tmp_path / "templates", templates)
    for name in SYSTEM_TEMPLATES:
        if (LIBRARY_TEMPLATES / name).is_dir() and not (folder / name).exists():
            shutil.copytree(LIBRARY_TEMPLATES / name, folder / name)
    result = run_cli("validate", "--json", schedules=schedules, templates=folder)
    report = json.loads(result.stdout)
    assert report["errors"] == sum(d["severity"] == "error" for d in report["diagnostics"])
    assert report["ok"] is (report["errors"] == 0)
    system = tuple(str(folder / name) for name in SYSTEM_TEMPLATES)
    own = [d for d in report["diagnostics"] if not d["file"].startswith(system)]
    return result.exit_code, own, folder


def finding(file: Path, line: int | None, severity: str, code: str, message: str,
            fix: str) -> dict[str, Any]:
    return {"file": str(file), "line": line, "severity": severity, "code": code,
            "message": message, "fix": fix}


def test_the_shipped_library_validates_with_no_errors_and_no_warnings(tmp_path: Path) -> None:
    write_config(tmp_path)

    text = run_cli("validate")
    report = as_json(run_cli("validate", "--json"))

    assert text.exit_code == 0, text.output
    assert text.output == (
        "Limits (caps.mode = consent): not forecast — no database yet at touchpoint.db "
        "(import patients and appointments first).\n"
        f"{len(report['journeys'])} journeys, 0 error(s), 0 warning(s).\n")
    assert report["diagnostics"] == []
    assert (report["ok"], report["errors"], report["warnings"]) == (True, 0, 0)
    assert {"follow-up", "pre-visit", "welcome", "win-back"} <= set(report["journeys"])


def test_a_small_clean_library_validates_clean(tmp_path: Path) -> None:
    """The fixtures below each break one thing of this library."""
    code, found, _ = validate(tmp_path, {"reminders.yaml": REMINDERS}, {
        "reminders/two-hours-before.sms.j2": GOOD_SMS,
        "reminders/two-hours-before.es.sms.j2": GOOD_ES_SMS})
    assert (code, found) == (0, [])


def test_a_broken_default_is_one_error_not_a_list_of_variant_warnings(
        tmp_path: Path) -> None:
    """Its fields cannot be read until it compiles, so its variants are compared then."""
    code, found, folder = validate(tmp_path, {"reminders.yaml": REMINDERS}, {
        "reminders/two-hours-before.sms.j2": GOOD_SMS + "{{ patient.first_name | nosuch }}\n",
        "reminders/two-hours-before.es.sms.j2": GOOD_ES_SMS})
    assert code == 1
    assert [(d["file"], d["severity"]) for d in found] == [
        (str(folder / "reminders/two-hours-before.sms.j2"), "error")]
    assert "unknown filter 'nosuch'" in found[0]["message"]


def test_a_library_that_offers_waitlist_slots_needs_the_answers_to_a_yes(
        tmp_path: Path) -> None:
    """The small library above sends no offers, so it needs no waitlist answers; with
    the shipped waitlist journey but only its offer template, each missing answer is
    named."""
    waitlist = (LIBRARY_TEMPLATES.parent / "schedules" / "waitlist.yaml").read_text()
    code, found, folder = validate(tmp_path, {"reminders.yaml": REMINDERS,
                                              "waitlist.yaml": waitlist}, {
        "reminders/two-hours-before.sms.j2": GOOD_SMS,
        "reminders/two-hours-before.es.sms.j2": GOOD_ES_SMS,
        "waitlist/offer.sms.j2": (LIBRARY_TEMPLATES / "waitlist/offer.sms.j2").read_text()})
    assert code == 1
    assert [(d["file"], d["code"]) for d in found] == [
        (str(folder / f"waitlist/{name}.sms.j2"), "missing-template")
        for name in ("claimed", "booked", "taken")]


def test_a_practice_link_that_is_not_configured_is_an_error_saying_where_to_set_it(
        tmp_path: Path) -> None:
    hi = ("{% block subject %}Welcome{% endblock %}\n"
          "{% block text %}\n"
          "Hi {{ patient.first_name }},\n"
          "Parking: {{ practice.links.parking }}\n"
          "{{ practice.name }}\n"
          "{% endblock %}\n")

    code, found, templates = validate(tmp_path, {"hello.yaml": HELLO}, {"hello/hi.email.j2": hi})

    assert code == 1
    assert found == [finding(
        templates / "hello/hi.email.j2", 4, "error", "missing-link",
        "practice.links.parking is not set",
        'add parking = "https://…" under [practice.links] in touchpoint.toml')]


def test_a_missing_link_is_reported_at_the_line_that_uses_it_not_at_prose(
        tmp_path: Path) -> None:
    hi = ("{% block subject %}Welcome{% endblock %}\n"
          "{% block text %}\n"
          "Hi {{ patient.first_name }}, there is free parking behind the clinic.\n"
          "Map: {{ practice.links.parking }}\n"
          "{% endblock %}\n")

    code, found, _ = validate(tmp_path, {"hello.yaml": HELLO}, {"hello/hi.email.j2": hi})

    assert code == 1
    assert [(d["code"], d["line"]) for d in found] == [("missing-link", 4)]


def test_a_language_variant_that_leaves_out_a_variable_of_its_default_is_an_error(
        tmp_path: Path) -> None:
    no_time = ("{{ practice.name }}: le esperamos hoy, {{ patient.first_name }}. "
               "{{ practice.phone }}. STOP para salir\n")
    schedules = tmp_path / "schedules"

    code, found, templates = validate(tmp_path, {"reminders.yaml": REMINDERS}, {
        "reminders/two-hours-before.sms.j2": GOOD_SMS,
        "reminders/two-hours-before.es.sms.j2": no_time})
    text = run_cli("validate", schedules=schedules, templates=templates)

    variant = templates / "reminders/two-hours-before.es.sms.j2"
    assert code == 1
    assert found == [finding(
        variant, 1, "error", "variant-missing-variable",
        "the es variant leaves out {{ appointment.start }}, which "
        "reminders/two-hours-before.sms.j2 uses",
        "add it, so every language gets the same information")]
    assert text.exit_code == 1
    assert [line for line in text.stderr.splitlines() if line.startswith(str(variant))] == [
        f"{variant}:1: the es variant leaves out {{{{ appointment.start }}}}, which "
        "reminders/two-hours-before.sms.j2 uses — add it, so every language gets the same "
        "information"]


def test_a_language_variant_must_show_the_appointment_time_and_date_its_default_shows(
        tmp_path: Path) -> None:
    english = ("{{ practice.name }}: see you {{ appointment.start | short_date }} at\n"
               "{{ appointment.start | time }}, {{ patient.first_name }}. {{ practice.phone }}. "
               "STOP to opt out\n")
    no_time = ("{{ practice.name }}: {{ patient.first_name }}, le esperamos el\n"
               "{{ appointment.start | short_date }}. {{ practice.phone }}. STOP para salir\n")
    no_date = ("{{ practice.name }}: {{ patient.first_name }}, le esperamos a las\n"
               "{{ appointment.start | time }}. {{ practice.phone }}. STOP para salir\n")
    both = no_time.replace("short_date }}", "datetime }}")

    def findings(spanish: str) -> tuple[int, list[dict[str, Any]], Path]:
        return validate(tmp_path, {"reminders.yaml": REMINDERS}, {
            "reminders/two-hours-before.sms.j2": english,
            "reminders/two-hours-before.es.sms.j2": spanish})

    code, found, templates = findings(no_time)
    variant = templates / "reminders/two-hours-before.es.sms.j2"
    assert code == 1
    assert found == [finding(
        variant, 2, "error", "variant-missing-moment",
        "the es variant does not show the time of {{ appointment.start }}, which "
        "reminders/two-hours-before.sms.j2:2 shows",
        "add {{ appointment.start | time }}, so every language says when")]
    code, found, _ = findings(no_date)
    assert (code, [(d["code"], d["line"], d["message"]) for d in found]) == (1, [(
        "variant-missing-moment", 2, "the es variant does not show the date of "
        "{{ appointment.start }}, which reminders/two-hours-before.sms.j2:1 shows")])
    assert findings(both)[:2] == (0, [])  # `| datetime` shows both


def test_a_language_variant_using_a_field_its_default_does_not_is_a_warning(
        tmp_path: Path) -> None:
    therapist = GOOD_ES_SMS.replace("le esperamos", "\n{{ appointment.therapist }} le espera")

    code, found, templates = validate(tmp_path, {"reminders.yaml": REMINDERS}, {
        "reminders/two-hours-before.sms.j2": GOOD_SMS,
        "reminders/two-hours-before.es.sms.j2": therapist})

    assert code == 0
    assert found == [finding(
        templates / "reminders/two-hours-before.es.sms.j2", 2, "warning",
        "variant-extra-variable", "the es variant uses {{ appointment.therapist }}, which "
        "reminders/two-hours-before.sms.j2 does not",
        "use the same fields in both: add it to reminders/two-hours-before.sms.j2 too, or "
        "take it out here")]


def test_sms_segments_are_counted_for_an_accented_sample_patient_too(tmp_path: Path) -> None:
    """Lucía Fernández: her accented name costs no segments (an SMS that would go UCS-2
    for it is sent with Lucia, Fernandez); her longer last name can."""
    # "Riverside Physical Therapy: see you at 10:30 AM, Ms Rivera. (312) 555-0199. Please
    # bring your exercise log and comfortable shoes. Free parking. STOP to opt out", 159
    fits = GOOD_SMS.replace("STOP to opt out", "Please bring your exercise log and "
                            "comfortable shoes. STOP to opt out")
    with_last_name = fits.replace("{{ patient.first_name }}", "Ms {{ patient.last_name }}") \
        .replace("shoes.", "shoes. Free parking.")

    code, found, templates = validate(tmp_path, {"reminders.yaml": REMINDERS},
                                      {"reminders/two-hours-before.sms.j2": fits})
    assert (code, found) == (0, [])  # Lucía's would be 2 segments in UCS-2
    code, found, templates = validate(tmp_path, {"reminders.yaml": REMINDERS},
                                      {"reminders/two-hours-before.sms.j2": with_last_name})
    assert (code, found) == (0, [finding(
        templates / "reminders/two-hours-before.sms.j2", 1, "warning", "segments",
        "with the sample patient Lucía Fernández this SMS is 2 segments (162 characters, "
        "GSM-7)", "shorten it to 160 characters to send one segment")])


def test_a_template_of_a_journey_not_about_an_appointment_must_render_without_one(
        tmp_path: Path) -> None:
    """A welcome goes to patients who have booked nothing yet: `appointment` is empty."""
    hi = ("{% block subject %}Welcome to {{ practice.name }}{% endblock %}\n"
          "{% block text %}\n"
          "Hi {{ patient.first_name }},\n"
          "Your first visit: {{ appointment.start | date }}.\n"
          "{% endblock %}\n")
    guarded = hi.replace("Your first", "{% if appointment %}Your first").replace(
        "date }}.\n", "date }}.{% endif %}\n")

    code, found, templates = validate(tmp_path, {"hello.yaml": HELLO}, {"hello/hi.email.j2": hi})
    assert code == 1
    assert found == [finding(
        templates / "hello/hi.email.j2", 4, "error", "render",
        "does not render for a patient with no upcoming appointment (hello starts on "
        "patient.created): a date filter got no value: 'start' of an empty value",
        "is appointment empty here? Wrap it in {% if appointment %}…{% endif %}")]

    code, found, _ = validate(tmp_path, {"hello.yaml": HELLO}, {"hello/hi.email.j2": guarded})
    assert (code, found) == (0, [])

    # The same unguarded line is fine in a journey that always has its appointment.
    about_visit = HELLO.replace("patient.created", "appointment.booked")
    code, found, _ = validate(tmp_path, {"hello.yaml": about_visit}, {"hello/hi.email.j2": hi})
    assert (code, found) == (0, [])


def test_an_sms_longer_than_one_segment_is_a_warning_not_an_error(tmp_path: Path) -> None:
    long = GOOD_SMS.replace("STOP to opt out", "Please arrive ten minutes early and bring "
                            "your exercise log and comfortable shoes. STOP to opt out")

    code, found, templates = validate(tmp_path, {"reminders.yaml": REMINDERS},
                                      {"reminders/two-hours-before.sms.j2": long})

    assert code == 0
    assert found == [finding(
        templates / "reminders/two-hours-before.sms.j2", 1, "warning", "segments",
        "with the sample patient this SMS is 2 segments (174 characters, GSM-7)",
        "shorten it to 160 characters to send one segment")]


def test_an_sms_over_1600_characters_is_an_error_with_file_and_line(tmp_path: Path) -> None:
    # 20 lines of 100 characters (with their line break): 1,600 end with line 16
    filler = "".join(f"Line {n:02d} of the home-exercise notes.".ljust(99, ".") + "\n"
                     for n in range(1, 21))
    sms = filler + GOOD_SMS

    code, found, templates = validate(tmp_path, {"reminders.yaml": REMINDERS},
                                      {"reminders/two-hours-before.sms.j2": sms})

    assert code == 1
    [too_long] = [d for d in found if d["code"] == "sms-length"]
    assert too_long["file"] == str(templates / "reminders/two-hours-before.sms.j2")
    assert too_long["severity"] == "error"
    assert too_long["line"] == 17
    assert re.fullmatch(r"with the sample patient this SMS is 2,\d\d\d characters, over the "
                        r"1,600 Twilio accepts; it passes the limit at line 17",
                        too_long["message"]), too_long["message"]

    # at 1,600 characters or fewer it is only a segments warning
    code, found, _ = validate(tmp_path, {"reminders.yaml": REMINDERS},
                              {"reminders/two-hours-before.sms.j2": filler[:1400] + GOOD_SMS})
    assert code == 0
    assert [d["code"] for d in found] == ["segments"]


def test_a_character_that_forces_ucs2_is_named_with_its_line_and_column(
        tmp_path: Path) -> None:
    sms = ("{{ practice.name }}: see you at {{ appointment.start | time }}.\n"
           "We’re ready, {{ patient.first_name }}. {{ practice.phone }}. STOP to opt out\n")

    code, found, templates = validate(tmp_path, {"reminders.yaml": REMINDERS},
                                      {"reminders/two-hours-before.sms.j2": sms})

    assert code == 0
    assert found == [finding(
        templates / "reminders/two-hours-before.sms.j2", 2, "warning", "ucs2",
        "the character ’ (RIGHT SINGLE QUOTATION MARK) at column 3 forces UCS-2: 70 "
        "characters a segment instead of 160", "use \"'\" instead"),
        finding(templates / "reminders/two-hours-before.sms.j2", 1, "warning", "segments",
                "with the sample patient this SMS is 2 segments (104 characters, UCS-2)",
                "shorten it to 70 characters to send one segment")]


def test_each_ucs2_character_on_a_line_gets_its_own_column(tmp_path: Path) -> None:
    sms = ("’{{ patient.first_name }}’\n"
           "{{ practice.name }} {{ appointment.start | time }} {{ practice.phone }}\n")

    _, found, _ = validate(tmp_path, {"reminders.yaml": REMINDERS},
                           {"reminders/two-hours-before.sms.j2": sms})

    assert [(d["line"], d["message"].split(" forces")[0]) for d in found
            if d["code"] == "ucs2"] == [
        (1, "the character ’ (RIGHT SINGLE QUOTATION MARK) at column 1"),
        (1, "the character ’ (RIGHT SINGLE QUOTATION MARK) at column 26")]


@pytest.mark.parametrize(("sms", "missing"), [
    pytest.param(GOOD_SMS.replace("{{ practice.name }}: ", ""), "the practice's name",
                 id="no-name"),
    pytest.param(GOOD_SMS.replace(" {{ practice.phone }}.", ""), "its phone number",
                 id="no-phone"),
    pytest.param(GOOD_SMS.replace("{{ practice.name }}: ", "").replace(
        " {{ practice.phone }}.", ""), "the practice's name and its phone number", id="neither"),
])
def test_a_transactional_sms_without_the_practice_name_or_phone_is_a_warning(
        tmp_path: Path, sms: str, missing: str) -> None:
    code, found, templates = validate(tmp_path, {"reminders.yaml": REMINDERS},
                                      {"reminders/two-hours-before.sms.j2": sms})

    assert code == 0
    assert found == [finding(
        templates / "reminders/two-hours-before.sms.j2", 1, "warning", "exemption",
        f"this transactional SMS lacks {missing}",
        "add {{ practice.name }} and {{ practice.phone }}: the FCC healthcare exemption "
        "needs both")]


def test_a_marketing_sms_without_stop_wording_is_a_warning(tmp_path: Path) -> None:
    offer = ("Hi {{ patient.first_name }}, we miss you at {{ practice.name }}! "
             "{{ practice.phone }}\n")

    code, found, templates = validate(tmp_path, {"promo.yaml": PROMO},
                                      {"promo/offer.sms.j2": offer})
    assert code == 0
    assert found == [finding(templates / "promo/offer.sms.j2", 1, "warning", "stop",
                             "this marketing SMS does not say how to opt out",
                             "end it with \"Reply STOP to opt out\"")]

    code, found, _ = validate(tmp_path, {"promo.yaml": PROMO},
                              {"promo/offer.sms.j2": offer.replace("\n", " Reply STOP to opt "
                                                                   "out\n")})
    assert (code, found) == (0, [])


def test_a_sensitive_appointment_field_in_an_sms_is_a_warning_but_fine_in_email(
        tmp_path: Path) -> None:
    sms = GOOD_SMS.replace(". {{ practice.phone }}", "\n({{ appointment.visit_type }}). "
                           "{{ practice.phone }}")
    email = ("{% block subject %}Your visit{% endblock %}\n"
             "{% block text %}Your {{ appointment.visit_type }} visit is at "
             "{{ appointment.start | time }}.{% endblock %}\n")
    both = REMINDERS.replace("channels: [sms]", "channels: [sms, email]")

    code, found, templates = validate(tmp_path, {"reminders.yaml": both}, {
        "reminders/two-hours-before.sms.j2": sms,
        "reminders/two-hours-before.email.j2": email})

    assert code == 0
    assert found == [finding(
        templates / "reminders/two-hours-before.sms.j2", 2, "warning", "sensitive",
        "appointment.visit_type is marked sensitive and must not go in an SMS (minimum "
        "necessary)", "move it to the email, or leave it out")]


def test_a_sensitive_custom_field_in_an_sms_is_a_warning(tmp_path: Path) -> None:
    sms = GOOD_SMS.replace(". {{ practice.phone }}", "\nre: {{ patient.custom.diagnosis }}. "
                           "{{ practice.phone }}")

    code, found, templates = validate(tmp_path, {"reminders.yaml": REMINDERS},
                                      {"reminders/two-hours-before.sms.j2": sms})

    assert code == 0
    assert found == [finding(
        templates / "reminders/two-hours-before.sms.j2", 2, "warning", "sensitive",
        "patient.custom.diagnosis is marked sensitive and must not go in an SMS (minimum "
        "necessary)", "move it to the email, or leave it out")]


def test_the_practice_says_which_fields_are_sensitive(tmp_path: Path) -> None:
    sms = GOOD_SMS.replace(". {{ practice.phone }}", "\nre: {{ patient.custom.injury }} "
                           "{{ patient.custom.diagnosis }}. {{ practice.phone }}")

    code, found, templates = validate(
        tmp_path, {"reminders.yaml": REMINDERS}, {"reminders/two-hours-before.sms.j2": sms},
        '\n[templates]\nsensitive_fields = ["injury"]\n')

    assert code == 0
    assert found == [finding(
        templates / "reminders/two-hours-before.sms.j2", 2, "warning", "sensitive",
        "patient.custom.injury is marked sensitive and must not go in an SMS (minimum "
        "necessary)", "move it to the email, or leave it out")]


# --------------------------------------------------------------------------- segments


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("See you at 10:30 AM. Reply C to confirm.",
                 {"encoding": "GSM-7", "segments": 1, "characters": 40}, id="gsm"),
    pytest.param("See you soon \U0001f600",
                 {"encoding": "UCS-2", "segments": 1, "characters": 14}, id="emoji"),
    pytest.param("x" * 161, {"encoding": "GSM-7", "segments": 2, "characters": 161},
                 id="161-chars"),
])
def test_segments_json_prints_exactly_encoding_segments_and_characters(
        text: str, expected: dict[str, Any]) -> None:
    result = CliRunner().invoke(cli, ["segments", text, "--json"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == expected
    assert list(json.loads(result.stdout)) == ["encoding", "segments", "characters"]


def test_segments_names_the_character_that_forces_ucs2() -> None:
    result = CliRunner().invoke(cli, ["segments", "It’s Tuesday"])

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "UCS-2, 1 segment, 12 characters (one segment holds 70; each part of a longer "
        "message 67)",
        "  the character ’ (RIGHT SINGLE QUOTATION MARK) at column 3 forces UCS-2; use \"'\" "
        "instead"]


# --------------------------------------------------------------------------- preview


def test_preview_renders_every_channel_and_language_of_a_step_for_the_sample(
        tmp_path: Path) -> None:
    write_config(tmp_path)

    data = as_json(run_cli("preview", "pre-visit", "three-days-before", "--json"))
    text = run_cli("preview", "pre-visit", "three-days-before")

    # The sample visit is next week's Wednesday at 10:30; the reminder 3 days before, 10:00.
    assert data["due_at"] == "2026-11-08T16:00:00+00:00"
    assert (data["status"], data["timezone"]) == ("planned", "America/Chicago")
    assert data["when"] == "3 days before at 10:00 → Sun 08 Nov 2026 10:00 CST"
    shown = [(m["channel"], m["language"], m["template"]) for m in data["messages"]]
    assert shown == [("sms", "en", "pre-visit/three-days-before.sms.j2"),
                     ("email", "en", "pre-visit/three-days-before.email.j2"),
                     ("sms", "es", "pre-visit/three-days-before.es.sms.j2"),
                     ("email", "es", "pre-visit/three-days-before.es.email.j2")]
    sms_en, email_en, sms_es, email_es = data["messages"]
    assert sms_en["body"] == ("Riverside Physical Therapy: see you Wed, Nov 11 at 10:30 AM. "
                              "Missed visits slow recovery. Reply C to confirm, R to "
                              "reschedule. (312) 555-0199. STOP to opt out")
    assert sms_en["segments"] == {"encoding": "GSM-7", "segments": 1, "characters": 158}
    assert sms_es["segments"] == {"encoding": "GSM-7", "segments": 1, "characters": 160}
    assert email_en["subject"] == "See you Wednesday, November 11 at 10:30 AM"
    assert email_es["subject"] == "Le esperamos el miércoles, 11 de noviembre a las 10:30"
    assert "Wednesday, November 11 at 10:30 AM with Maya Chen, DPT" in email_en["body"]
    assert email_en["segments"] is None and email_en["html"].startswith("<p>Hi Alexandra,</p>")
    assert all(m["error"] is None and m["note"] is None for m in data["messages"])

    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert lines[:2] == [
        "pre-visit / three-days-before (transactional) for sample patient Alexandra Rivera",
        "  when: 3 days before at 10:00 → Sun 08 Nov 2026 10:00 CST"]
    assert "  [GSM-7, 1 segment, 158 characters]" in lines
    assert "Subject: See you Wednesday, November 11 at 10:30 AM" in lines


def test_preview_for_a_patient_uses_their_language_appointment_and_timezone(
        sqlite_url: str, tmp_path: Path) -> None:
    write_config(tmp_path)
    write_csv(tmp_path / "patients.csv", [patient(
        "P1", first_name="Lucía", language="es", timezone="America/Los_Angeles",
        sms_consent="no")], patient().keys())
    write_csv(tmp_path / "appointments.csv", [appointment(
        "A1", "P1", "2026-11-05T10:00:00-08:00")], appointment().keys())
    assert run_cli("import", "patients", "patients.csv", db=sqlite_url).exit_code == 0
    assert run_cli("import", "appointments", "appointments.csv", db=sqlite_url).exit_code == 0

    data = as_json(run_cli("preview", "pre-visit", "one-day-before", "--patient", "P1",
                           "--json", db=sqlite_url))

    # Wednesday 10:00 in Los Angeles (18:00Z), not 10:00 in the practice's Chicago.
    assert data["due_at"] == "2026-11-04T18:00:00+00:00"
    assert data["when"] == "1 day before at 10:00 → Wed 04 Nov 2026 10:00 PST"
    assert (data["recipient"], data["timezone"]) == ("P1 Lucía Reyes", "America/Los_Angeles")
    assert [(m["channel"], m["language"], m["note"]) for m in data["messages"]] == [
        ("sms", "es", "not usable: sms: no sms consent"),
        ("email", "es", "to p•••@example.com")]
    sms, email = data["messages"]
    # their appointment, in their time: Thursday 10:00 Pacific; one GSM-7 segment, not
    # three in UCS-2 for the í of her name
    assert (sms["segments"]["encoding"], sms["segments"]["segments"]) == ("GSM-7", 1)
    assert sms["body"] == ("Riverside Physical Therapy: Lucia, le esperamos manana, jue, 5 nov "
                           "a las 10:00. Responda C para confirmar, R para cambiar. "
                           "(312) 555-0199. STOP para salir")
    assert email["subject"] == "Mañana a las 10:00: su cita en Riverside Physical Therapy"
    # a practice texting under the healthcare exemption needs no SMS consent for it
    write_config(tmp_path, '\n[caps]\nmode = "exemption"\n')
    data = as_json(run_cli("preview", "pre-visit", "three-days-before", "--patient", "P1",
                           "--json", db=sqlite_url))
    assert [(m["channel"], m["note"]) for m in data["messages"]] == [
        ("sms", "to +1••••••••00"), ("email", "to p•••@example.com")]


def test_preview_for_a_minor_shows_their_parent_and_the_words_they_get(
        sqlite_url: str, tmp_path: Path) -> None:
    """As the dispatcher would send it: to the parent, in the parent's words; a minor with
    no guardian on file gets nothing, and the preview says why."""
    write_config(tmp_path)
    write_csv(tmp_path / "patients.csv", [
        patient("P1", first_name="Olivia", last_name="Park", date_of_birth="2012-05-31"),
        patient("P2", first_name="Noah", date_of_birth="2012-05-31", phone="(312) 555-0102")],
        [*patient().keys(), "date_of_birth"])
    write_csv(tmp_path / "contacts.csv", [contact("C1", "P1", first_name="Rachel")],
              contact().keys())
    write_csv(tmp_path / "appointments.csv", [
        appointment("A1", "P1", "2026-11-05T10:00:00-06:00"),
        appointment("A2", "P2", "2026-11-05T11:00:00-06:00")], appointment().keys())
    for kind in ("patients", "contacts", "appointments"):
        assert run_cli("import", kind, f"{kind}.csv", db=sqlite_url).exit_code == 0

    data = as_json(run_cli("preview", "pre-visit", "three-days-before", "--patient", "P1",
                           "--json", db=sqlite_url))
    [parent] = data["recipients"]
    assert (parent["recipient"], parent["key"][:8], parent["status"]) == (
        "parent Rachel for P1 Olivia Park", "contact:", "planned")
    assert data["recipient"] == parent["recipient"] and data["messages"] == parent["messages"]
    sms, email = parent["messages"]
    assert (sms["body"], sms["note"]) == (
        "Riverside Physical Therapy: Hi Rachel, Olivia's visit is Thu, Nov 5 at 10:00 AM. "
        "Reply C to confirm, R to reschedule. (312) 555-0199. STOP to opt out",
        "to +1••••••••77")
    assert email["note"] == "to c•••@example.com"  # the parent's, not the minor's

    text = run_cli("preview", "pre-visit", "three-days-before", "--patient", "P1", db=sqlite_url)
    assert text.exit_code == 0, text.output
    assert text.stdout.splitlines()[0] == ("pre-visit / three-days-before (transactional) for "
                                           "parent Rachel for P1 Olivia Park")

    alone = as_json(run_cli("preview", "pre-visit", "three-days-before", "--patient", "P2",
                            "--json", db=sqlite_url))
    [noah] = alone["recipients"]
    assert (noah["recipient"], noah["status"], noah["reason"], noah["messages"]) == (
        "P2 Noah Reyes", "skipped", "no_guardian", [])
    assert noah["when"] == ("skipped (no_guardian): the patient is a minor with no parent or "
                            "guardian on file (contacts.csv)")


def test_preview_html_writes_one_file_per_language(tmp_path: Path) -> None:
    write_config(tmp_path)
    target = tmp_path / "reminder.html"

    data = as_json(run_cli("preview", "pre-visit", "three-days-before", "--html", str(target),
                           "--json"))

    spanish = tmp_path / "reminder.es.html"
    assert data["html_files"] == [str(target), str(spanish)]
    english_html = target.read_text(encoding="utf-8")
    spanish_html = spanish.read_text(encoding="utf-8")
    assert "<title>See you Wednesday, November 11 at 10:30 AM</title>" in english_html
    assert "<p>Hi Alexandra,</p>" in english_html and "Hola" not in english_html
    assert "<title>Le esperamos el miércoles, 11 de noviembre a las 10:30</title>" \
        in spanish_html
    assert "<p>Hola Alexandra:</p>" in spanish_html


@pytest.mark.parametrize(("journey", "step", "message"), [
    pytest.param("previsit", "three-days-before",
                 "Error: no journey 'previsit' — did you mean 'pre-visit'?", id="journey"),
    pytest.param("pre-visit", "three-day-before",
                 "Error: journey pre-visit has no step 'three-day-before' — did you mean "
                 "'three-days-before'?", id="step"),
])
def test_preview_of_an_unknown_journey_or_step_is_one_line_with_a_suggestion(
        tmp_path: Path, journey: str, step: str, message: str) -> None:
    write_config(tmp_path)

    result = run_cli("preview", journey, step)

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == message + "\n"


# --------------------------------------------------------------------------- test-send


def _log(db: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = as_json(run_cli("log", "--json", "--reveal", db=db))
    return rows


def test_test_send_goes_through_the_provider_and_is_logged_as_a_test(
        sqlite_url: str, tmp_path: Path) -> None:
    write_config(tmp_path, 'fake_outbox = "outbox.jsonl"\n')  # [channels] is the last table

    result = run_cli("test-send", "pre-visit", "three-days-before", "--to", "(312) 555-0142",
                     db=sqlite_url)

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("test message sent by sms via fake to +1••••••••42 "
                                    "(touch point 1, provider id fake-sms-")
    sent = [json.loads(line) for line in
            (tmp_path / "outbox.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(m["to"], m["kind"], m["test"], m["journey"], m["step"]) for m in sent] == [
        ("+13125550142", "sms", True, "pre-visit", "three-days-before")]
    assert sent[0]["body"] == ("Riverside Physical Therapy: see you Wed, Nov 11 at 10:30 AM. "
                               "Missed visits slow recovery. Reply C to confirm, R to "
                               "reschedule. (312) 555-0199. STOP to opt out")
    [row] = _log(sqlite_url)
    assert {k: row[k] for k in ("id", "patient_id", "test", "status", "channel", "recipient",
                                "journey", "step", "provider_message_id")} == {
        "id": 1, "patient_id": None, "test": True, "status": "sent", "channel": "sms",
        "recipient": "+13125550142", "journey": "pre-visit", "step": "three-days-before",
        "provider_message_id": sent[0]["provider_message_id"]}


def test_test_send_of_an_email_in_another_language_uses_the_env_outbox(
        sqlite_url: str, tmp_path: Path) -> None:
    write_config(tmp_path)
    outbox = tmp_path / "elsewhere.jsonl"

    result = run_cli("test-send", "pre-visit", "three-days-before", "--to", "Me@Example.com",
                     "--language", "es", db=sqlite_url,
                     env={"TOUCHPOINT_FAKE_OUTBOX": str(outbox)})

    assert result.exit_code == 0, result.output
    [message] = [json.loads(line) for line in outbox.read_text(encoding="utf-8").splitlines()]
    assert (message["kind"], message["to"], message["test"]) == ("email", "Me@example.com", True)
    assert message["subject"] == "Le esperamos el miércoles, 11 de noviembre a las 10:30"
    assert message["html"].startswith("<p>Hola Alexandra:</p>")


@pytest.mark.parametrize(("journey", "step", "to", "message"), [
    pytest.param("welcome", "what-to-expect", "(312) 555-0142",
                 "Error: welcome/what-to-expect sends email, not sms — give --to a",
                 id="phone-to-email-only-step"),
    pytest.param("pre-visit", "two-hours-before", "me@example.com",
                 "Error: pre-visit/two-hours-before sends sms, not email — give --to a phone "
                 "number", id="email-to-sms-only-step"),
    pytest.param("pre-visit", "three-days-before", "555-0142",
                 "Error: --to '555-0142' is not a phone number (with area code; default "
                 "region US)", id="short-phone"),
    pytest.param("pre-visit", "three-days-before", "me@@example",
                 "Error: --to 'me@@example' is not an email address", id="bad-email"),
])
def test_test_send_refuses_an_address_the_step_cannot_use(
        sqlite_url: str, tmp_path: Path, journey: str, step: str, to: str,
        message: str) -> None:
    write_config(tmp_path)
    outbox = tmp_path / "outbox.jsonl"

    result = run_cli("test-send", journey, step, "--to", to, db=sqlite_url,
                     env={"TOUCHPOINT_FAKE_OUTBOX": str(outbox)})

    assert result.exit_code == 1
    assert result.stderr.startswith(message)
    assert len(result.stderr.splitlines()) == 1
    assert not outbox.exists()
    assert _log(sqlite_url) == []


def test_a_test_send_the_provider_refuses_for_now_does_not_stay_pending(
        sqlite_url: str, tmp_path: Path) -> None:
    clinic = Clinic(sqlite_url, tmp_path)
    try:
        clinic.sms.script(TransientChannelError("503 Service Unavailable", provider="fake"))
        with freeze_time(NOW) as frozen:
            tp = send_test(clinic.db, clinic.definitions, clinic.settings,
                           {"sms": clinic.sms, "email": clinic.email}, "pre-visit",
                           "three-days-before", "(312) 555-0142", clock.now())
            frozen.move_to("2026-11-02T14:30:00Z")  # well past any retry delay
            clinic.tick()
        row = clinic.one("pre-visit", "three-days-before", test=True)
        assert row.id == tp.id
        assert row.status in (Status.SENT, Status.FAILED), (row.status, row.detail)
    finally:
        clinic.close()


def test_test_sends_never_count_in_the_summary(sqlite_url: str, tmp_path: Path) -> None:
    database_url = sqlite_url
    clinic = Clinic(database_url, tmp_path)
    try:
        with freeze_time(NOW):
            clinic.patients(patient("P1"))
            clinic.tick()  # the welcome text goes now; the email is due in 10 minutes
        result = run_cli("test-send", "welcome", "welcome", "--to", "(312) 555-0142",
                         db=database_url)
        assert result.exit_code == 0, result.output
        result = run_cli("test-send", "win-back", "day-30", "--to", "me@example.com",
                         db=database_url)
        assert result.exit_code == 0, result.output

        with clinic.db.transaction() as conn:
            report = summary(conn)
        assert [(s.journey, s.planned, dict(s.outcomes)) for s in report] == [
            ("welcome", 2, {"sent": 1, "planned": 1})]
        tests = [r for r in _log(database_url) if r["test"]]
        assert [(r["journey"], r["patient_id"], r["status"]) for r in tests] == [
            ("welcome", None, "sent"), ("win-back", None, "sent")]
    finally:
        clinic.close()


# --------------------------------------------------------------------------- forecast


def _tables(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    database = open_database(database_url)
    try:
        with database.transaction() as conn:
            return {table.name: [tuple(row) for row in conn.execute(
                select(table).order_by(table.c.id))]
                for table in (touch_points, history, events)}
    finally:
        database.dispose()


PEOPLE = [
    patient("P1"),
    patient("P2", first_name="Ben", phone="(312) 555-0101", sms_consent="no"),
    patient("P3", first_name="Cal", phone="(312) 555-0102"),
]
VISITS = [
    appointment("A1", "P1", "2026-11-05T10:00:00-06:00"),
    appointment("A2", "P2", "2026-11-05T11:00:00-06:00"),
    appointment("A3", "P3", "2026-11-05T07:30:00-06:00"),  # 2 h before is 05:30: night
]


def _import(tmp_path: Path, db: str, now: str = NOW, *, baseline: bool = True) -> None:
    write_csv(tmp_path / "patients.csv", PEOPLE, patient().keys())
    write_csv(tmp_path / "appointments.csv", VISITS, appointment().keys())
    extra = ["--baseline"] if baseline else []
    assert run_cli("import", "patients", "patients.csv", *extra, db=db,
                   now=now).exit_code == 0
    assert run_cli("import", "appointments", "appointments.csv", db=db, now=now).exit_code == 0


def _imported_and_run(tmp_path: Path, db: str, library: tuple[Path, Path]) -> tuple[Path, Path]:
    """The practice imported and one tick run with the copied library; its folders."""
    write_config(tmp_path)
    _import(tmp_path, db)
    schedules, templates = library
    assert run_cli("run", "--once", db=db, schedules=schedules,
                   templates=templates).exit_code == 0
    return schedules, templates


def test_forecast_lists_sends_and_skips_with_reasons_and_changes_nothing(
        database_url: str, tmp_path: Path) -> None:
    write_config(tmp_path)
    _import(tmp_path, database_url)  # imported, not planned yet: events are unprocessed
    before = _tables(database_url)
    assert before["touch_points"] == [] and len(before["events"]) == 3

    data = as_json(run_cli("forecast", "--days", "7", "--json", db=database_url))
    text = run_cli("forecast", "--days", "7", db=database_url)

    assert _tables(database_url) == before
    assert (data["from"], data["until"]) == ("2026-11-02T14:00:00+00:00",
                                             "2026-11-09T14:00:00+00:00")
    entries = data["entries"]
    assert all(list(e) == ["at", "touch_point_id", "patient_id", "journey", "step", "outcome",
                           "channel", "recipient", "reason", "detail", "subject", "content"]
               for e in entries)
    assert [(e["at"], e["patient_id"], e["step"], e["outcome"], e["channel"], e["recipient"],
             e["reason"]) for e in entries] == [
        ("2026-11-02T14:00:00Z", "P3", "two-hours-before", "skip", None, None, "too_late"),
        ("2026-11-02T16:00:00Z", "P1", "three-days-before", "send", "sms", "+1••••••••00", None),
        ("2026-11-02T16:00:00Z", "P2", "three-days-before", "send", "email", "p•••@example.com",
         None),
        ("2026-11-02T16:00:00Z", "P3", "three-days-before", "send", "sms", "+1••••••••02", None),
        ("2026-11-04T16:00:00Z", "P1", "one-day-before", "send", "sms", "+1••••••••00", None),
        ("2026-11-04T16:00:00Z", "P2", "one-day-before", "send", "email", "p•••@example.com",
         None),
        ("2026-11-04T16:00:00Z", "P3", "one-day-before", "send", "sms", "+1••••••••02", None),
        ("2026-11-05T14:00:00Z", "P1", "two-hours-before", "send", "sms", "+1••••••••00", None),
        ("2026-11-05T15:00:00Z", "P2", "two-hours-before", "skip", None, None, "no_consent"),
    ]
    assert {e["journey"] for e in entries} == {"pre-visit"}
    assert {e["touch_point_id"] for e in entries} == {None}  # not in the ledger yet
    by_key = {(e["patient_id"], e["step"]): e for e in entries}
    assert by_key["P2", "two-hours-before"]["detail"] == "sms: no sms consent"
    assert by_key["P3", "two-hours-before"]["detail"].startswith(
        "quiet hours (08:00–21:00 America/Chicago) would delay it to 2026-11-05T14:00:00+00:00")
    assert by_key["P1", "three-days-before"]["content"] == (
        "Riverside Physical Therapy: see you Thu, Nov 5 at 10:00 AM. Missed visits slow "
        "recovery. Reply C to confirm, R to reschedule. (312) 555-0199. STOP to opt out")
    assert by_key["P2", "three-days-before"]["subject"] == \
        "See you Thursday, November 5 at 11:00 AM"

    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert "  09:00  P2       Ben Reyes          pre-visit/two-hours-before       skipped: " \
           "no_consent" in lines
    assert lines[-1] == ("Next 7 days (America/Chicago): 7 to send, 1 too_late, 1 no_consent. "
                         "Nothing was changed.")
    assert _tables(database_url) == before


def test_forecast_of_planned_touch_points_carries_their_ids(sqlite_url: str,
                                                           tmp_path: Path) -> None:
    database_url = sqlite_url
    write_config(tmp_path)
    _import(tmp_path, database_url)
    assert run_cli("run", "--once", db=database_url).exit_code == 0
    before = _tables(database_url)
    ids = {row["step"]: row["id"] for row in as_json(run_cli(
        "log", "--json", "--patient", "P1", db=database_url))}

    data = as_json(run_cli("forecast", "--days", "7", "--json", "--patient", "P1",
                           db=database_url))

    assert _tables(database_url) == before
    assert [(e["step"], e["touch_point_id"], e["outcome"]) for e in data["entries"]] == [
        ("three-days-before", ids["three-days-before"], "send"),
        ("one-day-before", ids["one-day-before"], "send"),
        ("two-hours-before", ids["two-hours-before"], "send")]


def _ledger(database_url: str) -> list[Any]:
    database = open_database(database_url)
    try:
        with database.transaction() as conn:
            return list(conn.execute(select(touch_points).order_by(touch_points.c.id)))
    finally:
        database.dispose()


def test_forecast_includes_patients_who_will_lapse_inside_the_window(
        database_url: str, tmp_path: Path) -> None:
    write_config(tmp_path)
    write_csv(tmp_path / "patients.csv", [patient("P1"), patient("P2", marketing_consent="no")],
              patient().keys())
    write_csv(tmp_path / "appointments.csv", [
        appointment("A1", "P1", "2026-10-05T10:00:00-05:00", status="completed"),
        appointment("A2", "P2", "2026-10-06T10:00:00-05:00", status="completed"),
    ], appointment().keys())
    for kind in ("patients", "appointments"):
        extra = ["--baseline"] if kind == "patients" else []
        assert run_cli("import", kind, f"{kind}.csv", *extra, db=database_url).exit_code == 0
    before = _tables(database_url)

    data = as_json(run_cli("forecast", "--days", "7", "--json", db=database_url))

    assert _tables(database_url) == before  # no patient.lapsed event was recorded
    assert [(e["at"], e["patient_id"], e["journey"], e["step"], e["outcome"], e["channel"],
             e["reason"]) for e in data["entries"]] == [
        # 30 days after the last visit, at 11:00 local
        ("2026-11-04T17:00:00Z", "P1", "win-back", "day-30", "send", "sms", None),
        ("2026-11-05T17:00:00Z", "P2", "win-back", "day-30", "skip", None, "no_consent"),
    ]
    assert data["entries"][0]["content"] == (
        "Hi Ana, it's Riverside Physical Therapy. We miss you! How is your recovery going? "
        "Book a check-in: https://riversidept.example/book Reply STOP to opt out")


# --------------------------------------------------------------------------- edit impact


@pytest.fixture
def library(tmp_path: Path) -> tuple[Path, Path]:
    return copy_library(tmp_path / "library")


def _booked_clinic(database_url: str, tmp_path: Path, library: tuple[Path, Path],
                   now: str = NOW) -> None:
    """P1 books A1 (Thu 5 Nov 10:00 CST); the reminders are planned and nothing is due."""
    clinic = Clinic(database_url, tmp_path, schedules=library[0], templates=library[1])
    try:
        with freeze_time(now):
            clinic.patients(patient("P1"), baseline=True)
            clinic.appointments(appointment("A1", "P1", "2026-11-05T10:00:00-06:00"))
            clinic.tick()
        reminder = clinic.one("pre-visit", "three-days-before")
        assert (reminder.status, reminder.due_at) == (Status.PLANNED,
                                                      utc("2026-11-02T10:00:00-06:00"))
    finally:
        clinic.close()


def _after_edit(database_url: str, tmp_path: Path, library: tuple[Path, Path],
                now: str = NOW) -> Clinic:
    """A new process on the edited library, after one tick."""
    clinic = Clinic(database_url, tmp_path, schedules=library[0], templates=library[1])
    with freeze_time(now):
        clinic.tick()
    return clinic


def test_a_moved_step_re_times_its_pending_touch_points(
        database_url: str, tmp_path: Path, library: tuple[Path, Path]) -> None:
    _booked_clinic(database_url, tmp_path, library)
    # new wording alone changes no timing: templates are rendered at send time
    edit(library[1] / "pre-visit/three-days-before.sms.j2", "see you", "we will see you")
    _after_edit(database_url, tmp_path, library).close()
    edit(library[0] / "pre-visit.yaml", 'at: "10:00"', 'at: "09:00"')

    clinic = _after_edit(database_url, tmp_path, library)
    try:
        reminder = clinic.one("pre-visit", "three-days-before")
        assert (reminder.status, reminder.due_at) == (Status.PLANNED,
                                                      utc("2026-11-02T09:00:00-06:00"))
        entries = clinic.history(reminder)
        assert [(h.kind, h.status, h.source) for h in entries] == [
            ("transition", "planned", "planner"), ("retimed", "planned", "definitions")]
        assert entries[-1].detail == ("the schedule changed: due 2026-11-02T16:00:00+00:00 → "
                                      "2026-11-02T15:00:00+00:00")
        untouched = clinic.one("pre-visit", "two-hours-before")
        assert untouched.due_at == utc("2026-11-05T08:00:00-06:00")
        assert len(clinic.history(untouched)) == 1
        with freeze_time("2026-11-02T15:00:00Z"):  # 09:00 CST: the new time
            clinic.tick()
        assert clinic.one("pre-visit", "three-days-before").status == Status.SENT
        assert clinic.sms.sent[0].body.startswith("Riverside Physical Therapy: we will see you "
                                                  "Thu, Nov 5 at 10:00 AM.")
    finally:
        clinic.close()


def test_a_removed_step_or_journey_cancels_its_pending_touch_points(
        database_url: str, tmp_path: Path, library: tuple[Path, Path]) -> None:
    _booked_clinic(database_url, tmp_path, library)
    journey = library[0] / "pre-visit.yaml"
    text = journey.read_text(encoding="utf-8")
    journey.write_text(text[:text.index("  - id: two-hours-before")], encoding="utf-8")

    clinic = _after_edit(database_url, tmp_path, library)
    try:
        removed = clinic.one("pre-visit", "two-hours-before")
        assert (removed.status, removed.reason) == (Status.CANCELLED, "step_removed")
        assert removed.detail == "pre-visit/two-hours-before was removed from schedules/"
        assert clinic.one("pre-visit", "three-days-before").status == Status.PLANNED
    finally:
        clinic.close()

    journey.unlink()
    clinic = _after_edit(database_url, tmp_path, library)
    try:
        gone = clinic.one("pre-visit", "three-days-before")
        assert (gone.status, gone.reason) == (Status.CANCELLED, "journey_removed")
        assert [(h.previous_status, h.status, h.reason, h.source)
                for h in clinic.history(gone)][-1] == (
            "planned", "cancelled", "journey_removed", "definitions")
        assert clinic.one("pre-visit", "two-hours-before").reason == "step_removed"
    finally:
        clinic.close()


def test_a_step_added_to_a_journey_is_planned_for_its_pending_runs(
        database_url: str, tmp_path: Path, library: tuple[Path, Path]) -> None:
    _booked_clinic(database_url, tmp_path, library)
    edit(library[0] / "pre-visit.yaml", "  - id: two-hours-before\n",
         '  - id: day-before\n    when: {days_before: 1, at: "12:00"}\n    channels: [email]\n'
         "    template: pre-visit/three-days-before\n  - id: two-hours-before\n")

    clinic = _after_edit(database_url, tmp_path, library)
    try:
        added = clinic.one("pre-visit", "day-before")
        assert (added.status, added.due_at) == (Status.PLANNED, utc("2026-11-04T12:00:00-06:00"))
        assert added.anchor == clinic.one("pre-visit", "three-days-before").anchor
        assert len(clinic.touch_points(journey="pre-visit")) == 4
        # the unchanged steps were left alone
        assert [len(clinic.history(tp)) for tp in clinic.touch_points(journey="pre-visit")] == \
            [1, 1, 1, 1]
    finally:
        clinic.close()


@pytest.mark.parametrize(("catch_up", "status", "reason"), [
    pytest.param("", Status.SKIPPED, "too_late", id="skipped"),
    pytest.param("    catch_up: true\n", Status.SENT, None, id="catch-up"),
])
def test_a_step_moved_to_a_moment_already_past_is_skipped_unless_it_catches_up(
        database_url: str, tmp_path: Path, library: tuple[Path, Path], catch_up: str,
        status: str, reason: str | None) -> None:
    _booked_clinic(database_url, tmp_path, library, now="2026-11-01T15:00:00Z")
    # three days before at 09:00 is Mon 2 Nov 09:00 CST; the edit lands at 10:00
    edit(library[0] / "pre-visit.yaml", '{days_before: 3, at: "10:00"}',
         '{days_before: 3, at: "09:00"}')
    edit(library[0] / "pre-visit.yaml", "    channels: [sms, email]",
         catch_up + "    channels: [sms, email]")

    clinic = _after_edit(database_url, tmp_path, library, now="2026-11-02T16:00:00Z")
    try:
        moved = clinic.one("pre-visit", "three-days-before")
        assert (moved.status, moved.reason) == (status, reason)
        if status == Status.SKIPPED:
            assert moved.detail == ("the schedule changed after its new moment "
                                    "2026-11-02T15:00:00+00:00 had passed")
            assert clinic.sent_to(moved.id) == []
        else:
            assert moved.sent_at == utc("2026-11-02T16:00:00Z")
            assert len(clinic.sent_to(moved.id)) == 1
    finally:
        clinic.close()


@pytest.mark.slow
def test_forecast_diff_shows_what_an_edit_changes(
        database_url: str, tmp_path: Path, library: tuple[Path, Path]) -> None:
    schedules, templates = _imported_and_run(tmp_path, database_url, library)

    def forecast_diff(*extra: str) -> Result:
        result = run_cli("forecast", "--diff", *extra, db=database_url, schedules=schedules,
                         templates=templates)
        assert result.exit_code == 0, result.output
        return result

    first = forecast_diff()
    assert first.stdout.startswith("No earlier forecast to compare with")

    edit(schedules / "pre-visit.yaml", 'at: "10:00"', 'at: "09:00"')
    edit(templates / "pre-visit/three-days-before.sms.j2", "see you", "we will see you")
    moved = forecast_diff().stdout.splitlines()
    assert moved == [
        "Compared with the forecast of 2026-11-02T14:00:00Z: 3 change(s).",
        "  ~ Mon 02 Nov 09:00  P1       pre-visit/three-days-before: moved from Mon 02 Nov 10:00; "
        "the wording changed",
        "  ~ Mon 02 Nov 09:00  P2       pre-visit/three-days-before: moved from Mon 02 Nov 10:00",
        "  ~ Mon 02 Nov 09:00  P3       pre-visit/three-days-before: moved from Mon 02 Nov 10:00; "
        "the wording changed",
    ]

    edit(schedules / "pre-visit.yaml", "  - id: two-hours-before\n",
         '  - id: day-before\n    when: {days_before: 1, at: "12:00"}\n    channels: [email]\n'
         "    template: pre-visit/three-days-before\n  - id: two-hours-before\n")
    data = as_json(run_cli("forecast", "--diff", "--json", db=database_url,
                           schedules=schedules, templates=templates))
    assert data["diff"]["previous"] == "2026-11-02T14:00:00Z"
    assert [(c["change"], c["patient_id"], c["step"], c["what"], c["before"])
            for c in data["diff"]["changes"]] == [
        ("added", "P1", "day-before", [], None),
        ("added", "P2", "day-before", [], None),
        ("added", "P3", "day-before", [], None)]
    assert data["diff"]["changes"][0]["after"]["at"] == "2026-11-04T18:00:00Z"
    assert _ledger_due(database_url)["three-days-before"] == {utc("2026-11-02T16:00:00Z")}

    # The next run applies the edit to the ledger, exactly as the forecast showed it.
    report = as_json(run_cli("run", "--once", "--json", db=database_url, schedules=schedules,
                             templates=templates))
    assert report["edits"] == {"retimed": 3, "added": 3, "cancelled": 0, "skipped": 0}
    assert _ledger_due(database_url)["three-days-before"] == {utc("2026-11-02T15:00:00Z")}
    assert _ledger_due(database_url)["day-before"] == {utc("2026-11-04T18:00:00Z")}
    assert forecast_diff().stdout == ("Compared with the forecast of 2026-11-02T14:00:00Z: 0 "
                                      "change(s).\n")


def _ledger_due(database_url: str) -> dict[str, set[datetime]]:
    due: dict[str, set[datetime]] = {}
    for row in _ledger(database_url):
        due.setdefault(row.step, set()).add(row.due_at.astimezone(UTC))
    return due


def test_forecast_diff_says_a_removed_step_will_no_longer_be_sent(
        sqlite_url: str, tmp_path: Path, library: tuple[Path, Path]) -> None:
    database_url = sqlite_url
    schedules, templates = _imported_and_run(tmp_path, database_url, library)
    assert run_cli("forecast", db=database_url, schedules=schedules,
                   templates=templates).exit_code == 0
    journey = schedules / "pre-visit.yaml"
    original = journey.read_text(encoding="utf-8")
    without = original[:original.index("  - id: two-hours-before")]
    journey.write_text(without, encoding="utf-8")

    data = as_json(run_cli("forecast", "--diff", "--json", db=database_url,
                           schedules=schedules, templates=templates))
    assert [(c["change"], c["patient_id"], c["step"], c["before"]["outcome"], c["after"])
            for c in data["diff"]["changes"]] == [
        ("removed", "P1", "two-hours-before", "send", None),
        ("removed", "P2", "two-hours-before", "skip", None)]

    journey.write_text(original, encoding="utf-8")  # a new baseline, then the same edit
    assert run_cli("forecast", db=database_url, schedules=schedules,
                   templates=templates).exit_code == 0
    journey.write_text(without, encoding="utf-8")
    result = run_cli("forecast", "--diff", db=database_url, schedules=schedules,
                     templates=templates)
    assert result.stdout.splitlines() == [
        "Compared with the forecast of 2026-11-02T14:00:00Z: 2 change(s).",
        "  - Thu 05 Nov 08:00  P1       pre-visit/two-hours-before: no longer sent by sms",
        "  - Thu 05 Nov 09:00  P2       pre-visit/two-hours-before: no longer skipped "
        "(no_consent)"]


def test_forecast_diff_compares_with_the_last_full_forecast_not_a_filtered_one(
        sqlite_url: str, tmp_path: Path, library: tuple[Path, Path]) -> None:
    write_config(tmp_path)
    _import(tmp_path, sqlite_url)
    schedules, templates = library

    def forecast(*extra: str) -> Result:
        result = run_cli("forecast", *extra, db=sqlite_url, schedules=schedules,
                         templates=templates)
        assert result.exit_code == 0, result.output
        return result

    assert forecast("--diff", "--patient", "P1").stdout.startswith(
        "No earlier forecast to compare with, and one limited to a journey or a patient is "
        "not kept as the baseline")
    assert forecast("--diff", "--patient", "P1").stdout.startswith("No earlier forecast")
    forecast()  # the baseline
    edit(schedules / "pre-visit.yaml", 'at: "10:00"', 'at: "09:00"')
    # Runs limited to a journey or a patient show the edit, but do not become the baseline
    assert len(as_json(forecast("--diff", "--json", "--journey", "pre-visit"))["diff"][
        "changes"]) == 3
    assert forecast("--diff", "--patient", "P2").stdout.splitlines() == [
        "Compared with the forecast of 2026-11-02T14:00:00Z: 1 change(s).",
        "  ~ Mon 02 Nov 09:00  P2       pre-visit/three-days-before: moved from Mon 02 Nov 10:00"]
    forecast("--journey", "welcome")
    assert forecast("--diff").stdout.splitlines()[0] == (
        "Compared with the forecast of 2026-11-02T14:00:00Z: 3 change(s).")
    # ...the full one does.
    assert forecast("--diff").stdout == ("Compared with the forecast of 2026-11-02T14:00:00Z: "
                                         "0 change(s).\n")


def test_forecast_diff_compares_only_the_days_both_forecasts_looked_at(
        sqlite_url: str, tmp_path: Path, library: tuple[Path, Path]) -> None:
    schedules, templates = _imported_and_run(tmp_path, sqlite_url, library)

    def forecast(*extra: str) -> Any:
        return as_json(run_cli("forecast", "--json", *extra, db=sqlite_url,
                               schedules=schedules, templates=templates))

    # today's 3-day reminders; the day-before ones are Wednesday
    assert {e["step"] for e in forecast("--days", "1")["entries"]} == {"three-days-before"}
    week = forecast("--diff")  # looks 7 days ahead: what it sees past a day is not new
    assert len(week["entries"]) == 8 and week["diff"]["changes"] == []
    edit(schedules / "pre-visit.yaml", '{days_before: 1, at: "10:00"}',
         '{days_before: 1, at: "09:00"}')
    day = forecast("--diff", "--days", "1")  # Wednesday 09:00 is past its horizon; not kept
    assert day["diff"]["changes"] == []
    assert [c["change"] for c in forecast("--diff")["diff"]["changes"]] == ["changed"] * 3


def test_forecast_diff_does_not_list_messages_sent_since_as_changes(
        database_url: str, tmp_path: Path, library: tuple[Path, Path]) -> None:
    schedules, templates = _imported_and_run(tmp_path, database_url, library)
    assert run_cli("forecast", db=database_url, schedules=schedules,
                   templates=templates).exit_code == 0  # foresees the reminders at 10:00 CST
    # The manager moves them to 09:00; the daemon applies the edit and sends them at 09:00.
    edit(schedules / "pre-visit.yaml", 'at: "10:00"', 'at: "09:00"')
    later = "2026-11-02T15:00:00Z"  # Mon 09:00 CST, before the 10:00 the baseline foresaw
    sent = as_json(run_cli("run", "--once", "--json", db=database_url, schedules=schedules,
                           templates=templates, now=later))
    assert sent["edits"]["retimed"] == 3
    statuses = {(row.patient_id, row.step): row.status for row in _ledger(database_url)}
    assert sorted(s for (_, step), s in statuses.items() if step == "three-days-before") == [
        Status.SENT, Status.SENT, Status.SENT]

    result = run_cli("forecast", "--diff", db=database_url, schedules=schedules,
                     templates=templates, now=later)
    assert result.stdout == "Compared with the forecast of 2026-11-02T14:00:00Z: 0 change(s).\n"
    # What was foreseen and has not gone yet is still compared: remove the 2-hour reminder.
    journey = schedules / "pre-visit.yaml"
    text = journey.read_text(encoding="utf-8")
    journey.write_text(text[:text.index("  - id: two-hours-before")], encoding="utf-8")
    data = as_json(run_cli("forecast", "--diff", "--json", db=database_url,
                           schedules=schedules, templates=templates, now=later))
    assert [(c["change"], c["patient_id"], c["step"]) for c in data["diff"]["changes"]] == [
        ("removed", "P1", "two-hours-before"), ("removed", "P2", "two-hours-before")]

"""Journeys (schedules/*.yaml), message templates and `touchpoint validate`.

What a practice manager relies on when editing the plain files: the shipped library is
valid, every mistake is reported with its file, 1-based line and a fix, a broken file never
takes the others down, and rendering is strict, sandboxed, localised and SMS-friendly.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner, Result

from engine.cli import cli
from engine.definitions import Diagnostic, load_definitions
from engine.definitions.journeys import ExitRule, load_journeys, parse_journey
from engine.definitions.templates import Fields, TemplateSet
from engine.errors import DefinitionError, TemplateRenderError
from engine.message_context import practice_fields
from engine.settings import load_settings
from engine.sms_segments import is_gsm7
from tests.support import (
    LIBRARY_SCHEDULES,
    LIBRARY_TEMPLATES,
    ONE_REMINDER_JOURNEY,
    ONE_REMINDER_SMS,
    write_config,
)

CHICAGO = ZoneInfo("America/Chicago")
NO_PLAIN_SPACES = ("\u00a0", "\u202f", "\u2009")  # no-break, narrow no-break, thin

# One valid journey; the diagnostics tests break it one line at a time.
JOURNEY, SMS_TEMPLATE = ONE_REMINDER_JOURNEY, ONE_REMINDER_SMS


def edit(text: str, old: str, new: str) -> str:
    assert old in text, f"{old!r} is not in the journey under test"
    return text.replace(old, new, 1)


def write_files(folder: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def load_one(tmp_path: Path, text: str) -> tuple[Path, list[Diagnostic], bool]:
    """Load ``text`` as schedules/reminders.yaml: (its path, diagnostics, whether it loaded)."""
    path = write_files(tmp_path / "schedules", {"reminders.yaml": text}) / "reminders.yaml"
    journeys, found = load_journeys(path.parent)
    return path, found, "reminders" in journeys


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


def variables(start: datetime | None = None, first_name: str = "Ana") -> dict[str, Any]:
    return {
        "patient": Fields({"first_name": first_name, "last_name": "Reyes",
                           "custom": Fields({}), "booking_link": "https://x.example/book",
                           "intake_link": ""}),
        "practice": Fields({"name": "Riverside Physical Therapy", "phone": "(312) 555-0199",
                            "links": Fields({})}),
        "appointment": Fields({"start": start, "therapist": "Maya Chen, DPT",
                               "location": "Main St", "visit_type": "Follow-up",
                               "confirmed": False})
        if start else None,
    }


# --------------------------------------------------------------------------- shipped library


def test_the_shipped_library_loads_with_no_findings_and_the_documented_journeys() -> None:
    definitions = load_definitions(LIBRARY_SCHEDULES, LIBRARY_TEMPLATES)

    assert definitions.diagnostics == ()
    assert definitions.raise_for_errors() is definitions
    triggers = {name: (", ".join(t.describe() for t in j.triggers), j.purpose)
                for name, j in definitions.journeys.items()}
    assert triggers == {
        "welcome": ("patient.created", "transactional"),
        "pre-visit": ("appointment.booked", "transactional"),
        "follow-up": ("appointment.completed", "transactional"),
        "win-back": ("patient.lapsed after 30d", "marketing"),
        "recovery": ("case.opened", "transactional"),
        "review-request": ("appointment.completed, patient.discharged", "marketing"),
        "referral-loop": ("referral.first_visit_booked, referral.first_visit_attended, "
                          "referral.first_visit_missed, patient.discharged", "transactional"),
        "plan-of-care": ("plan.under_scheduled", "transactional"),
        "waitlist": ("waitlist.offered", "transactional"),
    }
    assert definitions.journeys["review-request"].once_per == timedelta(weeks=26)
    assert definitions.score_steps == {("follow-up", "satisfaction-day-7"),
                                       ("follow-up", "satisfaction-day-28")}
    pre_visit = definitions.journeys["pre-visit"]
    assert [(s.id, s.when.describe(), s.channels, s.line) for s in pre_visit.steps] == [
        ("three-days-before", "3 days before at 10:00", ("sms", "email"), 10),
        ("one-day-before", "1 day before at 10:00", ("sms", "email"), 15),
        ("two-hours-before", "2h before", ("sms",), 24),
    ]
    # a cancelled visit stops its own reminders only; any booking ends a win-back
    assert pre_visit.exit_on == (ExitRule("appointment.cancelled", "anchor"),)
    assert definitions.journeys["win-back"].exit_on == (ExitRule("appointment.booked",
                                                                 "patient"),)
    follow_up = definitions.journeys["follow-up"]
    nudge = follow_up.step("home-exercise-nudge")
    assert nudge is not None
    assert follow_up.exits_for(nudge) == (ExitRule("appointment.booked", "patient"),)


def test_every_shipped_sms_renders_as_gsm7_text_in_english_and_spanish(tmp_path: Path) -> None:
    """A Saturday visit ("sábado") is the hard case: SMS bodies must stay GSM-7."""
    templates = TemplateSet(LIBRARY_TEMPLATES)
    settings = load_settings(write_config(tmp_path), {})
    saturday = instant("2026-11-07T10:30:00-06:00")
    context = {**variables(saturday), "practice": practice_fields(settings),
               "unsubscribe_url": "https://tp.example/unsubscribe/TOKEN",
               "recipient": Fields({"first_name": "Ana", "is_patient": True}),
               "case": Fields({"cause": "low_score", "owner": "Jordan Ellis"}),
               "slot": Fields({"start": saturday, "therapist": "Maya Chen, DPT"})}
    # staff alerts are for staff, and referral-loop notes for referring offices: in the
    # practice's language
    shipped = sorted({(name, channel) for name, channel, _, _ in templates.files()
                      if not name.startswith(("staff/", "referral-loop/", "referrals/"))})
    # 20 for the patient journeys (with the day-before reminder and the plan-of-care
    # nudge), 4 recovery and review request, 5 replies to texts, 4 waitlist texts (offer,
    # claimed, booked, taken)
    assert len(shipped) == 33
    for name, channel in shipped:
        for wanted in ("en", "es"):
            message = templates.render(name, channel, wanted, context, CHICAGO)
            assert message.language == wanted  # every shipped template has a Spanish twin
            for text in (message.body, message.subject or "", message.html or ""):
                assert not any(space in text for space in NO_PLAIN_SPACES), message
            if channel == "sms":
                assert is_gsm7(message.body), (message.template_file, message.body)
                assert "Riverside Physical Therapy" in message.body


def test_the_shipped_welcome_links_the_intake_form_until_intake_is_complete(
        tmp_path: Path) -> None:
    """The email carries the patient's own link (with their token); the text, to stay one
    segment, the practice's form; neither once the patient's intake is complete."""
    templates = TemplateSet(LIBRARY_TEMPLATES)
    settings = load_settings(write_config(tmp_path), {})
    own = "https://riversidept.example/intake?patient=TOKEN"
    for intake_link in (own, ""):
        base = variables(instant("2026-11-09T10:30:00-06:00"))
        context = {**base, "practice": practice_fields(settings),
                   "patient": Fields({"first_name": "Ana", "last_name": "Reyes",
                                      "custom": Fields({}), "booking_link": "",
                                      "intake_link": intake_link}),
                   "recipient": Fields({"first_name": "Ana", "is_patient": True}),
                   "unsubscribe_url": None}
        for language in ("en", "es"):
            email = templates.render("welcome/welcome", "email", language, context, CHICAGO)
            text = templates.render("welcome/welcome", "sms", language, context, CHICAGO)
            assert (own in email.body) == bool(intake_link)
            assert (f'href="{own}"' in (email.html or "")) == bool(intake_link)
            assert ("riversidept.example/intake" in text.body) == bool(intake_link)
            assert "TOKEN" not in text.body


# --------------------------------------------------------------------------- journey diagnostics


@pytest.mark.parametrize(("old", "new", "line"), [
    pytest.param("    channels: [sms]", "   channels: [sms]", 7, id="bad-indent"),
    pytest.param("journey: reminders\n", "journey: reminders\n  when: now\n", 3,
                 id="stray-indented-key"),
    pytest.param("    template: reminders/two-hours-before",
                 '    template: "reminders/two-hours-before', 8, id="unclosed-quote"),
])
def test_a_yaml_syntax_error_names_the_line_of_the_problem(
        tmp_path: Path, old: str, new: str, line: int) -> None:
    text = edit(JOURNEY, old, new) + "  - id: later\n    when: immediately\n" \
        "    channels: [sms]\n    template: reminders/later\n"
    path, found, loaded = load_one(tmp_path, text)

    assert not loaded
    assert len(found) == 1
    (problem,) = found
    assert (problem.file, problem.line, problem.code) == (str(path), line, "yaml")
    assert problem.message.startswith("YAML syntax error: ")
    assert problem.fix == "check indentation, colons and quotes on this line and the one above"


# (old, new, line, message, fix — None when the hint is part of the message)
JOURNEY_MISTAKES = [
    pytest.param("    channels:", "    chanels:", 7,
                 "unknown key 'chanels' in step 'two-hours-before'",
                 "did you mean 'channels'?", id="step-key-typo"),
    pytest.param("steps:", "exit_of: [appointment.cancelled]\nsteps:", 4,
                 "unknown key 'exit_of' at the top level", "did you mean 'exit_on'?",
                 id="top-level-key-typo"),
    pytest.param("trigger: appointment.booked\n", "trigger: appointment.boked\n", 3,
                 "unknown trigger event 'appointment.boked'",
                 "did you mean 'appointment.booked'?", id="trigger-typo"),
    pytest.param("trigger: appointment.booked\n", "trigger: satisfaction.high\n", 3,
                 "trigger satisfaction.high is no longer allowed: asking for reviews only "
                 "after a high score is review gating (Google's review policy; FTC 16 CFR "
                 "465)",
                 "ask every patient at a visit milestone: `trigger: [appointment.completed, "
                 "patient.discharged]` with `only_if: \"appointment.visit_number == 6\"` "
                 "(see schedules/review-request.yaml)", id="review-gating-trigger"),
    pytest.param("trigger: appointment.booked\n", "trigger: patient.lapsed\n", 3,
                 "patient.lapsed needs to know how long without a visit",
                 "write `trigger: {event: patient.lapsed, after: 30d}`",
                 id="lapsed-without-after"),
    pytest.param("steps:", "exit_on: [appointment.canceled]\nsteps:", 4,
                 "unknown exit event 'appointment.canceled'",
                 "did you mean 'appointment.cancelled'?", id="exit-event-typo"),
    pytest.param("{before: 2h}", "{days_before: 2}", 6,
                 "when: days_before needs a local time",
                 'write {days_before: 2, at: "10:00"}', id="days-before-without-at"),
    pytest.param("{before: 2h}", "{before: 2x}", 6,
                 "when: '2x' is not a duration",
                 "write a number and a unit, e.g. 90m, 2h, 3d or 1w", id="bad-duration"),
    pytest.param("{before: 2h}", '{before: 2h, at: "10:00"}', 6,
                 "when: 'at' goes with days_before, not before",
                 'write {days_before: 1, at: "10:00"}', id="before-with-at"),
    pytest.param("trigger:", "purpose: transactionl\ntrigger:", 3,
                 "purpose must be transactional or marketing, not 'transactionl'",
                 "did you mean 'transactional'?", id="purpose-typo"),
    pytest.param("version: 1\n", "", 1, "missing 'version'",
                 "write `version: 1` on the first line", id="missing-version"),
    pytest.param("[sms]", "[sms, fax]", 7,
                 "channels must be a list of sms and/or email, not 'fax'",
                 "write e.g. `channels: [sms, email]`", id="unknown-channel"),
]


@pytest.mark.parametrize(("old", "new", "line", "message", "fix"), JOURNEY_MISTAKES)
def test_a_journey_mistake_is_reported_at_its_line_with_a_fix(
        tmp_path: Path, old: str, new: str, line: int, message: str, fix: str | None) -> None:
    # timed `immediately` so that a broken trigger has nothing else to complain about
    base = JOURNEY if "before" in old else edit(JOURNEY, "{before: 2h}", "immediately")
    path, found, loaded = load_one(tmp_path, edit(base, old, new))

    assert not loaded, "a journey with an error must be left out"
    first = found[0]
    assert (first.file, first.line, first.message) == (str(path), line, message)
    if fix is not None:
        assert first.fix == fix
    assert str(first).startswith(f"{path}:{line}: {message}")


def test_a_duplicate_step_id_is_reported_on_the_second_with_the_first_line(
        tmp_path: Path) -> None:
    text = JOURNEY + ("  - id: two-hours-before\n    when: {before: 3h}\n"
                      "    channels: [sms]\n    template: reminders/three-hours-before\n")
    path, found, loaded = load_one(tmp_path, text)

    assert not loaded
    assert [(d.file, d.line, d.message, d.fix, d.code) for d in found] == [
        (str(path), 9, "duplicate step id 'two-hours-before' (first at line 5)",
         "give each step a unique id", "duplicate-step")]


def test_days_before_needs_a_journey_triggered_by_a_booking(tmp_path: Path) -> None:
    text = edit(edit(JOURNEY, "appointment.booked", "appointment.completed"),
                "{before: 2h}", '{days_before: 1, at: "10:00"}')
    _, found, loaded = load_one(tmp_path, text)

    assert not loaded
    assert [(d.line, d.message, d.fix) for d in found] == [
        (6, "'days_before' needs an upcoming appointment, but appointment.completed has none",
         "time the step with after/days_after, or trigger on appointment.booked")]


def test_a_trigger_typo_is_reported_once_not_also_on_the_steps(tmp_path: Path) -> None:
    _, found, _ = load_one(tmp_path, edit(JOURNEY, "appointment.booked", "appointment.boked"))

    assert [(d.line, d.message) for d in found] == [
        (3, "unknown trigger event 'appointment.boked'")]


def test_channels_written_as_a_word_asks_for_a_list(tmp_path: Path) -> None:
    _, found, _ = load_one(tmp_path, edit(JOURNEY, "[sms]", "sms"))

    assert [(d.line, d.fix) for d in found] == [(7, "write e.g. `channels: [sms]`")]


@pytest.mark.parametrize(("old", "new"), [
    ("{before: 2h}", "{days_before: 2}"),
    ("{before: 2h}", "{before: 2x}"),
    ("{before: 2h}", '{before: 2h, at: "10:00"}'),
    ("    template:", "    expires_after: soon\n    template:"),
])
def test_every_journey_diagnostic_carries_a_fix(tmp_path: Path, old: str, new: str) -> None:
    _, found, _ = load_one(tmp_path, edit(JOURNEY, old, new))

    assert found
    assert all(d.fix for d in found), [str(d) for d in found]


def test_exit_scope_defaults_to_the_anchor_for_its_own_appointment_else_the_patient() -> None:
    every_exit = ("[appointment.cancelled, appointment.booked, appointment.completed, "
                  "appointment.no_show, appointment.rescheduled]")
    booked = edit(JOURNEY, "steps:", f"exit_on: {every_exit}\nsteps:")
    journey, found = parse_journey(booked, "reminders.yaml")
    assert found == [] and journey is not None
    assert {rule.event: rule.scope for rule in journey.exit_on} == {
        "appointment.cancelled": "anchor", "appointment.booked": "patient",
        "appointment.completed": "anchor", "appointment.no_show": "anchor",
        "appointment.rescheduled": "anchor"}

    # a step's own exit_on follows the same rule; an explicit scope wins
    step_exits = edit(JOURNEY, "    template: reminders/two-hours-before",
                      "    template: reminders/two-hours-before\n    exit_on: "
                      "[appointment.cancelled, {event: appointment.completed, scope: patient}]")
    journey, found = parse_journey(step_exits, "reminders.yaml")
    assert found == [] and journey is not None
    assert journey.exit_on == ()
    assert journey.exits_for(journey.steps[0]) == (
        ExitRule("appointment.cancelled", "anchor"), ExitRule("appointment.completed",
                                                              "patient"))

    patient_triggered = edit(edit(booked, "appointment.booked\n", "patient.created\n"),
                             "{before: 2h}", "{after: 1d}")
    journey, found = parse_journey(patient_triggered, "welcome.yaml")
    assert found == [] and journey is not None
    assert {rule.scope for rule in journey.exit_on} == {"patient"}
    assert len(journey.exit_on) == 5


def test_a_broken_file_is_left_out_and_the_other_journeys_still_load(tmp_path: Path) -> None:
    schedules = write_files(tmp_path / "schedules", {
        "a-good.yaml": JOURNEY,
        "b-typo.yaml": edit(edit(JOURNEY, "reminders\n", "typo\n"), "appointment.booked",
                            "appointment.boked").replace("{before: 2h}", "immediately"),
        "c-syntax.yaml": edit(JOURNEY, "    channels: [sms]", "   channels: [sms]"),
        "d-empty.yaml": "",
        "e-copy.yml": JOURNEY,
    })
    (schedules / "f-latin1.yaml").write_bytes("version: 1\njourney: café\n".encode("latin-1"))
    templates = write_files(tmp_path / "templates",
                            {"reminders/two-hours-before.sms.j2": SMS_TEMPLATE})

    definitions = load_definitions(schedules, templates)  # never raises on bad files

    assert list(definitions.journeys) == ["reminders"]
    assert definitions.journeys["reminders"].file == str(schedules / "a-good.yaml")
    problems = [(Path(d.file).name, d.line, d.message) for d in definitions.errors]
    assert [(name, line) for name, line, _ in problems] == [
        ("b-typo.yaml", 3), ("c-syntax.yaml", 7), ("d-empty.yaml", 1), ("e-copy.yml", 2),
        ("f-latin1.yaml", None)]
    assert problems[3][2] == (f"journey 'reminders' is already defined in "
                              f"{schedules / 'a-good.yaml'}")
    assert problems[4][2].startswith("cannot read the file: ")

    with pytest.raises(DefinitionError) as raised:
        definitions.raise_for_errors()
    message = raised.value.message
    assert message.startswith("5 problems in schedules or templates (run `touchpoint "
                              "validate`):\n")
    assert message.splitlines()[1:] == [str(d) for d in definitions.errors]
    assert raised.value.diagnostics == tuple(definitions.errors)


def test_a_step_channel_without_a_template_file_names_the_expected_path(tmp_path: Path) -> None:
    schedules = write_files(tmp_path / "schedules", {
        "reminders.yaml": edit(JOURNEY, "[sms]", "[sms, email]")})
    templates = write_files(tmp_path / "templates", {
        "reminders/two-hours-before.sms.j2": SMS_TEMPLATE,
        # a Spanish variant is not a default: English readers would get nothing
        "reminders/two-hours-before.es.email.j2":
            "{% block subject %}Hola{% endblock %}{% block text %}Hola{% endblock %}",
    })

    definitions = load_definitions(schedules, templates)

    expected = templates / "reminders" / "two-hours-before.email.j2"
    assert [d.as_dict() for d in definitions.errors] == [{
        "file": str(schedules / "reminders.yaml"), "line": 5, "severity": "error",
        "code": "missing-template",
        "message": f"step 'two-hours-before' sends email but {expected} does not exist",
        "fix": "create that file or remove email from the step's channels"}]
    with pytest.raises(DefinitionError, match="1 problem in schedules"):
        definitions.raise_for_errors()


# --------------------------------------------------------------------------- template checks


@pytest.mark.parametrize(("name", "source", "expected"), [
    pytest.param("t/syntax.sms.j2",
                 "Hi {{ patient.first_name }},\nsee you at {{ appointment.start | time }\n",
                 [(2, "template syntax error: unexpected '}'",
                   "check the {{ }} and {% %} tags on this line")], id="jinja-syntax"),
    pytest.param("t/field.sms.j2", "{{ practice.name }}:\nHi {{ patient.frist_name }}!\n",
                 [(2, "'patient' has no field 'frist_name'", "did you mean 'first_name'?")],
                 id="field-typo"),
    pytest.param("t/name.sms.j2", "{{ practice.name }}:\n\nHi {{ pateint.first_name }}!\n",
                 [(3, "unknown variable 'pateint'", "did you mean 'patient'?")],
                 id="variable-typo"),
    pytest.param("t/locals.sms.j2",
                 "{% set greeting = 'Hi' %}{{ greeting }} {{ patient.first_name }}\n"
                 "{% for link in [practice.links.intake] %}{{ loop.index }}. {{ link }}"
                 "{% endfor %}\n{{ patient.custom.referral_source }} "
                 "{{ practice.links.anything }} {{ unsubscribe_url }}\n",
                 [], id="locals-and-open-tables-are-fine"),
    pytest.param("t/no-subject.email.j2", "{% block text %}Hi{% endblock %}",
                 [(1, "email template has no subject block",
                   "add {% block subject %}…{% endblock %}")], id="email-without-subject"),
    pytest.param("t/no-text.email.j2",
                 "{% block subject %}Hi{% endblock %}{% block html %}<p>Hi</p>{% endblock %}",
                 [(1, "email template has no text block", "add {% block text %}…{% endblock %}")],
                 id="email-without-text"),
    pytest.param("t/sneaky.sms.j2", "{{ patient.__class__ }}",
                 [(1, "'patient' has no field '__class__'",
                   "patient has: id, first_name, last_name, full_name, language, timezone, "
                   "custom, discharged_on, booking_link, intake_link")],
                 id="dunder-access"),
])
def test_template_findings_name_the_file_and_line(
        tmp_path: Path, name: str, source: str, expected: list[tuple[int, str, str]]) -> None:
    templates = write_files(tmp_path / "templates", {name: source})

    definitions = load_definitions(write_files(tmp_path / "schedules", {}), templates)

    assert [(d.file, d.line, d.message, d.fix) for d in definitions.diagnostics] == [
        (str(templates / name), *finding) for finding in expected]


# --------------------------------------------------------------------------- rendering


@pytest.fixture
def rendering(tmp_path: Path) -> TemplateSet:
    when = ("{{ appointment.start | date }}|{{ appointment.start | short_date }}|"
            "{{ appointment.start | time }}|{{ appointment.start | weekday }}|"
            "{{ appointment.start | datetime }}")
    folder = write_files(tmp_path / "templates", {
        "t/hello.sms.j2": "default", "t/hello.es.sms.j2": "es", "t/hello.es-MX.sms.j2": "es-MX",
        "t/bye.sms.j2": "default", "t/bye.es.sms.j2": "es",
        "t/only.sms.j2": "default",
        "t/when.sms.j2": when, "t/when.es.sms.j2": when,
        "t/when.email.j2": f"{{% block subject %}}{when}{{% endblock %}}"
                           "{% block text %}.{% endblock %}",
        "t/when.es.email.j2": f"{{% block subject %}}{when}{{% endblock %}}"
                              "{% block text %}.{% endblock %}",
        "t/mail.email.j2": (
            "{% block subject %}\n  Welcome,\n\n   {{ patient.first_name }}  \n{% endblock %}\n"
            "{% block text %}\nHi {{ patient.first_name }},\n\n\n\nbye   \n{% endblock %}\n"
            "{% block html %}<p>Hi {{ patient.first_name }}</p>{% endblock %}\n"),
        "t/strict.sms.j2": "Hi\n{{ patient.frist_name }}",
        "t/strict.email.j2": "{% block subject %}Hi{% endblock %}"
                             "{% block text %}{{ appointment.start }}{% endblock %}",
        "t/no-appointment.sms.j2": "See you at {{ appointment.start | time }}",
        "t/not-a-date.sms.j2": "Hi {{ patient.first_name | date }}",
        "t/class.sms.j2": "{{ patient.__class__ }}",
        "t/mro.sms.j2": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "t/private.sms.j2": "{{ patient._values }}",
    })
    return TemplateSet(folder, default_language="en")


@pytest.mark.parametrize(("name", "language", "body", "used"), [
    ("t/hello", "es-MX", "es-MX", "es-MX"),
    ("t/hello", "es_MX", "es-MX", "es-MX"),
    ("t/bye", "es-MX", "es", "es"),
    ("t/only", "es-MX", "default", "en"),
    ("t/hello", "fr", "default", "en"),
    ("t/hello", None, "default", "en"),
    ("t/hello", "ES", "es", "es"),
])
def test_language_falls_back_from_region_to_language_to_the_default_file(
        rendering: TemplateSet, name: str, language: str | None, body: str, used: str) -> None:
    message = rendering.render(name, "sms", language, variables(), CHICAGO)

    assert (message.body, message.language) == (body, used)


@pytest.mark.parametrize(("start", "language", "zone", "expected"), [
    # DST ends in the US on Sunday 2026-11-01: 10:00 local is 15:00Z before, 16:00Z after
    ("2026-10-30T15:00:00+00:00", "en", CHICAGO,
     "Friday, October 30|Fri, Oct 30|10:00 AM|Friday|Friday, October 30, 10:00 AM"),
    ("2026-11-01T16:00:00+00:00", "en", CHICAGO,
     "Sunday, November 1|Sun, Nov 1|10:00 AM|Sunday|Sunday, November 1, 10:00 AM"),
    ("2026-11-03T16:00:00+00:00", "en", CHICAGO,
     "Tuesday, November 3|Tue, Nov 3|10:00 AM|Tuesday|Tuesday, November 3, 10:00 AM"),
    ("2026-10-30T15:00:00+00:00", "es", CHICAGO,
     "viernes, 30 de octubre|vie, 30 oct|10:00|viernes|viernes, 30 de octubre, 10:00"),
    ("2026-11-03T16:00:00+00:00", "es", CHICAGO,
     "martes, 3 de noviembre|mar, 3 nov|10:00|martes|martes, 3 de noviembre, 10:00"),
    # the recipient's timezone, not the practice's: 10:00 in Chicago is 8:00 in Los Angeles
    ("2026-11-03T16:00:00+00:00", "en", ZoneInfo("America/Los_Angeles"),
     "Tuesday, November 3|Tue, Nov 3|8:00 AM|Tuesday|Tuesday, November 3, 8:00 AM"),
    # a 00:30 UTC instant is still the previous evening in Chicago
    ("2026-11-04T00:30:00+00:00", "en", CHICAGO,
     "Tuesday, November 3|Tue, Nov 3|6:30 PM|Tuesday|Tuesday, November 3, 6:30 PM"),
])
@pytest.mark.parametrize("channel", ["sms", "email"])
def test_date_filters_use_the_recipients_zone_and_language_with_plain_spaces(
        rendering: TemplateSet, channel: str, start: str, language: str, zone: ZoneInfo,
        expected: str) -> None:
    message = rendering.render("t/when", channel, language, variables(instant(start)), zone)

    assert (message.body if channel == "sms" else message.subject) == expected


def test_weekday_names_are_folded_to_gsm7_in_sms_but_not_in_email(
        rendering: TemplateSet) -> None:
    saturday = variables(instant("2026-11-07T16:00:00+00:00"))

    sms = rendering.render("t/when", "sms", "es", saturday, CHICAGO)
    email = rendering.render("t/when", "email", "es", saturday, CHICAGO)

    assert sms.body == ("sabado, 7 de noviembre|sab, 7 nov|10:00|sabado|"
                        "sabado, 7 de noviembre, 10:00")
    assert is_gsm7(sms.body)
    assert email.subject == ("sábado, 7 de noviembre|sáb, 7 nov|10:00|sábado|"
                             "sábado, 7 de noviembre, 10:00")


REMINDER = ("{{ practice.name }}: Hola {{ patient.first_name }}, le esperamos manana a las "
            "10:00. Responda C para confirmar, R para cambiar. {{ practice.phone }}. STOP "
            "para salir")


@pytest.mark.parametrize(("template", "first_name", "expected"), [
    # 3 segments in UCS-2 with the accent, 1 in GSM-7 without: the name is folded
    (REMINDER, "Lucía", "Hola Lucia, le esperamos"),
    # fits one UCS-2 segment anyway: the name keeps its accent
    ("Hola {{ patient.first_name }}, hasta manana. STOP para salir", "Lucía", "Hola Lucía,"),
    # the template's own words force UCS-2 whatever the name: nothing is changed
    (REMINDER.replace("manana", "en su revisión"), "Lucía",
     "Hola Lucía, le esperamos en su revisión"),
    # no GSM-7 stand-in for it: kept
    (REMINDER, "李娜", "Hola 李娜, le"),
])
def test_an_sms_value_that_would_force_ucs2_is_folded_only_when_it_saves_segments(
        tmp_path: Path, template: str, first_name: str, expected: str) -> None:
    folder = write_files(tmp_path / "templates", {"t/r.sms.j2": template,
                                                  "t/r.email.j2": (
        "{% block subject %}Hola {{ patient.first_name }}{% endblock %}"
        "{% block text %}" + template + "{% endblock %}")})
    templates = TemplateSet(folder)

    sms = templates.render("t/r", "sms", "es", variables(first_name=first_name), CHICAGO)
    email = templates.render("t/r", "email", "es", variables(first_name=first_name), CHICAGO)

    assert expected in sms.body
    assert email.subject == f"Hola {first_name}"  # email is never folded
    assert first_name in email.body


@pytest.mark.parametrize(("name", "channel", "context", "expected"), [
    ("t/strict", "sms", variables(), "t/strict.sms.j2:2: "),
    ("t/strict", "email", variables(), "t/strict.email.j2:1: "),  # appointment is None
])
def test_an_undefined_variable_fails_the_render_naming_the_file(
        rendering: TemplateSet, name: str, channel: str, context: dict[str, Any],
        expected: str) -> None:
    with pytest.raises(TemplateRenderError) as raised:
        rendering.render(name, channel, None, context, CHICAGO)

    assert raised.value.message.startswith(expected)


def test_an_undefined_variable_error_names_the_line(rendering: TemplateSet) -> None:
    with pytest.raises(TemplateRenderError) as raised:
        rendering.render("t/strict", "sms", None, variables(), CHICAGO)

    assert re.search(r"t/strict\.sms\.j2:2\b|line 2\b", raised.value.message)


@pytest.mark.parametrize("name", ["t/not-a-date", "t/no-appointment"])
def test_a_date_filter_on_a_non_date_names_the_file(rendering: TemplateSet, name: str) -> None:
    with pytest.raises(TemplateRenderError) as raised:
        rendering.render(name, "sms", None, variables(), CHICAGO)

    assert re.match(rf"{re.escape(name)}\.sms\.j2:\d+: ", raised.value.message)


def test_html_is_escaped_text_and_subject_are_not_and_the_subject_is_one_line(
        rendering: TemplateSet) -> None:
    context = variables(first_name="<script>alert(1)</script> & Co")

    message = rendering.render("t/mail", "email", None, context, CHICAGO)

    assert message.subject == "Welcome, <script>alert(1)</script> & Co"
    assert message.body == "Hi <script>alert(1)</script> & Co,\n\nbye"
    assert message.html == "<p>Hi &lt;script&gt;alert(1)&lt;/script&gt; &amp; Co</p>"
    assert message.template_file == "t/mail.email.j2"


@pytest.mark.parametrize(("name", "unsafe"), [
    ("t/class", "__class__"), ("t/mro", "__class__"), ("t/private", "_values")])
def test_the_sandbox_blocks_attribute_escapes(
        rendering: TemplateSet, name: str, unsafe: str) -> None:
    with pytest.raises(TemplateRenderError) as raised:
        rendering.render(name, "sms", None, variables(), CHICAGO)

    message = raised.value.message
    assert re.match(rf"{re.escape(name)}\.sms\.j2:\d+: ", message)
    assert f"access to attribute '{unsafe}'" in message and "unsafe" in message


# --------------------------------------------------------------------------- touchpoint validate


def validate(tmp_path: Path, schedules: Path, templates: Path, *extra: str) -> Result:
    write_config(tmp_path)
    return CliRunner().invoke(cli, ["--schedules", str(schedules), "--templates", str(templates),
                                    "validate", *extra])


def test_validate_accepts_the_shipped_library(tmp_path: Path) -> None:
    result = validate(tmp_path, LIBRARY_SCHEDULES, LIBRARY_TEMPLATES)
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"9 journeys, 0 error\(s\), \d+ warning\(s\)\.",
                        result.stdout.splitlines()[-1])

    result = validate(tmp_path, LIBRARY_SCHEDULES, LIBRARY_TEMPLATES, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["errors"] == 0
    assert report["journeys"] == ["follow-up", "plan-of-care", "pre-visit", "recovery",
                                  "referral-loop", "review-request", "waitlist", "welcome",
                                  "win-back"]
    assert report["warnings"] == len(report["diagnostics"])
    assert {d["severity"] for d in report["diagnostics"]} <= {"warning"}


def test_validate_exits_1_and_reports_each_error_in_text_and_json(tmp_path: Path) -> None:
    schedules = write_files(tmp_path / "schedules", {
        "reminders.yaml": JOURNEY,
        "typo.yaml": edit(edit(JOURNEY, "reminders\n", "typo\n"), "appointment.booked",
                          "appointment.boked").replace("{before: 2h}", "immediately"),
    })
    templates = write_files(tmp_path / "templates",
                            {"reminders/two-hours-before.sms.j2": SMS_TEMPLATE})
    broken = schedules / "typo.yaml"

    result = validate(tmp_path, schedules, templates)
    assert result.exit_code == 1
    assert (f"{broken}:3: unknown trigger event 'appointment.boked' — did you mean "
            f"'appointment.booked'?") in result.stderr.splitlines()
    assert re.fullmatch(r"1 journeys, 1 error\(s\), \d+ warning\(s\)\.",
                        result.stdout.splitlines()[-1])

    result = validate(tmp_path, schedules, templates, "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert (report["ok"], report["errors"], report["journeys"]) == (False, 1, ["reminders"])
    assert report["warnings"] == len(report["diagnostics"]) - 1
    errors = [d for d in report["diagnostics"] if d["severity"] == "error"]
    assert errors == [{
        "file": str(broken), "line": 3, "severity": "error", "code": "trigger",
        "message": "unknown trigger event 'appointment.boked'",
        "fix": "did you mean 'appointment.booked'?"}]


def test_validate_reports_a_missing_schedules_folder_instead_of_crashing(
        tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"

    result = validate(tmp_path, missing, LIBRARY_TEMPLATES, "--json")

    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["journeys"] == []
    assert [(d["file"], d["line"], d["message"]) for d in report["diagnostics"]
            if d["severity"] == "error"] == [(str(missing), None, "schedules folder not found")]

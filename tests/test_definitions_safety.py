"""Definitions cannot hang or crash the engine.

A YAML alias bomb or a huge schedule file is refused with its file (and line); a template
that would compute or write without end (``{{ 9**99999999 }}``, ``range(10**9)``, loops
inside loops, a huge text) fails with ``file:line`` within seconds, in any thread; an
unknown filter is a ``file:line`` finding of ``validate``, ``preview``, ``run`` and a
daemon's reload, not an "unexpected error"; a byte-order mark is read as nothing.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner, Result

from engine import clock
from engine.cli import cli
from engine.daemon import Daemon
from engine.definitions import load_definitions
from engine.definitions.journeys import MAX_FILE_BYTES, load_journeys
from engine.definitions.render_limits import MAX_TEXT, RenderLimit, limits, stream
from engine.definitions.templates import Fields, TemplateSet
from engine.errors import TemplateRenderError
from engine.validate import check_definitions
from tests.support import LIBRARY_SCHEDULES, LIBRARY_TEMPLATES, Clinic, write_config

CHICAGO = ZoneInfo("America/Chicago")
FIRST_LINE = ("Hi {{ patient.first_name }}, {{ practice.name }} {{ practice.phone }}. "
              "STOP to opt out\n")
SECONDS = 20  # "never hangs": each case is refused in well under this, on a busy machine

# (second line of an SMS template, what the error says)
RUNAWAY = {
    "power": ("{{ 9**99999999 }}", "digits"),
    "range": ("{% for i in range(10**9) %}x{% endfor %}", "a template may loop over at most"),
    "huge-text": ("{{ 'x' * 10**9 }}", "characters long"),
    "loops-in-loops": ("{% for i in range(99999) %}{% for j in range(99999) %}"
                       "{% endfor %}{% endfor %}", "loops went through more than"),
    "macro-calls-itself-twice": ("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}"
                                 "{% endif %}{% endmacro %}{{ f(60) }}", "took longer than"),
    "percent-width": ("{{ '%0999999999d' % 1 }}", "too large"),
    "format-width": ("{{ '{:>999999999}'.format(1) }}", "too large"),
    "center": ("{{ 'x' | center(10**9) }}", "too large"),
    "doubling": ("{% set ns = namespace(s='x') %}{% for i in range(64) %}"
                 "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}", "characters long"),
    "join": ("{{ range(99999) | join('x' * 100000) }}", "characters long"),
    # (20,000 references to one text: 2 GB joined, yet appended fast enough that the size
    # guard, not the clock, stops it even on a loaded machine)
    "join-the-same-text": ("{% set big = 'x' * 100000 %}{% set items = [] %}"
                           "{% for i in range(20000) %}{% set _ = items.append(big) %}"
                           "{% endfor %}{{ items | join }}{{ ''.join(items) }}",
                           "characters long"),
    "macro-writes-a-lot": ("{% macro m() %}{% for i in range(99999) %}{{ 'y' * 100000 }}"
                           "{% endfor %}{% endmacro %}{{ m() }}", "writes more than"),
    "piling-up": ("{% set d = {} %}{% for i in range(99999) %}"
                  "{% set _ = d.update({i: 'x' * 200000}) %}{% endfor %}", "builds more than"),
    "output": ("{% for i in range(99999) %}{{ 'y' * 100000 }}{% endfor %}",
               "the message would be"),
}


def variables() -> dict[str, object]:
    return {"patient": Fields({"first_name": "Ana", "custom": Fields({})}, "patient"),
            "practice": Fields({"name": "Riverside PT", "phone": "(312) 555-0199",
                                "links": Fields({})}, "practice"),
            "appointment": None}


def template_set(folder: Path, files: dict[str, str | bytes]) -> TemplateSet:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return TemplateSet(folder)


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("case", RUNAWAY)
def test_a_runaway_template_fails_with_its_file_and_line_within_seconds(
        tmp_path: Path, case: str) -> None:
    source, says = RUNAWAY[case]
    templates = template_set(tmp_path, {"t/x.sms.j2": FIRST_LINE + source,
                                        "t/x.email.j2": "{% block subject %}Hi{% endblock %}"
                                        "{% block text %}\n" + source + "{% endblock %}"})
    for channel in ("sms", "email"):
        started = time.monotonic()
        with pytest.raises(TemplateRenderError) as raised:
            templates.render("t/x", channel, None, variables(), CHICAGO)
        assert time.monotonic() - started < SECONDS
        assert raised.value.message.startswith(f"t/x.{channel}.j2:2: "), raised.value.message
        assert says in raised.value.message


def test_the_limits_hold_in_a_thread_other_than_the_main_one(tmp_path: Path) -> None:
    templates = template_set(tmp_path, {"t/x.sms.j2": RUNAWAY["loops-in-loops"][0]})
    errors: list[str] = []

    def render() -> None:
        try:
            templates.render("t/x", "sms", None, variables(), CHICAGO)
        except TemplateRenderError as exc:
            errors.append(exc.message)

    thread = threading.Thread(target=render)
    thread.start()
    thread.join(timeout=SECONDS)
    assert not thread.is_alive()
    assert len(errors) == 1 and errors[0].startswith("t/x.sms.j2:1: ")


def test_ordinary_templates_keep_working_within_the_limits(tmp_path: Path) -> None:
    source = ("{{ '{:,}'.format(1234567) }} {{ '%05d' % 42 }} {{ '-' * 3 }} {{ 2**10 }} "
              "{% for i in range(3) %}{{ i }}{% endfor %} {{ ['a', 'b'] | join(', ') }} "
              "{{ 'ab' | center(6) | trim }} {{ 'x' * MAX }}")
    templates = template_set(tmp_path, {"t/x.sms.j2": source.replace("MAX", str(MAX_TEXT - 40))})

    body = templates.render("t/x", "sms", None, variables(), CHICAGO).body

    assert body == "1,234,567 00042 --- 1024 012 a, b ab " + "x" * (MAX_TEXT - 40)


def test_a_streamed_message_is_still_stopped_by_the_clock() -> None:
    """The stream looks at the clock every so many pieces, not at each: pieces that keep
    coming (empty ones, so no size limit is reached) are stopped once the time is up."""
    def pieces() -> Iterator[str]:
        for _ in range(10**7):  # (without the clock: returns after a few seconds)
            yield ""

    started = time.monotonic()
    with limits(0.05), pytest.raises(RenderLimit, match="took longer than"):
        stream(pieces())
    assert time.monotonic() - started < SECONDS


# --------------------------------------------------------------------------- the commands


def practice(tmp_path: Path, second_line: str) -> tuple[list[str], Path]:
    """The shipped pre-visit journey and templates, with two-hours-before's SMS edited."""
    write_config(tmp_path)
    schedules = tmp_path / "schedules"
    schedules.mkdir()
    shutil.copy(LIBRARY_SCHEDULES / "pre-visit.yaml", schedules)
    templates = tmp_path / "message_templates"
    shutil.copytree(LIBRARY_TEMPLATES, templates)
    edited = templates / "pre-visit" / "two-hours-before.sms.j2"
    edited.write_text(FIRST_LINE + second_line + "\n", encoding="utf-8")
    return ["--schedules", str(schedules), "--templates", str(templates)], edited


def invoke(*args: str) -> tuple[Result, float]:
    started = time.monotonic()
    result = CliRunner().invoke(cli, list(args))
    return result, time.monotonic() - started


@pytest.mark.parametrize(("source", "says"), [
    RUNAWAY["power"], RUNAWAY["range"], RUNAWAY["huge-text"],
    ("{{ patient.first_name | shout }}", "unknown filter 'shout' — did you mean 'sort'?"),
    ("{% if appointment %}{{ appointment.start | shortdate }}{% endif %}",
     "unknown filter 'shortdate' — did you mean 'short_date'?"),
], ids=["power", "range", "huge-text", "unknown-filter", "unknown-filter-in-an-if"])
def test_validate_preview_and_run_report_the_file_and_line(
        tmp_path: Path, sqlite_url: str, source: str, says: str) -> None:
    options, edited = practice(tmp_path, source)
    for command in (["validate"], ["validate", "--json"],
                    ["preview", "pre-visit", "two-hours-before"],
                    ["--db", sqlite_url, "run", "--once"]):
        result, took = invoke(*options, *command)
        assert took < SECONDS, command
        assert result.exit_code == 1, (command, result.output)
        output = result.output.replace("\\/", "/")
        if "--json" in command:
            assert f'"file": "{edited}"' in output and '"line": 2' in output, output
            assert says.split(" — ")[0] in output, output
        else:
            assert f"{edited}:2: " in output, (command, output)
            assert says in output, (command, output)
        assert "unexpected error" not in output


def test_a_daemon_reload_reports_an_unknown_filter_with_file_and_line_and_keeps_running(
        database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    templates = tmp_path / "message_templates"
    shutil.copytree(LIBRARY_TEMPLATES, templates)
    clinic = Clinic(database_url, tmp_path, templates=templates)
    daemon = Daemon(clinic.settings, clinic.db, clinic.definitions, {},
                    lambda: check_definitions(clinic.settings, clock.now()).raise_for_errors(),
                    watch=False)
    edited = templates / "welcome" / "welcome.sms.j2"
    edited.write_text("{{ patient.first_name | shout }}\n", encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="touchpoint.daemon"):
        assert daemon.reload("files changed") is False
    assert f"{edited}:1: unknown filter 'shout'" in caplog.text
    assert "still running the last good ones" in caplog.text
    assert daemon.runner.definitions is clinic.definitions
    clinic.close()


# --------------------------------------------------------------------------- YAML


def test_a_yaml_alias_bomb_is_refused_quickly_at_its_line(tmp_path: Path) -> None:
    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, 10)]
    (tmp_path / "lol.yaml").write_text(
        "version: 1\njourney: lol\n" + "\n".join(levels) + "\ntrigger: *a9\nexit_on: *a9\n",
        encoding="utf-8")
    started = time.monotonic()

    journeys, found = load_journeys(tmp_path)

    assert time.monotonic() - started < SECONDS
    assert journeys == {}
    assert [(d.file, d.line, d.code) for d in found] == [
        (str(tmp_path / "lol.yaml"), 7, "yaml-aliases")]  # a4 passes 10,000 values
    assert "expand" in found[0].message and found[0].fix


def test_a_few_aliases_are_still_fine(tmp_path: Path) -> None:
    (tmp_path / "reminders.yaml").write_text(
        "version: 1\njourney: reminders\ntrigger: appointment.booked\n"
        "exit_on: &exits [appointment.cancelled]\nsteps:\n"
        "  - {id: a, when: {before: 2h}, channels: [sms], template: t/a, exit_on: *exits}\n"
        "  - {id: b, when: {before: 1h}, channels: [sms], template: t/b, exit_on: *exits}\n",
        encoding="utf-8")

    journeys, found = load_journeys(tmp_path)

    assert found == []
    assert [s.id for s in journeys["reminders"].steps] == ["a", "b"]


def test_a_huge_yaml_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("version: 1\n" + "# padding\n" * (MAX_FILE_BYTES // 10 + 1),
                    encoding="utf-8")

    journeys, found = load_journeys(tmp_path)

    assert journeys == {}
    assert [(d.file, d.code) for d in found] == [(str(path), "too-large")]
    assert f"at most {MAX_FILE_BYTES // 1024} KB" in found[0].message


# --------------------------------------------------------------------------- byte-order mark


def test_files_saved_with_a_byte_order_mark_are_read_without_it(tmp_path: Path) -> None:
    bom = "\ufeff".encode()
    schedules, templates = tmp_path / "schedules", tmp_path / "templates"
    schedules.mkdir()
    (schedules / "reminders.yaml").write_bytes(bom + (
        b"version: 1\njourney: reminders\ntrigger: appointment.booked\nsteps:\n"
        b"  - {id: soon, when: {before: 2h}, channels: [sms, email], template: t/soon}\n"
    ))
    template_set(templates, {
        "t/soon.sms.j2": bom + FIRST_LINE.encode(),
        "t/soon.email.j2": bom + b"{% block subject %}Soon{% endblock %}"
                                 b"{% block text %}See you{% endblock %}"})

    definitions = load_definitions(schedules, templates)

    assert definitions.diagnostics == ()
    sms = definitions.templates.render("t/soon", "sms", None, variables(), CHICAGO)
    assert sms.body == "Hi Ana, Riverside PT (312) 555-0199. STOP to opt out"
    email = definitions.templates.render("t/soon", "email", None, variables(), CHICAGO)
    assert (email.subject, email.body) == ("Soon", "See you")
    assert list(definitions.templates.literal_non_gsm("t/soon.sms.j2")) == []

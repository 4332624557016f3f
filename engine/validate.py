"""`touchpoint validate`: every check a practice manager's edit must pass.

Errors (the engine refuses to run with them):

* everything :func:`engine.definitions.load_definitions` finds — YAML syntax, unknown
  keys, unknown events, missing templates, duplicate steps, Jinja syntax, unknown
  variables;
* a ``practice.links.NAME`` used by a template but not set in the settings;
* a language variant that leaves out a variable its default file uses (a Spanish
  reader would miss the appointment time the English one shows).

Warnings (exit 0), checked on each SMS a step sends, rendered for the sample patient:

* longer than one segment; characters that force UCS-2 (with line and column);
* a transactional SMS without the practice's name or phone number (FCC healthcare
  exemption); a marketing SMS without STOP wording;
* fields marked sensitive (diagnosis, body part, insurance, clinical notes, visit type)
  used in an SMS (HIPAA minimum necessary).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime

from engine.definitions import Definitions, load_definitions
from engine.definitions.diagnostics import Diagnostic
from engine.definitions.journeys import Journey, iter_steps
from engine.definitions.templates import TemplateSet, format_phone
from engine.errors import TemplateRenderError
from engine.samples import sample_context
from engine.settings import Settings
from engine.sms_segments import analyse
from engine.timing import zone

SENSITIVE_FIELDS = ("diagnosis", "body_part", "insurance", "clinical_notes", "visit_type")
_STOP = re.compile(r"\bSTOP\b")


def check_definitions(settings: Settings, now: datetime) -> Definitions:
    """Load schedules and templates and run every check; diagnostics on the result."""
    definitions = load_definitions(settings.schedules_dir, settings.templates_dir,
                                   settings.practice.language)
    found = list(definitions.diagnostics)
    templates = definitions.templates
    links = list(_check_links(templates, settings))
    found.extend(links)
    found.extend(_check_variants(templates))
    if not definitions.errors and not links:  # rendering needs files that compile
        found.extend(_check_renders(definitions, settings, now))
    return Definitions(definitions.journeys, templates, tuple(found))


def _check_links(templates: TemplateSet, settings: Settings) -> Iterator[Diagnostic]:
    configured = settings.practice.links
    for _, _, _, file in templates.files():
        for name in sorted(templates.variables_used(file)):
            parts = name.split(".")
            if parts[:2] == ["practice", "links"] and len(parts) > 2 \
                    and parts[2] not in configured:
                yield Diagnostic(str(templates.path(file)), templates.line_of(file, parts[2]),
                                 f"practice.links.{parts[2]} is not set",
                                 f"add {parts[2]} = \"https://…\" under [practice.links] in "
                                 "touchpoint.toml", code="missing-link")


def _check_variants(templates: TemplateSet) -> Iterator[Diagnostic]:
    for name, channel, language, file in templates.files():
        if language is None or not templates.has(name, channel):
            continue
        default_file = templates.resolve(name, channel, None)
        assert default_file is not None
        missing = templates.variables_used(default_file[0]) - templates.variables_used(file)
        missing = {m for m in missing if "." in m}  # `appointment` alone is a guard, not data
        for variable in sorted(missing):
            yield Diagnostic(str(templates.path(file)), 1,
                             f"the {language} variant leaves out {{{{ {variable} }}}}, which "
                             f"{default_file[0]} uses",
                             "add it, so every language gets the same information",
                             code="variant-missing-variable")


def _check_renders(definitions: Definitions, settings: Settings, now: datetime,
               ) -> Iterator[Diagnostic]:
    """Render every step's templates for the sample patient, in every language.

    A render failure is an error: it would fail at send time. Journeys not about an
    appointment are also rendered with no appointment (a welcome for a patient who has
    not booked yet). Each SMS is then checked for length, encoding and required wording.
    """
    templates = definitions.templates
    seen: set[tuple[str, str, bool]] = set()
    tz = zone(settings.require("practice.timezone"))
    for journey, step in iter_steps(definitions.journeys):
        for channel in step.channels:
            for language in templates.languages(step.template, channel):
                resolved = templates.resolve(step.template, channel, language)
                if resolved is None:
                    continue
                file = resolved[0]
                where = str(templates.path(file))
                for with_appointment in {True, journey.anchored_on_appointment}:
                    key = (file, journey.purpose, with_appointment)
                    if key in seen:
                        continue
                    seen.add(key)
                    context = sample_context(settings, now, language, journey.name, step.id)
                    if not with_appointment:
                        context["appointment"] = None
                    try:
                        body = templates.render(step.template, channel, language, context,
                                                tz).body
                    except TemplateRenderError as exc:
                        situation = "" if with_appointment else \
                            f" for a patient with no upcoming appointment ({journey.name} " \
                            f"starts on {journey.trigger.event})"
                        problem, _, fix = _after_location(exc.message).partition(" — ")
                        yield Diagnostic(where, _line_of(exc.message),
                                         f"does not render{situation}: {problem}",
                                         fix or "check the variables it uses", code="render")
                        continue
                    if channel == "sms" and with_appointment:
                        yield from _check_characters(templates, file, where)
                        yield from _check_sensitive(templates, file, where)
                        yield from _check_rendered(journey, body, where, settings)


def _line_of(message: str) -> int | None:
    match = re.match(r"^[^:]+:(\d+):", message)
    return int(match.group(1)) if match else None


def _after_location(message: str) -> str:
    return re.sub(r"^[^:]+(:\d+)?: ", "", message)


def _check_characters(templates: TemplateSet, file: str, where: str) -> Iterator[Diagnostic]:
    for line, column, info in templates.literal_non_gsm(file):
        advice = f"use {info.replacement!r} instead" if info.replacement else \
            "it has no GSM-7 equivalent; remove it if you can"
        yield Diagnostic(where, line, f"the character {info.char} ({info.name}) at column "
                         f"{column} forces UCS-2: 70 characters a segment instead of 160",
                         advice, severity="warning", code="ucs2")


def _check_sensitive(templates: TemplateSet, file: str, where: str) -> Iterator[Diagnostic]:
    for variable in sorted(templates.variables_used(file)):
        field = variable.rsplit(".", 1)[-1]
        if field in SENSITIVE_FIELDS:
            yield Diagnostic(where, templates.line_of(file, field),
                             f"{variable} is marked sensitive and must not go in an SMS "
                             "(minimum necessary)", "move it to the email, or leave it out",
                             severity="warning", code="sensitive")


def _check_rendered(journey: Journey, body: str, where: str, settings: Settings,
                    ) -> Iterator[Diagnostic]:
    info = analyse(body)
    if info.segments > 1:
        limit = 160 if info.encoding == "GSM-7" else 70
        yield Diagnostic(where, 1, f"with the sample patient this SMS is {info.segments} "
                         f"segments ({info.characters} characters, {info.encoding})",
                         f"shorten it to {limit} characters to send one segment",
                         severity="warning", code="segments")
    if journey.purpose == "transactional":
        name, phone = settings.practice.name or "", settings.practice.phone or ""
        phone_shown = any(p and p in body for p in (phone, _national(phone)))
        if (name and name not in body) or (phone and not phone_shown):
            missing = " and ".join(m for m, ok in (("the practice's name", name in body),
                                                   ("its phone number", phone_shown)) if not ok)
            yield Diagnostic(where, 1, f"this transactional SMS lacks {missing}",
                             "add {{ practice.name }} and {{ practice.phone }}: the FCC "
                             "healthcare exemption needs both", severity="warning",
                             code="exemption")
    elif not _STOP.search(body):
        yield Diagnostic(where, 1, "this marketing SMS does not say how to opt out",
                         "end it with \"Reply STOP to opt out\"", severity="warning",
                         code="stop")


def _national(phone: str) -> str:
    return format_phone(phone) if phone else ""


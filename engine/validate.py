"""`touchpoint validate`: every check a practice manager's edit must pass.

Errors (the engine refuses to run with them):

* an SMS longer than :data:`SMS_MAX_CHARACTERS` (1,600) characters for the sample
  patient: Twilio refuses it (error 21617), so it could never be sent;
* a marketing email without ``{{ unsubscribe_url }}`` and ``{{ practice.address }}``;

* everything :func:`engine.definitions.load_definitions` finds — YAML syntax, unknown
  keys, unknown events, missing templates, duplicate steps, Jinja syntax, unknown
  variables;
* a ``practice.links.NAME`` used by a template but not set in the settings;
* a language variant that leaves out a variable its default file uses, or the time or
  date of the appointment the default shows (a Spanish reader would miss the appointment
  time the English one shows).

Warnings (exit 0), checked on each SMS a step sends, rendered for the sample patients
(Alexandra Rivera, and Lucía Fernández: an accented name, as real patients have):

* longer than one segment (for the sample it is longest for); characters that force
  UCS-2 (with line and column);
* a transactional SMS without the practice's name or phone number (FCC healthcare
  exemption); a marketing SMS without STOP wording;
* in exemption mode (``caps.mode``), a marketing SMS, or one over 160 characters: the
  dispatcher would not send it;
* a language variant that uses a variable its default file does not;
* fields marked sensitive (``templates.sensitive_fields``: diagnosis, body part,
  insurance, clinical notes, visit type by default) used in an SMS (HIPAA minimum
  necessary).

The command also says how many messages of the next 14 days a limit (``caps``) would
defer or skip, by journey and step, from the database's patients and appointments
(:func:`engine.forecast.forecast_limits`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import datetime

from engine.definitions import Definitions, load_definitions
from engine.definitions.diagnostics import Diagnostic
from engine.definitions.journeys import Journey, iter_steps
from engine.definitions.templates import Fields, TemplateSet, format_phone
from engine.errors import TemplateRenderError
from engine.guards import EXEMPT_SMS_LENGTH
from engine.replies import REPLY_TEMPLATES, STAFF_TEMPLATES
from engine.samples import SAMPLE_NAMES, sample_context, sample_digest
from engine.settings import Settings
from engine.sms_segments import analyse
from engine.timing import zone
from engine.waitlist_offers import OFFERED

# What the HELP reply must say about charges (CTIA), by language.
RATES_WORDING = {"en": "Msg&data rates may apply", "es": "tarifas de mensajes y datos"}
_STOP = re.compile(r"\bstop\b", re.IGNORECASE)
#: The longest SMS body Twilio accepts (longer ones are refused with error 21617).
SMS_MAX_CHARACTERS = 1600


def check_definitions(settings: Settings, now: datetime) -> Definitions:
    """Load schedules and templates and run every check; diagnostics on the result."""
    definitions = load_definitions(settings.schedules_dir, settings.templates_dir,
                                   settings.practice.language)
    found = list(definitions.diagnostics)
    templates = definitions.templates
    links = list(_check_links(templates, settings))
    found.extend(links)
    found.extend(_check_variants(templates, {d.file for d in definitions.errors}))
    found.extend(_check_marketing_email(definitions))
    found.extend(_check_referrer_fields(definitions, settings))
    if not definitions.errors and not links:  # rendering needs files that compile
        found.extend(_check_renders(definitions, settings, now))
        offers = any(j.trigger.event == OFFERED for j in definitions.journeys.values())
        found.extend(_check_system_templates(templates, settings, now, offers))
    # (a template read for the patient and for a guardian may say the same thing twice)
    return Definitions(definitions.journeys, templates, tuple(dict.fromkeys(found)))


def _check_links(templates: TemplateSet, settings: Settings) -> Iterator[Diagnostic]:
    configured = settings.practice.links
    for _, _, _, file in templates.files():
        for name, line in sorted(templates.references(file).items()):
            parts = name.split(".")
            if parts[:2] == ["practice", "links"] and len(parts) > 2 \
                    and parts[2] not in configured:
                yield Diagnostic(str(templates.path(file)), line,
                                 f"practice.links.{parts[2]} is not set",
                                 f"add {parts[2]} = \"https://…\" under [practice.links] in "
                                 "touchpoint.toml", code="missing-link")


def _check_marketing_email(definitions: Definitions) -> Iterator[Diagnostic]:
    """CAN-SPAM and Gmail/Yahoo's bulk rules: a marketing email shows how to unsubscribe
    and the practice's physical address."""
    templates = definitions.templates
    for journey, step in iter_steps(definitions.journeys):
        if journey.purpose != "marketing" or "email" not in step.channels:
            continue
        for language in templates.languages(step.template, "email"):
            resolved = templates.resolve(step.template, "email", language)
            if resolved is None:
                continue
            used = templates.variables_used(resolved[0])
            for needed, why in (("unsubscribe_url", "a visible unsubscribe link"),
                                ("practice.address", "the practice's physical address")):
                if needed not in used:
                    yield Diagnostic(str(templates.path(resolved[0])), None,
                                     f"this marketing email lacks {why} (CAN-SPAM)",
                                     f"add {{{{ {needed} }}}} to its text",
                                     code="can-spam")


def _check_referrer_fields(definitions: Definitions, settings: Settings,
                           ) -> Iterator[Diagnostic]:
    """Messages to referral sources carry the minimum necessary (name, dates, attended):
    a clinical field only if the practice lists it in referrals.allowed_fields."""
    templates = definitions.templates
    names = {(step.template, "email") for _, step in iter_steps(definitions.journeys)
             if step.recipient == "referrer"}
    if settings.referrals.monthly_digest:
        names.add(("referrals/monthly-digest", "email"))
    allowed = set(settings.referrals.allowed_fields)
    for template, channel in sorted(names):
        for language in templates.languages(template, channel):
            resolved = templates.resolve(template, channel, language)
            if resolved is None:
                continue
            for variable, line in sorted(templates.references(resolved[0]).items()):
                parts = variable.split(".")
                field = parts[-1]
                clinical = field in settings.templates.sensitive_fields \
                    or parts[:2] == ["patient", "custom"]
                if clinical and field not in allowed:
                    yield Diagnostic(str(templates.path(resolved[0])), line,
                                     f"{variable} goes to a referral source, who gets the "
                                     "minimum necessary (name, dates, attended)",
                                     f"leave it out, or allow it: referrals.allowed_fields = "
                                     f"[\"{field}\"]", code="minimum-necessary")


def _check_variants(templates: TemplateSet, broken: set[str]) -> Iterator[Diagnostic]:
    """A language variant (``x.es.sms.j2``) says what its default file says: the same
    ``{{ }}`` fields, and the time and date of the appointment wherever the default shows
    them (``| time``, ``| date`` …). A pair with a ``broken`` file (one with an error of
    its own) is compared once that error is fixed: its fields cannot be read yet."""
    for name, channel, language, file in templates.files():
        if language is None or not templates.has(name, channel):
            continue
        default_file = templates.resolve(name, channel, None)
        assert default_file is not None
        default = default_file[0]
        where = str(templates.path(file))
        if where in broken or str(templates.path(default)) in broken:
            continue
        theirs, ours = templates.references(default), templates.references(file)
        # (`appointment` alone is a guard, not data)
        for variable in sorted(v for v in theirs.keys() - ours.keys() if "." in v):
            yield Diagnostic(where, 1,
                             f"the {language} variant leaves out {{{{ {variable} }}}}, which "
                             f"{default} uses",
                             "add it, so every language gets the same information",
                             code="variant-missing-variable")
        for variable in sorted(v for v in ours.keys() - theirs.keys() if "." in v):
            yield Diagnostic(where, ours[variable],
                             f"the {language} variant uses {{{{ {variable} }}}}, which "
                             f"{default} does not", f"use the same fields in both: add it "
                             f"to {default} too, or take it out here", severity="warning",
                             code="variant-extra-variable")
        shown = templates.moments_shown(file)
        for (variable, part), line in sorted(templates.moments_shown(default).items()):
            if variable in ours and (variable, part) not in shown:
                yield Diagnostic(where, ours[variable],
                                 f"the {language} variant does not show the {part} of "
                                 f"{{{{ {variable} }}}}, which {default}:{line} shows",
                                 f"add {{{{ {variable} | {part} }}}}, so every language "
                                 f"says when", code="variant-missing-moment")


def _check_renders(definitions: Definitions, settings: Settings, now: datetime,
               ) -> Iterator[Diagnostic]:
    """Render every step's templates for the sample patient, in every language.

    A render failure is an error: it would fail at send time. Journeys not about an
    appointment are also rendered with no appointment (a welcome for a patient who has
    not booked yet). Each SMS is then checked for length, encoding and required wording.
    """
    templates = definitions.templates
    seen: set[tuple[str, str, bool, str | None]] = set()
    tz = zone(settings.require("practice.timezone"))
    for journey, step in iter_steps(definitions.journeys):
        for channel in step.channels:
            for language in templates.languages(step.template, channel):
                resolved = templates.resolve(step.template, channel, language)
                if resolved is None:
                    continue
                file = resolved[0]
                where = str(templates.path(file))
                # a step that may go to a guardian or contact is also read as they get it
                addressed = [step.recipient] + (["contacts"] if step.recipient in (
                    None, "patient_and_contacts") else [])
                for with_appointment, recipient in {(w, r) for r in addressed for w in (
                        True, journey.anchored_on_appointment)}:
                    key = (file, journey.purpose, with_appointment, recipient)
                    if key in seen:
                        continue
                    seen.add(key)
                    context = sample_context(settings, now, language, journey.name, step.id,
                                             recipient)
                    if not with_appointment:
                        context["appointment"] = None
                    try:
                        body = templates.render(step.template, channel, language, context,
                                                tz).body
                    except TemplateRenderError as exc:
                        seen.update((file, journey.purpose, w, r)  # one finding is enough
                                    for w in (True, False) for r in addressed)
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
                        yield from _check_sensitive(templates, file, where,
                                                    settings.templates.sensitive_fields)
                        sample, body = _longest(body, (
                            (f"the sample patient {' '.join(name)}", templates.render(
                                step.template, channel, language, sample_context(
                                    settings, now, language, journey.name, step.id,
                                    recipient, name), tz).body)
                            for name in SAMPLE_NAMES[1:]))
                        yield from _check_rendered(journey, body, where, settings, sample)
                        yield from _check_exemption(journey, body, where, settings)


def _check_system_templates(templates: TemplateSet, settings: Settings, now: datetime,
                            offers: bool) -> Iterator[Diagnostic]:
    """Replies to patients' texts and staff alerts: present, renderable (the patient and
    the appointment may be unknown), within one segment, and HELP says what it must.
    ``offers``: a journey sends waitlist offers, so a yes needs its answers."""
    tz = zone(settings.require("practice.timezone"))
    wanted = [("replies", name, "sms") for name in REPLY_TEMPLATES]
    if offers:  # answers to a yes to a waitlist offer (docs/waitlist.md)
        wanted += [("waitlist", name, "sms") for name in ("claimed", "booked", "taken")]
    if settings.practice.staff_email:
        wanted += [("staff", name, "email") for name in STAFF_TEMPLATES]
    if settings.recovery.owner_email or settings.practice.staff_email:
        wanted += [("staff", "recovery-case", "email"), ("staff", "recovery-escalation", "email")]
    if settings.recovery.owner_phone:
        wanted += [("staff", "recovery-case", "sms")]
    if settings.referrals.monthly_digest:
        wanted += [("referrals", "monthly-digest", "email")]
    for folder, name, channel in wanted:
        template = f"{folder}/{name}"
        if not templates.has(template, channel):
            yield Diagnostic(str(templates.directory / f"{template}.{channel}.j2"), None,
                             f"missing the {channel} template for '{name}' "
                             "(replies to patients)" if folder in ("replies", "waitlist")
                             else "(staff)",
                             "copy it from the shipped message_templates/", code="missing-template")
            continue
        for language in templates.languages(template, channel):
            resolved = templates.resolve(template, channel, language)
            assert resolved is not None
            file = str(templates.path(resolved[0]))
            for known in (True, False):
                context = sample_context(settings, now, language)
                context["reply"] = Fields({"body": "Can we move it to Friday?",
                                           "from": "+1•••••••42", "received_at": now,
                                           "flag": "", "due_at": None}, "reply")
                context["digest"] = sample_digest(now, settings)
                if not known:
                    context["patient"] = context["appointment"] = None
                try:
                    body = templates.render(template, channel, language, context, tz).body
                except TemplateRenderError as exc:
                    unknown = "" if known else " when the patient is not known"
                    problem, _, fix = _after_location(exc.message).partition(" — ")
                    yield Diagnostic(file, _line_of(exc.message),
                                     f"does not render{unknown}: {problem}",
                                     fix or "guard it with {% if patient %}", code="render")
                    break
                if channel != "sms" or not known:
                    continue
                yield from _check_sms_length(body, file)
                info = analyse(body)
                if info.segments > 1:
                    yield Diagnostic(file, 1, f"this reply is {info.segments} segments "
                                     f"({info.characters} characters, {info.encoding})",
                                     "shorten it to one segment", severity="warning",
                                     code="segments")
                if name == "help":
                    rates = RATES_WORDING.get((language or "").split("-")[0],
                                              RATES_WORDING["en"])
                    for needed in ("STOP", rates):
                        if needed not in body:
                            yield Diagnostic(file, 1, f"the HELP reply must say \"{needed}\""
                                             " (CTIA)", f"add \"{needed}\"",
                                             code="help-wording")


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


def _check_sensitive(templates: TemplateSet, file: str, where: str,
                     sensitive: tuple[str, ...]) -> Iterator[Diagnostic]:
    for variable, line in sorted(templates.references(file).items()):
        if any(part in sensitive for part in variable.split(".")[1:]):
            yield Diagnostic(where, line,
                             f"{variable} is marked sensitive and must not go in an SMS "
                             "(minimum necessary)", "move it to the email, or leave it out",
                             severity="warning", code="sensitive")


def _check_sms_length(body: str, where: str) -> Iterator[Diagnostic]:
    if len(body) > SMS_MAX_CHARACTERS:
        # the line of the text (as rendered) where it passes the limit
        line = body[:SMS_MAX_CHARACTERS].count("\n") + 1
        yield Diagnostic(where, line, f"with the sample patient this SMS is {len(body):,} "
                         f"characters, over the {SMS_MAX_CHARACTERS:,} Twilio accepts; it "
                         f"passes the limit at line {line}",
                         "shorten it, or move the detail to the email", code="sms-length")


def _longest(body: str, others: Iterable[tuple[str, str]]) -> tuple[str, str]:
    """(which sample, text) of the SMS that takes the most segments: the default sample's
    unless another sample patient's name (Lucía Fernández) makes theirs longer."""
    worst = ("the sample patient", body)
    for sample, text in others:
        if analyse(text).segments > analyse(worst[1]).segments:
            worst = (sample, text)
    return worst


def _check_rendered(journey: Journey, body: str, where: str, settings: Settings,
                    sample: str = "the sample patient") -> Iterator[Diagnostic]:
    yield from _check_sms_length(body, where)
    info = analyse(body)
    if info.segments > 1:
        limit = 160 if info.encoding == "GSM-7" else 70
        yield Diagnostic(where, 1, f"with {sample} this SMS is {info.segments} "
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
    if not _STOP.search(body):
        yield Diagnostic(where, 1, f"this {journey.purpose} SMS does not say how to opt out",
                         "end it with \"Reply STOP to opt out\"", severity="warning",
                         code="stop")


def _check_exemption(journey: Journey, body: str, where: str, settings: Settings,
                     ) -> Iterator[Diagnostic]:
    """In exemption mode (``caps.mode``) a text goes only if it is exempt: transactional,
    at most 160 characters; the dispatcher refuses the others."""
    if settings.caps.mode != "exemption":
        return
    if journey.purpose == "marketing":
        yield Diagnostic(where, 1, "in exemption mode marketing texts are never sent",
                         "send this journey by email, or set caps.mode = \"consent\" if "
                         "patients gave their consent", severity="warning", code="exemption")
    elif len(body) > EXEMPT_SMS_LENGTH:
        yield Diagnostic(where, 1, f"with the sample patient this SMS is {len(body)} "
                         f"characters: in exemption mode a text over {EXEMPT_SMS_LENGTH} is "
                         "not sent (the step's next channel is used, or it is skipped)",
                         f"shorten it to {EXEMPT_SMS_LENGTH} characters", severity="warning",
                         code="exemption")


def _national(phone: str) -> str:
    return format_phone(phone) if phone else ""


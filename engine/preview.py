"""`touchpoint preview` and `test-send`: exactly what a patient would receive, before it goes.

For the built-in sample, every channel of the step and every language it has templates
for is rendered. For a real patient (``--patient ID``) the step's real recipients are
resolved as the planner and dispatcher resolve them (engine/recipients.py: a minor's
parent, the patient's contacts, the referring office) and each is rendered as they would
get it — their language, their timezone, ``recipient.*`` — or shown as skipped, with the
reason (``no_guardian``, ``no_consent``). The send time is computed by the planner's own
rules (the recipient's timezone, quiet hours, the deadline), and each SMS shows its
encoding and segment count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from engine import patient_links
from engine.channels.base import Channel, OutboundMessage
from engine.definitions import Definitions
from engine.definitions.diagnostics import did_you_mean
from engine.definitions.journeys import Journey, Step
from engine.dispatcher import Dispatcher, caps_from
from engine.domain import Appointment, Patient, Recipient
from engine.errors import NotFound, TemplateRenderError, UserError
from engine.guards import FrequencyCaps, address_for, channel_refusal
from engine.importer import normalise_email, normalise_phone
from engine.message_context import message_context, practice_fields
from engine.planner import Anchor, PlanningRules, appointment_anchor, deadline, due_time
from engine.privacy import mask_address
from engine.recipients import PATIENT, addressees, resolve
from engine.samples import sample_appointment, sample_context
from engine.settings import Settings
from engine.sms_segments import analyse
from engine.store import ledger
from engine.store.database import Database
from engine.store.ledger import TouchPoint
from engine.store.records import (
    appointments_of,
    load_contacts,
    load_referrers,
    patient_by_external_id,
    visit_numbers,
)
from engine.timing import zone


@dataclass(frozen=True)
class RenderedPreview:
    channel: str
    language: str
    template_file: str
    body: str = ""
    subject: str | None = None
    html: str | None = None
    segments: dict[str, Any] | None = None
    problems: tuple[str, ...] = ()
    error: str | None = None
    note: str | None = None  # e.g. "no SMS consent: email would be used"


@dataclass
class RecipientPreview:
    """One recipient of the step: who, when, and what they would get (or why nothing)."""

    recipient: str  # "P1 Olivia Park", "parent Rachel (contact C1) for P1 Olivia Park", …
    key: str  # the ledger's recipient column: patient, contact:<id>, referrer:<id>
    timezone: str
    when: str
    due_at: datetime | None
    status: str  # planned, too_late, not_planned, or skipped (``reason`` says why)
    reason: str | None = None
    messages: list[RenderedPreview] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "recipient": self.recipient, "key": self.key, "timezone": self.timezone,
            "when": self.when, "due_at": self.due_at.isoformat() if self.due_at else None,
            "status": self.status, "reason": self.reason,
            "messages": [{
                "channel": m.channel, "language": m.language, "template": m.template_file,
                "subject": m.subject, "body": m.body, "html": m.html, "segments": m.segments,
                "problems": list(m.problems), "error": m.error, "note": m.note,
            } for m in self.messages],
        }


@dataclass
class Preview:
    """A step's preview: one entry per recipient (the sample patient: one, every language).
    ``recipient``, ``when``, ``messages``, … are the first recipient's."""

    journey: str
    step: str
    purpose: str
    recipients: list[RecipientPreview]

    @property
    def first(self) -> RecipientPreview:
        return self.recipients[0]

    @property
    def recipient(self) -> str:
        return self.first.recipient

    @property
    def timezone(self) -> str:
        return self.first.timezone

    @property
    def when(self) -> str:
        return self.first.when

    @property
    def due_at(self) -> datetime | None:
        return self.first.due_at

    @property
    def status(self) -> str:
        return self.first.status

    @property
    def messages(self) -> list[RenderedPreview]:
        return [m for r in self.recipients for m in r.messages]

    def as_dict(self) -> dict[str, Any]:
        first = self.first.as_dict()
        return {"journey": self.journey, "step": self.step, "purpose": self.purpose,
                **{k: first[k] for k in ("recipient", "timezone", "when", "due_at", "status",
                                         "messages")},
                "recipients": [r.as_dict() for r in self.recipients]}


def find_step(definitions: Definitions, journey_name: str, step_id: str) -> tuple[Journey, Step]:
    journey = definitions.journey(journey_name)
    if journey is None:
        hint = did_you_mean(journey_name, definitions.journeys,
                            f"journeys: {', '.join(sorted(definitions.journeys))}")
        raise NotFound(f"no journey '{journey_name}' — {hint}")
    step = journey.step(step_id)
    if step is None:
        ids = [s.id for s in journey.steps]
        raise NotFound(f"journey {journey_name} has no step '{step_id}' — "
                       f"{did_you_mean(step_id, ids, 'steps: ' + ', '.join(ids))}")
    return journey, step


def _anchor_appointment(conn: Connection, journey: Journey, patient: Patient,
                        now: datetime) -> Appointment | None:
    visits = appointments_of(conn, patient.id)
    trigger = journey.trigger.event
    if trigger == "appointment.booked":
        upcoming = [a for a in visits if a.status == "booked" and a.start_at > now]
        return upcoming[0] if upcoming else None
    wanted = {"appointment.completed": "completed", "appointment.no_show": "no_show",
              "appointment.cancelled": "cancelled"}.get(trigger)
    if wanted is None:
        upcoming = [a for a in visits if a.status == "booked" and a.start_at > now]
        return upcoming[0] if upcoming else None
    past = [a for a in visits if a.status == wanted]
    return past[-1] if past else None


def preview(definitions: Definitions, settings: Settings, journey_name: str, step_id: str,
            now: datetime, conn: Connection | None = None,
            patient_id: str | None = None) -> Preview:
    journey, step = find_step(definitions, journey_name, step_id)
    practice_tz = settings.require("practice.timezone")
    rules = PlanningRules(settings.quiet_hours, practice_tz, settings.dispatch.default_expiry)
    if patient_id is None:
        return Preview(journey.name, step.id, journey.purpose,
                       [_sample(definitions, settings, journey, step, now, rules)])
    if conn is None:
        raise UserError("a database is needed to preview for a patient")
    patient = patient_by_external_id(conn, patient_id)
    if patient is None:
        raise NotFound(f"no patient {patient_id} — import patients first")
    appointment = _anchor_appointment(conn, journey, patient, now)
    if journey.anchored_on_appointment and appointment is None:
        raise UserError(f"patient {patient_id} has no appointment this journey could be "
                        f"about ({journey.trigger.event})")
    numbers = visit_numbers(conn, [appointment.id]) if appointment else {}
    contacts = load_contacts(conn, [patient.id]).get(patient.id, [])
    referrer = load_referrers(conn, [patient.referrer_id]).get(patient.referrer_id) \
        if patient.referrer_id is not None else None
    today = now.astimezone(zone(practice_tz)).date()
    targets = addressees(step.recipient, journey.name, journey.purpose, patient, contacts,
                         today)
    if not targets:
        raise UserError(f"{journey.name}/{step.id} addresses {step.recipient} and patient "
                        f"{patient_id} has none on file that receives {journey.name}")
    holds = True
    if step.only_if:
        condition = message_context(
            patient=patient, appointment=appointment, practice=practice_fields(settings),
            practice_timezone=practice_tz,
            visit_number=numbers.get(appointment.id) if appointment else None)
        try:
            holds = bool(definitions.templates.compile_expression(step.only_if)(**condition))
        except Exception:  # the same expression fails at planning, which skips the step
            holds = False
    result = Preview(journey.name, step.id, journey.purpose, [])
    links = patient_links.links_for(patient, settings, patient_links.signer(conn, settings))
    for target in targets:
        person = resolve(target.key, patient, contacts, referrer)
        if person is None:  # (addressees only names recipients on file)
            continue
        tz_name = target.timezone or practice_tz
        tz = zone(tz_name)
        due, status, when = _send_time(journey, step, appointment, now, rules, tz)
        entry = RecipientPreview(_label(person, patient), target.key, tz_name, when, due,
                                 status)
        result.recipients.append(entry)
        if target.refused:
            entry.status, entry.reason = "skipped", target.reason
            entry.when = f"skipped ({target.reason}): {target.refused}"
            continue
        if not holds:
            entry.status = "not_planned"
            entry.when = f"only_if \"{step.only_if}\" is false for this patient: " \
                         "the step would not be planned"
        to_referrer = person.role == "referrer"
        context = message_context(
            patient=patient, appointment=appointment, practice=practice_fields(settings),
            practice_timezone=practice_tz, journey=journey.name, step=step.id,
            visit_number=numbers.get(appointment.id) if appointment else None,
            recipient=person, referrer=referrer,
            custom_fields=settings.referrals.allowed_fields if to_referrer else None,
            links=links)
        for channel in step.channels:
            entry.messages.append(_render(definitions, step, channel, person.language, context,
                                          tz, person, journey.purpose, caps_from(settings)))
    return result


def _label(person: Recipient, patient: Patient) -> str:
    """How the preview names a recipient: the patient, or who they are to the patient."""
    if person.key == PATIENT:
        return f"{patient.external_id} {patient.full_name}"
    return f"{person.role} {person.name} for {patient.external_id} {patient.full_name}"


def _sample(definitions: Definitions, settings: Settings, journey: Journey, step: Step,
            now: datetime, rules: PlanningRules) -> RecipientPreview:
    """The built-in sample patient, in every language the step has templates for."""
    practice_tz = rules.practice_timezone
    tz = zone(practice_tz)
    appointment = sample_appointment(now, practice_tz)
    due, status, when = _send_time(journey, step, appointment, now, rules, tz)
    entry = RecipientPreview("sample patient Alexandra Rivera", PATIENT, practice_tz, when, due,
                             status)
    languages = sorted({lang for channel in step.channels
                        for lang in definitions.templates.languages(step.template, channel)},
                       key=lambda lang: (lang is not None, lang or ""))
    for language in languages:
        context = sample_context(settings, now, language, journey.name, step.id)
        for channel in step.channels:
            entry.messages.append(_render(definitions, step, channel, language, context, tz,
                                          None, journey.purpose))
    return entry


def _send_time(journey: Journey, step: Step, appointment: Appointment | None, now: datetime,
               rules: PlanningRules, tz: Any) -> tuple[datetime | None, str, str]:
    if appointment is not None and journey.anchored_on_appointment:
        anchor = Anchor(appointment_anchor(appointment.id, appointment.version), appointment.id,
                        appointment.start_at, appointment.end_at)
    else:
        anchor = Anchor("preview", None, now, now)
    due = due_time(step.when, anchor, now, tz)
    expires = deadline(step, anchor, due, rules.default_expiry)
    if due < now and not step.catch_up:
        return due, "too_late", f"{step.when.describe()} — already past ({_local(due, tz)})"
    due = max(due, now)
    if expires is not None and due >= expires:
        return due, "too_late", f"{step.when.describe()} — its deadline " \
                                f"{_local(expires, tz)} has passed"
    allowed = rules.quiet_hours.next_allowed(due, tz)
    if expires is not None and allowed >= expires:
        return allowed, "too_late", (f"{step.when.describe()} — quiet hours would push it past "
                                     f"its deadline {_local(expires, tz)}")
    note = " (moved out of quiet hours)" if allowed != due else ""
    return allowed, "planned", f"{step.when.describe()} → {_local(allowed, tz)}{note}"


def _local(instant: datetime, tz: Any) -> str:
    return f"{instant.astimezone(tz):%a %d %b %Y %H:%M %Z}"


def _render(definitions: Definitions, step: Step, channel: str, language: str | None,
            context: dict[str, Any], tz: Any, person: Recipient | None,
            purpose: str, caps: FrequencyCaps | None = None) -> RenderedPreview:
    templates = definitions.templates
    resolved = templates.resolve(step.template, channel, language)
    file, used = resolved if resolved else ("(missing)", language or "")
    note = None
    if person is not None:
        refusal = channel_refusal(channel, person, purpose, {}, caps)
        address = address_for(person, channel)
        note = f"not usable: {refusal[1]}" if refusal else f"to {mask_address(address)}"
    try:
        rendered = templates.render(step.template, channel, language, context, tz)
    except TemplateRenderError as exc:
        return RenderedPreview(channel, used, file, error=exc.message, note=note)
    segments = None
    problems: tuple[str, ...] = ()
    if channel == "sms":
        info = analyse(rendered.body)
        segments = info.as_dict()
        problems = tuple(c.describe() for c in info.non_gsm)
    return RenderedPreview(channel, rendered.language, rendered.template_file, rendered.body,
                           rendered.subject, rendered.html, segments, problems, note=note)


def send_test(db: Database, definitions: Definitions, settings: Settings,
              channels: Mapping[str, Channel], journey_name: str, step_id: str, to: str,
              now: datetime, patient_id: str | None = None,
              language: str | None = None) -> TouchPoint:
    """Render a step (sample patient, or ``patient_id``) and send it to ``to`` now.

    The touch point is recorded with ``test`` set and no patient (unless one was
    given), so it shows in the log as a test and never counts in reports.
    """
    journey, step = find_step(definitions, journey_name, step_id)
    kind = "email" if "@" in to else "sms"
    try:
        address = normalise_email(to) if kind == "email" else \
            normalise_phone(to, settings.phone_region)
    except ValueError:
        what = "an email address" if kind == "email" else \
            f"a phone number (with area code; default region {settings.phone_region})"
        raise UserError(f"--to {to!r} is not {what}") from None
    assert address is not None
    if kind not in step.channels:
        wanted = "a phone number" if kind == "email" else "an email address"
        raise UserError(f"{journey.name}/{step.id} sends {', '.join(step.channels)}, not "
                        f"{kind} — give --to {wanted}")
    practice_tz = settings.require("practice.timezone")
    patient: Patient | None = None
    if patient_id is not None:
        with db.transaction() as conn:
            patient = patient_by_external_id(conn, patient_id)
            if patient is None:
                raise NotFound(f"no patient {patient_id} — import patients first")
            appointment = _anchor_appointment(conn, journey, patient, now)
        context = message_context(patient=patient, appointment=appointment,
                                  practice=practice_fields(settings),
                                  practice_timezone=practice_tz, journey=journey.name,
                                  step=step.id)
        language = language or patient.language
    else:
        context = sample_context(settings, now, language, journey.name, step.id)
    tz = zone(patient.timezone if patient and patient.timezone else practice_tz)
    rendered = definitions.templates.render(step.template, kind, language, context, tz)
    dispatcher = Dispatcher(db, definitions, settings, channels)
    with db.transaction() as conn:
        tp = ledger.insert_immediate(
            conn, patient_id=patient.id if patient else None, journey=journey.name,
            step=step.id, purpose=journey.purpose, recipient="test",
            anchor=f"test:{now.isoformat()}:{dispatcher.worker}", worker=dispatcher.worker,
            now=now, test=True, source="test-send")
    message = OutboundMessage(tp.id, kind, address, rendered.body, rendered.subject,
                              rendered.html, journey.purpose, journey=journey.name,
                              step=step.id, test=True)
    dispatcher.deliver(tp, message, rendered.template_file)
    with db.transaction() as conn:
        sent = ledger.get(conn, tp.id)
    assert sent is not None
    return sent

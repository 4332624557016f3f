"""What a patient's text means, and what Touchpoint does about it.

========================  ==========================================================
the whole message is …    what happens
========================  ==========================================================
STOP, STOPALL, QUIT, END, the number is opted out of SMS at once, for every purpose,
REVOKE, OPT OUT, OPTOUT,  and gets one confirmation (FCC 24-24; CTIA) — a second
CANCEL, UNSUBSCRIBE,      STOP gets none
PARAR, BAJA, ALTO … or a
phrase ("please stop
texting me", "no me
envíen más mensajes")
START, UNSTOP (and YES    the number is opted back in and told so
from an opted-out number)
HELP, INFO                practice name, phone, message frequency, "Msg&data rates may
                          apply" and how to stop
a yes (YES, Y, SI, SÍ, OK, with a standing waitlist offer (``offered``, not expired,
YES PLEASE, I'LL TAKE IT,  its slot open): the first committed yes claims the slot
LO TOMO … :data:`YES_WORDS`) (``claimed``; with ``waitlist.auto_confirm`` booked) — the
                          patient is told, staff alerted, ``slot.claimed`` emitted;
                          a later yes is told the slot was just taken (docs/waitlist.md)
C, CONFIRM, YES           the appointment of the latest reminder is marked confirmed
R, RESCHEDULE             a reschedule request: staff are alerted, the patient told
a score (8, 8/10, eight,  within a week of the satisfaction question (``asks: score``):
ocho, 8 de 10)            kept on the patient and the appointment; 0-6 opens a
                          recovery case (the review request never depends on it)
something that might be   as anything else, flagged "possible opt-out" and due within
a revocation ("too many   10 business days (FCC 24-24's limit): staff decide, and
messages", "wrong number") ``touchpoint inbox opt-out ID`` opts it out if it is one
anything else             recorded and shown to staff (``touchpoint inbox``); staff are
                          alerted by email; if it reads as a complaint, a recovery
                          case opens
========================  ==========================================================

The revocation keywords and phrases live in one documented file,
``engine/replies_optout.toml``. Matching ignores case, accents, full-width letters,
zero-width characters, punctuation and emoji (``STOP 🛑``, ``(STOP)``, ``Stop…``).
Replies and alerts are ordinary touch points (journeys ``replies`` and ``staff-alerts``)
rendered from ``message_templates/replies/`` and ``message_templates/staff/``, so they are
editable, validated and in the log. Each inbound message is handled once (by its provider id).
"""

from __future__ import annotations

import logging
import re
import tomllib
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Select, and_, false, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from engine import cases, clock, notify, outbound_webhooks, waitlist_offers
from engine.channels.base import Channel
from engine.definitions import Definitions
from engine.definitions.journeys import SYSTEM_JOURNEYS
from engine.definitions.templates import Fields
from engine.dispatcher import Dispatcher
from engine.domain import Appointment, Patient
from engine.feedback import parse_score, reads_as_complaint
from engine.message_context import (
    appointment_fields,
    patient_fields,
    practice_fields,
    slot_fields,
)
from engine.outcomes import Status
from engine.privacy import mask_address
from engine.settings import Settings
from engine.store import ledger
from engine.store.database import Database
from engine.store.records import (
    add_opt_out,
    appointment_from_row,
    as_utc,
    opted_out,
    patient_from_row,
    remove_opt_outs,
)
from engine.store.schema import (
    appointments,
    contacts,
    history,
    inbound_messages,
    patients,
    slots,
    touch_points,
)
from engine.timing import zone

log = logging.getLogger("touchpoint.replies")

START_WORDS = frozenset({"start", "unstop"})
HELP_WORDS = frozenset({"help", "info"})
CONFIRM_WORDS = frozenset({"c", "confirm", "confirmed", "yes", "y"})
RESCHEDULE_WORDS = frozenset({"r", "reschedule"})
# A yes to a waitlist offer (normalised: no accents, no punctuation, lower case).
YES_WORDS = frozenset({
    "yes", "y", "yes please", "yeah", "yep", "sure", "ok", "okay", "i ll take it",
    "ill take it", "i will take it", "i want it", "si", "si por favor", "claro", "lo tomo",
    "la tomo", "la quiero", "yes i ll take it"})
WAITLIST_TEMPLATES = ("offer", "claimed", "booked", "taken")
REPLY_TEMPLATES = ("stop", "start", "help", "confirmed", "reschedule")
STAFF_TEMPLATES = ("reschedule-request", "reply", "slot-claimed")
SCORE_WINDOW = timedelta(days=7)  # how long after the question a number is its answer
LOW_SCORE = 6  # 0-6 opens a recovery case (and nothing is gated on a high one)


OPT_OUT_FILE = Path(__file__).with_name("replies_optout.toml")
POSSIBLE_OPT_OUT = "possible opt-out"  # the inbox flag of an unclear revocation
POSSIBLE_OPT_OUT_DUE = 10  # business days to handle it (FCC 24-24)
# Dropped: zero-width and format characters, combining marks (accents, emoji variation
# selectors). Read as a space: punctuation, symbols (emoji), separators, controls.
_DROPPED = frozenset({"Cf", "Mn", "Me"})
_SPACE = frozenset("PSZC")
# Words that, shortly before a phrase, may turn it around ("please don't stop texting
# me", "I don't want you to stop texting me", "no quiero darme de baja"), by the phrase's
# language: such a reply is not clear (staff decide). English "no" does not ("No, stop
# texting me"), nor does a word the phrase starts with ("No, no me envíen más mensajes").
_NEGATED = {
    "en": re.compile(r"(?:^| )(don t|dont|do not|does not|didn t|didnt|not|never)"
                     r"(?: \S+){0,3}$"),
    "es": re.compile(r"(?:^| )(no|nunca)(?: \S+){0,3}$"),
}


def normalise(body: str) -> str:
    """``body`` as the keyword lists are compared with it: NFKC (full-width letters), no
    accents, lower case, zero-width characters removed, punctuation and emoji as spaces."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", body))
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if category in _DROPPED:
            continue
        kept.append(" " if category[0] in _SPACE else char)
    return " ".join("".join(kept).casefold().split())


@dataclass(frozen=True)
class OptOutWords:
    """The lists of ``engine/replies_optout.toml``, normalised (see that file)."""

    keywords: frozenset[str]
    phrases: tuple[tuple[str, str], ...]  # (language, phrase)
    possible: tuple[str, ...]
    fillers: tuple[str, ...]  # longest first

    @classmethod
    def read(cls, path: Path = OPT_OUT_FILE) -> OptOutWords:
        with path.open("rb") as fh:
            data = tomllib.load(fh)

        def listed(key: str) -> tuple[str, ...]:
            return tuple(dict.fromkeys(normalise(entry) for entry in data[key]))
        phrases = tuple(dict.fromkeys((language, normalise(entry))
                                      for language, entries in data["phrases"].items()
                                      for entry in entries))
        return cls(frozenset(listed("keywords")), phrases, listed("possible"),
                   tuple(sorted(listed("fillers"), key=len, reverse=True)))

    def core(self, text: str) -> str:
        """Normalised ``text`` without the fillers around it ("stop please" → "stop")."""
        trimmed = True
        while trimmed and text:
            trimmed = False
            for filler in self.fillers:
                if text == filler:
                    return ""
                if text.startswith(filler + " "):
                    text, trimmed = text[len(filler) + 1:], True
                elif text.endswith(" " + filler):
                    text, trimmed = text[:-len(filler) - 1], True
        return text

    def revokes(self, text: str) -> bool:
        """Whether normalised ``text`` clearly revokes consent to texts."""
        core = self.core(text)
        if core in self.keywords or any(_repeats(core, k) for k in self.keywords):
            return True
        found = self._phrases_in(text)
        negated = [(start, end) for start, end, no in found if no]
        # a phrase at the end (give or take fillers), not negated nor part of a longer
        # phrase that is ("no quiero darme de baja" holds "darme de baja")
        return any(not no and not self.core(text[end:].strip())
                   and not any(s <= start and end <= e for s, e in negated)
                   for start, end, no in found)

    def might_revoke(self, text: str) -> bool:
        """Whether normalised ``text`` might revoke consent, without saying so clearly
        (call :meth:`revokes` first): a phrase, negated or with more after it, or one of
        the possible ones."""
        return bool(self._phrases_in(text)) or any(_found(p, text) for p in self.possible)

    def _phrases_in(self, text: str) -> list[tuple[int, int, bool]]:
        """(start, end, negated) of each phrase in ``text``."""
        return [(start, end, _negates(language, phrase, text[:start]))
                for language, phrase in self.phrases for start, end in _found(phrase, text)]


def _negates(language: str, phrase: str, before: str) -> bool:
    """Whether ``before`` ends with a word that may turn ``phrase`` around."""
    match = _NEGATED[language].search(before.rstrip())
    return match is not None and not phrase.startswith(match.group(1) + " ")


def _repeats(text: str, keyword: str) -> bool:
    """Whether ``text`` is ``keyword`` said more than once ("stop stop")."""
    words, size = text.split(), len(keyword.split())
    return len(words) > size and len(words) % size == 0 and all(
        " ".join(words[i:i + size]) == keyword for i in range(0, len(words), size))


def _found(phrase: str, text: str) -> list[tuple[int, int]]:
    """Where ``phrase`` occurs in ``text`` as whole words."""
    return [m.span() for m in re.finditer(rf"(?<!\S){re.escape(phrase)}(?!\S)", text)]


@cache
def opt_out_words() -> OptOutWords:
    return OptOutWords.read()


def classify(body: str, opted_out_now: bool) -> str:
    text = normalise(body)
    if opt_out_words().revokes(text):
        return "stop"
    if text in START_WORDS or (text == "yes" and opted_out_now):
        return "start"
    if text in HELP_WORDS:
        return "help"
    if text in CONFIRM_WORDS:
        return "confirm"
    if text in RESCHEDULE_WORDS:
        return "reschedule"
    return "other"


def possible_opt_out(body: str) -> bool:
    """A reply that might revoke consent to texts but is not clear (staff decide)."""
    return opt_out_words().might_revoke(normalise(body))


@dataclass(frozen=True)
class Outgoing:
    """A message to send once the inbound one is recorded."""

    journey: str  # replies | staff-alerts
    step: str
    kind: str  # sms | email
    to: str
    template: str


@dataclass
class Handled:
    inbound_id: int | None
    intent: str
    duplicate: bool = False
    patient: Patient | None = None
    appointment: Appointment | None = None
    reminder_id: int | None = None
    outgoing: list[Outgoing] = field(default_factory=list)
    flag: str = ""  # "possible opt-out"
    due_at: datetime | None = None  # when staff must have handled it
    slot: Fields | None = None  # the waitlist slot a yes answered
    claim: waitlist_offers.Claim | None = None


def record_inbound(conn: Connection, settings: Settings, *, provider: str, message_id: str,
                   from_number: str, to_number: str, body: str, now: datetime,
                   asks_score: Collection[tuple[str, str]] = ()) -> Handled:
    """Record an inbound SMS and apply what it means (in the caller's transaction).

    ``asks_score`` lists the (journey, step) pairs whose text asks the 0-10 question: a
    reply to one of those within a week is read as the answer when it is a score.
    """
    matches = [patient_from_row(row) for row in conn.execute(
        select(patients).where(patients.c.phone == from_number).order_by(patients.c.id))]
    if not matches:  # a parent or caregiver replying about the patient
        matches = [patient_from_row(row) for row in conn.execute(
            select(patients).join(contacts, contacts.c.patient_id == patients.c.id)
            .where(contacts.c.phone == from_number).order_by(patients.c.id))]
    blocked = opted_out(conn, [from_number]).get(("sms", from_number), set())
    intent = classify(body, bool(blocked))
    reminder, appointment = _latest_reminder(conn, from_number, now)
    patient = next((p for p in matches if reminder and p.id == reminder.patient_id),
                   matches[0] if matches else None)
    offer = waitlist_offers.standing_offer(conn, [p.id for p in matches], now) \
        if intent in ("confirm", "other") and normalise(body) in YES_WORDS else None
    if offer is not None:
        intent = "waitlist_yes"  # a yes to a standing offer: claims the slot
        patient = next((p for p in matches if p.id == offer.patient_id), patient)
        appointment = None
    if intent in ("confirm", "reschedule") and appointment is None:
        intent = "other"  # nothing to confirm: staff read it
    question = _latest_question(conn, from_number, now, asks_score) \
        if intent == "other" and asks_score else None
    score = parse_score(body) if question is not None else None
    if question is not None and score is not None:
        intent = "score"
        patient = next((p for p in matches if p.id == question.patient_id), patient)
    # the text this reply answers: the question, the reminder, else the last text sent
    answered = question if intent == "score" else reminder if intent in (
        "confirm", "reschedule") else _latest_sent(conn, from_number, [p.id for p in matches])
    flagged = intent == "other" and possible_opt_out(body)
    due = cases.business_days_after(now, POSSIBLE_OPT_OUT_DUE, settings) if flagged else None
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    row = conn.execute(dialect.insert(inbound_messages).values(
        provider=provider, provider_message_id=message_id, channel="sms",
        from_address=from_number, to_address=to_number, body=body, intent=intent,
        patient_id=patient.id if patient else None,
        touch_point_id=answered.id if answered else None,
        appointment_id=question.appointment_id if intent == "score" and question else
        appointment.id if appointment else None,
        staff_status="new" if intent in ("other", "reschedule") else "",
        score=score if intent == "score" else None, detail=None, received_at=now,
        flag=POSSIBLE_OPT_OUT if flagged else "", due_at=due)
        .on_conflict_do_nothing(index_elements=["provider_message_id"])
        .returning(inbound_messages.c.id)).first()
    if row is None:
        return Handled(None, intent, duplicate=True)
    if answered is not None:  # the reply shows in the history of the text it answers
        _note(conn, answered.id, now, "inbound",
              f"a text reply ({intent}), inbound message {row.id}", kind="delivery")
    handled = Handled(row.id, intent, patient=patient, appointment=appointment,
                      reminder_id=reminder.id if reminder else None,
                      flag=POSSIBLE_OPT_OUT if flagged else "", due_at=due)
    staff = settings.practice.staff_email
    if intent == "stop":
        if add_opt_out(conn, "sms", from_number, "all", "sms reply", f"replied {body!r}"[:200],
                       now):
            handled.outgoing.append(Outgoing("replies", "stop", "sms", from_number,
                                             "replies/stop"))
    elif intent == "start":
        remove_opt_outs(conn, "sms", from_number)
        handled.outgoing.append(Outgoing("replies", "start", "sms", from_number,
                                         "replies/start"))
    elif intent == "help":
        handled.outgoing.append(Outgoing("replies", "help", "sms", from_number, "replies/help"))
    elif intent == "waitlist_yes" and offer is not None:
        _claim(conn, settings, handled, offer, row.id, from_number, now)
    elif intent == "confirm" and appointment is not None and reminder is not None:
        conn.execute(update(appointments).where(appointments.c.id == appointment.id)
                     .values(confirmed_at=now))
        _note(conn, reminder.id, now, "confirmed", "the patient confirmed by text")
        outbound_webhooks.emit_about(
            conn, "appointment.confirmed", now, patient_id=appointment.patient_id,
            appointment_id=appointment.id, touch_point_id=reminder.id, channel="sms",
            inbound_message_id=row.id)
        if not blocked:
            handled.outgoing.append(Outgoing("replies", "confirmed", "sms", from_number,
                                             "replies/confirmed"))
    elif intent == "reschedule" and reminder is not None:
        _note(conn, reminder.id, now, "reschedule_requested",
              "the patient asked to reschedule by text")
        outbound_webhooks.emit_about(
            conn, "reschedule.requested", now, patient_id=reminder.patient_id,
            appointment_id=reminder.appointment_id, touch_point_id=reminder.id,
            channel="sms", inbound_message_id=row.id)
        if not blocked:
            handled.outgoing.append(Outgoing("replies", "reschedule", "sms", from_number,
                                             "replies/reschedule"))
        if staff:
            handled.outgoing.append(Outgoing("staff-alerts", "reschedule-request", "email",
                                             staff, "staff/reschedule-request"))
    elif intent == "score" and question is not None and score is not None:
        _record_score(conn, settings, question, score, row.id, now)
    elif intent == "other":
        if staff:
            handled.outgoing.append(Outgoing("staff-alerts", "reply", "email", staff,
                                             "staff/reply"))
        complaint = reads_as_complaint(body)
        if complaint and patient is not None:
            cases.open_case(conn, settings, patient_id=patient.id, cause="complaint",
                            key=f"complaint:{row.id}", now=now, inbound_id=row.id,
                            appointment_id=appointment.id if appointment else None,
                            detail=f"texted “{body.strip()[:300]}” (reads as a complaint: "
                                   f"“{complaint}”)")
    return handled


def opt_out_by_staff(conn: Connection, message_id: int, now: datetime,
                     ) -> tuple[Handled, str, str] | None:
    """Staff read text ``message_id`` (say, a possible opt-out) as a revocation: its number
    is opted out of every text and the message marked done. Returns (what to send: the one
    confirmation, if the number had not opted out already; the text; its number), or None
    if there is no such text in the inbox."""
    row = conn.execute(select(inbound_messages).where(
        inbound_messages.c.id == message_id, inbound_messages.c.channel == "sms",
        inbound_messages.c.staff_status != "")).first()
    if row is None:
        return None
    conn.execute(update(inbound_messages).where(inbound_messages.c.id == message_id)
                 .values(staff_status="done", detail="staff read it as an opt-out"))
    patient = conn.execute(select(patients).where(patients.c.id == row.patient_id)).first() \
        if row.patient_id is not None else None
    handled = Handled(row.id, "stop", patient=patient_from_row(patient) if patient else None)
    if add_opt_out(conn, "sms", row.from_address, "all", "staff",
                   f"inbound message {row.id} read by staff as an opt-out", now):
        handled.outgoing.append(Outgoing("replies", "stop", "sms", row.from_address,
                                         "replies/stop"))
    return handled, row.body, row.from_address


def _latest_question(conn: Connection, number: str, now: datetime,
                     asks_score: Collection[tuple[str, str]]) -> ledger.TouchPoint | None:
    """The satisfaction question last texted to ``number`` in the past week, if any."""
    row = conn.execute(
        _texts_to(number)
        .where(touch_points.c.sent_at >= now - SCORE_WINDOW,
               or_(*(and_(touch_points.c.journey == journey, touch_points.c.step == step)
                     for journey, step in sorted(asks_score))))
        .limit(1)).first()
    return ledger.touch_point_from_row(row) if row else None


def _record_score(conn: Connection, settings: Settings, question: ledger.TouchPoint,
                  score: int, inbound_id: int, now: datetime) -> None:
    """Keep the answer on the patient and the appointment (reports show it); a low one
    opens a recovery case. No score starts the review request: asking only happy patients
    is review gating (the review request goes at a visit milestone, whatever the score)."""
    assert question.patient_id is not None
    conn.execute(update(patients).where(patients.c.id == question.patient_id)
                 .values(satisfaction_score=score, satisfaction_at=now))
    if question.appointment_id is not None:
        conn.execute(update(appointments).where(appointments.c.id == question.appointment_id)
                     .values(satisfaction_score=score))
    _note(conn, question.id, now, "answered", f"the patient answered {score}/10")
    if score <= LOW_SCORE:
        cases.open_case(conn, settings, patient_id=question.patient_id, cause="low_score",
                        key=f"low_score:{question.id}", now=now, inbound_id=inbound_id,
                        touch_point_id=question.id, appointment_id=question.appointment_id,
                        detail=f"answered {score}/10 to {question.journey}/{question.step}")


def _latest_reminder(conn: Connection, number: str, now: datetime,
                     ) -> tuple[ledger.TouchPoint | None, Appointment | None]:
    """The latest message sent to ``number`` about an appointment still booked ahead."""
    row = conn.execute(
        _texts_to(number).join(appointments, appointments.c.id == touch_points.c.appointment_id)
        .where(touch_points.c.journey.not_in(SYSTEM_JOURNEYS),  # not our own replies
               appointments.c.status == "booked", appointments.c.start_at > now,
               appointments.c.removed_at.is_(None))
        .limit(1)).first()
    if row is None:
        return None, None
    reminder = ledger.touch_point_from_row(row)
    appointment = conn.execute(select(appointments).where(
        appointments.c.id == reminder.appointment_id)).first()
    return reminder, appointment_from_row(appointment) if appointment else None


def _latest_sent(conn: Connection, number: str, patient_ids: list[int],
                 ) -> ledger.TouchPoint | None:
    """The journey text last sent to ``number`` about one of ``patient_ids`` (what a reply
    most likely answers)."""
    if not patient_ids:
        return None
    row = conn.execute(
        _texts_to(number)
        .where(touch_points.c.patient_id.in_(patient_ids),
               touch_points.c.journey.not_in(SYSTEM_JOURNEYS))
        .limit(1)).first()
    return ledger.touch_point_from_row(row) if row else None


def _texts_to(number: str) -> Select[Any]:
    """Texts that went to ``number``, the latest first (what a reply may be answering).
    Test sends are not among them: a reply to one confirms nothing and is no one's score."""
    return (select(touch_points)
            .where(touch_points.c.address == number, touch_points.c.channel == "sms",
                   touch_points.c.status.in_((Status.SENT, Status.DELIVERED)),
                   touch_points.c.test == false())
            .order_by(touch_points.c.sent_at.desc()))


def _claim(conn: Connection, settings: Settings, handled: Handled, offer: Any,
           inbound_id: int, from_number: str, now: datetime) -> None:
    """A yes to a standing waitlist offer: the first committed one wins the slot."""
    claim = waitlist_offers.claim(conn, settings, offer, now)
    handled.claim = claim
    slot = conn.execute(select(slots)
                        .where(slots.c.id == claim.slot_id)).one()
    handled.slot = slot_fields(slot, offer.expires_at)
    if claim.outcome == "taken":
        handled.outgoing.append(Outgoing("replies", "waitlist-taken", "sms", from_number,
                                         "waitlist/taken"))
        return
    step = "booked" if claim.booked else "claimed"
    handled.outgoing.append(Outgoing("replies", f"waitlist-{step}", "sms", from_number,
                                     f"waitlist/{step}"))
    outbound_webhooks.emit_about(
        conn, "slot.claimed", now, patient_id=offer.patient_id, appointment_id=None,
        slot_id=claim.slot_id, slot_offer_id=claim.offer_id, status=slot.status,
        start_at=as_utc(slot.start_at).isoformat(),
        duration_minutes=slot.duration_minutes, claimed_at=now.isoformat(),
        inbound_message_id=inbound_id)
    staff = settings.practice.staff_email
    if staff:
        handled.outgoing.append(Outgoing("staff-alerts", "slot-claimed", "email", staff,
                                         "staff/slot-claimed"))


def _note(conn: Connection, tp_id: int, now: datetime, reason: str, detail: str,
          kind: str = "note") -> None:
    conn.execute(history.insert().values(
        touch_point_id=tp_id, at=now, kind=kind, status=None, previous_status=None,
        reason=reason, detail=detail, source="sms reply", provider_event_id=None))


def send_outgoing(db: Database, definitions: Definitions, settings: Settings,
                  channels: Mapping[str, Channel], handled: Handled, body: str,
                  from_number: str) -> list[ledger.TouchPoint]:
    """Render and send the replies and staff alerts an inbound message called for."""
    sent: list[ledger.TouchPoint] = []
    if not handled.outgoing:
        return sent
    dispatcher = Dispatcher(db, definitions, settings, channels)
    practice_tz = settings.require("practice.timezone")
    patient = handled.patient
    tz = zone(patient.timezone if patient and patient.timezone else practice_tz)
    context: dict[str, Any] = {
        "practice": practice_fields(settings),
        "patient": patient_fields(patient, practice_tz) if patient else None,
        "appointment": appointment_fields(handled.appointment) if handled.appointment
        else None,
        "reply": Fields({"body": body, "from": mask_address(from_number),
                         "received_at": clock.now(), "flag": handled.flag,
                         "due_at": handled.due_at}, "reply"),
        "slot": handled.slot,
        "unsubscribe_url": None,
    }
    for item in handled.outgoing:
        notice = notify.Notice(
            item.journey, item.step, item.kind, item.to, item.template,
            anchor=f"inbound:{handled.inbound_id}",
            recipient="staff" if item.journey == "staff-alerts" else "patient",
            patient_id=patient.id if patient else None,
            appointment_id=handled.appointment.id if handled.appointment else None,
            language=patient.language if patient and item.kind == "sms" else None)
        rendered = notify.render(definitions.templates, notice, context, tz)
        if rendered is None:
            continue
        done = notify.send(dispatcher, rendered)
        if done is not None:
            sent.append(done)
    return sent

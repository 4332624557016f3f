"""Send-time guards: the checks re-run on every touch point just before it goes out.

Pure functions over a snapshot of what the store knows now. Each returns ``None`` when
the touch point may proceed, or a :class:`Verdict` that says what to record instead:

* :func:`anchor_verdict` — is the appointment still booked, at the same time (and still
  in the practice's records)? Has an event since planning ended the journey? (*never
  stale*)
* :func:`deadline_verdict` — is it past its deadline? (*too late*)
* a waitlist offer (anchor ``slot:<id>``) — is the slot still open and the patient's offer
  still standing? Else it is not sent: ``slot_closed``
* :func:`quiet_hours_verdict` — is it night where the recipient is? (*never at night*)
* :func:`channel_refusal` — contact present, consent given, not opted out? (*consent
  first*; in exemption mode, exempt purposes only)
* :func:`cap_refusal` — within the limits on messages (``caps.mode``)? Else the message
  waits for the next allowed time within its deadline, or is skipped ``frequency_cap``
  (*nothing that matters is silenced*).

The limits (per recipient; 0 means none):

* ``consent`` mode (the default: texts go with the patient's consent on file): at most
  ``caps.sms_per_day`` texts a local day, counting only texts of the same or a higher
  step priority, sent or planned later that day (*look-ahead*) — a nudge never takes
  the place of a question or a reminder — and a reminder (priority ``reminder`` or
  higher) is never held;
* ``exemption`` mode (a practice texting without consent, under the FCC healthcare
  exemption): transactional texts only — no SMS consent needed, marketing refused — at
  most 160 characters (:func:`exemption_length_refusal`),
  ``caps.transactional_sms_per_day`` a local day and ``caps.transactional_sms_per_week``
  in 7 days. A text counts against them besides what was sent, the texts of a higher
  priority already planned for the same recipient (*look-ahead*): a nudge that would
  leave too few slots for a reminder due later that day, or that week, waits for a day
  and a week with room — a visit's reminder is never the one dropped for a nudge;
* both: ``caps.marketing_per_week`` marketing messages (any channel) in 7 days.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Literal

from engine.definitions.journeys import PRIORITIES, Journey, Step
from engine.domain import Appointment, Patient, Recipient
from engine.outcomes import Reason, Status
from engine.store.ledger import TouchPoint
from engine.store.records import PlannedSend, RecentSend
from engine.timing import QuietHours, at_local, zone

# What state the anchor appointment must still be in, by the journey's trigger.
_EXPECTED_STATUS = {
    "appointment.booked": "booked",
    "appointment.completed": "completed",
    "appointment.no_show": "no_show",
    "appointment.cancelled": "cancelled",
}
# A referral-loop note about a first visit, and the visit states it may still go in (a
# thank-you for a booking must not reach the referrer after the visit was cancelled).
_MILESTONE_STATUS = {
    "referral.first_visit_booked": ("booked", "completed"),
    "referral.first_visit_attended": ("completed",),
    "referral.first_visit_missed": ("no_show",),
}
# An anchor-scoped exit rule, and the appointment status that means it happened.
_EXIT_STATUS = {
    "appointment.cancelled": "cancelled",
    "appointment.completed": "completed",
    "appointment.no_show": "no_show",
}


@dataclass(frozen=True)
class Verdict:
    status: str
    reason: str
    detail: str


@dataclass(frozen=True)
class Defer:
    until: datetime
    detail: str
    reason: str = "quiet_hours"  # or frequency_cap


@dataclass(frozen=True)
class Send:
    """Go ahead: try ``channels`` in order (each passed the consent checks); ``refused``
    says why the step's other channels were not usable."""

    channels: tuple[str, ...]
    timezone: str
    refused: tuple[str, ...] = ()


Decision = Verdict | Defer | Send


def anchor_version(anchor: str) -> int | None:
    """``appointment:17:v3`` → 3."""
    _, _, version = anchor.rpartition(":v")
    return int(version) if version.isdigit() else None


def anchor_verdict(tp: TouchPoint, journey: Journey, step: Step,
                   appointment: Appointment | None,
                   latest_events: Mapping[str, datetime],
                   case_open: bool | None = None) -> Verdict | None:
    """Cancel if the anchor no longer holds or an exit event happened since planning.

    ``latest_events`` maps an event kind to the latest time it happened to this patient;
    ``case_open`` says whether the recovery case a touch point is anchored on is open.
    """
    trigger = journey.trigger_for(step).event
    if tp.appointment_id is not None and trigger.startswith("appointment."):
        if appointment is None:
            return Verdict(Status.CANCELLED, Reason.ANCHOR_CHANGED, "the appointment is gone")
        label = appointment.external_id
        if appointment.removed_at is not None:
            return Verdict(Status.CANCELLED, Reason.PATIENT_REMOVED,
                           f"appointment {label} left the practice's records")
        if appointment.status == "cancelled" and trigger != "appointment.cancelled":
            return Verdict(Status.CANCELLED, Reason.APPOINTMENT_CANCELLED,
                           f"appointment {label} was cancelled")
        version = anchor_version(tp.anchor)
        if trigger == "appointment.booked" and version is not None \
                and version != appointment.version:
            return Verdict(Status.CANCELLED, Reason.ANCHOR_CHANGED,
                           f"appointment {label} moved to {appointment.start_at.isoformat()}")
        expected = _EXPECTED_STATUS.get(trigger)
        if expected is not None and appointment.status != expected:
            return Verdict(Status.CANCELLED, Reason.ANCHOR_CHANGED,
                           f"appointment {label} is now {appointment.status}")
    allowed = _MILESTONE_STATUS.get(trigger)
    if allowed is not None and tp.appointment_id is not None and (
            appointment is None or appointment.status not in allowed):
        label = appointment.external_id if appointment else "?"
        status = appointment.status if appointment else "gone"
        reason = Reason.APPOINTMENT_CANCELLED if status == "cancelled" \
            else Reason.ANCHOR_CHANGED
        return Verdict(Status.CANCELLED, reason, f"appointment {label} is now {status}")
    for rule in journey.exits_for(step):
        if rule.event == "case.resolved":  # that case, not any case of the patient
            if tp.anchor.startswith("case:") and case_open is False:
                return Verdict(Status.CANCELLED, Reason.JOURNEY_EXITED,
                               f"recovery {tp.anchor.replace(':', ' ')} was resolved")
            continue
        if rule.scope == "anchor":
            happened = appointment is not None and \
                appointment.status == _EXIT_STATUS.get(rule.event)
        else:
            at = latest_events.get(rule.event)
            happened = at is not None and at > tp.planned_at
        if happened:
            reason = Reason.APPOINTMENT_CANCELLED if rule.event == "appointment.cancelled" \
                else Reason.JOURNEY_EXITED
            return Verdict(Status.CANCELLED, reason, f"{rule.event} after it was planned")
    return None


def deadline_verdict(tp: TouchPoint, now: datetime) -> Verdict | None:
    if tp.expires_at is not None and now >= tp.expires_at:
        return Verdict(Status.SKIPPED, Reason.TOO_LATE,
                       f"its deadline {tp.expires_at.isoformat()} passed before it could go")
    return None


def recipient_zone(person: Patient | Recipient, practice_timezone: str) -> str:
    return person.timezone or practice_timezone


def quiet_hours_verdict(tp: TouchPoint, now: datetime, quiet: QuietHours,
                        timezone: str) -> Verdict | Defer | None:
    tz = zone(timezone)
    if quiet.allows(now, tz):
        return None
    until = quiet.next_allowed(now, tz)
    if tp.expires_at is not None and until >= tp.expires_at:
        return Verdict(Status.SKIPPED, Reason.TOO_LATE,
                       f"quiet hours ({quiet.describe()} {timezone}) until "
                       f"{until.isoformat()}, past its deadline {tp.expires_at.isoformat()}")
    return Defer(until, f"quiet hours in {timezone} ({quiet.describe()}); deferred")


def address_for(person: Patient | Recipient, channel: str) -> str | None:
    return person.phone if channel == "sms" else person.email


# The healthcare exemption's length limit on a text, in characters.
EXEMPT_SMS_LENGTH = 160


@dataclass(frozen=True)
class FrequencyCaps:
    """Per recipient; 0 means no limit (see the module docstring)."""

    mode: Literal["consent", "exemption"] = "consent"
    sms_per_day: int = 2
    transactional_sms_per_day: int = 1
    transactional_sms_per_week: int = 3
    marketing_per_week: int = 2


@dataclass(frozen=True)
class Held:
    """A limit is reached: why, and the first moment it has room again."""

    detail: str
    until: datetime


def _next_local_day(now: datetime, timezone: str) -> datetime:
    tz = zone(timezone)
    return at_local(now.astimezone(tz).date() + timedelta(days=1), time(0), tz)


def _room_in_week(times: Sequence[datetime], cap: int) -> datetime:
    """When a 7-day window holding ``times`` (at least ``cap`` of them) has room for one
    more: once all but ``cap - 1`` of them are over 7 days old."""
    ordered = sorted(times)
    return ordered[len(ordered) - cap] + timedelta(days=7)


_WEEK = timedelta(days=7)


def _exemption_full(at: datetime, sent: Sequence[datetime], ahead: Sequence[datetime],
                    caps: FrequencyCaps, timezone: str) -> str | None:
    """Why one more text at ``at`` would break the exemption limits (each one it would
    break), or None: ``sent`` are the recipient's texts so far, ``ahead`` the
    higher-priority ones planned (those before ``at`` taken as sent by then). The text
    must fit in its local day and in every 7-day window it falls in — the one ending at
    ``at`` and each ending at a planned one."""
    tz = zone(timezone)
    day = at.astimezone(tz).date()
    broken = []
    cap = caps.transactional_sms_per_day
    if cap:
        sent_today = sum(1 for t in sent if t.astimezone(tz).date() == day)
        planned_today = sum(1 for t in ahead if t.astimezone(tz).date() == day)
        if sent_today + planned_today >= cap:
            broken.append(f"{sent_today} text(s) today" + (
                f" and {planned_today} of a higher priority planned that day"
                if planned_today else "") + f" (cap {cap} a day)")
    cap = caps.transactional_sms_per_week
    if cap:
        for end in [at, *sorted(t for t in ahead if at < t < at + _WEEK)]:
            sent_in = sum(1 for t in sent if end - _WEEK < t <= end)
            planned_in = sum(1 for t in ahead if end - _WEEK < t <= end)
            if sent_in + planned_in < cap:
                continue
            broken.append(
                f"{sent_in} texts in the last 7 days (cap {cap} a week)" if not planned_in
                else f"{sent_in} text(s) sent and {planned_in} of a higher priority planned "
                     f"in the 7 days to {end.astimezone(tz):%Y-%m-%d %H:%M} (cap {cap} a week)")
            break
    return "sms: " + "; ".join(broken) if broken else None


def _exemption_room(now: datetime, sent: Sequence[datetime], ahead: Sequence[datetime],
                    caps: FrequencyCaps, timezone: str) -> datetime:
    """The first moment after ``now`` a text fits the exemption limits, the planned texts
    going as planned. Only a new local day or a text leaving a 7-day window makes room;
    a local day over 7 days after the last text, sent or planned, always has it."""
    others = [*sent, *ahead]
    last = max([now, *others]) + _WEEK
    candidates = {t + _WEEK for t in others if t + _WEEK > now}
    day = _next_local_day(now, timezone)
    while True:
        candidates.add(day)
        if day > last:
            break
        day = _next_local_day(day, timezone)
    ordered = sorted(candidates)
    return next((t for t in ordered if _exemption_full(t, sent, ahead, caps, timezone) is None),
                ordered[-1])


def cap_refusal(channel: str, purpose: str, sends: Sequence[RecentSend], now: datetime,
                caps: FrequencyCaps, timezone: str,
                priority: int = PRIORITIES["nudge"],
                ahead: Sequence[datetime] = ()) -> Held | None:
    """Whether another ``purpose`` message of ``priority`` by ``channel`` would exceed a
    limit, given what the recipient was sent (``sends``) and, in exemption mode, when the
    texts of a higher priority planned for them are due (``ahead``, none before ``now``);
    the local day is ``timezone``'s."""
    if not sends and not ahead:
        return None  # every limit has room for one (a limit of 0 is no limit)
    week = [s for s in sends if s.at > now - timedelta(days=7)]
    if purpose == "marketing":
        marketing = [s.at for s in week if s.purpose == "marketing"]
        if caps.marketing_per_week and len(marketing) >= caps.marketing_per_week:
            return Held(f"{channel}: {len(marketing)} marketing messages in the last 7 days "
                        f"(cap {caps.marketing_per_week})",
                        _room_in_week(marketing, caps.marketing_per_week))
    if channel != "sms":
        return None
    tz = zone(timezone)
    today = now.astimezone(tz).date()
    if caps.mode == "consent":
        if not caps.sms_per_day or priority >= PRIORITIES["reminder"]:
            return None  # a visit's reminder is never the one held
        counted = sum(1 for s in week if s.channel == "sms" and s.priority >= priority
                      and s.at.astimezone(tz).date() == today)
        planned = sum(1 for t in ahead if t.astimezone(tz).date() == today)
        if counted + planned >= caps.sms_per_day:
            return Held(f"sms: {counted} text(s) of the same or a higher priority today"
                        + (f" and {planned} of a higher priority planned later today"
                           if planned else "")
                        + f" (courtesy limit {caps.sms_per_day} a day)",
                        _next_local_day(now, timezone))
        return None
    if purpose == "marketing":
        return None  # (refused outright in exemption mode: channel_refusal)
    texts = [s.at for s in week if s.purpose == "transactional" and s.channel == "sms"]
    why = _exemption_full(now, texts, ahead, caps, timezone)
    if why is None:
        return None
    return Held(why, _exemption_room(now, texts, ahead, caps, timezone))


def exemption_length_refusal(channel: str, body: str, caps: FrequencyCaps | None) -> str | None:
    """Why a rendered text may not go under the healthcare exemption (too long), or None."""
    if caps is None or caps.mode != "exemption" or channel != "sms" \
            or len(body) <= EXEMPT_SMS_LENGTH:
        return None
    return f"sms: {len(body)} characters, over the healthcare exemption's " \
           f"{EXEMPT_SMS_LENGTH} (caps.mode = exemption)"


def channel_refusal(channel: str, patient: Patient | Recipient, purpose: str,
                    opt_outs: Mapping[tuple[str, str], set[str]],
                    caps: FrequencyCaps | None = None) -> tuple[str, str] | None:
    """(reason, detail) if ``channel`` may not be used for this recipient and purpose."""
    address = address_for(patient, channel)
    if not address:
        return Reason.NO_CONTACT, f"{channel}: no {'phone' if channel == 'sms' else 'email'}"
    opted = opt_outs.get((channel, address), set())
    if "all" in opted or purpose in opted:
        return Reason.OPTED_OUT, f"{channel}: the address opted out ({', '.join(sorted(opted))})"
    consent = patient.sms_consent if channel == "sms" else patient.email_consent
    # the healthcare exemption is for texting without prior express consent
    exempt = channel == "sms" and purpose != "marketing" and caps is not None \
        and caps.mode == "exemption"
    if not consent and not exempt:
        return Reason.NO_CONSENT, f"{channel}: no {channel} consent"
    if purpose == "marketing" and not patient.marketing_consent:
        return Reason.NO_CONSENT, f"{channel}: no marketing consent"
    if purpose == "marketing" and channel == "sms" and caps is not None \
            and caps.mode == "exemption":
        return Reason.NO_CONSENT, "sms: exemption mode texts exempt (transactional) " \
                                  "messages only; marketing is not exempt"
    return None


def decide(tp: TouchPoint, journey: Journey | None, step: Step | None, patient: Patient,
           appointment: Appointment | None, latest_events: Mapping[str, datetime],
           opt_outs: Mapping[tuple[str, str], set[str]], now: datetime, quiet: QuietHours,
           practice_timezone: str, sends: Sequence[RecentSend] = (),
           caps: FrequencyCaps | None = None, *, recipient: Recipient | None = None,
           case_open: bool | None = None, planned: Sequence[PlannedSend] = (),
           offer_stands: bool | None = None) -> Decision:
    """Every send-time guard, in order. The dispatcher acts on it; forecast reports it.

    ``recipient`` is who the touch point addresses (default: the patient): their
    timezone, contacts, consents and opt-outs are the ones checked, and ``sends`` are
    counted for them alone. ``planned``: the patient's texts still planned (exemption
    mode); those of a higher priority for the same recipient keep their slots.
    ``offer_stands``: for a waitlist offer, whether its slot is open and the offer stands.
    """
    if journey is None or step is None:
        reason = Reason.JOURNEY_REMOVED if journey is None else Reason.STEP_REMOVED
        return Verdict(Status.CANCELLED, reason,
                       f"{tp.journey}/{tp.step} is no longer in schedules/")
    if patient.removed_at is not None:  # (engine.removal cancels these; one planned since)
        return Verdict(Status.CANCELLED, Reason.PATIENT_REMOVED,
                       f"patient {patient.external_id} left the practice's records")
    verdict = deadline_verdict(tp, now) or anchor_verdict(tp, journey, step, appointment,
                                                          latest_events, case_open)
    if verdict is None and offer_stands is False:
        verdict = Verdict(Status.CANCELLED, Reason.SLOT_CLOSED,
                          f"the offer of {tp.anchor.replace(':', ' ')} no longer stands (taken, "
                          "expired or withdrawn)")
    if verdict is not None:
        return verdict
    person: Patient | Recipient = recipient or patient
    # (a contact without a timezone already has the patient's; a referrer, the practice's)
    timezone = recipient_zone(person, practice_timezone)
    quiet_verdict = quiet_hours_verdict(tp, now, quiet, timezone)
    if quiet_verdict is not None:
        return quiet_verdict
    candidates: list[str] = []
    refusals: list[tuple[str, str]] = []
    holds: list[Held] = []
    channels = step.channels
    if tp.channel in channels:  # a retry: channels before it already failed for good
        channels = channels[channels.index(tp.channel):]
    own = [s for s in sends if s.recipient == tp.recipient]
    others = [p for p in planned if p.recipient == tp.recipient and p.id != tp.id]
    # nothing sent and nothing else planned: every limit has room (see cap_refusal)
    limits = caps if own or others else None
    priority = journey.priority_of(step) if limits is not None else PRIORITIES["nudge"]
    ahead = [max(p.due_at, now) for p in others if p.priority > priority]
    for channel in channels:
        refusal = channel_refusal(channel, person, tp.purpose, opt_outs, caps)
        if refusal is None and limits is not None:
            held = cap_refusal(channel, tp.purpose, own, now, limits, timezone, priority,
                               ahead)
            if held is not None:
                holds.append(held)
                refusal = Reason.FREQUENCY_CAP, held.detail
        if refusal is None:
            candidates.append(channel)
        else:
            refusals.append(refusal)
    if not candidates:
        detail = "; ".join(d for _, d in refusals)
        if holds:  # a limit is all that stops it: it waits for room, if it can
            return _wait_for_room(tp, min(h.until for h in holds), detail, quiet, timezone)
        return Verdict(Status.SKIPPED, refusals[0][0], detail)
    return Send(tuple(candidates), timezone, tuple(detail for _, detail in refusals))


def _wait_for_room(tp: TouchPoint, room: datetime, detail: str, quiet: QuietHours,
                   timezone: str) -> Defer | Verdict:
    """Defer to when a limit has room again (and it is daytime there), or skip
    ``frequency_cap`` if that is past the touch point's deadline."""
    until = quiet.next_allowed(room, zone(timezone))
    if tp.expires_at is not None and until >= tp.expires_at:
        return Verdict(Status.SKIPPED, Reason.FREQUENCY_CAP,
                       f"{detail}; the next allowed time {until.isoformat()} is past its "
                       f"deadline {tp.expires_at.isoformat()}")
    return Defer(until, f"{detail}; deferred", Reason.FREQUENCY_CAP)

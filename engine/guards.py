"""Send-time guards: the checks re-run on every touch point just before it goes out.

Pure functions over a snapshot of what the store knows now. Each returns ``None`` when
the touch point may proceed, or a :class:`Verdict` that says what to record instead:

* :func:`anchor_verdict` — is the appointment still booked, at the same time? Has an
  event since planning ended the journey? (*never stale*)
* :func:`deadline_verdict` — is it past its deadline? (*too late*)
* :func:`quiet_hours_verdict` — is it night where the recipient is? (*never at night*)
* :func:`channel_refusal` — contact present, consent given, not opted out, within the
  frequency caps? (*consent first*, FCC healthcare exemption)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from engine.definitions.journeys import Journey, Step
from engine.outcomes import Reason, Status
from engine.records import Appointment, Patient, Recipient
from engine.store.ledger import TouchPoint
from engine.store.records import RecentSend
from engine.timing import QuietHours, zone

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


@dataclass(frozen=True)
class FrequencyCaps:
    """Per recipient; 0 means no cap. Transactional messages never count against marketing."""

    transactional_sms_per_day: int = 1
    transactional_sms_per_week: int = 3
    marketing_per_week: int = 2


def cap_refusal(channel: str, purpose: str, sends: Sequence[RecentSend], now: datetime,
                caps: FrequencyCaps, timezone: str) -> str | None:
    """Why another ``purpose`` message by ``channel`` would exceed a cap, or None."""
    week = [s for s in sends if s.at > now - timedelta(days=7)]
    if purpose == "marketing":
        count = sum(1 for s in week if s.purpose == "marketing")
        if caps.marketing_per_week and count >= caps.marketing_per_week:
            return f"{channel}: {count} marketing messages in the last 7 days " \
                   f"(cap {caps.marketing_per_week})"
        return None
    if channel != "sms":
        return None
    texts = [s for s in week if s.purpose == "transactional" and s.channel == "sms"]
    today = now.astimezone(zone(timezone)).date()
    sent_today = sum(1 for s in texts if s.at.astimezone(zone(timezone)).date() == today)
    if caps.transactional_sms_per_day and sent_today >= caps.transactional_sms_per_day:
        return f"sms: {sent_today} text(s) today (cap {caps.transactional_sms_per_day} a day)"
    if caps.transactional_sms_per_week and len(texts) >= caps.transactional_sms_per_week:
        return f"sms: {len(texts)} texts in the last 7 days " \
               f"(cap {caps.transactional_sms_per_week} a week)"
    return None


def channel_refusal(channel: str, patient: Patient | Recipient, purpose: str,
                    opt_outs: Mapping[tuple[str, str], set[str]],
                    sends: Sequence[RecentSend] = (), now: datetime | None = None,
                    caps: FrequencyCaps | None = None,
                    timezone: str = "UTC") -> tuple[str, str] | None:
    """(reason, detail) if ``channel`` may not be used for this recipient and purpose."""
    address = address_for(patient, channel)
    if not address:
        return Reason.NO_CONTACT, f"{channel}: no {'phone' if channel == 'sms' else 'email'}"
    opted = opt_outs.get((channel, address), set())
    if "all" in opted or purpose in opted:
        return Reason.OPTED_OUT, f"{channel}: the address opted out ({', '.join(sorted(opted))})"
    consent = patient.sms_consent if channel == "sms" else patient.email_consent
    if not consent:
        return Reason.NO_CONSENT, f"{channel}: no {channel} consent"
    if purpose == "marketing" and not patient.marketing_consent:
        return Reason.NO_CONSENT, f"{channel}: no marketing consent"
    if caps is not None and now is not None:
        capped = cap_refusal(channel, purpose, sends, now, caps, timezone)
        if capped:
            return Reason.FREQUENCY_CAP, capped
    return None


def decide(tp: TouchPoint, journey: Journey | None, step: Step | None, patient: Patient,
           appointment: Appointment | None, latest_events: Mapping[str, datetime],
           opt_outs: Mapping[tuple[str, str], set[str]], now: datetime, quiet: QuietHours,
           practice_timezone: str, sends: Sequence[RecentSend] = (),
           caps: FrequencyCaps | None = None, *, recipient: Recipient | None = None,
           case_open: bool | None = None) -> Decision:
    """Every send-time guard, in order. The dispatcher acts on it; forecast reports it.

    ``recipient`` is who the touch point addresses (default: the patient): their
    timezone, contacts, consents and opt-outs are the ones checked, and ``sends`` are
    counted for them alone.
    """
    if journey is None or step is None:
        reason = Reason.JOURNEY_REMOVED if journey is None else Reason.STEP_REMOVED
        return Verdict(Status.CANCELLED, reason,
                       f"{tp.journey}/{tp.step} is no longer in schedules/")
    verdict = deadline_verdict(tp, now) or anchor_verdict(tp, journey, step, appointment,
                                                          latest_events, case_open)
    if verdict is not None:
        return verdict
    person: Patient | Recipient = recipient or patient
    # (a contact without a timezone already has the patient's; a referrer, the practice's)
    timezone = recipient_zone(person, practice_timezone)
    quiet_verdict = quiet_hours_verdict(tp, now, quiet, timezone)
    if quiet_verdict is not None:
        return quiet_verdict
    candidates, refusals = [], []
    channels = step.channels
    if tp.channel in channels:  # a retry: channels before it already failed for good
        channels = channels[channels.index(tp.channel):]
    own = [s for s in sends if s.recipient == tp.recipient]
    for channel in channels:
        refusal = channel_refusal(channel, person, tp.purpose, opt_outs, own, now, caps,
                                  timezone)
        if refusal is None:
            candidates.append(channel)
        else:
            refusals.append(refusal)
    if not candidates:
        return Verdict(Status.SKIPPED, refusals[0][0], "; ".join(d for _, d in refusals))
    return Send(tuple(candidates), timezone, tuple(detail for _, detail in refusals))

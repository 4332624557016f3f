"""Send-time guards: the checks re-run on every touch point just before it goes out.

Pure functions over a snapshot of what the store knows now. Each returns ``None`` when
the touch point may proceed, or a :class:`Verdict` that says what to record instead:

* :func:`anchor_verdict` — is the appointment still booked, at the same time? Has an
  event since planning ended the journey? (*never stale*)
* :func:`deadline_verdict` — is it past its deadline? (*too late*)
* :func:`quiet_hours_verdict` — is it night where the recipient is? (*never at night*)
* :func:`channel_refusal` — contact present, consent given, not opted out? (*consent first*)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from engine.definitions.journeys import Journey, Step
from engine.outcomes import Reason, Status
from engine.records import Appointment, Patient
from engine.store.ledger import TouchPoint
from engine.timing import QuietHours, zone

# What state the anchor appointment must still be in, by the journey's trigger.
_EXPECTED_STATUS = {
    "appointment.booked": "booked",
    "appointment.completed": "completed",
    "appointment.no_show": "no_show",
    "appointment.cancelled": "cancelled",
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
    """Go ahead: try ``channels`` in order (each passed the consent checks)."""

    channels: tuple[str, ...]
    timezone: str


Decision = Verdict | Defer | Send


def anchor_version(anchor: str) -> int | None:
    """``appointment:17:v3`` → 3."""
    _, _, version = anchor.rpartition(":v")
    return int(version) if version.isdigit() else None


def anchor_verdict(tp: TouchPoint, journey: Journey, step: Step,
                   appointment: Appointment | None,
                   latest_events: Mapping[str, datetime]) -> Verdict | None:
    """Cancel if the anchor no longer holds or an exit event happened since planning.

    ``latest_events`` maps an event kind to the latest time it happened to this patient.
    """
    if tp.appointment_id is not None and journey.anchored_on_appointment:
        if appointment is None:
            return Verdict(Status.CANCELLED, Reason.ANCHOR_CHANGED, "the appointment is gone")
        label = appointment.external_id
        if appointment.status == "cancelled" and journey.trigger.event != "appointment.cancelled":
            return Verdict(Status.CANCELLED, Reason.APPOINTMENT_CANCELLED,
                           f"appointment {label} was cancelled")
        version = anchor_version(tp.anchor)
        if journey.trigger.event == "appointment.booked" and version is not None \
                and version != appointment.version:
            return Verdict(Status.CANCELLED, Reason.ANCHOR_CHANGED,
                           f"appointment {label} moved to {appointment.start_at.isoformat()}")
        expected = _EXPECTED_STATUS.get(journey.trigger.event)
        if expected is not None and appointment.status != expected:
            return Verdict(Status.CANCELLED, Reason.ANCHOR_CHANGED,
                           f"appointment {label} is now {appointment.status}")
    for rule in journey.exits_for(step):
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


def recipient_zone(patient: Patient, practice_timezone: str) -> str:
    return patient.timezone or practice_timezone


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


def address_for(patient: Patient, channel: str) -> str | None:
    return patient.phone if channel == "sms" else patient.email


def channel_refusal(channel: str, patient: Patient, purpose: str,
                    opt_outs: Mapping[tuple[str, str], set[str]]) -> tuple[str, str] | None:
    """(reason, detail) if ``channel`` may not be used for this patient and purpose."""
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
    return None


def decide(tp: TouchPoint, journey: Journey | None, step: Step | None, patient: Patient,
           appointment: Appointment | None, latest_events: Mapping[str, datetime],
           opt_outs: Mapping[tuple[str, str], set[str]], now: datetime, quiet: QuietHours,
           practice_timezone: str) -> Decision:
    """Every send-time guard, in order. The dispatcher acts on it; forecast reports it."""
    if journey is None or step is None:
        reason = Reason.JOURNEY_REMOVED if journey is None else Reason.STEP_REMOVED
        return Verdict(Status.CANCELLED, reason,
                       f"{tp.journey}/{tp.step} is no longer in schedules/")
    verdict = deadline_verdict(tp, now) or anchor_verdict(tp, journey, step, appointment,
                                                          latest_events)
    if verdict is not None:
        return verdict
    timezone = recipient_zone(patient, practice_timezone)
    quiet_verdict = quiet_hours_verdict(tp, now, quiet, timezone)
    if quiet_verdict is not None:
        return quiet_verdict
    candidates, refusals = [], []
    for channel in step.channels:
        refusal = channel_refusal(channel, patient, tp.purpose, opt_outs)
        if refusal is None:
            candidates.append(channel)
        else:
            refusals.append(refusal)
    if not candidates:
        return Verdict(Status.SKIPPED, refusals[0][0], "; ".join(d for _, d in refusals))
    return Send(tuple(candidates), timezone)

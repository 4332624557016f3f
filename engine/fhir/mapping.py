"""FHIR R4 resources → the rows of Touchpoint's CSV importers (pure functions).

Each ``*_row`` function takes a resource already validated with fhir.resources' R4B models
and returns the row :mod:`engine.importer` takes from a CSV file (the same columns, as
strings), or raises :class:`MappingError` with what is wrong. The table in docs/fhir.md
says what maps to what; this module is that table.

Consents are not in FHIR's Patient: the caller fills ``sms_consent``, ``email_consent`` and
``marketing_consent`` (defaults for someone new, the stored values for someone on file).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any

from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.contactpoint import ContactPoint
from fhir.resources.R4B.humanname import HumanName
from fhir.resources.R4B.patient import Patient, PatientCommunication
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.relatedperson import RelatedPerson, RelatedPersonCommunication

ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
CONTACT_ROLE = "http://terminology.hl7.org/CodeSystem/v2-0131"
BCP47 = "urn:ietf:bcp:47"

# FHIR Appointment.status → Touchpoint's appointment status
APPOINTMENT_STATUS = {
    "proposed": "booked", "pending": "booked", "booked": "booked", "arrived": "booked",
    "checked-in": "booked", "fulfilled": "completed", "cancelled": "cancelled",
    "noshow": "no_show", "entered-in-error": "cancelled", "waitlist": "cancelled",
}

# v3 RoleCode (RelatedPerson.relationship) → Touchpoint's relationship. "parent" and
# "guardian" make the contact a guardian (messages for a minor go to them).
_ROLE_CODES = {
    **dict.fromkeys(("PRN", "MTH", "FTH", "NPRN", "NMTH", "NFTH", "ADOPTP", "ADOPTM",
                     "ADOPTF", "STPPRN", "STPMTH", "STPFTH", "FTHFOST", "MTHFOST", "PRNFOST",
                     "GESTM"), "parent"),
    **dict.fromkeys(("GUARD", "GUADLTM"), "guardian"),
    **dict.fromkeys(("SPS", "WIFE", "HUSB"), "spouse"),
    **dict.fromkeys(("SIGOTHR", "DOMPART", "FMRSPS"), "partner"),
    **dict.fromkeys(("CHILD", "CHLDADOPT", "CHLDFOST", "SON", "DAU", "NCHILD", "STPCHLD"),
                    "child"),
    **dict.fromkeys(("SIB", "BRO", "SIS", "NSIB", "HSIB", "STPSIB"), "sibling"),
    **dict.fromkeys(("GRPRN", "GRMTH", "GRFTH"), "grandparent"),
    **dict.fromkeys(("FAMMEMB", "EXT", "AUNT", "UNCLE", "COUSN", "NIECE", "NEPHEW", "GRNDCHILD"),
                    "family"),
    "FRND": "friend", "NBOR": "neighbor", "ROOM": "roommate",
}
# v2-0131 contact role → relationship
_CONTACT_ROLES = {"C": "emergency contact", "N": "next of kin", "E": "employer",
                  "F": "federal agency", "I": "insurance company", "S": "state agency",
                  "O": "other", "U": "unknown", "CP": "contact person", "EP": "emergency contact",
                  "PR": "person preparing referral"}


class MappingError(ValueError):
    """A resource cannot become a row (the message says why)."""


# --------------------------------------------------------------------------- pieces


def reference_id(reference: Reference | None, resource_type: str) -> str | None:
    """The id in ``Patient/123`` (relative, or absolute ``https://…/Patient/123``,
    ``…/_history/2`` dropped); None when the reference is to another type or none."""
    if reference is None or not reference.reference:
        return None
    parts = reference.reference.split("/")
    if "_history" in parts:
        parts = parts[:parts.index("_history")]
    if len(parts) >= 2 and parts[-2] == resource_type and parts[-1]:
        return str(parts[-1])
    return None


def _names(names: Sequence[HumanName] | None) -> list[HumanName]:
    """Names still in use, the ones to greet by first: usual, official, unstated, others."""
    order = {"usual": 0, "official": 1, None: 2, "temp": 3, "nickname": 4, "anonymous": 5}
    current = [n for n in names or () if n.use not in ("old", "maiden")]
    return sorted(current, key=lambda n: order.get(n.use, 6))


def first_name(names: Sequence[HumanName] | None) -> str:
    """given[0] of the usual name (what the person goes by), else of the official one;
    the first word of ``text`` when no name has a given part."""
    for name in _names(names):
        if name.given:
            return str(name.given[0]).strip()
    for name in _names(names):
        if name.text:
            return str(name.text).split()[0]
    return ""


def last_name(names: Sequence[HumanName] | None) -> str:
    """The family name of the official name, else of the first name that has one."""
    ordered = sorted(_names(names), key=lambda n: n.use != "official")
    return next((str(n.family).strip() for n in ordered if n.family), "")


def _telecom(points: Sequence[ContactPoint] | None, system: str,
             prefer: str | None = None) -> str:
    """The value of the best contact point of ``system``: not an old one, ``prefer``'s use
    first (mobile, for texts), then by rank (1 = first), then in the order given."""
    usable = [(i, p) for i, p in enumerate(points or ())
              if p.system == system and p.value and p.use != "old"]
    usable.sort(key=lambda item: (item[1].use != prefer if prefer else False,
                                  item[1].rank if item[1].rank is not None else 1 << 30,
                                  item[0]))
    return str(usable[0][1].value).strip() if usable else ""


def phone(points: Sequence[ContactPoint] | None) -> str:
    return _telecom(points, "phone", prefer="mobile") or _telecom(points, "sms")


def email(points: Sequence[ContactPoint] | None) -> str:
    return _telecom(points, "email")


def language(communication: Iterable[PatientCommunication | RelatedPersonCommunication] | None,
             ) -> str:
    """The preferred language (else the first one), as its BCP 47 code."""
    spoken = sorted(communication or (), key=lambda c: not c.preferred)
    for entry in spoken:
        codings = entry.language.coding or []
        code = next((c.code for c in codings if c.system == BCP47 and c.code),
                    next((c.code for c in codings if c.code), None))
        if code:
            return str(code)
    return ""


def _concept_text(concept: CodeableConcept | None) -> str:
    if concept is None:
        return ""
    if concept.text:
        return str(concept.text).strip()
    return next((str(c.display).strip() for c in concept.coding or () if c.display),
                next((str(c.code) for c in concept.coding or () if c.code), ""))


def relationship(concepts: Sequence[CodeableConcept] | None) -> str:
    """v3 RoleCode first (MTH/FTH/PRN → parent, GUARD → guardian, WIFE → spouse, …),
    then the v2-0131 contact role (C → emergency contact, N → next of kin), then the
    text as written."""
    codings = [c for concept in concepts or () for c in concept.coding or ()]
    for coding in codings:
        if coding.system == ROLE_CODE and coding.code in _ROLE_CODES:
            return _ROLE_CODES[str(coding.code)]
    for coding in codings:
        if coding.system == CONTACT_ROLE and coding.code in _CONTACT_ROLES:
            return _CONTACT_ROLES[str(coding.code)]
    return next((_concept_text(c).lower() for c in concepts or () if _concept_text(c)), "")


def _day(value: Any) -> str:
    """A full birth date as YYYY-MM-DD; a partial one (1963, 1963-05) is not kept."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value.isoformat()
    return ""


# --------------------------------------------------------------------------- resources


def patient_id(patient: Patient, identifier_system: str) -> str:
    """Touchpoint's patient_id: Patient.id, or the value of its identifier of
    ``identifier_system`` when one is configured."""
    if not identifier_system:
        if not patient.id:
            raise MappingError("has no id")
        return str(patient.id)
    for identifier in patient.identifier or ():
        if identifier.system == identifier_system and identifier.value:
            return str(identifier.value)
    raise MappingError(f"has no identifier of system {identifier_system} (setting "
                       "fhir.patient_identifier_system)")


def patient_row(patient: Patient, identifier_system: str) -> dict[str, str]:
    """The row of PATIENT_COLUMNS (+ date_of_birth) for ``patient``, consents left out."""
    row = {
        "patient_id": patient_id(patient, identifier_system),
        "first_name": first_name(patient.name),
        "last_name": last_name(patient.name),
        "phone": phone(patient.telecom),
        "email": email(patient.telecom),
        "language": language(patient.communication),
        "timezone": "",
        "date_of_birth": _day(patient.birthDate),
    }
    if identifier_system and patient.id:
        row["fhir_id"] = str(patient.id)  # (a custom field: how appointments refer to it)
    return row


def contact_row(person: RelatedPerson, patient_external_id: str) -> dict[str, str]:
    """The row of CONTACT_COLUMNS for ``person`` (consents and receives left out)."""
    if not person.id:
        raise MappingError("has no id")
    return {
        "patient_id": patient_external_id,
        "contact_id": str(person.id),
        "relationship": relationship(person.relationship),
        "first_name": first_name(person.name),
        "phone": phone(person.telecom),
        "email": email(person.telecom),
        "language": language(person.communication),
        "timezone": "",
    }


def appointment_patient(appointment: Appointment) -> str:
    """The id of the Patient who attends ``appointment``."""
    for participant in appointment.participant or ():
        found = reference_id(participant.actor, "Patient")
        if found:
            return found
    raise MappingError("has no participant that is a Patient (participant.actor "
                       "Patient/…)")


def appointment_row(appointment: Appointment, patient_external_id: str) -> dict[str, str]:
    """The row of APPOINTMENT_COLUMNS for ``appointment``."""
    if not appointment.id:
        raise MappingError("has no id")
    status = APPOINTMENT_STATUS.get(str(appointment.status))
    if status is None:
        raise MappingError(f"status {appointment.status} is not an R4 appointment status")
    if appointment.start is None:
        raise MappingError("has no start — Touchpoint needs the time of the visit")
    if appointment.minutesDuration:
        minutes = int(appointment.minutesDuration)
    elif appointment.end is not None:
        minutes = round((appointment.end - appointment.start).total_seconds() / 60)
    else:
        raise MappingError("has neither end nor minutesDuration — Touchpoint needs how "
                           "long the visit is")
    therapist = location = ""
    for participant in appointment.participant or ():
        actor = participant.actor
        if actor is None or not actor.display:
            continue
        if not therapist and (reference_id(actor, "Practitioner")
                              or reference_id(actor, "PractitionerRole")):
            therapist = str(actor.display)
        elif not location and reference_id(actor, "Location"):
            location = str(actor.display)
    visit_type = _concept_text(appointment.appointmentType) or next(
        (_concept_text(c) for c in appointment.serviceType or () if _concept_text(c)), "")
    return {
        "appointment_id": str(appointment.id),
        "patient_id": patient_external_id,
        "start": appointment.start.isoformat(),
        "duration_minutes": str(minutes),
        "status": status,
        "visit_type": visit_type,
        "therapist": therapist,
        "location": location,
    }


# CarePlan.status values whose plan Touchpoint keeps (a draft is not prescribed yet; a
# revoked or mistaken plan is cleared by the EMR sending the patient's plan again)
CARE_PLAN_STATUSES = ("active", "on-hold", "completed")
# Timing.repeat.periodUnit → days in one period (visits are counted a week)
_PERIOD_DAYS = {"d": 1, "wk": 7, "mo": 30.4375}


def care_plan_patient(plan: CarePlan) -> str:
    found = reference_id(plan.subject, "Patient")
    if not found:
        raise MappingError("subject is not a reference to a Patient (Patient/…)")
    return found


def care_plan_row(plan: CarePlan, patient_external_id: str) -> dict[str, str]:
    """The plan of care columns for ``plan``: the first activity whose
    ``detail.scheduledTiming.repeat`` says how often (``frequency`` per ``period``
    ``periodUnit``) gives the visits a week, its ``repeat.count`` (else
    ``detail.quantity``) the visits prescribed, and ``repeat.boundsPeriod`` (else
    ``CarePlan.period``) the first and last day."""
    if str(plan.status) not in CARE_PLAN_STATUSES:
        raise MappingError(f"status {plan.status}: only {', '.join(CARE_PLAN_STATUSES)} "
                           "CarePlans carry a plan of care")
    for activity in plan.activity or ():
        detail = activity.detail
        timing = detail.scheduledTiming if detail is not None else None
        repeat = timing.repeat if timing is not None else None
        if detail is None or repeat is None or not repeat.frequency or \
                str(repeat.periodUnit) not in _PERIOD_DAYS:
            continue
        period_days = float(repeat.period or 1) * _PERIOD_DAYS[str(repeat.periodUnit)]
        per_week = max(1, round(int(repeat.frequency) * 7 / period_days))
        visits = repeat.count or (detail.quantity.value if detail.quantity else None)
        if not visits:
            raise MappingError("activity.detail.scheduledTiming.repeat has no count (nor "
                               "detail.quantity): Touchpoint needs the visits prescribed")
        bounds = repeat.boundsPeriod or plan.period
        return {"patient_id": patient_external_id, "plan_visits": str(int(visits)),
                "plan_visits_per_week": str(per_week),
                "plan_start": _instant_day(bounds.start if bounds else None),
                "plan_end": _instant_day(bounds.end if bounds else None)}
    raise MappingError("has no activity.detail.scheduledTiming.repeat with a frequency per "
                       "d, wk or mo: no plan of care to take from it")


def _instant_day(value: Any) -> str:
    """The day of a FHIR dateTime (a date, or a date and time), as YYYY-MM-DD."""
    if isinstance(value, datetime):
        return value.date().isoformat()
    return value.isoformat() if isinstance(value, date) else ""

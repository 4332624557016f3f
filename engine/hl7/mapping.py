"""From a parsed HL7 v2 message to the CSV-shaped rows engine/importer.py validates.

Nothing here touches the database: :func:`map_message` reads the fields the practice's
settings name (:class:`Hl7Config`) and returns a :class:`Mapped` — the patient, the
contacts and the appointment as ``{csv column: text}``, each column with the HL7 field it
came from (so a problem the importer finds with ``phone`` is reported on ``PID-13``).

A value is ``None`` when the message does not carry it (the stored value is kept) and
``""`` when the sender cleared it with the HL7 null ``""``.

The table of which field maps to what is in docs/hl7.md; keep the two in step.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import hl7
from babel import Locale, UnknownLocaleError

from engine.hl7.fields import FieldPath, parse_field_path

if TYPE_CHECKING:
    from engine.settings import Hl7

# HL7 table 0357 (message error condition codes) used in ERR segments.
REQUIRED_FIELD_MISSING = 101
DATA_TYPE_ERROR = 102
TABLE_VALUE_NOT_FOUND = 103
UNSUPPORTED_MESSAGE_TYPE = 200
UNSUPPORTED_EVENT_CODE = 201
UNSUPPORTED_VERSION_ID = 203
UNKNOWN_KEY_IDENTIFIER = 204
DUPLICATE_KEY_IDENTIFIER = 205
APPLICATION_INTERNAL_ERROR = 207

ERROR_TEXT = {
    REQUIRED_FIELD_MISSING: "Required field missing",
    DATA_TYPE_ERROR: "Data type error",
    TABLE_VALUE_NOT_FOUND: "Table value not found",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    UNSUPPORTED_VERSION_ID: "Unsupported version id",
    UNKNOWN_KEY_IDENTIFIER: "Unknown key identifier",
    DUPLICATE_KEY_IDENTIFIER: "Duplicate key identifier",
    APPLICATION_INTERNAL_ERROR: "Application internal error",
}

# What each trigger event does (docs/hl7.md, "Message semantics").
SIU_EVENTS = {"S12": "book", "S13": "reschedule", "S14": "modify", "S15": "cancel",
              "S17": "remove", "S26": "no_show"}
ADT_EVENTS = {"A04", "A08", "A28", "A31"}

# SCH-25 filler status codes (HL7 table 0278) → Touchpoint's appointment status.
FILLER_STATUS = {"booked": "booked", "pending": "booked", "waitlist": "booked",
                 "overbook": "booked", "started": "booked", "confirmed": "booked",
                 "arrived": "booked", "checkedin": "booked",
                 "complete": "completed", "completed": "completed",
                 "cancelled": "cancelled", "canceled": "cancelled", "dc": "cancelled",
                 "deleted": "cancelled", "noshow": "no_show", "no-show": "no_show"}

# NK1-3 relationship codes (HL7 table 0063) and words → the contacts' relationship.
RELATIONSHIPS = {"mth": "parent", "fth": "parent", "par": "parent", "mother": "parent",
                 "father": "parent", "parent": "parent", "stepmother": "parent",
                 "stepfather": "parent", "grd": "guardian", "guardian": "guardian",
                 "legal guardian": "guardian", "spo": "spouse", "spouse": "spouse",
                 "dom": "spouse", "wife": "spouse", "husband": "spouse",
                 "cgv": "caregiver", "caregiver": "caregiver"}

_NULL = '""'  # HL7's explicit null: "delete what you have"
_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d{1,4})?"
                  r"([+-]\d{4})?$")
_UNITS = {"min": 1, "mins": 1, "minute": 1, "minutes": 1, "m": 1, "h": 60, "hr": 60,
          "hrs": 60, "hour": 60, "hours": 60, "s": 1 / 60, "sec": 1 / 60, "d": 24 * 60}


class Hl7Problem(Exception):
    """A message that cannot be applied, and the field to blame (answered with AE)."""

    def __init__(self, location: Location, code: int, message: str) -> None:
        super().__init__(f"{location}: {message}")
        self.location = location
        self.code = code
        self.text = message


@dataclass(frozen=True)
class Location:
    """Where in a message: segment, its sequence among segments of that id, field and
    component (ERR-2 / ERR-1 carry it)."""

    segment: str
    field: int
    sequence: int = 1
    component: int | None = None

    def __str__(self) -> str:
        seq = f"({self.sequence})" if self.sequence > 1 else ""
        comp = f".{self.component}" if self.component else ""
        return f"{self.segment}{seq}-{self.field}{comp}"


@dataclass(frozen=True)
class Hl7Config:
    """The practice's choices (settings ``hl7.*``), parsed once at startup."""

    patient_id_type: str = ""
    appointment_id: FieldPath = field(default_factory=lambda: parse_field_path("SCH-2"))
    visit_type: FieldPath = field(default_factory=lambda: parse_field_path("AIS-3"))
    location: FieldPath = field(default_factory=lambda: parse_field_path("AIL-3"))
    provider: FieldPath = field(default_factory=lambda: parse_field_path("AIP-3"))
    sms_consent: bool = True
    email_consent: bool = True

    @classmethod
    def from_settings(cls, settings: Hl7) -> Hl7Config:
        return cls(patient_id_type=settings.patient_id_type.strip(),
                   appointment_id=parse_field_path(settings.appointment_id_field),
                   visit_type=parse_field_path(settings.visit_type_field),
                   location=parse_field_path(settings.location_field),
                   provider=parse_field_path(settings.provider_field),
                   sms_consent=settings.sms_consent, email_consent=settings.email_consent)


@dataclass
class Person:
    """A patient or contact row: ``values`` by csv column, ``where`` the field of each."""

    values: dict[str, str | None] = field(default_factory=dict)
    where: dict[str, Location] = field(default_factory=dict)

    def put(self, column: str, value: str | None, location: Location) -> None:
        self.values[column] = value
        self.where[column] = location


@dataclass
class Mapped:
    """What one message says: its action and the rows to sync."""

    message_type: str  # "SIU^S12"
    action: str  # book, reschedule, modify, cancel, remove, no_show, patient
    patient: Person
    contacts: list[Person] = field(default_factory=list)
    appointment: Person | None = None


# --------------------------------------------------------------------------- reading


def segments(message: hl7.Message, segment_id: str) -> list[hl7.Segment]:
    return [s for s in message if str(s[0][0]) == segment_id]


def _repetitions(segment: hl7.Segment, field_no: int) -> int:
    if field_no >= len(segment):
        return 0
    value = segment(field_no)
    if value and isinstance(value[0], hl7.Repetition):
        return len(value)
    return 1 if str(value) else 0


def value(segment: hl7.Segment | None, field_no: int, component: int = 1,
          subcomponent: int = 1, repetition: int = 1) -> str:
    """The text at SEG-field.component.subcomponent (escapes such as \\T\\ undone), or ""."""
    if segment is None:
        return ""
    try:
        found = segment.extract_field(1, field_no, repetition, component, subcomponent)
    except (IndexError, KeyError):
        return ""
    return str(found).strip()


def at(message: hl7.Message, path: FieldPath) -> tuple[str, Location]:
    """The first non-empty value at ``path`` among the segments it names."""
    found = segments(message, path.segment)
    for sequence, segment in enumerate(found, start=1):
        text = value(segment, path.field, path.component or 1, path.subcomponent or 1)
        if text:
            return text, Location(path.segment, path.field, sequence, path.component)
    return "", Location(path.segment, path.field, 1, path.component)


def _display(message: hl7.Message, path: FieldPath) -> tuple[str, Location]:
    """A readable value: a path without a component reads the field as its data type is
    meant to be shown (a name for XCN, the text of a CE, the description of a PL)."""
    if path.component is not None:
        return at(message, path)
    kind = {("AIP", 3): "xcn", ("AIS", 3): "ce", ("AIG", 3): "ce",
            ("AIL", 3): "pl"}.get((path.segment, path.field))
    for sequence, segment in enumerate(segments(message, path.segment), start=1):
        where = Location(path.segment, path.field, sequence)
        if kind == "xcn":
            name = " ".join(v for v in (value(segment, path.field, 3),
                                        value(segment, path.field, 2)) if v)
            degree = value(segment, path.field, 7)
            text = f"{name}, {degree}" if name and degree else name
            text = text or value(segment, path.field, 1)
        elif kind == "ce":
            text = value(segment, path.field, 2) or value(segment, path.field, 1)
        elif kind == "pl":
            text = (value(segment, path.field, 9) or value(segment, path.field, 4)
                    or value(segment, path.field, 1))
        else:
            text = value(segment, path.field, 1)
        if text:
            return text, where
    return "", Location(path.segment, path.field)


def _given(text: str) -> str | None:
    """None when the sender sent nothing, "" for the HL7 null, else the text."""
    if text == _NULL:
        return ""
    return text or None


# --------------------------------------------------------------------------- data types


def hl7_date(text: str, location: Location) -> str:
    """An HL7 DT/DTM/TS (``19800214``, ``198002141030``) → ``1980-02-14``."""
    match = _DTM.match(text)
    if not match or match.group(2) is None or match.group(3) is None:
        raise Hl7Problem(location, DATA_TYPE_ERROR,
                         "is not a date — send YYYYMMDD, e.g. 19800214")
    year, month, day = match.group(1, 2, 3)
    return f"{year}-{month}-{day}"


def hl7_datetime(text: str, location: Location) -> str:
    """An HL7 DTM (``202612100930``, ``20261210093000-0600``) → ISO 8601 the importer reads:
    with its offset if it has one, else local time (the practice's timezone)."""
    match = _DTM.match(text)
    if not match or None in match.group(2, 3, 4):
        raise Hl7Problem(location, DATA_TYPE_ERROR, "is not a date and time — send "
                         "YYYYMMDDHHMM[SS][+/-ZZZZ], e.g. 202612100930-0600")
    year, month, day, hour, minute, second, offset = match.groups()
    iso = f"{year}-{month}-{day}T{hour}:{minute or '00'}:{second or '00'}"
    try:
        datetime.fromisoformat(iso)
    except ValueError:
        raise Hl7Problem(location, DATA_TYPE_ERROR, "is not a valid date and time") from None
    if offset:
        iso += f"{offset[:3]}:{offset[3:]}"
    return iso


def _phone_of(segment: hl7.Segment, field_no: int, repetition: int) -> str:
    """The number of an XTN: v2.5's country^area^local components, or v2.3's XTN.1."""
    local = value(segment, field_no, 7, repetition=repetition)
    if local:
        country = value(segment, field_no, 5, repetition=repetition)
        area = value(segment, field_no, 6, repetition=repetition)
        number = f"({area}) {local}" if area else local
        return f"+{country.lstrip('+')} {number}" if country else number
    return value(segment, field_no, 1, repetition=repetition)


def _is_email(segment: hl7.Segment, field_no: int, repetition: int) -> bool:
    use = value(segment, field_no, 2, repetition=repetition).upper()
    equipment = value(segment, field_no, 3, repetition=repetition).upper()
    return use == "NET" or equipment in ("INTERNET", "X.400") \
        or "@" in value(segment, field_no, 4, repetition=repetition) \
        or "@" in value(segment, field_no, 1, repetition=repetition)


def reach(segment: hl7.Segment, name: str, sequence: int,
          fields: tuple[int, ...]) -> tuple[tuple[str | None, Location], tuple[str | None,
                                                                             Location]]:
    """(phone, where), (email, where) from the XTN ``fields`` of ``segment``: a mobile
    (equipment type CP) first, then the first number; the email where the use code is
    NET (or the equipment Internet), from XTN.4."""
    phones: list[tuple[int, str, Location]] = []
    email: tuple[str | None, Location] = (None, Location(name, fields[0], sequence))
    cleared = False
    for field_no in fields:
        for rep in range(1, _repetitions(segment, field_no) + 1):
            where = Location(name, field_no, sequence)
            if value(segment, field_no, 1, repetition=rep) == _NULL:
                cleared = True
                continue
            if _is_email(segment, field_no, rep):
                if email[0] is None:
                    address = value(segment, field_no, 4, repetition=rep) or value(
                        segment, field_no, 1, repetition=rep)
                    email = (address, where)
                continue
            number = _phone_of(segment, field_no, rep)
            if number:
                mobile = value(segment, field_no, 3, repetition=rep).upper() == "CP"
                phones.append((0 if mobile else 1, number, where))
    if phones:
        phones.sort(key=lambda p: p[0])  # (stable: the first mobile, else the first)
        phone: tuple[str | None, Location] = (phones[0][1], phones[0][2])
    else:
        phone = ("" if cleared else None, Location(name, fields[0], sequence))
    if email[0] is None and cleared:
        email = ("", email[1])
    return phone, email


def language(text: str) -> str | None:
    """``ENG``, ``spa``, ``es``, ``es-MX`` → a code Touchpoint's templates use (``en``,
    ``es``, ``es-MX``). A value that is no language code (a local table's ``1``, the word
    ``English``) is None: the language on file (else the practice's) is kept, and the
    message is not refused for it."""
    raw = text.strip().replace("_", "-")
    try:
        locale = Locale.parse(raw.lower().replace("-", "_"))
    except (UnknownLocaleError, ValueError, TypeError):
        return None
    if len(raw) == 2:
        return raw.lower()
    if "-" in raw:
        code, _, region = raw.partition("-")
        return f"{code.lower()}-{region.upper() if len(region) == 2 else region}"
    return str(locale.language)


# --------------------------------------------------------------------------- mapping


def message_type(message: hl7.Message) -> tuple[str, str]:
    msh = message.segment("MSH")
    return value(msh, 9, 1).upper(), value(msh, 9, 2).upper()


def map_message(message: hl7.Message, config: Hl7Config) -> Mapped:
    """The rows ``message`` asks for, or an :class:`Hl7Problem` naming the field."""
    kind, event = message_type(message)
    if kind == "SIU" and event in SIU_EVENTS:
        action = SIU_EVENTS[event]
    elif kind == "ADT" and event in ADT_EVENTS:
        action = "patient"
    elif kind in ("SIU", "ADT"):
        raise Hl7Problem(Location("MSH", 9, component=2), UNSUPPORTED_EVENT_CODE,
                         f"event {event or '(empty)'} is not one Touchpoint takes — send "
                         f"{kind} {', '.join(sorted(SIU_EVENTS if kind == 'SIU' else ADT_EVENTS))}")
    else:
        raise Hl7Problem(Location("MSH", 9), UNSUPPORTED_MESSAGE_TYPE,
                         f"message type {kind or '(empty)'} is not one Touchpoint takes — "
                         "send SIU or ADT")
    pids = segments(message, "PID")
    if not pids:
        raise Hl7Problem(Location("PID", 3), REQUIRED_FIELD_MISSING,
                         "the message has no PID segment — the patient is needed")
    patient = _patient(pids[0], config)
    mapped = Mapped(f"{kind}^{event}", action, patient)
    for sequence, nk1 in enumerate(segments(message, "NK1"), start=1):
        contact = _contact(nk1, sequence, patient.values["patient_id"] or "")
        if contact is not None:
            mapped.contacts.append(contact)
    if kind == "SIU":
        mapped.appointment = _appointment(message, config, action,
                                          patient.values["patient_id"] or "")
    return mapped


def _patient(pid: hl7.Segment, config: Hl7Config) -> Person:
    person = Person()
    patient_id = ""
    for rep in range(1, _repetitions(pid, 3) + 1):
        if not config.patient_id_type or \
                value(pid, 3, 5, repetition=rep).upper() == config.patient_id_type.upper():
            patient_id = value(pid, 3, 1, repetition=rep)
            if patient_id:
                break
    if not patient_id:
        kind = f" of type {config.patient_id_type}" if config.patient_id_type else ""
        raise Hl7Problem(Location("PID", 3), REQUIRED_FIELD_MISSING,
                         f"no patient identifier{kind} — PID-3 needs the patient id"
                         + (" (or change hl7.patient_id_type)" if kind else ""))
    person.put("patient_id", patient_id, Location("PID", 3))
    person.put("last_name", _given(value(pid, 5, 1)), Location("PID", 5, component=1))
    person.put("first_name", _given(value(pid, 5, 2)), Location("PID", 5, component=2))
    born = value(pid, 7, 1)
    person.put("date_of_birth", _given(born) if born in ("", _NULL)
               else hl7_date(born, Location("PID", 7)), Location("PID", 7))
    (phone, phone_at), (email, email_at) = reach(pid, "PID", 1, (13, 14))
    person.put("phone", phone, phone_at)
    person.put("email", email, email_at)
    spoken = value(pid, 15, 1)
    person.put("language", _given(spoken) if spoken in ("", _NULL) else language(spoken),
               Location("PID", 15))
    return person


def _contact(nk1: hl7.Segment, sequence: int, patient_id: str) -> Person | None:
    """A parent, guardian, spouse or caregiver; None for other next of kin (an employer,
    an emergency contact), who get no messages."""
    code = value(nk1, 3, 1).lower()
    text = value(nk1, 3, 2).lower()
    relationship = RELATIONSHIPS.get(code) or RELATIONSHIPS.get(text)
    if relationship is None:
        return None
    person = Person()
    first, last = value(nk1, 2, 2), value(nk1, 2, 1)
    contact_id = value(nk1, 33, 1)
    if not contact_id:
        # (no id from the sender: the same person is the same patient, relationship and
        # name; long ids are hashed to fit the column)
        slug = re.sub(r"[^a-z0-9]+", "-", f"{first} {last}".lower()).strip("-")
        contact_id = f"{patient_id}/{relationship}/{slug}"
        if len(contact_id) > 64:
            contact_id = "nk1-" + hashlib.sha1(contact_id.encode()).hexdigest()[:32]
    person.put("contact_id", contact_id, Location("NK1", 33, sequence))
    person.put("patient_id", patient_id, Location("PID", 3))
    person.put("relationship", relationship, Location("NK1", 3, sequence))
    person.put("first_name", first or None, Location("NK1", 2, sequence, component=2))
    (phone, phone_at), (email, email_at) = reach(nk1, "NK1", sequence, (5, 6))
    person.put("phone", phone, phone_at)
    person.put("email", email, email_at)
    spoken = value(nk1, 20, 1)
    person.put("language", language(spoken) if spoken and spoken != _NULL else _given(spoken),
               Location("NK1", 20, sequence))
    return person


def _appointment(message: hl7.Message, config: Hl7Config, action: str,
                 patient_id: str) -> Person:
    person = Person()
    sch = (segments(message, "SCH") or [None])[0]
    appointment_id, id_at = at(message, config.appointment_id)
    if not appointment_id:
        raise Hl7Problem(id_at, REQUIRED_FIELD_MISSING,
                         f"no appointment id in {config.appointment_id} — send it there, or "
                         "set hl7.appointment_id_field to the field that has it")
    person.put("appointment_id", appointment_id, id_at)
    person.put("patient_id", patient_id, Location("PID", 3))

    # start: SCH-11.4 (v2.3–2.5), else TQ1-7 (v2.5+), else AIS-4
    start: str | None = None
    start_at = Location("SCH", 11, component=4)
    for seg_id, field_no, component in (("SCH", 11, 4), ("TQ1", 7, 1), ("AIS", 4, 1)):
        found = at(message, FieldPath(seg_id, field_no, component))
        if found[0]:
            start_at = found[1]
            start = hl7_datetime(found[0], start_at)
            break
    person.put("start", start, start_at)

    # duration: SCH-9 in SCH-10 units, else AIS-7 in AIS-8 units (minutes by default)
    duration: str | None = None
    duration_at = Location("SCH", 9)
    for seg_id, field_no in (("SCH", 9), ("AIS", 7)):
        amount, where = at(message, FieldPath(seg_id, field_no))
        if amount:
            duration_at = where
            units, _ = at(message, FieldPath(seg_id, field_no + 1))
            if not units:
                units, _ = at(message, FieldPath(seg_id, field_no + 1, 2))
            duration = _minutes(amount, units, where)
            break
    person.put("duration_minutes", duration, duration_at)

    status: str | None = {"cancel": "cancelled", "no_show": "no_show",
                          "reschedule": "booked"}.get(action)
    if status is None:
        filler = value(sch, 25, 1) or value(sch, 25, 2)
        if filler:
            status = FILLER_STATUS.get(filler.lower().replace(" ", ""))
            if status is None:
                raise Hl7Problem(Location("SCH", 25), TABLE_VALUE_NOT_FOUND,
                                 "is not a filler status Touchpoint knows — send Booked, "
                                 "Pending, Complete, Cancelled, Noshow or Deleted")
        elif action == "book":
            status = "booked"
    person.put("status", status, Location("SCH", 25))

    for column, path in (("visit_type", config.visit_type), ("location", config.location),
                         ("therapist", config.provider)):
        text, where = _display(message, path)
        if not text and column == "therapist" and path == parse_field_path("AIP-3"):
            text, where = _display(message, parse_field_path("AIG-3"))
        person.put(column, _given(text), where)
    return person


def _minutes(amount: str, units: str, where: Location) -> str:
    try:
        number = float(amount)
    except ValueError:
        raise Hl7Problem(where, DATA_TYPE_ERROR, "is not a number of minutes") from None
    factor = _UNITS.get(units.strip().lower() or "min")
    if factor is None:
        raise Hl7Problem(Location(where.segment, where.field + 1, where.sequence),
                         TABLE_VALUE_NOT_FOUND,
                         "is not a unit Touchpoint knows — send MIN, H or S")
    return str(round(number * factor))

"""CSV import of patients and appointments, re-runnable as a sync from an EMR export.

* The header is checked first: a missing required column refuses the whole file.
* Each row is then validated on its own. **Bad rows are reported with their line number
  and reason, and every good row is kept** (they are written in one transaction, so an
  interrupted import writes nothing).
* A row identical to what is stored changes nothing. A changed row updates the record
  and records the matching event — ``patient.created``, ``appointment.booked``,
  ``appointment.rescheduled``, ``appointment.cancelled``, ``appointment.completed``,
  ``appointment.no_show`` — which the planner turns into touch points.
* A record that had left the practice's records (``removed_at``, see engine/removal.py)
  and is in the file again is **reactivated** (counted as ``reactivated``); a booked
  appointment ahead is re-booked (new version, ``appointment.booked``), because its
  touch points were cancelled when it was removed.
* **Full sync** (``full=True``, ``touchpoint import … --full``): the file holds every
  record of its kind, so the active ones *not* in it are removed (patients with
  :func:`engine.removal.remove_patient`, appointments with ``remove_appointment``,
  contacts with ``remove_contact``: deactivated, never deleted), counted as ``removed``.
  An id on a rejected row still counts as in the file (a bad cell does not mean the
  record left the source), and a full file with no good row is refused whole: an empty
  or broken export must not remove everyone.
* Rows that describe the past (a visit completed weeks ago, a booking whose start has
  passed) and appointments first seen already cancelled are stored without starting
  journeys (counted as ``historical``).
* A file whose CSV quoting is broken (an unclosed quote) is refused whole: past that
  point, where one row ends and the next begins cannot be known.
* A naive start time in the repeated hour of an autumn DST change is taken as its first
  occurrence; one in the skipped spring hour is rejected. Give offsets to be exact.
* A row of a patient erased by ``touchpoint patient erase`` (patient, appointment or
  contact) is refused with the date of the erasure: their data must not come back.
* Whatever one cell holds, only its row is refused, alike on SQLite and PostgreSQL: a
  value longer than its column (the lengths of engine/store/schema.py), a NUL byte, a
  date outside the years Touchpoint plans for (:data:`YEARS`), an unknown timezone.

Problems never echo patient data: they name the line, the column and what to write.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import phonenumbers
from babel import Locale, UnknownLocaleError
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from sqlalchemy import Column, Connection, String, Table, insert, select, text, update

from engine import removal, waitlist
from engine.domain import APPOINTMENT_STATUSES
from engine.errors import ImportFileError
from engine.patient_data import erased_on, refusal
from engine.store.records import among, append_events, chunks
from engine.store.schema import (
    appointments,
    contacts,
    patients,
    referrers,
    waitlist_entries,
)
from engine.timing import zone

PATIENT_COLUMNS = ("patient_id", "first_name", "last_name", "phone", "email", "language",
                   "timezone", "sms_consent", "email_consent", "marketing_consent")
# Optional patient columns Touchpoint understands (any other extra column is a custom field).
PATIENT_OPTIONAL = ("date_of_birth", "referral_source", "discharged_on", "plan_visits",
                    "plan_visits_per_week", "plan_start", "plan_end", "intake_completed",
                    "booking_url")
# The plan of care's columns: all empty (no plan), or at least the first three
PLAN_COLUMNS = ("plan_visits", "plan_visits_per_week", "plan_start", "plan_end")
PLAN_LIMITS = {"plan_visits": 200, "plan_visits_per_week": 7}
PLAN_FIELDS = (*PLAN_COLUMNS, "intake_completed", "booking_url")
CONTACT_COLUMNS = ("patient_id", "contact_id", "relationship", "first_name", "phone", "email",
                   "language", "timezone", "sms_consent", "email_consent", "receives")
REFERRER_COLUMNS = ("referrer_id", "name", "contact_name", "email")
# The waitlist: patient_id, then the preferences (engine/waitlist.py FIELDS), all optional
WAITLIST_COLUMNS = ("patient_id",)
APPOINTMENT_COLUMNS = ("appointment_id", "patient_id", "start", "duration_minutes", "status",
                       "visit_type", "therapist", "location")
# Dates and times Touchpoint accepts: planning moves them by days and years (reminders
# before, win-back after, a minor's 18th birthday), which must stay far from the ends of
# what a date can hold (years 1 and 9999).
YEARS = (1900, 2200)
# A completed visit or no-show seen for the first time starts journeys only if it is this
# recent; older rows are history (an initial import must not thank patients for last year).
RECENT = timedelta(days=3)

_YES = {"yes", "y", "true", "1", "x"}
_NO = {"no", "n", "false", "0", ""}
_STATUS_ALIASES = {"canceled": "cancelled", "no-show": "no_show", "noshow": "no_show",
                   "no show": "no_show", "scheduled": "booked", "complete": "completed",
                   "attended": "completed"}

Progress = Callable[[int], None]


@dataclass(frozen=True)
class RowProblem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class ImportSummary:
    file: str
    kind: str
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    historical: int = 0
    reactivated: int = 0  # back in the source after being removed
    removed: int = 0  # a full sync: active records not in the file
    cancelled: int = 0  # pending touch points the removals cancelled
    problems: list[RowProblem] = field(default_factory=list)
    events: Counter[str] = field(default_factory=Counter)

    @property
    def rejected(self) -> int:
        return len(self.problems)

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file, "kind": self.kind, "rows": self.rows, "created": self.created,
            "updated": self.updated, "unchanged": self.unchanged, "rejected": self.rejected,
            "historical": self.historical, "reactivated": self.reactivated,
            "removed": self.removed, "cancelled": self.cancelled,
            "events": dict(sorted(self.events.items())),
            "problems": [{"line": p.line, "message": p.message} for p in self.problems],
        }


class _RowError(ValueError):
    pass


# --------------------------------------------------------------------------- reading


def read_import_file(path: Path, not_utf8: str) -> str:
    """The text of a file to import (a byte-order mark dropped), or one clear line of
    ImportFileError: not found, unreadable, or not UTF-8 (``not_utf8`` says what to do)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ImportFileError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise ImportFileError(f"{path}: not UTF-8 text — {not_utf8}") from None
    except OSError as exc:
        raise ImportFileError(f"{path}: cannot read it ({exc.strerror})") from None


def _rows(path: Path, required: Sequence[str]) -> Iterator[tuple[int, Mapping[str, str]]]:
    """(line number, row with lower-cased, stripped keys) after checking the header."""
    text = read_import_file(path, "export the CSV as UTF-8")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise ImportFileError(f"{path}: the file is empty — it needs a header row") from None
    except csv.Error as exc:
        raise ImportFileError(f"{path}: line 1: the header is not valid CSV ({exc})") from None
    columns = [name.strip().lower() for name in header]
    if any("\x00" in name for name in columns):
        raise ImportFileError(f"{path}: line 1: the header contains a NUL byte (an invisible "
                              "control character) — re-export the file")
    missing = [name for name in required if name not in columns]
    if missing:
        raise ImportFileError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} — "
            f"the header must include {', '.join(required)}")
    duplicated = sorted({name for name in columns if columns.count(name) > 1 and name})
    if duplicated:
        raise ImportFileError(f"{path}: column {', '.join(duplicated)} appears twice in the header")
    line = reader.line_num
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # Broken quoting: where the next row starts cannot be known, so nothing of
            # this file is imported (the caller's transaction is rolled back).
            raise ImportFileError(
                f"{path}: line {line + 1}: {exc} — check the quotes on that line (a field "
                "with a comma or line break must be in double quotes, and a quote inside it "
                "doubled); nothing from this file was imported") from None
        start_line, line = line + 1, reader.line_num
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(columns):
            yield start_line, {"__error__": f"has {len(values)} fields, the header has "
                               f"{len(columns)} — check for a stray comma or quote"}
            continue
        yield start_line, {name: value.strip() for name, value in zip(columns, values,
                                                                     strict=True)}


def _check_cells(row: Mapping[str, str]) -> None:
    """Refuse a row with a NUL byte in a cell (PostgreSQL cannot store one)."""
    for column, value in row.items():
        if "\x00" in value:
            raise _RowError(f"{column} contains a NUL byte (an invisible control character) — "
                            "re-export the file, or delete the character in the cell")


# Row values that name a record of another table, by the column they are looked up in
_REFERENCES: dict[str, tuple[str, Column[Any]]] = {
    "patient_external_id": ("patient_id", patients.c.external_id),
    "referral_source": ("referral_source", referrers.c.external_id),
}


def _length(column: Column[Any] | None) -> int | None:
    """How many characters ``column`` holds (None: no limit)."""
    return column.type.length if column is not None and isinstance(column.type, String) \
        else None


@cache
def _limits(table: Table) -> dict[str, int]:
    """``{row key: characters its column holds}`` for the rows written to ``table``."""
    limits = {column.name: _length(column) for column in table.columns}
    limits.update((key, _length(column)) for key, (_, column) in _REFERENCES.items())
    return {key: limit for key, limit in limits.items() if limit is not None}


def _check_lengths(table: Table, values: Mapping[str, Any], id_column: str) -> None:
    """Refuse a value longer than its column holds: PostgreSQL would refuse the whole
    import (and SQLite store it), so the row is refused here, alike on both."""
    limits = _limits(table)
    for key, value in values.items():
        limit = limits.get(key)
        if limit is not None and isinstance(value, str) and len(value) > limit:
            name = id_column if key == "external_id" else _REFERENCES.get(key, (key,))[0]
            raise _RowError(f"{name} is longer than the {limit} characters Touchpoint keeps "
                            f"({len(value)}) — shorten it")


def _consent(row: Mapping[str, str], column: str) -> bool:
    value = row.get(column, "").lower()
    if value in _YES:
        return True
    if value in _NO:
        return False
    raise _RowError(f"{column} must be yes or no")


def _reachable(row: Mapping[str, str], region: str) -> dict[str, Any]:
    """How to reach a person and what they agreed to: phone, email, language, timezone,
    consents."""
    return {
        "phone": normalise_phone(row.get("phone", ""), region),
        "email": normalise_email(row.get("email", "")),
        "language": _language(row.get("language", "")),
        "timezone": _timezone(row.get("timezone", "")),
        "sms_consent": _consent(row, "sms_consent"),
        "email_consent": _consent(row, "email_consent"),
        "marketing_consent": _consent(row, "marketing_consent"),
    }


def normalise_phone(raw: str, region: str) -> str | None:
    if not raw:
        return None
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        raise _RowError("phone is not a phone number — write it with its area code, e.g. "
                        "503-555-0100 or +1 503 555 0100") from None
    if not phonenumbers.is_valid_number(number):
        raise _RowError(f"phone is not a valid number (default region {region}) — check the "
                        "digits, or add the country code")
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


# The plain ASCII addresses nearly every patient has, which email_validator would accept
# as they are (domain lower-cased); anything else goes through email_validator itself.
_PLAIN_EMAIL = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63})$")


def normalise_email(raw: str) -> str | None:
    if not raw:
        return None
    plain = _PLAIN_EMAIL.match(raw)
    if plain and len(raw) <= 254 and raw.index("@") <= 64:
        domain = plain.group(1).lower()
        if not any(domain == d or domain.endswith("." + d) for d in SPECIAL_USE_DOMAIN_NAMES):
            return f"{raw[:raw.index('@')]}@{domain}"
    try:
        return str(validate_email(raw, check_deliverability=False).normalized)
    except EmailNotValidError:
        raise _RowError("email is not a valid email address") from None


def _language(raw: str) -> str | None:
    if not raw:
        return None
    try:
        Locale.parse(raw.replace("-", "_"))
    except (UnknownLocaleError, ValueError):
        raise _RowError("language is not a language code — use e.g. en, es or es-MX") from None
    return raw.replace("_", "-")


def _timezone(raw: str) -> str | None:
    if not raw:
        return None
    limit = _length(patients.c.timezone)
    if limit is not None and len(raw) > limit:
        raise _RowError(f"timezone is longer than the {limit} characters of any timezone name "
                        "— use a name from the tz database, such as America/New_York")
    try:
        zone(raw)
    except ValueError:
        raise _RowError("timezone is not a known timezone — use a name from the tz "
                        "database, such as America/New_York") from None
    return raw


def _hash(values: Mapping[str, Any]) -> str:
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------- patients


def parse_patient(row: Mapping[str, str], region: str) -> dict[str, Any]:
    _check_cells(row)
    external_id = row.get("patient_id", "")
    if not external_id:
        raise _RowError("patient_id is empty")
    values: dict[str, Any] = {
        "external_id": external_id,
        "first_name": row.get("first_name", ""),
        "last_name": row.get("last_name", ""),
        **_reachable(row, region),
        "custom": {k: v for k, v in row.items()
                   if k not in PATIENT_COLUMNS and k not in PATIENT_OPTIONAL and k},
        "date_of_birth": _date(row, "date_of_birth"),
        "discharged_on": _date(row, "discharged_on"),
        "referral_source": row.get("referral_source", "") or None,
        **_plan_of_care(row),
    }
    if not values["first_name"]:
        raise _RowError("first_name is empty — messages greet patients by first name")
    _check_lengths(patients, values, "patient_id")
    return values


def _plan_of_care(row: Mapping[str, str]) -> dict[str, Any]:
    """The plan of care, intake and booking columns the row has. A column the row does not
    have keeps what is stored (another source may give it: a FHIR CarePlan, the API); the
    plan's four columns go together (one of them there: the others there empty)."""
    values: dict[str, Any] = {}
    if any(column in row for column in PLAN_COLUMNS):
        values.update(_plan(row))
    if "intake_completed" in row:
        values["intake_completed"] = _consent(row, "intake_completed")
    if "booking_url" in row:
        values["booking_url"] = _url(row, "booking_url")
    return values


def _plan(row: Mapping[str, str]) -> dict[str, Any]:
    """The plan of care's columns: visits prescribed, visits a week, first and last day.
    A plan needs the first three (plan_end is optional) and ends on or after it starts."""
    values: dict[str, Any] = {}
    for column, most in PLAN_LIMITS.items():
        raw = row.get(column, "").strip()
        if not raw:
            values[column] = None
            continue
        if not raw.isdigit() or not 1 <= int(raw) <= most:
            raise _RowError(f"{column} must be a whole number from 1 to {most}")
        values[column] = int(raw)
    values["plan_start"] = _date(row, "plan_start")
    values["plan_end"] = _date(row, "plan_end")
    if any(value is not None for value in values.values()):
        for column in PLAN_COLUMNS[:3]:
            if values[column] is None:
                raise _RowError(f"{column} is empty — a plan of care needs plan_visits, "
                                "plan_visits_per_week and plan_start (plan_end is optional)")
    if values["plan_end"] is not None and values["plan_end"] < values["plan_start"]:
        raise _RowError("plan_end is before plan_start — check the dates")
    return values


def _url(row: Mapping[str, str], column: str) -> str | None:
    raw = row.get(column, "").strip()
    if not raw:
        return None
    if not raw.startswith(("https://", "http://")) or any(c.isspace() for c in raw):
        raise _RowError(f"{column} is not a web address — write it whole, starting with "
                        "https://")
    return raw


def _date(row: Mapping[str, str], column: str) -> date | None:
    raw = row.get(column, "").strip()
    if not raw:
        return None
    for pattern in ("%Y-%m-%d", "%m/%d/%Y"):
        try:
            day = datetime.strptime(raw, pattern).date()  # noqa: DTZ007 - a date, no time
        except ValueError:
            continue
        _check_year(column, day)
        return day
    raise _RowError(f"{column} is not a date — write it as 2014-05-31 (or 05/31/2014)")


def _check_year(column: str, day: date) -> None:
    if not YEARS[0] <= day.year <= YEARS[1]:
        raise _RowError(f"{column} {day.isoformat()} is outside the years {YEARS[0]}–{YEARS[1]} "
                        "that Touchpoint plans for — check the year")


Rows = Iterable[tuple[int, Mapping[str, str]]]


def import_patients(conn: Connection, path: Path, *, region: str, now: datetime,
                    baseline: bool = False, progress: Progress | None = None,
                    full: bool = False) -> ImportSummary:
    """Sync patients from ``path``. With ``baseline``, new patients start no journeys;
    with ``full``, active patients not in the file are removed."""
    return sync_patients(conn, _rows(path, PATIENT_COLUMNS), path.name, region=region,
                         now=now, baseline=baseline, progress=progress, full=full)


def sync_patients(conn: Connection, rows: Rows, source: str, *, region: str, now: datetime,
                  baseline: bool = False, progress: Progress | None = None,
                  full: bool = False) -> ImportSummary:
    """Sync patient rows (line number, row) that came from ``source``."""
    summary = ImportSummary(source, "patients")
    parsed: dict[str, tuple[int, dict[str, Any]]] = {}
    mentioned: set[str] = set()  # every id in the source, on good rows and bad
    for line, row in rows:
        summary.rows += 1
        if progress:
            progress(1)
        cell = row.get("patient_id") or ""
        mentioned.update((cell, cell.strip()))
        if "__error__" in row:
            summary.problems.append(RowProblem(line, row["__error__"]))
            continue
        try:
            values = parse_patient(row, region)
        except _RowError as exc:
            summary.problems.append(RowProblem(line, str(exc)))
            continue
        if values["external_id"] in parsed:
            first = parsed[values["external_id"]][0]
            summary.problems.append(RowProblem(
                line, f"patient_id appears again (first on line {first}) — keep one row per "
                "patient; this row was ignored"))
            continue
        parsed[values["external_id"]] = (line, values)

    _refuse_empty_full_sync(full, parsed, summary)
    _plan_for_growing_tables(conn)
    sources = {v["referral_source"] for _, v in parsed.values() if v["referral_source"]}
    referrer_ids = _ids(conn, referrers, sorted(sources))
    existing = _existing(conn, patients, list(parsed))
    changes: list[_Change] = []
    discharged: list[tuple[str, date, str]] = []
    for external_id, (line, values) in list(parsed.items()):
        current = existing.get(external_id)
        if current is not None and current["erased_at"] is not None:  # patient erase
            summary.problems.append(RowProblem(line, refusal(external_id, current["erased_at"])))
            continue
        source_id = values.pop("referral_source")
        if source_id is not None and source_id not in referrer_ids:
            summary.problems.append(RowProblem(
                line, "referral_source is not a known referrer — import referrers first"))
            continue
        digest = _hash({**_plan_hashed(values, current), "referral_source": source_id})
        values["referrer_id"] = referrer_ids.get(source_id) if source_id else None
        where = f"{source}:{line}"
        if values["discharged_on"] is not None and (
                current is None or current["discharged_on"] != values["discharged_on"]) and \
                values["discharged_on"] >= (now - RECENT).date():
            discharged.append((external_id, values["discharged_on"], where))
        changes.append((values, digest, where, current))
    events: list[dict[str, Any]] = []
    for _, _, _, current in changes:
        if current is not None and current["removed_at"] is not None:
            # (its appointments removed with it come back; those ahead are re-booked)
            events += removal.reactivate_patient(conn, current["id"], now=now)
            current["removed_at"] = None
            summary.reactivated += 1
    new_rows = _write(conn, patients, changes, now, summary)
    ids = _ids(conn, patients, [r["external_id"] for r in new_rows]
               + [d[0] for d in discharged]) if new_rows or discharged else {}
    if new_rows and not baseline:
        events += [{"kind": "patient.created", "patient_id": ids[r["external_id"]],
                    "appointment_id": None, "occurred_at": now, "data": {},
                    "source": r["source"], "dedupe_key": None, "processed_at": None}
                   for r in new_rows]
    # (a discharge date ahead counts from that day; a baseline import is history)
    events += [{"kind": "patient.discharged", "patient_id": ids[pid],
                "appointment_id": None,
                "occurred_at": max(now, datetime.combine(on, datetime.min.time(), UTC)),
                # (anchored on the date: a patient discharged again later is a new run)
                "data": {"discharged_on": on.isoformat(), "anchor": f"discharge:{on}"},
                "source": where,
                "dedupe_key": f"patient.discharged:{ids[pid]}:{on.isoformat()}",
                "processed_at": None} for pid, on, where in discharged if not baseline]
    if events:
        append_events(conn, events)
        summary.events.update(e["kind"] for e in events)
    if full:
        _remove_missing(conn, patients, mentioned, removal.remove_patient, source, now, summary)
    summary.problems.sort(key=lambda p: p.line)
    return summary


def _plan_hashed(values: Mapping[str, Any], current: Mapping[str, Any] | None,
                 ) -> dict[str, Any]:
    """``values`` as hashed: a plan column the row does not have counts as stored, and an
    empty one not at all (a patient with no plan hashes as before these columns existed,
    so upgrading does not count every patient as updated)."""
    kept = {k: current[k] for k in PLAN_FIELDS if current is not None and k not in values}
    return {k: v for k, v in {**values, **kept}.items()
            if k not in PLAN_FIELDS or v not in (None, False)}


def sync_plans(conn: Connection, rows: Rows, source: str, *, now: datetime,
               ) -> ImportSummary:
    """Set the plan of care of patients on file from rows of ``patient_id`` and the plan's
    columns (a FHIR CarePlan); the rest of each patient is left as it is."""
    summary = ImportSummary(source, "plans")
    parsed: dict[str, tuple[int, dict[str, Any]]] = {}
    for line, row in rows:
        summary.rows += 1
        try:
            _check_cells(row)
            if not row.get("patient_id"):
                raise _RowError("patient_id is empty")
            parsed[row["patient_id"]] = (line, _plan(row))
        except _RowError as exc:
            summary.problems.append(RowProblem(line, str(exc)))
    existing = _existing(conn, patients, list(parsed))
    for external_id, (line, plan) in parsed.items():
        current = existing.get(external_id)
        if current is None:
            summary.problems.append(RowProblem(
                line, "patient_id is not a known patient — import patients first"))
        elif current["erased_at"] is not None:
            summary.problems.append(RowProblem(line, refusal(external_id, current["erased_at"])))
        elif all(current[k] == v for k, v in plan.items()):
            summary.unchanged += 1
        else:
            conn.execute(update(patients).where(patients.c.id == current["id"])
                         .values(**plan, updated_at=now))
            summary.updated += 1
    summary.problems.sort(key=lambda p: p.line)
    return summary


def _refuse_empty_full_sync(full: bool, parsed: Mapping[str, Any],
                            summary: ImportSummary) -> None:
    if full and not parsed:
        detail = f" ({summary.rejected} rejected)" if summary.rows else ""
        raise ImportFileError(f"{summary.file}: a full sync needs at least one good row, and "
                              f"this file has none{detail} — nothing was changed; fix the "
                              f"file, or import it without --full")


def _remove_missing(conn: Connection, table: Any, mentioned: set[str],
                    remove: Callable[..., int], source: str, now: datetime,
                    summary: ImportSummary) -> None:
    """A full sync: remove the active records of ``table`` whose id is not ``mentioned``."""
    active = conn.execute(select(table.c.id, table.c.external_id)
                          .where(table.c.removed_at.is_(None))
                          .order_by(table.c.id)).all()
    for id_, external_id in active:
        if external_id not in mentioned:
            summary.cancelled += remove(conn, id_, now=now, source=f"{source} --full")
            summary.removed += 1


def _plan_for_growing_tables(conn: Connection) -> None:
    """On PostgreSQL, plan each of this import's statements for the rows it looks up.

    psycopg prepares a statement it has run five times, and PostgreSQL may then keep one
    generic plan for it, costed while the tables were still (nearly) empty. A first import
    then slowed down quadratically as its own rows piled up: 20k patients and 40k
    appointments took 61 s, with custom plans 11 s. ``SET LOCAL`` ends with the import's
    transaction.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))


def _existing(conn: Connection, table: Any, external_ids: Sequence[str],
              ) -> dict[str, dict[str, Any]]:
    """The stored rows of these external ids, by external id."""
    found: dict[str, dict[str, Any]] = {}
    for part in chunks(list(external_ids)):
        for row in conn.execute(select(table).where(among(conn, table.c.external_id, part))):
            found[row.external_id] = row._asdict()
    return found


def _ids(conn: Connection, table: Any, external_ids: Sequence[str]) -> dict[str, int]:
    """The database ids of these external ids (those stored), by external id."""
    found: dict[str, int] = {}
    for part in chunks(list(external_ids)):
        rows = conn.execute(select(table.c.external_id, table.c.id)
                            .where(among(conn, table.c.external_id, part)))
        found.update((external_id, id_) for external_id, id_ in rows)
    return found


# --------------------------------------------------------------------------- appointments


def parse_start(raw: str, practice_tz: str) -> datetime:
    if not raw:
        raise _RowError("start is empty")
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00") if raw.endswith("Z") else raw)
    except ValueError:
        raise _RowError("start is not a date and time — write ISO 8601, e.g. "
                        "2026-11-24T15:00-05:00, or local time 2026-11-24 15:00") from None
    _check_year("start", parsed.date())  # (before the UTC conversion, which could overflow)
    if parsed.tzinfo is not None:
        return parsed.astimezone(UTC)
    tz = zone(practice_tz)
    localised = parsed.replace(tzinfo=tz)
    if localised.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != parsed:
        raise _RowError(f"start {parsed:%Y-%m-%d %H:%M} does not exist in {practice_tz} (the "
                        "clocks skip that hour) — check the time, or give the UTC offset")
    return localised.astimezone(UTC)


def parse_appointment(row: Mapping[str, str], practice_tz: str) -> dict[str, Any]:
    _check_cells(row)
    external_id = row.get("appointment_id", "")
    if not external_id:
        raise _RowError("appointment_id is empty")
    if not row.get("patient_id"):
        raise _RowError("patient_id is empty")
    status = row.get("status", "").lower().strip()
    status = _STATUS_ALIASES.get(status, status)
    if status not in APPOINTMENT_STATUSES:
        raise _RowError(f"status must be one of {', '.join(APPOINTMENT_STATUSES)}")
    try:
        duration = int(row.get("duration_minutes") or "0")
    except ValueError:
        raise _RowError("duration_minutes must be a whole number of minutes") from None
    if not 0 < duration <= 24 * 60:
        raise _RowError("duration_minutes must be between 1 and 1440")
    values = {
        "external_id": external_id,
        "patient_external_id": row["patient_id"],
        "start_at": parse_start(row.get("start", ""), practice_tz),
        "duration_minutes": duration,
        "status": status,
        "visit_type": row.get("visit_type", ""),
        "therapist": row.get("therapist", ""),
        "location": row.get("location", ""),
    }
    _check_lengths(appointments, values, "appointment_id")
    return values


def import_appointments(conn: Connection, path: Path, *, practice_tz: str, now: datetime,
                        progress: Progress | None = None, full: bool = False) -> ImportSummary:
    """Sync appointments from ``path``; with ``full``, active appointments not in the
    file are removed."""
    return sync_appointments(conn, _rows(path, APPOINTMENT_COLUMNS), path.name,
                             practice_tz=practice_tz, now=now, progress=progress, full=full)


def sync_appointments(conn: Connection, rows: Rows, source: str, *, practice_tz: str,
                      now: datetime, progress: Progress | None = None,
                      full: bool = False) -> ImportSummary:
    """Sync appointment rows (line number, row) that came from ``source``."""
    summary = ImportSummary(source, "appointments")
    parsed: dict[str, tuple[int, dict[str, Any]]] = {}
    mentioned: set[str] = set()  # every id in the source, on good rows and bad
    for line, row in rows:
        summary.rows += 1
        if progress:
            progress(1)
        cell = row.get("appointment_id") or ""
        mentioned.update((cell, cell.strip()))
        if "__error__" in row:
            summary.problems.append(RowProblem(line, row["__error__"]))
            continue
        try:
            values = parse_appointment(row, practice_tz)
        except _RowError as exc:
            summary.problems.append(RowProblem(line, str(exc)))
            continue
        if values["external_id"] in parsed:
            first = parsed[values["external_id"]][0]
            summary.problems.append(RowProblem(
                line, f"appointment_id appears again (first on line {first}) — keep one row "
                "per appointment; this row was ignored"))
            continue
        parsed[values["external_id"]] = (line, values)

    _refuse_empty_full_sync(full, parsed, summary)
    _plan_for_growing_tables(conn)
    patient_ids = _ids(conn, patients,
                       sorted({v["patient_external_id"] for _, v in parsed.values()}))
    existing = _existing(conn, appointments, list(parsed))
    erased = erased_on(conn, patient_ids)
    new_rows: list[tuple[dict[str, Any], str | None]] = []
    events: list[dict[str, Any]] = []
    for external_id, (line, values) in parsed.items():
        where = f"{source}:{line}"
        owner = values.pop("patient_external_id")
        patient_id = patient_ids.get(owner)
        if patient_id is None:
            summary.problems.append(RowProblem(
                line, "patient_id is not a known patient — import patients first"))
            continue
        if owner in erased:
            summary.problems.append(RowProblem(line, refusal(owner, erased[owner])))
            continue
        values["patient_id"] = patient_id
        digest = _hash(values)
        current = existing.get(external_id)
        if current is None:
            kind = _first_sight_event(values, now)
            if kind is None:
                summary.historical += 1
            new_rows.append(({**values, "version": 1, "row_hash": digest, "source": where,
                              "created_at": now, "updated_at": now, "confirmed_at": None}, kind))
            continue
        back = current["removed_at"] is not None  # removed, and in the source again
        if current["row_hash"] == digest and not back:
            summary.unchanged += 1
            continue
        if current["patient_id"] != patient_id:
            summary.problems.append(RowProblem(
                line, "this appointment belongs to another patient in Touchpoint — an "
                "appointment cannot change patient; give it a new appointment_id"))
            continue
        kind, version = _change_event(current, values)
        if back and values["status"] == "booked" and values["start_at"] > now:
            # its touch points were cancelled at removal: booked again, a new version
            kind, version = "appointment.booked", int(current["version"]) + 1
        changes = {**values, "version": version, "row_hash": digest, "source": where,
                   "updated_at": now, "removed_at": None}
        if kind in ("appointment.rescheduled", "appointment.booked"):
            changes["confirmed_at"] = None
        conn.execute(update(appointments).where(appointments.c.id == current["id"])
                     .values(**changes))
        if back:
            summary.reactivated += 1
        if current["row_hash"] == digest:
            summary.unchanged += 1
        else:
            summary.updated += 1
        if kind is not None:
            events.append(_event(kind, current["id"], {**current, **changes}, now, where,
                                 previous_start=current["start_at"]))
    for part in chunks(new_rows):
        conn.execute(insert(appointments), [row for row, _ in part])
    summary.created = len(new_rows)
    fresh = [(row, kind) for row, kind in new_rows if kind is not None]
    if fresh:
        ids = _ids(conn, appointments, [row["external_id"] for row, _ in fresh])
        for row, kind in fresh:
            assert kind is not None
            events.append(_event(kind, ids[row["external_id"]], row, now, row["source"]))
    append_events(conn, events)
    summary.events.update(e["kind"] for e in events)
    if full:
        _remove_missing(conn, appointments, mentioned, removal.remove_appointment, source, now,
                        summary)
    summary.problems.sort(key=lambda p: p.line)
    return summary


def _first_sight_event(values: Mapping[str, Any], now: datetime) -> str | None:
    start: datetime = values["start_at"]
    end = start + timedelta(minutes=values["duration_minutes"])
    if values["status"] == "booked":
        return "appointment.booked" if start > now else None
    if values["status"] in ("completed", "no_show"):
        return f"appointment.{values['status']}" if end >= now - RECENT else None
    return None


def _change_event(current: Mapping[str, Any], values: Mapping[str, Any]) -> tuple[str | None, int]:
    before, after = current["status"], values["status"]
    version = int(current["version"])
    if before != after:
        if after == "booked":
            return "appointment.booked", version + 1
        return f"appointment.{after}", version
    if after == "booked" and values["start_at"] != current["start_at"]:
        return "appointment.rescheduled", version + 1
    return None, version


def _event(kind: str, appointment_id: int, row: Mapping[str, Any], now: datetime, source: str,
           previous_start: datetime | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "appointment": row["external_id"],
        "start": row["start_at"].isoformat(),
        "duration_minutes": row["duration_minutes"],
        "version": row["version"],
        "status": row["status"],
    }
    if kind == "appointment.rescheduled" and previous_start is not None:
        data["previous_start"] = previous_start.isoformat()
    return {"kind": kind, "patient_id": row["patient_id"], "appointment_id": appointment_id,
            "occurred_at": now, "data": data, "source": source, "dedupe_key": None,
            "processed_at": None}


# --------------------------------------------------------------------------- referrers


def import_referrers(conn: Connection, path: Path, *, region: str, now: datetime,
                     progress: Progress | None = None, full: bool = False) -> ImportSummary:
    """Sync referral sources (physicians, clinics) from ``path``; with ``full``, active
    referrers not in the file are removed (no longer recipients)."""
    return sync_referrers(conn, _rows(path, REFERRER_COLUMNS), path.name, region=region,
                          now=now, progress=progress, full=full)


def sync_referrers(conn: Connection, rows: Rows, source: str, *, region: str, now: datetime,
                   progress: Progress | None = None, full: bool = False) -> ImportSummary:
    """Sync referrer rows (line number, row) that came from ``source``."""
    summary = ImportSummary(source, "referrers")

    def parse(row: Mapping[str, str]) -> dict[str, Any]:
        if not row.get("name"):
            raise _RowError("name is empty — write the practice or physician's name")
        try:
            fax = normalise_phone(row.get("fax", ""), region)
        except _RowError as exc:
            raise _RowError(str(exc).replace("phone ", "fax ")) from None
        return {"name": row["name"], "contact_name": row.get("contact_name", ""),
                "email": normalise_email(row.get("email", "")), "fax": fax}

    mentioned: set[str] = set()
    parsed = _parse_rows(rows, "referrer_id", referrers, parse, summary, progress, mentioned)
    _refuse_empty_full_sync(full, parsed, summary)
    _plan_for_growing_tables(conn)
    _upsert(conn, referrers, parsed, source, now, summary)
    if full:
        _remove_missing(conn, referrers, mentioned, removal.remove_referrer, source, now,
                        summary)
    return summary


# --------------------------------------------------------------------------- contacts


def import_contacts(conn: Connection, path: Path, *, region: str, now: datetime,
                    progress: Progress | None = None, full: bool = False) -> ImportSummary:
    """Sync patients' contacts (parents, guardians, spouses, caregivers) from ``path``;
    with ``full``, active contacts not in the file are removed (no longer recipients)."""
    return sync_contacts(conn, _rows(path, CONTACT_COLUMNS), path.name, region=region,
                         now=now, progress=progress, full=full)


def sync_contacts(conn: Connection, rows: Rows, source: str, *, region: str, now: datetime,
                  progress: Progress | None = None, full: bool = False) -> ImportSummary:
    """Sync contact rows (line number, row) that came from ``source``."""
    summary = ImportSummary(source, "contacts")

    def parse(row: Mapping[str, str]) -> dict[str, Any]:
        if not row.get("patient_id"):
            raise _RowError("patient_id is empty")
        relationship = row.get("relationship", "").strip().lower()
        if not relationship:
            raise _RowError("relationship is empty — write parent, guardian, spouse or "
                            "caregiver")
        receives = ",".join(w.strip().lower() for w in
                            (row.get("receives") or "transactional").split(",") if w.strip())
        if not re.fullmatch(r"[a-z0-9,-]+", receives):
            raise _RowError("receives must list transactional, marketing, all, none or "
                            "journey names, separated by commas")
        # (marketing_consent is an optional column: express written consent, as for patients)
        return {"patient_external_id": row["patient_id"], "relationship": relationship,
                "first_name": row.get("first_name", ""), **_reachable(row, region),
                "receives": receives}

    mentioned: set[str] = set()
    parsed = _parse_rows(rows, "contact_id", contacts, parse, summary, progress, mentioned)
    _refuse_empty_full_sync(full, parsed, summary)
    _plan_for_growing_tables(conn)
    owners = _ids(conn, patients, sorted({v["patient_external_id"] for _, v in parsed.values()}))
    erased = erased_on(conn, owners)
    for external_id, (line, values) in list(parsed.items()):
        patient_id = str(values.pop("patient_external_id"))
        owner = owners.get(patient_id)
        if owner is None:
            summary.problems.append(RowProblem(
                line, "patient_id is not a known patient — import patients first"))
            del parsed[external_id]
            continue
        if patient_id in erased:
            summary.problems.append(RowProblem(line, refusal(patient_id, erased[patient_id])))
            del parsed[external_id]
            continue
        values["patient_id"] = owner
    _upsert(conn, contacts, parsed, source, now, summary)
    if full:
        _remove_missing(conn, contacts, mentioned, removal.remove_contact, source, now, summary)
    return summary


def _parse_rows(rows: Rows, id_column: str, table: Table,
                parse: Callable[[Mapping[str, str]], dict[str, Any]], summary: ImportSummary,
                progress: Progress | None, mentioned: set[str] | None = None,
                again: str = "") -> dict[str, tuple[int, dict[str, Any]]]:
    """``{external id: (line, values)}`` of the good ``rows``; each bad row (and a
    repeated id, its problem ending in ``again``) is a problem with its line number.
    ``mentioned`` gets every row's id."""
    parsed: dict[str, tuple[int, dict[str, Any]]] = {}
    for line, row in rows:
        summary.rows += 1
        if progress:
            progress(1)
        external_id = row.get(id_column, "")
        if mentioned is not None:
            mentioned.update((external_id or "", (external_id or "").strip()))
        try:
            if "__error__" in row:
                raise _RowError(row["__error__"])
            _check_cells(row)
            if not external_id:
                raise _RowError(f"{id_column} is empty")
            values = {"external_id": external_id, **parse(row)}
            _check_lengths(table, values, id_column)
        except _RowError as exc:
            summary.problems.append(RowProblem(line, str(exc)))
            continue
        if external_id in parsed:
            summary.problems.append(RowProblem(
                line, f"{id_column} appears again (first on line {parsed[external_id][0]})"
                f"{again}"))
            continue
        parsed[external_id] = (line, values)
    return parsed


def _upsert(conn: Connection, table: Any, parsed: Mapping[str, tuple[int, dict[str, Any]]],
            source: str, now: datetime, summary: ImportSummary) -> None:
    """Insert new rows, update changed ones, leave identical ones alone (no events)."""
    existing = _existing(conn, table, list(parsed))
    _write(conn, table, [(values, _hash(values), f"{source}:{line}", existing.get(external_id))
                         for external_id, (line, values) in parsed.items()], now, summary)
    summary.problems.sort(key=lambda p: p.line)


# (values, their hash, file:line, the row as stored or None)
_Change = tuple[dict[str, Any], str, str, "dict[str, Any] | None"]


def _write(conn: Connection, table: Any, changes: Sequence[_Change], now: datetime,
           summary: ImportSummary) -> list[dict[str, Any]]:
    """Insert the new rows (returned), update the changed ones, count the unchanged."""
    new_rows = []
    for values, digest, where, current in changes:
        if current is None:
            new_rows.append({**values, "row_hash": digest, "source": where, "created_at": now,
                             "updated_at": now})
        elif current.get("removed_at") is not None:  # a contact back in the source
            conn.execute(update(table).where(table.c.id == current["id"])
                         .values(**values, row_hash=digest, source=where, updated_at=now,
                                 removed_at=None))
            summary.reactivated += 1
            summary.updated += current["row_hash"] != digest
            summary.unchanged += current["row_hash"] == digest
        elif current["row_hash"] == digest:
            summary.unchanged += 1
        else:
            conn.execute(update(table).where(table.c.id == current["id"])
                         .values(**values, row_hash=digest, source=where, updated_at=now))
            summary.updated += 1
    for part in chunks(new_rows):
        conn.execute(insert(table), list(part))
    summary.created = len(new_rows)
    return new_rows


# --------------------------------------------------------------------------- waitlist


def import_waitlist(conn: Connection, path: Path, *, now: datetime,
                    progress: Progress | None = None, full: bool = False) -> ImportSummary:
    """Sync the waitlist from ``path`` (``patient_id`` and the preference columns of
    :data:`engine.waitlist.FIELDS`, checked by :func:`engine.waitlist.parse_preferences`,
    as the API checks them); with ``full``, waiting patients not in the file are
    withdrawn (counted as ``removed``)."""
    return sync_waitlist(conn, _rows(path, WAITLIST_COLUMNS), path.name, now=now,
                         progress=progress, full=full)


def put_waitlist_entry(conn: Connection, patient_id: int, preferences: waitlist.Preferences,
                       *, source: str, now: datetime,
                       source_updated_at: datetime | None = None) -> waitlist.Outcome:
    """:func:`engine.waitlist.put_entry`, except that a *claimed* entry sent again with the
    same preferences stays claimed (``unchanged``): a nightly export that still lists a
    patient who just won a slot must not put them back in line for more offers."""
    current = conn.execute(select(waitlist_entries).where(
        waitlist_entries.c.patient_id == patient_id)).first()
    if current is not None and current.status == "claimed" \
            and waitlist.Preferences.from_row(current) == preferences:
        return "unchanged"
    return waitlist.put_entry(conn, patient_id, preferences, source=source, now=now,
                              source_updated_at=source_updated_at)


def sync_waitlist(conn: Connection, rows: Rows, source: str, *, now: datetime,
                  progress: Progress | None = None, full: bool = False) -> ImportSummary:
    """Sync waitlist rows (line number, row) that came from ``source``."""
    summary = ImportSummary(source, "waitlist")
    mentioned: set[str] = set()

    def parse(row: Mapping[str, str]) -> dict[str, Any]:
        try:
            return {"preferences": waitlist.parse_preferences(
                {name: row[name] for name in waitlist.FIELDS if name in row})}
        except waitlist.PreferenceError as exc:
            raise _RowError("; ".join(f"{name} {detail}"
                                      for name, detail in exc.errors.items())) from None

    parsed = _parse_rows(rows, "patient_id", waitlist_entries, parse, summary, progress,
                         mentioned, again=" — keep one row per patient; this row was ignored")
    _refuse_empty_full_sync(full, parsed, summary)
    known = _existing(conn, patients, list(parsed))
    for external_id, (line, values) in parsed.items():
        current = known.get(external_id)
        if current is None:
            summary.problems.append(RowProblem(
                line, "patient_id is not a known patient — import patients first"))
            continue
        if current["erased_at"] is not None:
            summary.problems.append(RowProblem(line, refusal(external_id,
                                                             current["erased_at"])))
            continue
        if current["removed_at"] is not None:
            summary.problems.append(RowProblem(
                line, "patient_id is a patient removed from the records — import them again "
                "first"))
            continue
        outcome = put_waitlist_entry(conn, current["id"], values["preferences"],
                                     source=f"{source}:{line}", now=now)
        setattr(summary, outcome, getattr(summary, outcome) + 1)
    if full:
        waiting = conn.execute(
            select(waitlist_entries.c.patient_id, patients.c.external_id)
            .join(patients, patients.c.id == waitlist_entries.c.patient_id)
            .where(waitlist_entries.c.status == "waiting")
            .order_by(waitlist_entries.c.id)).all()
        for patient_id, external_id in waiting:
            if external_id not in mentioned and waitlist.withdraw_entry(conn, patient_id,
                                                                        now=now):
                summary.removed += 1
    summary.problems.sort(key=lambda p: p.line)
    return summary

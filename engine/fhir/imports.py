"""Apply FHIR resources (a Bundle, ndjson, or a page of a search) through the CSV importers.

* Each resource is validated on its own with fhir.resources' R4B model: an invalid one is
  refused with the reason and named ``Type/id`` (or ``entry 3`` / ``line 3`` when it has
  no id); every other resource is kept.
* Types other than Patient, RelatedPerson, Appointment and CarePlan are counted and
  skipped.
* Patients are applied first, then RelatedPersons (as contacts), then Appointments, all in
  the caller's transaction, through :func:`engine.importer.sync_patients`,
  :func:`~engine.importer.sync_contacts` and :func:`~engine.importer.sync_appointments`:
  the same validation, change detection and events as a CSV import. CarePlans come last:
  each sets its patient's plan of care (:func:`~engine.importer.sync_plans`).
* Consents: someone new gets ``fhir.sms_consent`` / ``fhir.email_consent`` and never
  marketing consent; someone on file keeps the consents (and a contact what it receives)
  on file, whatever the resource says.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.relatedperson import RelatedPerson
from pydantic import BaseModel, ValidationError
from sqlalchemy import Connection, select

from engine.errors import ImportFileError
from engine.fhir import mapping
from engine.importer import (
    ImportSummary,
    read_import_file,
    sync_appointments,
    sync_contacts,
    sync_patients,
    sync_plans,
)
from engine.store.records import among, chunks
from engine.store.schema import contacts, patients

MODELS: dict[str, type[BaseModel]] = {
    "Patient": Patient, "RelatedPerson": RelatedPerson, "Appointment": Appointment,
    "CarePlan": CarePlan}
ORDER = ("Patient", "RelatedPerson", "Appointment", "CarePlan")  # the order references need
# What `touchpoint fhir sync` searches a server for (CarePlans come in files and Bundles:
# not every server offers a CarePlan search)
SEARCHED = ORDER[:3]


@dataclass(frozen=True)
class Entry:
    """One resource as read: where it was (for messages), its JSON, or why it is unreadable."""

    where: str
    resource: Mapping[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True)
class Refusal:
    resource: str  # Patient/123, or "entry 4" / "line 7"
    message: str

    def __str__(self) -> str:
        return f"{self.resource}: {self.message}"


@dataclass
class FhirSummary:
    source: str
    read: Counter[str] = field(default_factory=Counter)  # resources of the known types
    skipped: Counter[str] = field(default_factory=Counter)  # other types, counted
    parts: dict[str, ImportSummary] = field(default_factory=dict)  # by resource type
    problems: list[Refusal] = field(default_factory=list)
    last_updated: dict[str, datetime] = field(default_factory=dict)  # newest meta.lastUpdated
    not_full: dict[str, str] = field(default_factory=dict)  # --full skipped for a type: why

    @property
    def rejected(self) -> int:
        return len(self.problems)

    @property
    def events(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for part in self.parts.values():
            total.update(part.events)
        return total

    def count(self, what: str) -> int:
        return sum(int(getattr(part, what)) for part in self.parts.values())

    def merge(self, other: FhirSummary) -> None:
        self.read.update(other.read)
        self.skipped.update(other.skipped)
        self.problems.extend(other.problems)
        for kind, part in other.parts.items():
            mine = self.parts.setdefault(kind, ImportSummary(self.source, kind))
            for name in ("rows", "created", "updated", "unchanged", "historical", "removed",
                         "reactivated"):
                setattr(mine, name, getattr(mine, name) + getattr(part, name))
            mine.events.update(part.events)
        for kind, at in other.last_updated.items():
            self.last_updated[kind] = max(at, self.last_updated.get(kind, at))

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "resources": {kind: {"read": self.read[kind], **_counts(self.parts.get(kind)),
                                 "rejected": sum(1 for p in self.problems
                                                 if p.resource.startswith(f"{kind}/"))}
                          for kind in ORDER if self.read[kind]},
            "skipped": dict(sorted(self.skipped.items())),
            "created": self.count("created"), "updated": self.count("updated"),
            "unchanged": self.count("unchanged"), "historical": self.count("historical"),
            "removed": self.count("removed"), "reactivated": self.count("reactivated"),
            "rejected": self.rejected, "not_full": dict(self.not_full),
            "events": dict(sorted(self.events.items())),
            "problems": [{"resource": p.resource, "message": p.message} for p in self.problems],
        }


def _counts(part: ImportSummary | None) -> dict[str, int]:
    if part is None:
        return {"created": 0, "updated": 0, "unchanged": 0, "historical": 0}
    return {"created": part.created, "updated": part.updated, "unchanged": part.unchanged,
            "historical": part.historical}


@dataclass(frozen=True)
class Options:
    """What the mapping needs from the settings."""

    region: str
    practice_tz: str
    identifier_system: str = ""
    sms_consent: bool = True
    email_consent: bool = True


# --------------------------------------------------------------------------- reading


def explain(exc: ValidationError) -> str:
    """A pydantic error as one line (field path and message), never the value itself."""
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"] if p != "__root__")
    message = str(error["msg"]).removeprefix("Value error, ").rstrip(".")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"not a valid R4 resource: {where + ': ' if where else ''}{message}{more}"


def bundle_entries(bundle: Mapping[str, Any], where: str = "entry") -> Iterator[Entry]:
    """The resources of a Bundle's entries (entries without one, e.g. deletions, skipped)."""
    for number, entry in enumerate(bundle.get("entry") or (), start=1):
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if isinstance(resource, Mapping):
            yield Entry(f"{where} {number}", resource)
        elif isinstance(entry, Mapping) and (entry.get("request") or {}).get("method") \
                == "DELETE":
            continue
        else:
            yield Entry(f"{where} {number}", error="has no resource")


def check_bundle(document: Mapping[str, Any], source: str) -> Bundle:
    """The Bundle's envelope (type, links, total) validated; its entries are checked one
    by one later, so that one bad resource does not refuse the others."""
    envelope = {k: v for k, v in document.items() if k != "entry"}
    try:
        return Bundle.model_validate(envelope)
    except ValidationError as exc:
        raise ImportFileError(f"{source}: the Bundle is {explain(exc)}") from None


def read_file(path: Path) -> list[Entry]:
    """The resources of a Bundle (JSON), a single resource, or ndjson (one a line)."""
    text = read_import_file(path, "FHIR JSON is UTF-8")
    if not text.strip():
        raise ImportFileError(f"{path}: the file is empty")
    if path.suffix.lower() not in (".ndjson", ".jsonl"):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg != "Extra data":  # (several documents: ndjson under another name)
                raise ImportFileError(f"{path}: not JSON (line {exc.lineno}: {exc.msg}) — "
                                      "give a FHIR Bundle, or ndjson") from None
        else:
            if not isinstance(document, Mapping) or "resourceType" not in document:
                raise ImportFileError(f"{path}: not a FHIR resource (no resourceType) — give "
                                      "a Bundle, or ndjson with one resource a line")
            if document["resourceType"] == "Bundle":
                check_bundle(document, path.name)
                return list(bundle_entries(document))
            return [Entry("resource 1", document)]
    return list(_ndjson(text))


def _ndjson(text: str) -> Iterator[Entry]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            resource = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Entry(f"line {number}", error=f"not JSON ({exc.msg})")
            continue
        if not isinstance(resource, Mapping):
            yield Entry(f"line {number}", error="not a FHIR resource (no resourceType)")
            continue
        yield Entry(f"line {number}", resource)


# --------------------------------------------------------------------------- applying


def apply(conn: Connection, entries: Iterable[Entry], source: str, options: Options,
          now: datetime, full: bool = False) -> FhirSummary:
    """Validate, map and apply ``entries`` in ``conn``'s transaction.

    With ``full`` (``import fhir --full``: the file is the whole source), each resource
    type the file holds is a full sync: the active patients, contacts or appointments not
    in it are removed (engine.removal). A type the file does not hold is left alone, and so
    is a type with a refused resource (it may be the record that seems missing): the
    summary says why in ``not_full``."""
    summary = FhirSummary(source)
    valid: dict[str, list[tuple[str, Any]]] = {kind: [] for kind in ORDER}
    for entry in entries:
        raw = entry.resource
        if raw is None:
            summary.problems.append(Refusal(entry.where, entry.error or "unreadable"))
            continue
        kind = str(raw.get("resourceType") or "")
        if kind not in MODELS:
            summary.skipped[kind or "(no resourceType)"] += 1
            continue
        summary.read[kind] += 1
        name = f"{kind}/{raw['id']}" if isinstance(raw.get("id"), str) and raw["id"] \
            else entry.where
        try:
            resource = MODELS[kind].model_validate(raw)
        except ValidationError as exc:
            summary.problems.append(Refusal(name, explain(exc)))
            continue
        meta = getattr(resource, "meta", None)
        if meta is not None and meta.lastUpdated is not None:
            at: datetime = meta.lastUpdated
            summary.last_updated[kind] = max(at, summary.last_updated.get(kind, at))
        valid[kind].append((name, resource))

    def whole(kind: str) -> bool:
        if not full or not summary.read[kind]:
            return False
        refused = sum(1 for p in summary.problems if p.resource.startswith(f"{kind}/")
                      or p.resource.startswith("entry") or p.resource.startswith("line"))
        if refused:
            summary.not_full[kind] = (f"{refused} resource(s) refused, so nothing of this type "
                                      "was removed — fix them and import again")
        return not refused

    fhir_ids = _apply_patients(conn, valid["Patient"], source, options, now, summary,
                               full=whole("Patient"))
    _apply_contacts(conn, valid["RelatedPerson"], source, options, now, summary, fhir_ids,
                    full=whole("RelatedPerson"))
    _apply_appointments(conn, valid["Appointment"], source, options, now, summary, fhir_ids,
                        full=whole("Appointment"))
    _apply_care_plans(conn, valid["CarePlan"], source, options, now, summary, fhir_ids)
    return summary


def _collect(summary: FhirSummary, kind: str, part: ImportSummary, names: Sequence[str],
             ) -> None:
    """Keep ``part`` under ``kind``; its problems (by row number) name their resource."""
    summary.parts[kind] = part
    for problem in part.problems:
        summary.problems.append(Refusal(names[problem.line - 1], problem.message))


def _apply_patients(conn: Connection, found: list[tuple[str, Any]], source: str,
                    options: Options, now: datetime, summary: FhirSummary,
                    full: bool = False) -> dict[str, str]:
    """Apply the Patients; returns {FHIR id: patient_id} of those applied."""
    rows: list[dict[str, str]] = []
    names: list[str] = []
    fhir_ids: list[str | None] = []
    for name, patient in found:
        try:
            row = mapping.patient_row(patient, options.identifier_system)
        except mapping.MappingError as exc:
            summary.problems.append(Refusal(name, str(exc)))
            continue
        rows.append(row)
        names.append(name)
        fhir_ids.append(str(patient.id) if patient.id else None)
    on_file = _on_file(conn, patients, [r["patient_id"] for r in rows],
                       ("sms_consent", "email_consent", "marketing_consent"))
    for row in rows:
        row.update(_consents(on_file.get(row["patient_id"]), options, marketing=True))
    part = sync_patients(conn, enumerate(rows, start=1), source, region=options.region,
                         now=now, full=full and bool(rows))
    _collect(summary, "Patient", part, names)
    refused = {p.line - 1 for p in part.problems}
    return {fhir_id: row["patient_id"] for i, (fhir_id, row) in enumerate(zip(fhir_ids, rows,
                                                                              strict=True))
            if fhir_id is not None and i not in refused}


def _consents(stored: Mapping[str, Any] | None, options: Options, *, marketing: bool,
              ) -> dict[str, str]:
    def yes(flag: Any) -> str:
        return "yes" if flag else "no"

    if stored is not None:
        kept = {"sms_consent": yes(stored["sms_consent"]),
                "email_consent": yes(stored["email_consent"]),
                "marketing_consent": yes(stored["marketing_consent"])}
        if "receives" in stored:
            kept["receives"] = str(stored["receives"])
        return kept
    new = {"sms_consent": yes(options.sms_consent), "email_consent": yes(options.email_consent),
           "marketing_consent": "no"}
    if not marketing:
        new["receives"] = "transactional"
    return new


def _on_file(conn: Connection, table: Any, external_ids: Sequence[str],
             columns: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The stored ``columns`` of these external ids, by external id."""
    found: dict[str, dict[str, Any]] = {}
    for part in chunks(sorted(set(external_ids))):
        query = select(table.c.external_id, *(table.c[c] for c in columns)) \
            .where(among(conn, table.c.external_id, part))
        for row in conn.execute(query):
            found[row.external_id] = row._asdict()
    return found


def _patient_ids(conn: Connection, references: Iterable[str], fhir_ids: Mapping[str, str],
                 options: Options) -> dict[str, str]:
    """{FHIR Patient id: patient_id} for ``references``: from this batch, else from the
    patients on file (with an identifier system, their stored fhir_id custom field)."""
    found = {ref: fhir_ids[ref] for ref in references if ref in fhir_ids}
    missing = sorted(set(references) - set(found))
    if not options.identifier_system:
        found.update((ref, ref) for ref in missing)
        return found
    fhir_id = patients.c.custom["fhir_id"].as_string()
    for part in chunks(missing):
        for external_id, ref in conn.execute(
                select(patients.c.external_id, fhir_id).where(fhir_id.in_(part))):
            found[ref] = external_id
    return found


def _apply_contacts(conn: Connection, found: list[tuple[str, Any]], source: str,
                    options: Options, now: datetime, summary: FhirSummary,
                    fhir_ids: Mapping[str, str], full: bool = False) -> None:
    refs = {name: mapping.reference_id(person.patient, "Patient") for name, person in found}
    owners = _patient_ids(conn, [r for r in refs.values() if r], fhir_ids, options)
    rows: list[dict[str, str]] = []
    names: list[str] = []
    for name, person in found:
        ref = refs[name]
        try:
            if ref is None:
                raise mapping.MappingError("patient is not a reference to a Patient "
                                           "(Patient/…)")
            if ref not in owners:
                raise mapping.MappingError(f"Patient/{ref} is not a known patient — it must "
                                           "come before, or in the same file")
            row = mapping.contact_row(person, owners[ref])
        except mapping.MappingError as exc:
            summary.problems.append(Refusal(name, str(exc)))
            continue
        rows.append(row)
        names.append(name)
    on_file = _on_file(conn, contacts, [r["contact_id"] for r in rows],
                       ("sms_consent", "email_consent", "marketing_consent", "receives"))
    for row in rows:
        row.update(_consents(on_file.get(row["contact_id"]), options, marketing=False))
    part = sync_contacts(conn, enumerate(rows, start=1), source, region=options.region,
                         now=now, full=full and bool(rows))
    _collect(summary, "RelatedPerson", part, names)


def _rows_of_patients(conn: Connection, found: list[tuple[str, Any]],
                      patient_of: Callable[[Any], str],
                      row_of: Callable[[Any, str], dict[str, str]], options: Options,
                      summary: FhirSummary, fhir_ids: Mapping[str, str],
                      ) -> tuple[list[dict[str, str]], list[str]]:
    """The importer rows of resources that belong to a patient (Appointment, CarePlan),
    with their names; a resource whose patient is unknown, or that does not map, is
    refused with its reason (the others are kept)."""
    refs: dict[str, str | None] = {}
    for name, resource in found:
        try:
            refs[name] = patient_of(resource)
        except mapping.MappingError:
            refs[name] = None
    owners = _patient_ids(conn, [r for r in refs.values() if r], fhir_ids, options)
    rows: list[dict[str, str]] = []
    names: list[str] = []
    for name, resource in found:
        try:
            ref = refs[name] or patient_of(resource)
            if ref not in owners:
                raise mapping.MappingError(f"Patient/{ref} is not a known patient — it must "
                                           "come before, or in the same file")
            row = row_of(resource, owners[ref])
        except mapping.MappingError as exc:
            summary.problems.append(Refusal(name, str(exc)))
            continue
        rows.append(row)
        names.append(name)
    return rows, names


def _apply_appointments(conn: Connection, found: list[tuple[str, Any]], source: str,
                        options: Options, now: datetime, summary: FhirSummary,
                        fhir_ids: Mapping[str, str], full: bool = False) -> None:
    rows, names = _rows_of_patients(conn, found, mapping.appointment_patient,
                                    mapping.appointment_row, options, summary, fhir_ids)
    part = sync_appointments(conn, enumerate(rows, start=1), source,
                             practice_tz=options.practice_tz, now=now,
                             full=full and bool(rows))
    _collect(summary, "Appointment", part, names)


def _apply_care_plans(conn: Connection, found: list[tuple[str, Any]], source: str,
                      options: Options, now: datetime, summary: FhirSummary,
                      fhir_ids: Mapping[str, str]) -> None:
    """Each CarePlan sets its patient's plan of care (importer.sync_plans); a full
    import never removes plans."""
    rows, names = _rows_of_patients(conn, found, mapping.care_plan_patient,
                                    mapping.care_plan_row, options, summary, fhir_ids)
    if found:
        _collect(summary, "CarePlan", sync_plans(conn, enumerate(rows, start=1), source,
                                                 now=now), names)

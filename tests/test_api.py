"""The REST API (engine/api/) through the real ASGI app and fastapi's TestClient, on
SQLite and PostgreSQL: PUT records (the importer's validation and events), updated_at,
problem+json errors, API keys (hashed, scoped, revocable, audited), the rate limit, and
the touch points with their why.

Practice timezone: America/Chicago; the clock is pinned on Monday 2026-11-02 09:00 CST.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from engine import clock
from engine.api import keys, records
from engine.audit import AuditEntry, entries
from engine.cli import cli
from engine.outcomes import Status
from engine.settings import load_settings
from engine.store.schema import (
    Base,
    api_keys,
    appointments,
    contacts,
    events,
    patients,
    referrers,
)
from engine.webhooks.app import Services, create_app
from tests.support import LIBRARY_SCHEDULES, LIBRARY_TEMPLATES, Clinic

MONDAY_9AM = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)
PROBLEM = "application/problem+json"

PATIENT: dict[str, Any] = {
    "first_name": "Ana", "last_name": "Reyes", "phone": "(312) 555-0100",
    "email": "ana@example.com", "sms_consent": True, "email_consent": True,
    "marketing_consent": False}
VISIT: dict[str, Any] = {
    "patient_id": "P1", "start": "2026-11-05T10:00:00-06:00", "duration_minutes": 60,
    "status": "booked", "visit_type": "Follow-up", "therapist": "Maya Chen, DPT",
    "location": "Main St"}


class Api:
    """A Clinic with the ASGI app, and keys: ``write`` (write:records), ``read`` (read:log)."""

    def __init__(self, database_url: str, folder: Path, extra: str = "") -> None:
        clock.set_now(MONDAY_9AM)
        self.clinic = Clinic(database_url, folder, config_extra=extra)
        self.folder = folder
        channels = {"sms": self.clinic.sms, "email": self.clinic.email}
        self.client = TestClient(create_app(Services(self.clinic.settings, self.clinic.db,
                                                     self.clinic.definitions, channels)))
        self.write = self.key("emr", "write:records")
        self.read = self.key("reader", "read:log")

    def key(self, name: str, scopes: str) -> str:
        with self.clinic.db.transaction() as conn:
            return keys.create(conn, name, keys.parse_scopes(scopes), clock.now())

    def put(self, path: str, body: dict[str, Any], key: str | None = None) -> Any:
        return self.client.put(f"/api/v1{path}", json=body,
                               headers={"Authorization": f"Bearer {key or self.write}"})

    def get(self, path: str, key: str | None = None) -> Any:
        return self.client.get(f"/api/v1{path}",
                               headers={"Authorization": f"Bearer {key or self.read}"})

    def rows(self, table: Any) -> list[Any]:
        with self.clinic.db.transaction() as conn:
            return list(conn.execute(select(table).order_by(*table.primary_key.columns)))

    def event_kinds(self) -> list[str]:
        return [row.kind for row in self.rows(events)]

    def audit(self) -> list[AuditEntry]:
        with self.clinic.db.transaction() as conn:
            return list(entries(conn))

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every table but the audit log and the keys (which record each use)."""
        return {t.name: [tuple(r) for r in self.rows(t)] for t in Base.metadata.sorted_tables
                if t.name not in ("audit_log", "api_keys")}

    def cli(self, *args: str) -> Result:
        return CliRunner(env={"COLUMNS": "200", "TOUCHPOINT_USER": "al"}).invoke(cli, [
            "--config", str(self.clinic.config), "--db", self.clinic.settings.database_url,
            "--schedules", str(LIBRARY_SCHEDULES), "--templates", str(LIBRARY_TEMPLATES),
            "--now", clock.now().isoformat(), *args])

    def close(self) -> None:
        self.client.close()
        self.clinic.close()


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[Api]:
    rig = Api(database_url, tmp_path)
    yield rig
    rig.close()


def booked(api: Api) -> None:
    assert api.put("/patients/P1", PATIENT).status_code == 201
    assert api.put("/appointments/A1", VISIT).status_code == 201


# --------------------------------------------------------------------------- records


def test_put_patient_creates_it_and_the_same_put_again_changes_nothing(api: Api) -> None:
    first = api.put("/patients/P1", PATIENT)
    assert first.status_code == 201, first.text
    assert first.json() | {"stored_at": None} == {
        "kind": "patient", "id": "P1", "result": "created", "events": ["patient.created"],
        "version": None, "updated_at": None, "stored_at": None}
    before = api.snapshot()

    clock.set_now(MONDAY_9AM + timedelta(minutes=5))
    again = api.put("/patients/P1", PATIENT)
    assert again.status_code == 200
    assert (again.json()["result"], again.json()["events"]) == ("unchanged", [])
    assert api.snapshot() == before
    assert api.event_kinds() == ["patient.created"]
    stored = api.rows(patients)[0]
    assert (stored.phone, stored.email, stored.sms_consent, stored.marketing_consent) == (
        "+13125550100", "ana@example.com", True, False)


def test_booleans_as_yes_no_text_are_the_same_record(api: Api) -> None:
    assert api.put("/patients/P1", PATIENT).status_code == 201
    as_text = {**PATIENT, "sms_consent": "yes", "email_consent": "Y",
               "marketing_consent": "no", "phone": "312-555-0100"}
    assert api.put("/patients/P1", as_text).json()["result"] == "unchanged"
    changed = api.put("/patients/P1", {**PATIENT, "marketing_consent": True})
    assert (changed.status_code, changed.json()["result"]) == (200, "updated")
    assert api.rows(patients)[0].marketing_consent is True


def test_a_cancellation_by_put_records_the_event_and_the_next_run_cancels_the_reminder(
        api: Api) -> None:
    booked(api)
    assert api.event_kinds() == ["patient.created", "appointment.booked"]
    api.clinic.tick()
    reminder = api.clinic.one("pre-visit", "three-days-before")
    assert reminder.status == Status.PLANNED

    cancelled = api.put("/appointments/A1", {**VISIT, "status": "canceled"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["events"] == ["appointment.cancelled"]
    assert cancelled.json()["result"] == "updated"
    api.clinic.tick()
    reminder = api.clinic.one("pre-visit", "three-days-before")
    assert reminder.status == Status.CANCELLED

    # the same cancellation again: nothing new
    assert api.put("/appointments/A1", {**VISIT, "status": "cancelled"}).json()["events"] == []
    assert api.event_kinds().count("appointment.cancelled") == 1


def test_a_move_records_rescheduled_and_bumps_the_version(api: Api) -> None:
    booked(api)
    moved = api.put("/appointments/A1", {**VISIT, "start": "2026-11-06T10:00:00-06:00"})
    assert (moved.json()["events"], moved.json()["version"]) == (["appointment.rescheduled"], 2)
    done = api.put("/appointments/A1", {**VISIT, "start": "2026-11-06T10:00:00-06:00",
                                        "status": "completed"})
    assert done.json()["events"] == ["appointment.completed"]


def test_a_no_show_by_put_records_the_same_event_as_an_import(api: Api) -> None:
    past = {**VISIT, "start": "2026-10-30T10:00:00-05:00"}  # (last Friday)
    assert api.put("/patients/P1", PATIENT).status_code == 201
    assert api.put("/appointments/A1", past).status_code == 201
    missed = api.put("/appointments/A1", {**past, "status": "no-show"})
    assert missed.status_code == 200, missed.text
    assert (missed.json()["result"], missed.json()["events"]) == (
        "updated", ["appointment.no_show"])
    assert api.rows(appointments)[0].status == "no_show"
    assert api.put("/appointments/A1", {**past, "status": "no_show"}).json()["events"] == []
    by_api = api.rows(events)[-1]

    # the same visit imported from a CSV file records the same event
    (api.folder / "appointments.csv").write_text(
        "appointment_id,patient_id,start,duration_minutes,status,visit_type,therapist,"
        "location\nA2,P1,2026-10-30T10:00:00-05:00,60,booked,Follow-up,"
        "\"Maya Chen, DPT\",Main St\n", encoding="utf-8")
    assert api.cli("import", "appointments", str(api.folder / "appointments.csv")) \
        .exit_code == 0
    (api.folder / "appointments.csv").write_text(
        (api.folder / "appointments.csv").read_text("utf-8").replace("booked", "no-show"),
        encoding="utf-8")
    imported = api.cli("import", "appointments", str(api.folder / "appointments.csv"))
    assert imported.exit_code == 0, imported.output
    by_import = api.rows(events)[-1]
    assert (by_import.kind, by_import.patient_id) == (by_api.kind, by_api.patient_id)
    assert by_import.appointment_id != by_api.appointment_id


def test_contacts_and_referrers(api: Api) -> None:
    referrer = api.put("/referrers/DR1", {"name": "Lakeside Orthopedics",
                                          "email": "dr@lakeside.example"})
    assert referrer.status_code == 201, referrer.text
    assert api.put("/patients/P1", {**PATIENT, "referral_source": "DR1"}).status_code == 201
    contact = api.put("/contacts/C1", {"patient_id": "P1", "relationship": "parent",
                                       "first_name": "Gabriela", "phone": "(312) 555-0177",
                                       "sms_consent": True})
    assert contact.status_code == 201, contact.text
    assert [r.phone for r in api.rows(contacts)] == ["+13125550177"]
    assert api.rows(patients)[0].referrer_id == api.rows(referrers)[0].id
    unknown = api.put("/contacts/C2", {"patient_id": "P9", "relationship": "parent"})
    assert unknown.status_code == 422
    assert unknown.json()["errors"] == [{"field": "patient_id", "detail": "patient_id is not a "
                                         "known patient — import patients first"}]


# --------------------------------------------------------------------------- updated_at


def test_an_older_update_is_refused_with_the_newer_version_and_changes_nothing(
        api: Api) -> None:
    assert api.put("/patients/P1", PATIENT).status_code == 201
    newer = api.put("/appointments/A1", {**VISIT, "updated_at": "2026-11-02T08:30:00-06:00"})
    assert newer.status_code == 201
    assert newer.json()["updated_at"] == "2026-11-02T14:30:00Z"
    before = api.snapshot()

    late = api.put("/appointments/A1", {**VISIT, "status": "cancelled",
                                        "updated_at": "2026-11-02T14:00:00Z"})
    assert late.status_code == 409
    assert late.headers["content-type"] == PROBLEM
    body = late.json()
    assert (body["status"], body["type"]) == (409, "urn:touchpoint:problem:stale-update")
    assert body["current"]["updated_at"] == "2026-11-02T14:30:00+00:00"
    assert body["current"]["version"] == 1
    assert body["current"]["record"]["status"] == "booked"
    assert api.snapshot() == before

    # the same time again: the idempotent path
    same = api.put("/appointments/A1", {**VISIT, "updated_at": "2026-11-02T14:30:00Z"})
    assert (same.status_code, same.json()["result"]) == (200, "unchanged")
    assert api.snapshot() == before
    # a newer one applies and is kept
    later = api.put("/appointments/A1", {**VISIT, "status": "cancelled",
                                         "updated_at": "2026-11-02T15:00:00Z"})
    assert later.json()["events"] == ["appointment.cancelled"]
    assert api.rows(appointments)[0].source_updated_at == datetime(2026, 11, 2, 15, tzinfo=UTC)
    # without updated_at: applied as an import is
    rebooked = api.put("/appointments/A1", VISIT)
    assert rebooked.json()["events"] == ["appointment.booked"]


def test_patient_409_masks_the_stored_contact_details(api: Api) -> None:
    api.put("/patients/P1", {**PATIENT, "updated_at": "2026-11-02T15:00:00Z"})
    late = api.put("/patients/P1", {**PATIENT, "updated_at": "2026-11-01T15:00:00Z"})
    assert late.status_code == 409
    record = late.json()["current"]["record"]
    assert record["phone"] == "+1••••••••00" and record["email"] == "a•••@example.com"
    assert (record["first_name"], record["last_name"], record["sms_consent"]) == (
        "A•••", "R•••", True)
    assert "5550100" not in late.text and "ana@" not in late.text


def test_updated_at_needs_an_offset(api: Api) -> None:
    naive = api.put("/patients/P1", {**PATIENT, "updated_at": "2026-11-02T15:00:00"})
    assert naive.status_code == 422
    assert [e["field"] for e in naive.json()["errors"]] == ["updated_at"]


# --------------------------------------------------------------------------- bad input


def test_every_bad_field_is_named_and_nothing_is_written(api: Api) -> None:
    before = api.snapshot()
    bad = api.put("/patients/P1", {**PATIENT, "phone": "12", "email": "not-an-email",
                                   "sms_consent": "maybe", "first_name": ""})
    assert bad.status_code == 422
    assert bad.headers["content-type"] == PROBLEM
    body = bad.json()
    assert body["type"] == "urn:touchpoint:problem:invalid-fields"
    assert [e["field"] for e in body["errors"]] == ["phone", "email", "sms_consent",
                                                    "first_name"]
    assert body["errors"][0]["detail"].startswith("phone is not")
    assert api.snapshot() == before

    assert api.put("/patients/P1", PATIENT).status_code == 201
    before = api.snapshot()
    bad_visit = api.put("/appointments/A1", {**VISIT, "status": "maybe", "start": "soon",
                                             "duration_minutes": 0})
    assert bad_visit.status_code == 422
    assert [e["field"] for e in bad_visit.json()["errors"]] == [
        "status", "duration_minutes", "start"]
    assert api.snapshot() == before


def test_a_bad_phone_in_an_update_leaves_the_stored_record_alone(api: Api) -> None:
    assert api.put("/patients/P1", PATIENT).status_code == 201
    before = api.snapshot()
    bad = api.put("/patients/P1", {**PATIENT, "last_name": "Garcia", "phone": "555",
                                   "timezone": "Mars/Olympus"})
    assert [e["field"] for e in bad.json()["errors"]] == ["phone", "timezone"]
    assert api.snapshot() == before


def test_schema_errors_are_problems_naming_the_field(api: Api) -> None:
    unknown = api.put("/patients/P1", {**PATIENT, "shoe_size": "9"})
    assert unknown.status_code == 422
    assert [e["field"] for e in unknown.json()["errors"]] == ["shoe_size"]
    other = api.put("/patients/P1", {**PATIENT, "patient_id": "P2"})
    assert [e["field"] for e in other.json()["errors"]] == ["patient_id"]
    not_json = api.client.put("/api/v1/patients/P1", content=b"{nope",
                              headers={"Authorization": f"Bearer {api.write}",
                                       "Content-Type": "application/json"})
    assert (not_json.status_code, not_json.json()["errors"][0]["field"]) == (422, "body")
    assert api.rows(patients) == []
    assert [(e.action, e.detail) for e in api.audit()] == [
        ("api.patient.put", {"status": 422, "refused": "invalid-fields",
                             "fields": ["patient_id"]})]


def test_custom_fields(api: Api) -> None:
    made = api.put("/patients/P1", {**PATIENT, "custom": {"Insurance": "Acme"}})
    assert made.status_code == 201
    assert api.rows(patients)[0].custom == {"insurance": "Acme"}
    clash = api.put("/patients/P1", {**PATIENT, "custom": {"phone": "1"}})
    assert [e["field"] for e in clash.json()["errors"]] == ["custom.phone"]


# --------------------------------------------------------------------------- keys


def test_no_key_a_bad_key_a_revoked_key_and_a_missing_scope(api: Api) -> None:
    none = api.client.put("/api/v1/patients/P1", json=PATIENT)
    assert none.status_code == 401
    assert none.headers["www-authenticate"] == "Bearer"
    assert none.headers["content-type"] == PROBLEM
    forged = api.put("/patients/P1", PATIENT, key=api.write[:-2] + "xx")
    assert forged.status_code == 401
    assert api.put("/patients/P1", PATIENT, key="tp_nope_nope").status_code == 401

    scope = api.put("/patients/P1", PATIENT, key=api.read)
    assert scope.status_code == 403
    assert "write:records" in scope.json()["detail"]
    assert api.get("/patients/P1/touch-points", key=api.write).status_code == 403

    assert api.cli("api-keys", "revoke", "emr").exit_code == 0
    revoked = api.put("/patients/P1", PATIENT)
    assert revoked.status_code == 401
    assert "revoked" in revoked.json()["detail"]
    assert api.rows(patients) == []
    denied = [(e.actor, e.action, e.detail["status"]) for e in api.audit()
              if e.action == "api.denied"]
    assert denied == [("api-key:reader", "api.denied", 403),
                      ("api-key:emr", "api.denied", 403), ("api-key:emr", "api.denied", 401)]


def test_each_request_is_audited_with_key_record_and_address(api: Api) -> None:
    booked(api)
    api.put("/appointments/A1", {**VISIT, "status": "bogus"})
    api.get("/patients/P1/touch-points")
    found = [(e.actor, e.action, e.target, e.address) for e in api.audit()]
    assert found == [
        ("api-key:emr", "api.patient.put", "patient:P1", "testclient"),
        ("api-key:emr", "api.appointment.put", "appointment:A1", "testclient"),
        ("api-key:emr", "api.appointment.put", "appointment:A1", "testclient"),
        ("api-key:reader", "api.touch_points.get", "patient:P1", "testclient")]
    details = [e.detail for e in api.audit()]
    assert details[0] == {"result": "created", "events": ["patient.created"]}
    assert details[2] == {"status": 422, "refused": "invalid-fields", "fields": ["status"]}
    used = {row.name: row.last_used_at for row in api.rows(api_keys)}
    assert used == {"emr": MONDAY_9AM, "reader": MONDAY_9AM}


def test_keys_are_stored_hashed_never_in_plain(api: Api) -> None:
    booked(api)
    stored = api.rows(api_keys)
    assert {row.key_hash for row in stored} == {keys.digest(api.write), keys.digest(api.read)}
    secret = api.write.split("_", 2)[2]
    for table in Base.metadata.sorted_tables:
        for row in api.rows(table):
            assert secret not in repr(tuple(row)), table.name
            assert api.write not in repr(tuple(row)), table.name


def test_the_cli_creates_lists_and_revokes_keys_and_audits_it(api: Api) -> None:
    made = api.cli("api-keys", "create", "fhir-bridge", "--scope", "write:records,read:log")
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    assert key.startswith("tp_") and "shown only this once" in made.stderr
    assert api.put("/patients/P1", PATIENT, key=key).status_code == 201
    assert api.cli("api-keys", "create", "fhir-bridge", "--scope", "read:log").exit_code == 1
    bad = api.cli("api-keys", "create", "x", "--scope", "write:everything")
    assert bad.exit_code == 1 and "unknown scope write:everything" in bad.output

    listed = api.cli("api-keys", "list", "--json")
    assert listed.exit_code == 0
    rows = {k["name"]: k for k in __import__("json").loads(listed.stdout)}
    assert rows["fhir-bridge"]["scopes"] == ["read:log", "write:records"]
    assert rows["fhir-bridge"]["last_used_at"] is not None
    assert rows["fhir-bridge"]["revoked_at"] is None
    assert key not in listed.output
    table = api.cli("api-keys", "list")
    assert "fhir-bridge" in table.output and key not in table.output

    assert api.cli("api-keys", "revoke", "fhir-bridge").exit_code == 0
    again = api.cli("api-keys", "revoke", "fhir-bridge")
    assert again.exit_code == 1 and "revoked already" in again.output
    assert api.cli("api-keys", "revoke", "nobody").exit_code == 1
    assert api.put("/patients/P1", PATIENT, key=key).status_code == 401
    assert [(e.actor, e.action, e.target) for e in api.audit()
            if e.action.startswith("api_key.")] == [
        ("cli:al", "api_key.create", "api-key:fhir-bridge"),
        ("cli:al", "api_key.revoke", "api-key:fhir-bridge")]


def test_the_rate_limit_answers_429_with_retry_after_until_the_clock_moves(
        database_url: str, tmp_path: Path) -> None:
    rig = Api(database_url, tmp_path, extra='\n[api]\nrate_limit = "2/minute"\n')
    try:
        assert rig.put("/patients/P1", PATIENT).status_code == 201
        assert rig.put("/patients/P1", PATIENT).status_code == 200
        limited = rig.put("/patients/P1", PATIENT)
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "30"
        assert limited.headers["content-type"] == PROBLEM
        # (another key has its own bucket)
        assert rig.get("/patients/P1/touch-points").status_code == 200
        clock.set_now(MONDAY_9AM + timedelta(seconds=29))
        assert rig.put("/patients/P1", PATIENT).headers["retry-after"] == "1"
        clock.set_now(MONDAY_9AM + timedelta(seconds=30))
        assert rig.put("/patients/P1", PATIENT).status_code == 200
    finally:
        rig.close()


def test_a_key_over_its_rate_is_audited_once_a_period_not_once_a_request(
        database_url: str, tmp_path: Path) -> None:
    rig = Api(database_url, tmp_path, extra='\n[api]\nrate_limit = "2/minute"\n')
    try:
        assert rig.put("/patients/P1", PATIENT).status_code == 201
        assert rig.put("/patients/P1", PATIENT).status_code == 200
        flood = [rig.put("/patients/P1", PATIENT).status_code for _ in range(5)]
        assert flood == [429] * 5

        def denied() -> list[tuple[Any, ...]]:
            return [(e.at, e.actor, e.target, e.address, e.detail) for e in rig.audit()
                    if e.action == "api.denied"]

        assert denied() == [(MONDAY_9AM, "api-key:emr", "PUT /api/v1/patients/P1",
                             "testclient", {"status": 429, "reason": "rate-limited"})]
        clock.set_now(MONDAY_9AM + timedelta(seconds=30))  # a request's worth refilled
        assert rig.put("/patients/P1", PATIENT).status_code == 200
        assert rig.put("/patients/P1", PATIENT).status_code == 429
        assert len(denied()) == 1  # (the same minute)
        clock.set_now(MONDAY_9AM + timedelta(seconds=61))
        assert rig.put("/patients/P1", PATIENT).status_code == 200
        assert [rig.put("/patients/P1", PATIENT).status_code for _ in range(3)] == [429] * 3
        assert [at for at, *_ in denied()] == [MONDAY_9AM,
                                               MONDAY_9AM + timedelta(seconds=61)]
    finally:
        rig.close()


def test_the_rate_limit_setting_is_checked() -> None:
    with pytest.raises(Exception, match="is not a rate"):
        load_settings(None, {"api.rate_limit": "lots"}, {})
    assert load_settings(None, {"api.rate_limit": "10/s"}, {}).api.rate == (
        10, timedelta(seconds=1))


# --------------------------------------------------------------------------- reading


def test_a_patients_touch_points_with_their_why_and_one_touch_point(api: Api) -> None:
    booked(api)
    api.clinic.tick()
    listed = api.get("/patients/P1/touch-points")
    assert listed.status_code == 200, listed.text
    points = listed.json()["touch_points"]
    assert {(p["journey"], p["step"]) for p in points} >= {("welcome", "welcome"),
                                                          ("pre-visit", "three-days-before")}
    reminder = next(p for p in points if p["step"] == "three-days-before")
    assert reminder["why"].startswith("It is planned for ")
    assert "recipient" in reminder and "5550100" not in listed.text

    one = api.get(f"/touch-points/{reminder['id']}")
    assert one.status_code == 200
    story = one.json()
    assert (story["patient_id"], story["appointment_id"], story["status"]) == (
        "P1", "A1", "planned")
    assert story["event"]["kind"] == "appointment.booked"
    assert story["explanation"] == reminder["why"]
    assert story["history"]

    api.put("/appointments/A1", {**VISIT, "status": "cancelled"})
    api.clinic.tick()
    story = api.get(f"/touch-points/{reminder['id']}").json()
    assert (story["status"], story["reason"]) == ("cancelled", "appointment_cancelled")
    assert story["explanation"].startswith("It was cancelled")

    missing = api.get("/touch-points/999999")
    assert (missing.status_code, missing.headers["content-type"]) == (404, PROBLEM)
    assert api.get("/patients/P9/touch-points").status_code == 404
    assert [(e.target, e.detail) for e in api.audit() if e.action == "api.touch_point.get"
            ] == [(f"touch_point:{reminder['id']}", {"patient": "P1"})] * 2 + [
        ("touch_point:999999", {"status": 404})]


def test_openapi_shows_the_api_and_not_the_webhooks(api: Api) -> None:
    schema = api.client.get("/api/openapi.json")
    assert schema.status_code == 200
    paths = set(schema.json()["paths"])
    assert paths == {"/api/v1/patients/{patient_id}", "/api/v1/appointments/{appointment_id}",
                     "/api/v1/contacts/{contact_id}", "/api/v1/referrers/{referrer_id}",
                     "/api/v1/patients/{patient_id}/touch-points",
                     "/api/v1/touch-points/{touch_point_id}",
                     "/api/v1/patient-tokens/{token}", "/api/v1/waitlist/{patient_id}",
                     "/api/v1/slots", "/api/v1/slots/{slot_id}",
                     "/api/v1/slots/{slot_id}/confirm", "/api/v1/slots/{slot_id}/withdraw"}
    assert "securitySchemes" in schema.json()["components"]
    docs = api.client.get("/api/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    # the app's own routes keep their plain answers
    assert api.client.get("/nowhere").headers["content-type"] == "application/json"


def test_a_body_over_the_limit_is_refused(api: Api) -> None:
    huge = api.client.put("/api/v1/patients/P1", content=b"x" * (1024 * 1024 + 1),
                          headers={"Authorization": f"Bearer {api.write}",
                                   "Content-Type": "application/json"})
    assert huge.status_code == 413
    assert huge.headers["content-type"] == PROBLEM
    assert huge.json() == {
        "type": "urn:touchpoint:problem:body-too-large",
        "title": "The request body is too large", "status": 413,
        "detail": "the request body is over the limit of 1048576 bytes — nothing was "
                  "changed; send one record a request"}
    with api.clinic.db.transaction() as conn:
        assert conn.execute(select(func.count()).select_from(patients)).scalar() == 0
    # (a provider's webhook keeps its plain answer)
    plain = api.client.post("/webhooks/twilio/inbound", content=b"x" * (1024 * 1024 + 1))
    assert (plain.status_code, plain.headers["content-type"]) == (
        413, "text/plain; charset=utf-8")


def test_an_unexpected_error_is_a_500_problem_without_traceback_or_patient_data(
        api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("cannot store Ana Reyes, (312) 555-0100, ana@example.com")

    monkeypatch.setattr(records, "put", broken)
    with caplog.at_level(logging.ERROR, logger="touchpoint.api"):
        failed = api.put("/patients/P1", PATIENT)
    assert failed.status_code == 500
    assert failed.headers["content-type"] == PROBLEM
    assert failed.json() == {
        "type": "urn:touchpoint:problem:internal-error", "title": "Internal Server Error",
        "status": 500, "detail": "Touchpoint could not handle this request; nothing was "
        "changed (one request, one transaction) and the error is in the server's log — "
        "try again later"}
    for secret in ("Traceback", "Ana", "Reyes", "555", "ana@", "P1", "RuntimeError"):
        assert secret not in failed.text
    [logged] = [r for r in caplog.records if r.name == "touchpoint.api"]
    said = logged.getMessage()
    assert said.startswith("api: PUT /api/v1/patients/{patient_id} failed: RuntimeError: ")
    assert "••••••••00, a•••@example.com" in said  # masked
    assert "555-0100" not in said and "ana@example.com" not in said
    assert "(raised at test_api.py:" in said and "records.py:" in said
    assert api.rows(patients) == []
    monkeypatch.undo()  # the app serves on
    assert api.put("/patients/P1", PATIENT).status_code == 201


# --------------------------------------------------------------------------- DELETE


def delete(api: Api, path: str, key: str | None = None) -> Any:
    return api.client.delete(f"/api/v1{path}",
                             headers={"Authorization": f"Bearer {key or api.write}"})


def test_deleting_an_appointment_cancels_its_reminders_and_a_put_brings_it_back(
        api: Api) -> None:
    booked(api)
    api.clinic.tick()
    assert api.clinic.one("pre-visit", "three-days-before").status == Status.PLANNED

    gone = delete(api, "/appointments/A1")
    assert gone.status_code == 200, gone.text
    assert gone.json() == {"kind": "appointment", "id": "A1", "result": "removed",
                           "touch_points_cancelled": 3, "updated_at": None}
    reminder = api.clinic.one("pre-visit", "three-days-before")
    assert (reminder.status, reminder.reason) == (Status.CANCELLED, "patient_removed")
    assert api.rows(appointments)[0].removed_at == MONDAY_9AM
    again = delete(api, "/appointments/A1")
    assert (again.json()["result"], again.json()["touch_points_cancelled"]) == ("unchanged", 0)

    back = api.put("/appointments/A1", VISIT)
    assert (back.json()["result"], back.json()["events"]) == ("reactivated",
                                                              ["appointment.booked"])
    assert api.rows(appointments)[0].removed_at is None
    api.clinic.tick()
    assert [tp.status for tp in api.clinic.touch_points(step="three-days-before")] == [
        Status.CANCELLED, Status.PLANNED]
    assert [(e.action, e.detail) for e in api.audit() if e.action.endswith(".delete")] == [
        ("api.appointment.delete", {"result": "removed", "touch_points_cancelled": 3}),
        ("api.appointment.delete", {"result": "unchanged", "touch_points_cancelled": 0})]


def test_deleting_a_patient_or_a_contact(api: Api) -> None:
    booked(api)
    assert api.put("/contacts/C1", {"patient_id": "P1", "relationship": "parent",
                                    "first_name": "Gabriela"}).status_code == 201
    api.clinic.tick()
    pending = [tp for tp in api.clinic.touch_points() if tp.status == Status.PLANNED]
    assert pending
    assert delete(api, "/contacts/C1").json()["result"] == "removed"
    assert api.rows(contacts)[0].removed_at is not None

    gone = delete(api, "/patients/P1")
    assert gone.json()["result"] == "removed"
    assert {tp.status for tp in api.clinic.touch_points()} <= {Status.CANCELLED, Status.SENT}
    assert api.rows(patients)[0].removed_at is not None
    assert api.rows(appointments)[0].removed_at is not None
    back = api.put("/patients/P1", PATIENT)
    assert back.json()["result"] == "reactivated"
    assert api.rows(patients)[0].removed_at is None


def test_delete_needs_the_scope_a_known_record_and_respects_updated_at(api: Api) -> None:
    assert delete(api, "/patients/P1", key=api.read).status_code == 403
    missing = delete(api, "/patients/P1")
    assert (missing.status_code, missing.headers["content-type"]) == (404, PROBLEM)
    api.put("/patients/P1", {**PATIENT, "updated_at": "2026-11-02T15:00:00Z"})
    stale = api.client.delete("/api/v1/patients/P1",
                              params={"updated_at": "2026-11-02T14:00:00Z"},
                              headers={"Authorization": f"Bearer {api.write}"})
    assert stale.status_code == 409
    assert api.rows(patients)[0].removed_at is None
    fresh = api.client.delete("/api/v1/patients/P1",
                              params={"updated_at": "2026-11-02T16:00:00Z"},
                              headers={"Authorization": f"Bearer {api.write}"})
    assert fresh.json()["updated_at"] == "2026-11-02T16:00:00Z"
    # a PUT from before the delete arrives late: refused
    late = api.put("/patients/P1", {**PATIENT, "updated_at": "2026-11-02T15:30:00Z"})
    assert late.status_code == 409
    assert api.rows(patients)[0].removed_at is not None


def test_each_committed_change_wakes_the_daemons(api: Api,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    woken: list[str] = []
    monkeypatch.setattr("engine.wake.notify", lambda database: woken.append(database.url))
    booked(api)
    assert len(woken) == 2
    api.put("/appointments/A1", VISIT)  # unchanged: nothing to plan
    api.put("/appointments/A1", {**VISIT, "status": "bogus"})  # refused
    assert len(woken) == 2
    api.put("/appointments/A1", {**VISIT, "status": "cancelled"})
    delete(api, "/patients/P1")
    delete(api, "/patients/P1")  # removed already
    assert woken == [api.clinic.db.url] * 4


def test_on_sqlite_a_change_touches_the_wake_file(sqlite_url: str, tmp_path: Path) -> None:
    from engine.wake import wake_file

    rig = Api(sqlite_url, tmp_path)
    try:
        path = wake_file(rig.clinic.db)
        assert path is not None and not path.exists()
        assert rig.put("/patients/P1", PATIENT).status_code == 201
        assert path.exists()
    finally:
        rig.close()


def test_concurrent_puts_of_a_new_record_create_it_once(api: Api) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: api.put("/patients/P1", PATIENT), range(6)))
    assert sorted(a.status_code for a in answers) == [200] * 5 + [201], [
        a.text for a in answers]
    assert api.event_kinds() == ["patient.created"]
    assert len(api.rows(patients)) == 1


def test_delete_a_referrer_stops_its_updates_and_a_put_brings_it_back(api: Api) -> None:
    office = {"name": "Lakeside Orthopedics", "contact_name": "Dana",
              "email": "dana@lakeside.example.com"}
    assert api.put("/referrers/DR1", office).status_code == 201
    assert api.put("/patients/P1", {**PATIENT, "referral_source": "DR1"}).status_code == 201
    assert api.put("/appointments/A1", VISIT).status_code == 201
    api.clinic.tick()  # the referrer's thank-you goes at once
    clock.set_now(datetime(2026, 11, 5, 17, 0, tzinfo=UTC))  # after the visit
    api.put("/appointments/A1", {**VISIT, "status": "completed"})
    api.clinic.tick()  # the "attended" note is planned an hour later
    [pending] = api.clinic.touch_points(step="attended", status="planned")
    assert pending.recipient.startswith("referrer:")
    gone = delete(api, "/referrers/DR1")
    assert gone.status_code == 200, gone.text
    assert (gone.json()["result"], gone.json()["touch_points_cancelled"]) == ("removed", 1)
    [cancelled] = api.clinic.touch_points(step="attended")
    assert (cancelled.status, cancelled.reason) == ("cancelled", "patient_removed")
    assert api.rows(referrers)[0].removed_at is not None
    assert api.rows(patients)[0].referrer_id is not None  # the patient keeps the link
    back = api.put("/referrers/DR1", office)
    assert back.json()["result"] == "reactivated"
    assert api.rows(referrers)[0].removed_at is None
    assert [e.action for e in api.audit()].count("api.referrer.delete") == 1

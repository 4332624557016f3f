"""FHIR R4: `touchpoint import fhir FILE` and `touchpoint fhir sync`, on SQLite and PostgreSQL.

The resources are the FHIR specification's own examples (tests/payloads/fhir/README.md);
the sync runs against a local FHIR server with a SMART Backend Services token endpoint
(tests/provider_servers/fhir_api.py). The clock stands on 2013-12-01, before the
examples' appointments (2013-12-09 and -10), so they are ahead, as a practice's are.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select

from engine import clock
from engine.cli import cli
from engine.fhir.client import FhirClient, FhirServerError, SigningKey
from engine.fhir.sync import CURSOR_KEY, cursors, remembered, sync
from engine.settings import load_settings
from engine.store.database import Database, open_database
from engine.store.records import get_state
from engine.store.schema import appointments, contacts, events, patients
from tests.provider_servers._base import HANG, Outcome, Reply
from tests.provider_servers.fhir_api import FhirAPIServer, example

NOW = datetime(2013, 12, 1, 15, 0, tzinfo=UTC)
UPDATED = datetime(2013, 11, 1, 9, 0, tzinfo=UTC)  # when the server's examples last changed

PATIENTS = ["Patient-example", "Patient-f201", "Patient-animal"]
CONTACTS = ["RelatedPerson-benedicte", "RelatedPerson-f002", "RelatedPerson-peter"]
APPOINTMENTS = ["Appointment-2docs", "Appointment-example"]


# --------------------------------------------------------------------------- helpers


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(autouse=True)
def _clock() -> None:
    clock.set_now(NOW)


@pytest.fixture
def key_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "practice-key.pem"
    path.write_bytes(_pem(rsa_key))
    return path


@pytest.fixture
def server(key_file: Path) -> Iterator[FhirAPIServer]:
    key = SigningKey(key_file)
    public = serialization.load_pem_private_key(key_file.read_bytes(), None).public_key()
    with FhirAPIServer(public_key=public, kid=key.key_id) as running:
        yield running
    assert running.errors == []


@pytest.fixture
def config(tmp_path: Path, database_url: str, key_file: Path, server: FhirAPIServer) -> Path:
    path = tmp_path / "touchpoint.toml"
    path.write_text(f"""
[database]
url = "{database_url}"

[practice]
name = "Riverside Physical Therapy"
timezone = "Australia/Melbourne"

[phone]
default_region = "AU"

[fhir]
base_url = "{server.base_url}"
token_url = "{server.token_url}"
client_id = "{server.client_id}"
private_key_file = "{key_file}"
page_size = 2
""", encoding="utf-8")
    return path


@pytest.fixture
def db(config: Path, database_url: str) -> Iterator[Database]:
    database = open_database(database_url)
    yield database
    database.dispose()


def run(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args])


def bundle(tmp_path: Path, names: list[str], name: str = "bundle.json") -> Path:
    """A collection Bundle of the examples ``names``, as an EMR export would write it."""
    path = tmp_path / name
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": f"urn:uuid:{n}", "resource": example(n)} for n in names]}),
        encoding="utf-8")
    return path


def rows(db: Database, table: Any, *columns: str) -> dict[str, tuple[Any, ...]]:
    with db.transaction() as conn:
        return {r.external_id: tuple(getattr(r, c) for c in columns)
                for r in conn.execute(select(table))}


def event_kinds(db: Database) -> list[str]:
    with db.transaction() as conn:
        return [r.kind for r in conn.execute(select(events).order_by(events.c.id))]


def sync_once(db: Database, config: Path) -> Any:
    settings = load_settings(config)
    client = FhirClient.from_settings(settings)
    try:
        return sync(db, settings, client)
    finally:
        client.close()


# --------------------------------------------------------------------------- import fhir


def test_a_bundle_imports_patients_then_contacts_then_appointments(
        tmp_path: Path, config: Path, db: Database) -> None:
    # (the Bundle lists appointments and contacts before their patients)
    path = bundle(tmp_path, [*APPOINTMENTS, *CONTACTS, *PATIENTS])
    result = run(config, "import", "fhir", str(path), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["resources"]["Patient"] == {"read": 3, "created": 3, "updated": 0,
                                               "unchanged": 0, "historical": 0, "rejected": 0}
    assert summary["resources"]["RelatedPerson"]["created"] == 3
    assert summary["resources"]["Appointment"]["created"] == 2
    assert summary["events"] == {"appointment.booked": 2, "patient.created": 3}

    found = rows(db, patients, "first_name", "last_name", "phone", "language", "date_of_birth",
                 "sms_consent", "email_consent", "marketing_consent")
    # Peter goes by Jim (his usual name); his mobile wins over the work number of rank 1
    assert found["example"] == ("Jim", "Chalmers", "+61334105613", None,
                                datetime(1974, 12, 25).date(), True, True, False)
    assert found["f201"][3] == "nl-NL"
    assert rows(db, contacts, "relationship", "first_name", "phone", "receives") == {
        "benedicte": ("spouse", "Bénédicte", "+33237998327", "transactional"),
        "f002": ("partner", "Ariadne", "+31201234567", "transactional"),
        "peter": ("emergency contact", "Peter", "+61355556473", "transactional")}
    visit = rows(db, appointments, "start_at", "duration_minutes", "status", "therapist",
                 "location", "visit_type")["example"]
    assert visit == (datetime(2013, 12, 10, 9, 0, tzinfo=UTC), 120, "booked",
                     "Dr Adam Careful", "South Wing, second floor",
                     "A follow up visit from a previous appointment")

    again = run(config, "import", "fhir", str(path), "--json")
    assert json.loads(again.output)["unchanged"] == 8  # re-importing changes nothing


def test_ndjson_with_an_unknown_type_counts_and_skips_it(
        tmp_path: Path, config: Path, db: Database) -> None:
    path = tmp_path / "export.ndjson"
    path.write_text("\n".join(json.dumps(example(n)) for n in
                              ["Practitioner-example", "Patient-example",
                               "Appointment-example"]) + "\n", encoding="utf-8")
    result = run(config, "import", "fhir", str(path))
    assert result.exit_code == 0, result.output
    assert "Patient 1 (1 new, 0 updated, 0 unchanged, 0 refused)" in result.output
    assert "skipped (not imported): 1 Practitioner" in result.output
    assert set(rows(db, appointments, "status")) == {"example"}


def test_a_refused_resource_is_named_with_its_reason_and_the_others_are_kept(
        tmp_path: Path, config: Path, db: Database) -> None:
    broken = example("Patient-f201") | {"id": "broken", "birthDate": "13 March 1960"}
    path = tmp_path / "bundle.json"
    entries = [example(n) for n in ["Patient-example", "Patient-mom", "Patient-newborn",
                                    "RelatedPerson-newborn-mom", "Appointment-example",
                                    "Appointment-examplereq"]] + [broken]
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                                "entry": [{"resource": r} for r in entries]}), "utf-8")
    result = run(config, "import", "fhir", str(path), "--json")
    assert result.exit_code == 3
    problems = {p["resource"]: p["message"] for p in json.loads(result.output)["problems"]}
    assert problems == {
        "Patient/mom": "phone is not a valid number (default region AU) — check the digits, "
                       "or add the country code",
        "Patient/newborn": "first_name is empty — messages greet patients by first name",
        "Patient/broken": "not a valid R4 resource: birthDate: Date value string does not "
                          "match spec regex",
        "RelatedPerson/newborn-mom": "phone is not a valid number (default region AU) — check "
                                     "the digits, or add the country code",
        "Appointment/examplereq": "has no start — Touchpoint needs the time of the visit"}
    assert "13 March" not in result.output and "555-555-2003" not in result.output
    assert set(rows(db, patients, "id")) == {"example"}
    assert set(rows(db, appointments, "id")) == {"example"}
    text = run(config, "import", "fhir", str(path))
    assert "bundle.json: Patient/mom: phone is not a valid number" in text.output


def test_an_update_never_changes_the_consents_on_file(
        tmp_path: Path, config: Path, db: Database) -> None:
    run(config, "import", "fhir", str(bundle(tmp_path, ["Patient-example"])))
    with db.transaction() as conn:
        conn.execute(patients.update().values(sms_consent=False, marketing_consent=True))
    moved = example("Patient-example")
    moved["telecom"][2]["value"] = "(03) 3410 5614"
    path = tmp_path / "moved.json"
    path.write_text(json.dumps(moved), encoding="utf-8")
    result = run(config, "import", "fhir", str(path), "--json")
    assert json.loads(result.output)["updated"] == 1
    assert rows(db, patients, "phone", "sms_consent", "email_consent", "marketing_consent") \
        == {"example": ("+61334105614", False, True, True)}


def test_a_file_that_is_not_fhir_is_refused_whole(tmp_path: Path, config: Path) -> None:
    path = tmp_path / "patients.json"
    path.write_text('{"patients": []}', encoding="utf-8")
    result = run(config, "import", "fhir", str(path))
    assert result.exit_code == 1
    assert "not a FHIR resource (no resourceType)" in result.output
    assert "Traceback" not in result.output
    path.write_text('{"resourceType": "Bundle", "type": "collection", "total": "many"}', "utf-8")
    result = run(config, "import", "fhir", str(path))
    assert result.exit_code == 1
    assert result.output.startswith("Error: patients.json: the Bundle is not a valid R4 "
                                    "resource: total: ")


# --------------------------------------------------------------------------- fhir sync


def load(server: FhirAPIServer) -> None:
    server.put_all([example(n) for n in PATIENTS + CONTACTS + APPOINTMENTS], UPDATED)


def test_sync_pages_through_every_type_and_remembers_where_it_stopped(
        config: Path, db: Database, server: FhirAPIServer) -> None:
    load(server)
    result = run(config, "fhir", "sync", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["pages"] == {"Patient": 2, "RelatedPerson": 2, "Appointment": 1}
    assert report["created"] == 8
    assert report["cursors"] == {"Patient": "2013-11-01T09:02:00Z",
                                 "RelatedPerson": "2013-11-01T09:05:00Z",
                                 "Appointment": "2013-11-01T09:07:00Z"}
    searches = [r for r in server.requests if r.method == "GET"]
    assert searches[0].query == {"_sort": ["_lastUpdated"], "_count": ["2"]}
    assert server.token_requests == 1  # the token is kept between requests
    assert set(rows(db, patients, "id")) == {"example", "f201", "animal"}

    # a second sync asks only for what changed since the cursor (inclusive: the last
    # resource seen comes again, unchanged), and gets only that
    server.reset()
    cancelled = example("Appointment-example") | {"status": "cancelled"}
    server.put(cancelled, UPDATED + timedelta(days=1))
    result = run(config, "fhir", "sync")
    assert result.exit_code == 0, result.output
    assert "Appointment 1 (0 new, 1 updated, 0 unchanged, 0 refused)" in result.output
    assert "Patient 1 (0 new, 0 updated, 1 unchanged, 0 refused)" in result.output
    assert "events: 1 appointment.cancelled" in result.output
    assert "cursor: Patient 2013-11-01T09:02:00Z, RelatedPerson 2013-11-01T09:05:00Z, " \
           "Appointment 2013-11-02T09:00:00Z" in result.output
    asked = [r.query["_lastUpdated"][0] for r in server.requests if r.method == "GET"]
    assert asked == ["ge2013-11-01T09:02:00Z", "ge2013-11-01T09:05:00Z",
                     "ge2013-11-01T09:07:00Z"]
    assert rows(db, appointments, "status")["example"] == ("cancelled",)
    assert event_kinds(db)[-1] == "appointment.cancelled"


def test_an_interrupted_sync_resumes_after_the_last_page_committed(
        config: Path, db: Database, server: FhirAPIServer) -> None:
    load(server)
    server.enqueue(Outcome("success"), Outcome("reply", Reply.json(503, {
        "resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "transient", "diagnostics": "overloaded"}]})))
    with pytest.raises(FhirServerError, match=r"HTTP 503 for http://127\.0\.0\.1:\d+/fhir/"
                                              r"Patient: overloaded — try again later"):
        sync_once(db, config)
    # the first page (two patients) and its cursor are kept; the failed page left it
    assert set(rows(db, patients, "id")) == {"example", "f201"}
    assert cursors(db) == {"Patient": "2013-11-01T09:01:00Z"}

    server.reset()
    report = sync_once(db, config)
    assert server.requests[1].query["_lastUpdated"] == ["ge2013-11-01T09:01:00Z"]
    assert report.summary.count("created") == 6  # the third patient, 3 contacts, 2 visits
    assert report.summary.count("unchanged") == 1  # f201, the cursor's own instant
    assert set(rows(db, patients, "id")) == {"example", "f201", "animal"}


def test_a_resource_updated_in_the_cursors_own_instant_is_not_missed(
        config: Path, db: Database, server: FhirAPIServer) -> None:
    """The cursor is inclusive (_lastUpdated=ge…): a patient the EMR stores in the same
    instant as the last one the previous sync saw comes with the next sync."""
    server.put(example("Patient-example"), UPDATED)
    sync_once(db, config)
    assert cursors(db) == {"Patient": "2013-11-01T09:00:00Z"}

    server.put(example("Patient-f201"), UPDATED)  # the same instant, stored afterwards
    report = sync_once(db, config)
    asked = [r.query.get("_lastUpdated") for r in server.requests if r.path == "/fhir/Patient"]
    assert asked == [None, ["ge2013-11-01T09:00:00Z"]]
    assert (report.summary.count("created"), report.summary.count("unchanged")) == (1, 1)
    assert set(rows(db, patients, "id")) == {"example", "f201"}
    assert event_kinds(db) == ["patient.created", "patient.created"]  # nothing twice


def test_a_refused_resource_is_read_again_at_each_sync_until_applied_or_gone(
        config: Path, db: Database, server: FhirAPIServer) -> None:
    """Three appointments of a patient the sync does not know yet are refused, and
    remembered (the cursor has passed them): each sync reads them again first. Once the
    patient has come, 2docs is applied and forgotten; example, deleted on the server
    (410), is forgotten as gone; examplereq (no start) stays refused."""
    server.put(example("Patient-f201"), UPDATED)
    server.put_all([example(n) for n in ("Appointment-2docs", "Appointment-examplereq",
                                         "Appointment-example")],
                   UPDATED + timedelta(minutes=1))
    first = run(config, "fhir", "sync", "--json")
    assert first.exit_code == 3, first.output
    report = json.loads(first.output)
    assert (report["rejected"], report["retried"], report["still_refused"],
            report["gone"]) == (3, 0, 0, 0)
    assert set(remembered(db)) == {"Appointment/2docs", "Appointment/examplereq",
                                   "Appointment/example"}
    assert cursors(db)["Appointment"] == "2013-11-01T09:03:00Z"  # past all three

    # nothing changed: each is read again, and refused again (once: example, the last
    # one seen, comes in the search too, in the version just retried)
    server.reset()
    second = run(config, "fhir", "sync", "--json")
    assert second.exit_code == 3, second.output
    report = json.loads(second.output)
    assert (report["rejected"], report["retried"], report["still_refused"],
            report["gone"]) == (3, 3, 3, 0)
    assert sorted(p["resource"] for p in report["problems"]) == [
        "Appointment/2docs", "Appointment/example", "Appointment/examplereq"]
    assert [r.path for r in server.requests if r.method == "GET"
            and r.path.startswith("/fhir/Appointment/")] == [
        "/fhir/Appointment/2docs", "/fhir/Appointment/example", "/fhir/Appointment/examplereq"]

    server.reset()
    server.put(example("Patient-example"), UPDATED + timedelta(days=1))
    server.delete("Appointment", "example")
    third = run(config, "fhir", "sync")
    assert third.exit_code == 3, third.output
    assert "retried: 3 refused before (1 applied, 1 still refused, 1 gone)" in third.output
    assert "Appointment/examplereq: has no start" in third.output
    assert set(rows(db, appointments, "id")) == {"2docs"}
    assert set(remembered(db)) == {"Appointment/examplereq"}
    assert event_kinds(db)[-1] == "appointment.booked"


def test_a_server_error_on_one_retry_keeps_it_and_the_sync_goes_on(
        config: Path, db: Database, server: FhirAPIServer) -> None:
    server.put(example("Patient-f201"), UPDATED)
    server.put_all([example("Appointment-2docs"), example("Appointment-example")],
                   UPDATED + timedelta(minutes=1))
    assert run(config, "fhir", "sync").exit_code == 3
    assert set(remembered(db)) == {"Appointment/2docs", "Appointment/example"}

    server.reset()
    server.put(example("Patient-example"), UPDATED + timedelta(days=1))
    # (GETs: the Patient and RelatedPerson searches, then the two reads, then the search)
    server.enqueue(Outcome("success"), Outcome("success"), Outcome("reply", Reply.json(503, {
        "resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "transient", "diagnostics": "overloaded"}]})))
    result = run(config, "fhir", "sync", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["retried"], report["still_refused"], report["gone"]) == (2, 1, 0)
    assert [error.split(" for ")[0] for error in report["retry_errors"]] == [
        "Appointment/2docs: the FHIR server answered HTTP 503"]
    assert report["created"] == 2  # Patient example, by the search; Appointment example
    assert set(rows(db, appointments, "id")) == {"example"}
    assert set(remembered(db)) == {"Appointment/2docs"}

    server.reset()
    report = sync_once(db, config)
    assert (report.retried, report.still_refused, report.gone) == (1, 0, 0)
    assert set(rows(db, appointments, "id")) == {"example", "2docs"}
    assert remembered(db) == {}


def test_a_token_request_signed_with_another_key_is_refused_clearly(
        tmp_path: Path, config: Path, db: Database, server: FhirAPIServer) -> None:
    load(server)
    other = tmp_path / "other-key.pem"
    other.write_bytes(_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    # (same kid as the registered key, so only the signature can tell)
    result = run(config, "--set", f"fhir.private_key_file={other}", "--set",
                 f"fhir.key_id={SigningKey(Path(str(config.parent / 'practice-key.pem'))).key_id}",
                 "fhir", "sync")
    assert result.exit_code == 1
    assert result.output.startswith("Error: the FHIR token endpoint http://127.0.0.1:")
    assert "refused the token request (HTTP 401: invalid_client: bad client assertion: " \
           "Signature verification failed)" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert [r.method for r in server.requests] == ["POST"]
    with db.transaction() as conn:
        assert get_state(conn, CURSOR_KEY) is None


def test_the_token_request_carries_exactly_what_smart_backend_services_asks(
        config: Path, db: Database, server: FhirAPIServer, key_file: Path) -> None:
    import jwt

    sync_once(db, config)
    token = server.requests[0]
    assert token.path == "/auth/token"
    assert token.form is not None and set(token.form) == {
        "grant_type", "client_assertion_type", "client_assertion", "scope"}
    public = serialization.load_pem_private_key(key_file.read_bytes(), None).public_key()
    claims = jwt.decode(token.form_value("client_assertion") or "", public,  # type: ignore[arg-type]
                        algorithms=["RS384"], audience=server.token_url,
                        options={"verify_exp": False, "verify_iat": False})
    assert claims["iss"] == claims["sub"] == server.client_id
    assert claims["exp"] == int((NOW + timedelta(minutes=5)).timestamp())
    # a second token request (the first expired) never reuses a jti
    clock.set_now(NOW + timedelta(minutes=10))
    sync_once(db, config)
    assert server.token_requests == 2


def test_an_ec_p384_key_signs_es384(tmp_path: Path) -> None:
    path = tmp_path / "ec.pem"
    path.write_bytes(_pem(ec.generate_private_key(ec.SECP384R1())))
    key = SigningKey(path)
    assert key.algorithm == "ES384"
    assert key.jwks()["keys"][0] | {"kid": key.key_id, "alg": "ES384", "crv": "P-384"} \
        == key.jwks()["keys"][0]


@pytest.mark.parametrize(("answer", "expected"), [
    (Outcome("reply", Reply.json(200, {"resourceType": "Patient", "id": "x"})),
     "answered http://127.0.0.1:{port}/fhir/Patient with Patient, not a Bundle — check "
     "fhir.base_url"),
    (HANG, "the FHIR server http://127.0.0.1:{port}/fhir/Patient did not answer in time — "
           "try again later"),
    (Outcome("reply", Reply.json(401, {})), "answered HTTP 401 for "
     "http://127.0.0.1:{port}/fhir/Patient — the access token was refused"),
])
def test_server_errors_are_one_line_and_keep_the_cursor(
        config: Path, db: Database, server: FhirAPIServer, answer: Outcome,
        expected: str) -> None:
    load(server)
    server.enqueue(answer, answer)  # (a 401 is retried once with a new token)
    result = run(config, "--set", "channels.provider_timeout=0.5", "fhir", "sync")
    assert result.exit_code == 1
    assert expected.format(port=server.port) in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert cursors(db) == {}


def test_a_missing_setting_is_named(tmp_path: Path, config: Path) -> None:
    config.write_text("\n".join(line for line in config.read_text("utf-8").splitlines()
                                if not line.startswith("client_id")), encoding="utf-8")
    result = run(config, "fhir", "sync")
    assert result.exit_code == 1
    assert "setting fhir.client_id is not set" in result.output


def test_jwks_prints_the_public_key_to_register(config: Path, key_file: Path) -> None:
    result = run(config, "fhir", "jwks")
    assert result.exit_code == 0, result.output
    (jwk,) = json.loads(result.output)["keys"]
    assert jwk["kty"] == "RSA" and jwk["alg"] == "RS384" and "d" not in jwk
    assert jwk["kid"] == SigningKey(key_file).key_id


# --------------------------------------------------------------------------- daemon


def test_the_daemon_syncs_on_its_schedule_and_logs_failures_without_raising(
        tmp_path: Path, database_url: str, key_file: Path, server: FhirAPIServer,
        caplog: pytest.LogCaptureFixture) -> None:
    from engine.daemon import Daemon
    from tests.support import Clinic

    fhir = f"""
[phone]
default_region = "AU"

[fhir]
base_url = "{server.base_url}"
token_url = "{server.token_url}"
client_id = "{server.client_id}"
private_key_file = "{key_file}"
"""
    for folder in ("unscheduled", "scheduled"):
        (tmp_path / folder).mkdir()
    clinic = Clinic(database_url, tmp_path / "unscheduled", config_extra=fhir)
    idle = Daemon(clinic.settings, clinic.db, clinic.definitions, {}, lambda: clinic.definitions,
                  watch=False)
    idle.schedule_fhir_sync()
    assert idle.scheduler.get_job("fhir-sync") is None  # fhir.sync_every unset: no job
    clinic.close()

    clinic = Clinic(database_url, tmp_path / "scheduled",
                    config_extra=fhir + "sync_every = \"5m\"\n")
    daemon = Daemon(clinic.settings, clinic.db, clinic.definitions, {},
                    lambda: clinic.definitions, watch=False)
    daemon.schedule_fhir_sync()
    job = daemon.scheduler.get_job("fhir-sync")
    assert job is not None and job.trigger.interval == timedelta(minutes=5)

    load(server)
    server.enqueue(Outcome("reply", Reply.json(500, {})))
    with caplog.at_level("INFO", logger="touchpoint.fhir"):
        assert job.func() is None  # a 500: logged, not raised, the cursor unchanged
        assert "fhir sync failed: the FHIR server answered HTTP 500" in caplog.text
        assert cursors(clinic.db) == {}
        report = job.func()
    assert report is not None and report.summary.count("created") == 8
    assert "fhir sync: 8 new, 0 updated, 0 unchanged, 0 refused" in caplog.text
    assert cursors(clinic.db)["Appointment"] == "2013-11-01T09:07:00Z"
    job.func.close()
    clinic.close()


def test_the_worked_example_of_the_docs_imports_as_the_docs_say(
        tmp_path: Path, config: Path, db: Database) -> None:
    docs = (Path(__file__).resolve().parent.parent / "docs" / "fhir.md").read_text("utf-8")
    example_bundle = docs.split("```json\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "bundle.json"
    path.write_text(example_bundle, encoding="utf-8")
    clock.set_now(datetime(2026, 12, 1, tzinfo=UTC))
    result = run(config, "import", "fhir", str(path))
    assert result.exit_code == 3
    said = docs.split("$ touchpoint import fhir bundle.json\n", 1)[1].split("$ echo", 1)[0]
    assert [line.strip() for line in result.output.splitlines()] == [
        line.strip() for line in said.splitlines() if line.strip()]
    assert rows(db, contacts, "relationship") == {"benedicte": ("spouse",)}


def test_patient_ids_from_an_identifier_system_and_references_resolved_across_pages(
        config: Path, db: Database, server: FhirAPIServer) -> None:
    load(server)
    result = run(config, "--set", "fhir.patient_identifier_system=urn:oid:1.2.36.146.595.217.0.1",
                 "fhir", "sync", "--json")
    assert result.exit_code == 3
    report = json.loads(result.output)
    # only Peter has an MRN of that system; the others are refused, and so their contacts
    assert {p["resource"]: p["message"] for p in report["problems"]} == {
        "Patient/f201": "has no identifier of system urn:oid:1.2.36.146.595.217.0.1 (setting "
                        "fhir.patient_identifier_system)",
        "Patient/animal": "has no identifier of system urn:oid:1.2.36.146.595.217.0.1 (setting "
                          "fhir.patient_identifier_system)",
        "RelatedPerson/f002": "Patient/f201 is not a known patient — it must come before, or "
                              "in the same file",
        "RelatedPerson/peter": "Patient/animal is not a known patient — it must come before, "
                               "or in the same file"}
    # the contact and the visits came in later searches: found by the stored FHIR id
    with db.transaction() as conn:
        peter = conn.execute(select(patients.c.id, patients.c.custom)
                             .where(patients.c.external_id == "12345")).one()
        assert peter.custom == {"fhir_id": "example"}
        owners = {r.external_id: r.patient_id for r in conn.execute(select(appointments))}
        assert owners == {"example": peter.id, "2docs": peter.id}
        assert conn.execute(select(contacts.c.patient_id)
                            .where(contacts.c.external_id == "benedicte")).scalar() == peter.id


def test_full_removes_what_left_the_source_only_for_the_types_in_the_file(
        tmp_path: Path, config: Path, db: Database) -> None:
    assert run(config, "import", "fhir", str(bundle(tmp_path, [*PATIENTS, *APPOINTMENTS])),
               ).exit_code == 0
    kept = [name for name in PATIENTS if name != "Patient-f201"]
    only_appointments = run(config, "import", "fhir", "--full", "--json",
                            str(bundle(tmp_path, APPOINTMENTS, "visits.json")))
    assert json.loads(only_appointments.output)["removed"] == 0  # no Patient: none removed
    broken = {**example("Patient-f201"), "birthDate": "not a date"}
    path = tmp_path / "broken.json"
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": example(kept[0])}, {"resource": broken}]}), encoding="utf-8")
    refused = run(config, "import", "fhir", "--full", "--json", str(path))
    assert refused.exit_code == 3
    summary = json.loads(refused.stdout)
    assert summary["removed"] == 0 and "Patient" in summary["not_full"]
    full = run(config, "import", "fhir", "--full", "--json",
               str(bundle(tmp_path, kept, "patients.json")))
    assert full.exit_code == 0, full.output
    assert json.loads(full.output)["removed"] == 1
    removed = rows(db, patients, "removed_at")
    assert removed["f201"][0] is not None
    assert all(removed[n][0] is None for n in ("example", "mom") if n in removed)

"""HL7 v2 over MLLP (engine/hl7): messages as interface engines send them, over a real TCP
socket against the listener `touchpoint serve --mllp-port` runs (uvicorn and the MLLP
server on one event loop, in-process on ephemeral ports), on SQLite and PostgreSQL.

Payloads are under tests/payloads/hl7/: \\r segment separators, MSH-2 ^~\\&, repetitions,
escape sequences (\\T\\, \\S\\), Z-segments, v2.3 and v2.5.1, trailing empty fields.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hl7
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from engine import clock
from engine.cli import cli
from engine.errors import ConfigError
from engine.hl7 import receive as receive_module
from engine.hl7.batch import split_messages
from engine.hl7.fields import FieldPath, parse_field_path
from engine.hl7.mllp import MAX_FRAME, build, run_with
from engine.hl7.receive import Receiver
from engine.settings import load_settings
from engine.store.database import open_database
from engine.store.schema import appointments, contacts, events, hl7_messages, patients
from engine.webhooks.app import Services, create_app
from tests.support import LIBRARY_SCHEDULES, LIBRARY_TEMPLATES, Clinic, daemon_config, patient

PAYLOADS = Path(__file__).parent / "payloads" / "hl7"
NOW = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)
VT, FS_CR = b"\x0b", b"\x1c\r"


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


# --------------------------------------------------------------------------- the rig


class Listener:
    """`touchpoint serve --mllp-port` in a thread: uvicorn and the MLLP listener, both on
    ephemeral ports, on one event loop."""

    def __init__(self, clinic: Clinic) -> None:
        settings = clinic.settings.model_copy(update={
            "hl7": clinic.settings.hl7.model_copy(update={"mllp_port": 0})})
        channels = {"sms": clinic.sms, "email": clinic.email}
        asgi = create_app(Services(settings, clinic.db, clinic.definitions, channels))
        self.server, self.listener = build(asgi, settings, clinic.db, host="127.0.0.1",
                                           port=0)
        self.thread = threading.Thread(
            target=lambda: asyncio.run(run_with(self.server.serve, self.listener)),
            daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not (self.server.started and self.listener.port):
            assert self.thread.is_alive(), "the server stopped while starting"
            assert time.monotonic() < deadline, "the server did not start within 60 s"
            time.sleep(0.02)
        self.port = self.listener.port

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        assert not self.thread.is_alive()

    def connect(self) -> Connection:
        return Connection(self.port)


class Connection:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.buffer = b""

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, message: bytes) -> hl7.Message:
        self.send_raw(VT + message + FS_CR)
        return self.ack()

    def ack(self) -> hl7.Message:
        frame = self.read_frame()
        assert frame.startswith(VT), frame
        return hl7.parse(frame[1:-2].decode("utf-8"))

    def read_frame(self) -> bytes:
        while FS_CR not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        frame, _, self.buffer = self.buffer.partition(FS_CR)
        return frame + FS_CR

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def clinic(database_url: str, tmp_path: Path) -> Iterator[Clinic]:
    clock.set_now(NOW)
    practice = Clinic(database_url, tmp_path)
    yield practice
    practice.close()


@pytest.fixture
def server(clinic: Clinic) -> Iterator[Listener]:
    running = Listener(clinic)
    yield running
    running.stop()


@pytest.fixture
def conn(server: Listener) -> Iterator[Connection]:
    connection = server.connect()
    yield connection
    connection.close()


def code(ack: hl7.Message) -> str:
    return str(ack.segment("MSA")(1))


def rows(clinic: Clinic, table: Any) -> list[dict[str, Any]]:
    with clinic.db.transaction() as c:
        return [r._asdict() for r in c.execute(select(table).order_by(table.c.id))]


def event_kinds(clinic: Clinic) -> list[str]:
    with clinic.db.transaction() as c:
        return list(c.execute(select(events.c.kind).order_by(events.c.id)).scalars())


# --------------------------------------------------------------------------- over MLLP


def test_an_s12_books_the_appointment_and_is_answered_aa(clinic: Clinic,
                                                         conn: Connection) -> None:
    ack = conn.send(payload("siu_s12_v251.hl7"))
    assert code(ack) == "AA"
    assert str(ack.segment("MSA")(2)) == "MSG00001"
    msh = ack.segment("MSH")
    assert str(msh(9)) == "ACK^S12^ACK" and str(msh(12)) == "2.5.1"
    assert (str(msh(5)), str(msh(6))) == ("MIRTH", "RIVERSIDE PT")  # back to the sender

    [booked] = rows(clinic, appointments)
    assert booked["external_id"] == "A7781"  # SCH-2, the filler id
    assert booked["start_at"] == datetime(2026, 12, 10, 15, 30, tzinfo=UTC)
    assert booked["duration_minutes"] == 45
    assert booked["status"] == "booked"
    assert booked["visit_type"] == "Follow-up visit"  # AIS-3.2
    assert booked["therapist"] == "Maya Chen, DPT"  # AIP-3
    assert booked["location"] == "Riverside PT & Sports Rehab"  # AIL-3.9 with \T\
    [ana] = rows(clinic, patients)
    assert (ana["external_id"], ana["first_name"], ana["last_name"]) == ("P2001", "Ana",
                                                                         "Reyes")
    assert ana["phone"] == "+13125550142"  # the mobile (CP) of PID-13's repetitions
    assert ana["email"] == "Ana.Reyes@example.com"  # the NET/Internet repetition, XTN-4
    assert ana["language"] == "es"  # PID-15 "spa"
    assert str(ana["date_of_birth"]) == "1985-02-14"
    assert (ana["sms_consent"], ana["email_consent"], ana["marketing_consent"]) == (
        True, True, False)
    assert event_kinds(clinic) == ["patient.created", "appointment.booked"]


def test_a_v23_message_with_local_times_is_read_in_the_practice_timezone(
        clinic: Clinic, conn: Connection) -> None:
    ack = conn.send(payload("siu_s12_v23.hl7"))
    assert code(ack) == "AA"
    assert str(ack.segment("MSH")(12)) == "2.3"
    [booked] = rows(clinic, appointments)
    # 14:00 in America/Chicago (the practice's timezone), no offset in the message
    assert booked["start_at"] == datetime(2026, 12, 14, 20, 0, tzinfo=UTC)
    assert (booked["external_id"], booked["duration_minutes"]) == ("880021", 60)
    assert booked["therapist"] == "Sam Ortiz, DPT"
    assert booked["location"] == "North Clinic"  # AIL-3.4 (no description)
    [liam] = rows(clinic, patients)
    assert (liam["last_name"], liam["phone"], liam["email"], liam["language"]) == (
        "O'Neil", "+13125550123", "liam@example.org", "en")


def test_s13_moves_s15_cancels_and_s26_marks_a_no_show(clinic: Clinic,
                                                        conn: Connection) -> None:
    assert code(conn.send(payload("siu_s12_v251.hl7"))) == "AA"
    assert code(conn.send(payload("siu_s13_v251.hl7"))) == "AA"
    [moved] = rows(clinic, appointments)
    assert moved["start_at"] == datetime(2026, 12, 11, 20, 0, tzinfo=UTC)
    assert moved["visit_type"] == "Follow-up visit"  # (not in the S13: kept)

    assert code(conn.send(payload("siu_s15_v251.hl7"))) == "AA"
    [cancelled] = rows(clinic, appointments)
    assert cancelled["status"] == "cancelled"
    # (the S15 carries the first booking's time: a cancellation changes the status only)
    assert cancelled["start_at"] == datetime(2026, 12, 11, 20, 0, tzinfo=UTC)

    assert code(conn.send(payload("siu_s26_v251.hl7"))) == "AA"
    assert rows(clinic, appointments)[0]["status"] == "no_show"
    assert event_kinds(clinic) == ["patient.created", "appointment.booked",
                                   "appointment.rescheduled", "appointment.cancelled",
                                   "appointment.no_show"]


def test_an_s17_removes_the_appointment_and_cancels_its_reminders(
        clinic: Clinic, conn: Connection) -> None:
    assert code(conn.send(payload("siu_s12_v251.hl7"))) == "AA"
    clinic.tick()  # (plans the reminders of the booking)
    anchored = [tp for tp in clinic.touch_points() if tp.appointment_id is not None]
    assert anchored
    deleted = payload("siu_s15_v251.hl7").replace(b"SIU^S15", b"SIU^S17").replace(
        b"MSG00003", b"MSG00017").replace(b"Cancelled", b"Deleted")
    assert code(conn.send(deleted)) == "AA"
    [removed] = rows(clinic, appointments)
    assert removed["removed_at"] == NOW
    assert removed["status"] == "booked"  # (removed, not cancelled: no cancellation texts)
    assert all(tp.status == "cancelled" and tp.reason == "patient_removed"
               for tp in clinic.touch_points() if tp.appointment_id is not None)
    unknown = deleted.replace(b"A7781", b"A0000").replace(b"MSG00017", b"MSG00018")
    assert code(conn.send(unknown)) == "AA"  # (nothing to remove)


def test_an_adt_a04_registers_the_patient_and_the_parent_in_nk1_as_a_contact(
        clinic: Clinic, conn: Connection) -> None:
    assert code(conn.send(payload("adt_a04_nk1_v251.hl7"))) == "AA"
    [mia] = rows(clinic, patients)
    assert (mia["external_id"], mia["first_name"], mia["phone"], mia["language"]) == (
        "P4001", "Mia", "+13125550155", "vi")
    [linh] = rows(clinic, contacts)  # (the employer in the second NK1 is not a contact)
    assert linh["patient_id"] == mia["id"]
    assert (linh["relationship"], linh["first_name"], linh["phone"], linh["email"],
            linh["language"], linh["receives"]) == (
        "parent", "Linh", "+13125550177", "linh.nguyen@example.com", "vi", "transactional")
    assert (linh["sms_consent"], linh["marketing_consent"]) == (True, False)
    assert event_kinds(clinic) == ["patient.created"]


def test_an_adt_a28_adds_the_person_as_an_a04_does(clinic: Clinic, conn: Connection) -> None:
    added = payload("adt_a04_nk1_v251.hl7").replace(b"ADT^A04^ADT_A01", b"ADT^A28^ADT_A05") \
        .replace(b"EVN|A04|", b"EVN|A28|").replace(b"ADT00001", b"ADT00028")
    ack = conn.send(added)
    assert code(ack) == "AA"
    assert str(ack.segment("MSA")(2)) == "ADT00028"
    [mia] = rows(clinic, patients)
    assert (mia["external_id"], mia["first_name"], mia["phone"]) == (
        "P4001", "Mia", "+13125550155")
    [linh] = rows(clinic, contacts)
    assert (linh["patient_id"], linh["relationship"]) == (mia["id"], "parent")
    assert event_kinds(clinic) == ["patient.created"]


def test_a_v24_message_is_applied_and_acked_in_2_4(clinic: Clinic, conn: Connection) -> None:
    message = payload("siu_s12_v251.hl7")
    header, _, rest = message.partition(b"\r")
    fields = header.split(b"|")
    assert fields[11] == b"2.5.1"  # MSH-12 (MSH-1 is the separator itself)
    fields[11] = b"2.4"
    ack = conn.send(b"|".join(fields) + b"\r" + rest)
    assert code(ack) == "AA"
    assert str(ack.segment("MSH")(12)) == "2.4"
    [booked] = rows(clinic, appointments)
    assert (booked["external_id"], booked["status"]) == ("A7781", "booked")
    assert booked["start_at"] == datetime(2026, 12, 10, 15, 30, tzinfo=UTC)
    assert event_kinds(clinic) == ["patient.created", "appointment.booked"]


@pytest.mark.parametrize(("name", "version"), [("adt_a08_bad_phone_v251.hl7", "2.5.1"),
                                               ("adt_a08_bad_phone_v23.hl7", "2.3")])
def test_a_bad_phone_is_answered_ae_with_an_err_naming_pid_13(
        clinic: Clinic, conn: Connection, name: str, version: str) -> None:
    ack = conn.send(payload(name))
    assert code(ack) == "AE"
    err = ack.segment("ERR")
    if version == "2.5.1":
        assert str(err(2)) == "PID^1^13"  # ERR-2 location
        assert str(err(3)) == "102^Data type error^HL70357"  # ERR-3 code
        assert str(err(4)) == "E"
        assert str(err(8)).startswith("PID-13: phone is not a valid number")  # ERR-8
    else:
        assert str(err(1)) == "PID^1^13^102&Data type error&HL70357"  # ERR-1 (v2.3)
    assert "PID-13" in str(ack.segment("MSA")(3))
    assert rows(clinic, patients) == []  # nothing applied
    [kept] = rows(clinic, hl7_messages)
    assert (kept["ack_code"], kept["message_type"]) == ("AE", "ADT^A08")
    assert "555" not in kept["error"] and "555" not in kept["ack"]  # no patient data


def test_what_is_not_hl7_gets_ar_and_the_connection_serves_on(clinic: Clinic,
                                                               conn: Connection) -> None:
    garbage = conn.send(b"\x00\xffhello, this is not HL7\r\n")
    assert code(garbage) == "AR"
    assert str(garbage.segment("MSA")(2)) == ""
    conn.send_raw(b"no start block here" + FS_CR)  # not even MLLP framed
    assert code(conn.ack()) == "AR"
    conn.send_raw(b"\n")  # a stray newline between frames is ignored
    assert code(conn.send(payload("siu_s12_v251.hl7"))) == "AA"
    assert len(rows(clinic, appointments)) == 1


def test_a_message_type_touchpoint_does_not_take_is_rejected(conn: Connection) -> None:
    oru = (b"MSH|^~\\&|LAB|X|TOUCHPOINT||20261201||ORU^R01|LAB1|P|2.5.1\r"
           b"PID|1||P1\rOBX|1|NM|GLU||100\r")
    ack = conn.send(oru)
    assert code(ack) == "AR"
    assert str(ack.segment("ERR")(3)).startswith("200^")


def test_the_same_control_id_twice_is_applied_once_and_acked_the_same(
        clinic: Clinic, server: Listener, conn: Connection) -> None:
    first = conn.send(payload("siu_s12_v251.hl7"))
    other = server.connect()  # (a sender that reconnected and resent)
    try:
        second = other.send(payload("siu_s12_v251.hl7"))
    finally:
        other.close()
    assert str(first) == str(second)
    assert code(second) == "AA"
    assert event_kinds(clinic) == ["patient.created", "appointment.booked"]
    assert len(rows(clinic, hl7_messages)) == 1


def test_a_broken_message_then_a_good_one_on_the_same_connection(
        clinic: Clinic, conn: Connection) -> None:
    broken = b"MSH|^~\\&|MIRTH|RIVERSIDE PT|TOUCHPOINT||20261201||SIU^S12|BRK1|P|2.5.1\rSCH|||"
    ack = conn.send(broken)
    assert code(ack) == "AE"
    assert str(ack.segment("ERR")(2)) == "PID^1^3"  # (no PID: no patient)
    assert code(conn.send(payload("siu_s12_v251.hl7"))) == "AA"
    assert len(rows(clinic, appointments)) == 1


def test_a_frame_over_the_limit_is_rejected_and_the_connection_closed(
        server: Listener, clinic: Clinic) -> None:
    connection = server.connect()
    try:
        huge = payload("siu_s12_v251.hl7") + b"ZXX|" + b"x" * (MAX_FRAME + 10) + b"\r"
        ack = connection.send(huge)
        assert code(ack) == "AR"
        assert "1 MiB" in str(ack.segment("MSA")(3))
        assert connection.closed()
    finally:
        connection.close()
    again = server.connect()  # the listener itself serves on
    try:
        assert code(again.send(payload("siu_s12_v251.hl7"))) == "AA"
    finally:
        again.close()
    assert len(rows(clinic, appointments)) == 1


def test_a_frame_the_receiver_trips_on_is_answered_and_the_next_one_served(
        clinic: Clinic, server: Listener, conn: Connection) -> None:
    receiver = server.listener.receiver
    real = receiver.receive
    calls: list[bytes] = []

    def broken_once(payload: bytes, *, source: str) -> Any:
        calls.append(payload)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return real(payload, source=source)

    receiver.receive = broken_once  # type: ignore[method-assign]
    assert code(conn.send(payload("siu_s12_v251.hl7"))) == "AR"
    assert code(conn.send(payload("siu_s12_v251.hl7"))) == "AA"
    assert len(rows(clinic, appointments)) == 1


@pytest.fixture
def zsc_clinic(database_url: str, tmp_path: Path) -> Iterator[Clinic]:
    clock.set_now(NOW)
    practice = Clinic(database_url, tmp_path, config_extra=(
        '\n[hl7]\nvisit_type_field = "ZSC-2.2"\nlocation_field = "AIL-3.1"\n'
        'provider_field = "AIG-3.2"\nappointment_id_field = "SCH-1"\n'))
    yield practice
    practice.close()


def test_overrides_of_the_visit_type_location_provider_and_id_fields_take_effect(
        zsc_clinic: Clinic) -> None:
    running = Listener(zsc_clinic)
    connection = running.connect()
    try:
        assert code(connection.send(payload("siu_s12_v251.hl7"))) == "AA"
    finally:
        connection.close()
        running.stop()
    [booked] = rows(zsc_clinic, appointments)
    assert booked["external_id"] == "PL-7781"  # SCH-1, the placer id
    assert booked["visit_type"] == "New patient ^ evaluation"  # ZSC-2.2 with \S\
    assert booked["location"] == "RIV"
    assert booked["therapist"] == "Chen, Maya DPT"


# --------------------------------------------------------------------------- receiving


def test_an_error_while_applying_is_ae_logged_without_patient_data_and_changes_nothing(
        clinic: Clinic, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    receiver = Receiver(clinic.db, clinic.settings)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Ana Reyes +13125550142 could not be written")

    monkeypatch.setattr(receive_module, "sync_appointments", broken)
    with caplog.at_level(logging.INFO, logger="touchpoint.hl7"):
        outcome = receiver.receive(payload("siu_s12_v251.hl7"))
    assert outcome.code == "AE"
    ack = hl7.parse(outcome.ack)
    assert str(ack.segment("ERR")(3)).startswith("207^")
    assert "Reyes" not in caplog.text and "5550142" not in caplog.text
    assert "RuntimeError" in caplog.text
    assert rows(clinic, patients) == []  # the patient of the same message rolled back too

    monkeypatch.undo()
    again = receiver.receive(payload("siu_s12_v251.hl7"))  # a message answered AE is retried
    assert (again.code, again.duplicate) == ("AA", False)
    assert len(rows(clinic, appointments)) == 1
    [kept] = rows(clinic, hl7_messages)
    assert (kept["ack_code"], kept["error"]) == ("AA", "")


def test_an_applied_message_wakes_the_daemons_and_a_refused_one_does_not(
        clinic: Clinic, monkeypatch: pytest.MonkeyPatch) -> None:
    woken: list[object] = []
    monkeypatch.setattr(receive_module.wake, "notify", woken.append)
    receiver = Receiver(clinic.db, clinic.settings)
    assert receiver.receive(payload("adt_a08_bad_phone_v251.hl7")).code == "AE"
    assert woken == []
    assert receiver.receive(payload("siu_s12_v251.hl7")).code == "AA"
    assert woken == [clinic.db]
    assert receiver.receive(payload("siu_s12_v251.hl7")).duplicate
    assert woken == [clinic.db]  # (a copy applies nothing)


def test_an_s14_modifies_what_it_carries_and_keeps_the_rest(clinic: Clinic) -> None:
    receiver = Receiver(clinic.db, clinic.settings)
    assert receiver.receive(payload("siu_s12_v251.hl7")).code == "AA"
    modified = (b"MSH|^~\\&|MIRTH|RIVERSIDE PT|TOUCHPOINT|RIVERSIDE|20261202||SIU^S14^SIU_S12|"
                b"MSG00014|P|2.5.1\rSCH||A7781^PTEMR\rPID|1||P2001^^^RIVERSIDE^MR\r"
                b"AIL|1|A|RIV^^^RIVERSIDE^^^^^Riverside PT East|\r")
    outcome = receiver.receive(modified)
    assert outcome.code == "AA", outcome.reason
    [changed] = rows(clinic, appointments)
    assert changed["location"] == "Riverside PT East"
    assert (changed["status"], changed["visit_type"], changed["duration_minutes"]) == (
        "booked", "Follow-up visit", 45)
    assert changed["start_at"] == datetime(2026, 12, 10, 15, 30, tzinfo=UTC)
    assert event_kinds(clinic) == ["patient.created", "appointment.booked"]
    [ana] = rows(clinic, patients)
    assert (ana["first_name"], ana["phone"]) == ("Ana", "+13125550142")  # (kept)


def test_an_update_never_changes_consents_or_what_hl7_does_not_carry(clinic: Clinic) -> None:
    clinic.patients(patient("P4001", first_name="Mia", last_name="Nguyen",
                            phone="(312) 555-0100", sms_consent="no", email_consent="yes",
                            marketing_consent="yes", timezone="America/Denver",
                            school="Lincoln"))
    receiver = Receiver(clinic.db, clinic.settings)
    outcome = receiver.receive(payload("adt_a04_nk1_v251.hl7").replace(b"ADT^A04",
                                                                         b"ADT^A08"))
    assert outcome.code == "AA", outcome.reason
    [mia] = rows(clinic, patients)
    assert mia["phone"] == "+13125550155"  # updated from PID-13
    assert mia["email"] == "p4001@example.com"  # not in the message: kept
    assert (mia["sms_consent"], mia["email_consent"], mia["marketing_consent"]) == (
        False, True, True)
    assert mia["timezone"] == "America/Denver"
    assert mia["custom"] == {"school": "Lincoln"}


def test_the_hl7_null_clears_a_field_and_an_empty_one_keeps_it(clinic: Clinic) -> None:
    receiver = Receiver(clinic.db, clinic.settings)
    assert receiver.receive(payload("siu_s12_v23.hl7")).code == "AA"
    update = (b"MSH|^~\\&|WEBPT|NORTH CLINIC|TOUCHPOINT||202612011000||ADT^A31|V23-0009|P|2.3\r"
              b"PID|||P3001||O'Neil^Liam||||||||\"\"\r")
    assert receiver.receive(update).code == "AA"
    [liam] = rows(clinic, patients)
    assert (liam["phone"], liam["email"]) == (None, None)
    assert str(liam["date_of_birth"]) == "1979-06-03"


def test_a_language_that_is_no_code_is_ignored_not_refused(clinic: Clinic) -> None:
    local_table = payload("siu_s12_v23.hl7").replace(b"||EN|", b"||1^English|")
    outcome = Receiver(clinic.db, clinic.settings).receive(local_table)
    assert outcome.code == "AA", outcome.reason
    assert rows(clinic, patients)[0]["language"] is None


def test_patient_id_type_picks_the_pid_3_repetition(clinic: Clinic) -> None:
    settings = clinic.settings.model_copy(update={
        "hl7": clinic.settings.hl7.model_copy(update={"patient_id_type": "SS"})})
    outcome = Receiver(clinic.db, settings).receive(payload("siu_s12_v251.hl7"))
    assert outcome.code == "AA"
    assert rows(clinic, patients)[0]["external_id"] == "999001234"
    settings = clinic.settings.model_copy(update={
        "hl7": clinic.settings.hl7.model_copy(update={"patient_id_type": "XX"})})
    refused = Receiver(clinic.db, settings).receive(payload("siu_s13_v251.hl7"))
    assert refused.code == "AE" and refused.reason.startswith("PID-3:")


# --------------------------------------------------------------------------- settings, files


def test_a_bad_field_path_is_a_clear_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"hl7.visit_type_field.*not an HL7 field path"):
        load_settings(None, {"hl7.visit_type_field": "AIS3"}, environ={})
    settings = load_settings(None, {}, environ={"TOUCHPOINT_MLLP_PORT": "2575",
                                                "TOUCHPOINT_HL7_LOCATION_FIELD": "ail-3.4"})
    assert settings.hl7.mllp_port == 2575
    assert settings.hl7.location_field == "AIL-3.4"
    assert parse_field_path("ZSC-1.2.3") == FieldPath("ZSC", 1, 2, 3)


def test_serve_refuses_a_bad_field_path_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--set", "hl7.provider_field=AIP-0", "serve",
                                      "--mllp-port", "2575"])
    assert result.exit_code == 1
    assert "hl7.provider_field" in result.output and "Traceback" not in result.output


def test_a_batch_file_splits_into_its_messages() -> None:
    s12, s13 = payload("siu_s12_v251.hl7"), payload("siu_s13_v251.hl7")
    framed = (VT + s12 + FS_CR + b"\n" + VT + s13 + FS_CR).decode()
    assert split_messages(framed) == [s12.decode(), s13.decode()]
    with_batch = ("FHS|^~\\&|MIRTH\nBHS|^~\\&|MIRTH\n" + s12.decode().replace("\r", "\n")
                  + "\n" + s13.decode().replace("\r", "\r\n") + "BTS|2\nFTS|1\n")
    assert split_messages(with_batch) == [s12.decode(), s13.decode()]
    assert split_messages("junk line\n\n" + s12.decode()) == ["junk line\r", s12.decode()]


def test_import_hl7_applies_a_file_with_a_result_per_message(clinic: Clinic,
                                                            tmp_path: Path) -> None:
    file = tmp_path / "drop.hl7"
    file.write_bytes(b"FHS|^~\\&|MIRTH|RIVERSIDE PT\rBHS|^~\\&|MIRTH|RIVERSIDE PT\r"
                     + payload("siu_s12_v251.hl7") + b"\r\n"
                     + payload("adt_a08_bad_phone_v251.hl7") + b"\n"
                     + VT + payload("siu_s13_v251.hl7") + FS_CR
                     + b"BTS|3\rFTS|1\r")
    base = ["--config", str(clinic.config), "--db", clinic.settings.database_url]
    result = CliRunner().invoke(cli, [*base, "import", "hl7", str(file)])
    assert result.exit_code == 3, result.output
    lines = result.output.splitlines()
    assert "MSG00001" in lines[0] and "SIU^S12" in lines[0] and " AA" in lines[0]
    assert "ADT00002" in lines[1] and " AE " in lines[1] and "PID-13" in lines[1]
    assert "MSG00002" in lines[2] and " AA" in lines[2]
    assert "3 messages, 2 applied, 1 not applied" in lines[3]

    again = CliRunner().invoke(cli, [*base, "import", "hl7", str(file), "--json"])
    results = json.loads(again.output)
    assert [(r["control_id"], r["ack"], r["duplicate"]) for r in results] == [
        ("MSG00001", "AA", True), ("ADT00002", "AE", False), ("MSG00002", "AA", True)]
    assert results[1]["reason"].startswith("PID-13: phone is not a valid number")
    with clinic.db.transaction() as c:
        assert c.execute(select(func.count()).select_from(events)).scalar_one() == 3


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize("given_by", ["TOUCHPOINT_MLLP_PORT", "--mllp-port"])
def test_touchpoint_serve_listens_for_mllp_beside_the_web_app(sqlite_url: str,
                                                              tmp_path: Path,
                                                              given_by: str) -> None:
    daemon_config(tmp_path)
    http_port, mllp_port = _free_port(), _free_port()
    env = {**os.environ, "TOUCHPOINT_DATABASE_URL": sqlite_url}
    env.pop("TOUCHPOINT_MLLP_PORT", None)
    flag: list[str] = []
    if given_by == "--mllp-port":
        flag = ["--mllp-port", str(mllp_port)]
    else:
        env["TOUCHPOINT_MLLP_PORT"] = str(mllp_port)
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "--schedules", str(LIBRARY_SCHEDULES), "--templates",
         str(LIBRARY_TEMPLATES), "serve", "--port", str(http_port), *flag], cwd=tmp_path,
        env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                connection = Connection(mllp_port)
                break
            except OSError:
                assert time.monotonic() < deadline, "serve did not listen within 60 s"
                time.sleep(0.2)
        try:
            assert code(connection.send(payload("siu_s12_v251.hl7"))) == "AA"
        finally:
            connection.close()
        try:  # the web app answers from the same process
            status = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz",
                                            timeout=30).status
        except urllib.error.HTTPError as exc:
            status = exc.code
        assert status in (200, 503)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0 or process.returncode == -signal.SIGTERM
        log.close()
    assert f"HL7 over MLLP on 127.0.0.1:{mllp_port}" in (tmp_path / "serve.log").read_text()
    database = open_database(sqlite_url)
    try:
        with database.transaction() as c:
            assert c.execute(select(appointments.c.external_id)).scalars().all() == ["A7781"]
    finally:
        database.dispose()

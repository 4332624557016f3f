"""A patient's data, governed: `touchpoint patient export ID`, `touchpoint patient erase
ID` and the retention of message text (engine/patient_data.py).

Zelda (P1) lives a rich fortnight at the practice: a welcome, reminders, a confirmation by
text, a completed visit and its thank-you, a complaint by text (a recovery case, a staff
alert, notes naming her), a delivery report, an email unsubscribe, an earlier export in the
audit log, a mother on file, and a visit still ahead. Bart (P2) is another patient. Export
must hold every row about Zelda and nothing of Bart's; erase must leave no trace of her
name, phone or email anywhere in the database (but the opt-out of her address), keep every
count of the report, and leave Bart's data as it was.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from engine import audit, cases, clock, patient_data, waitlist
from engine.cli import cli
from engine.daemon import Daemon
from engine.outcomes import EXPLANATIONS, Reason, Status
from engine.replies import record_inbound
from engine.report import build_report
from engine.settings import load_settings
from engine.store.records import add_opt_out
from engine.store.schema import (
    Base,
    history,
    inbound_messages,
    patients,
    provider_events,
    slot_offers,
    touch_points,
)
from engine.webhooks import Kind, ProviderEvent
from engine.webhooks.record import record_event
from tests.support import Clinic, appointment, contact, patient

CHICAGO = "-06:00"
ZELDA = {"first_name": "Zelda", "last_name": "Quartermaine", "phone": "(312) 555-0142",
         "email": "Zelda.Q@example.com", "date_of_birth": "1980-04-02",
         "insurance": "Blue Cross ZQ-7731"}
# Everything that identifies Zelda or her mother, as it may be stored or shown
ZELDA_TRACES = ("Zelda", "Quartermaine", "3125550142", "555-0142", "zelda.q@example.com",
                "1980-04-02", "ZQ-7731", "Ottoline", "3125550177", "ottoline@example.com")
OPTED_OUT = "zelda.q@example.com"  # her email's marketing opt-out, kept after erasure
BART_TRACES = ("Bartholomew", "3125550155", "bart.finch@example.com")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text + CHICAGO)


def text_in(clinic: Clinic, when: str, phone: str, body: str, sid: str) -> None:
    with clock.travel_to(at(when)), clinic.db.transaction() as conn:
        record_inbound(conn, clinic.settings, provider="twilio", message_id=sid,
                       from_number=phone, to_number="+13125550199", body=body, now=at(when),
                       asks_score=clinic.definitions.score_steps)


def run(clinic: Clinic, start: str, until: str) -> None:
    now = at(start)
    while now <= at(until):
        with clock.travel_to(now):
            clinic.tick()
        now += timedelta(minutes=30)


@pytest.fixture
def fortnight(database_url: str, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Clinic]:
    monkeypatch.setenv("TOUCHPOINT_STAFF_EMAIL", "front-desk@riversidept.example")
    clinic = Clinic(database_url, tmp_path, config_extra=(
        '\n[recovery]\nowner_email = "maya@riversidept.example"\n'))
    with clock.travel_to(at("2026-11-02T09:00:00")):
        clinic.patients(patient("P1", **ZELDA),
                        patient("P2", first_name="Bartholomew", last_name="Finch",
                                phone="(312) 555-0155", email="bart.finch@example.com"))
        clinic.contacts(contact("C1", "P1", first_name="Ottoline", phone="(312) 555-0177",
                                email="ottoline@example.com"))
        clinic.appointments(appointment("A1", "P1", "2026-11-04T10:00:00" + CHICAGO),
                            appointment("A2", "P1", "2026-11-20T10:00:00" + CHICAGO),
                            appointment("B1", "P2", "2026-11-05T11:00:00" + CHICAGO))
    run(clinic, "2026-11-02T09:00:00", "2026-11-03T10:00:00")
    text_in(clinic, "2026-11-03T10:30:00", "+13125550142", "C", "SM-Z1")
    run(clinic, "2026-11-03T11:00:00", "2026-11-04T11:30:00")
    with clock.travel_to(at("2026-11-04T12:00:00")):
        clinic.appointments(appointment("A1", "P1", "2026-11-04T10:00:00" + CHICAGO,
                                        status="completed"))
    run(clinic, "2026-11-04T12:00:00", "2026-11-04T18:30:00")
    text_in(clinic, "2026-11-04T19:00:00", "+13125550142",
            "Zelda here, the wait today was terrible", "SM-Z2")
    text_in(clinic, "2026-11-04T19:05:00", "+13125550155", "C", "SM-B1")
    run(clinic, "2026-11-04T19:00:00", "2026-11-05T12:00:00")
    now = at("2026-11-05T12:30:00")
    with clock.travel_to(now), clinic.db.transaction() as conn:
        welcome = conn.execute(select(touch_points.c.id, touch_points.c.provider_message_id)
                               .join(patients, patients.c.id == touch_points.c.patient_id)
                               .where(patients.c.external_id == "P1",
                                      touch_points.c.journey == "welcome",
                                      touch_points.c.channel == "sms")).first()
        assert welcome is not None
        record_event(conn, ProviderEvent(
            "twilio", "SM-Z0:delivered", Kind.DELIVERED, "delivered", now, welcome.id,
            welcome.provider_message_id, "+13125550142",
            raw={"To": "+13125550142", "MessageStatus": "delivered"}), now)
        # a staff note in a message's history, as `touchpoint settle --note` writes one
        conn.execute(history.insert().values(
            touch_point_id=welcome.id, at=now, kind="note", status=None,
            previous_status=None, reason="note", detail="Zelda says the number is right",
            source="staff", provider_event_id=None))
        add_opt_out(conn, "email", "Zelda.Q@example.com", "marketing", "unsubscribe",
                    "unsubscribed from the link in an email", now)
        [case] = cases.list_cases(conn, open_only=True)
        cases.note(conn, case.id, "Called Zelda Quartermaine back on 312-555-0142",
                   "cli:maya", now)
        cases.resolve(conn, case.id, "Apologised to Zelda; comped the next visit",
                      "cli:maya", now)
        audit.record(conn, actor="cli:maya", action="patient.export", now=now,
                     target="patient:P1", address="cli", detail={"rows": {"patients": 1}})
        # on the waitlist: Zelda (offered a slot she freed earlier, as a test of scope) and Bart
        ids = dict(conn.execute(select(patients.c.external_id, patients.c.id)).all())
        for external_id, days in (("P1", "tue,thu"), ("P2", "mon")):
            waitlist.put_entry(conn, ids[external_id], waitlist.parse_preferences(
                {"days": days, "therapist": "Dr. Lee"}), source="test", now=now)
        slot = waitlist.open_slot(conn, waitlist.NewSlot(
            now + timedelta(days=5), 45, freed_by_patient_id=ids["P1"]),
            source="cancellation", now=now)
        conn.execute(slot_offers.insert().values(
            slot_id=slot, patient_id=ids["P1"], wave=1, status="offered", offered_at=now,
            # still standing at the erasure (the ticks expire offers past expires_at)
            expires_at=now + timedelta(days=4)))
    run(clinic, "2026-11-05T13:00:00", "2026-11-06T12:00:00")
    yield clinic
    clinic.close()


def dump(clinic: Clinic) -> dict[str, str]:
    """Every table's rows as text: what a database dump would show."""
    with clinic.db.transaction() as conn:
        return {table.name: "\n".join(" | ".join(map(str, row))
                                      for row in conn.execute(select(table)))
                for table in Base.metadata.sorted_tables}


def traces(text: str, wanted: tuple[str, ...]) -> list[str]:
    return [t for t in wanted if t.lower() in text.lower()]


def export(clinic: Clinic, patient_id: str) -> dict[str, Any]:
    with clinic.db.transaction() as conn:
        return patient_data.export(conn, patient_id, clock.now())


def cli_run(clinic: Clinic, *args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(cli, [
        "--config", str(clinic.config), "--db", clinic.settings.database_url,
        "--schedules", str(clinic.settings.schedules_dir),
        "--templates", str(clinic.settings.templates_dir),
        "--now", "2026-11-06T12:00:00-06:00", *args], input=input)


def report(clinic: Clinic) -> dict[str, Any]:
    with clinic.db.transaction() as conn:
        return build_report(conn, clinic.definitions, at("2026-11-01T00:00:00"),
                            at("2026-11-06T12:00:00"))


def test_every_table_of_the_schema_is_considered() -> None:
    """A table added to engine/store/schema.py fails here until export and erase say what
    they do with it (engine/patient_data.py TABLES)."""
    assert set(patient_data.TABLES) == set(Base.metadata.tables)


def test_export_holds_every_row_about_the_patient_and_nothing_of_another(
        fortnight: Clinic) -> None:
    zelda, bart = export(fortnight, "P1"), export(fortnight, "P2")

    tables = zelda["tables"]
    personal = {name for name, what in patient_data.TABLES.items()
                if not what.startswith("neither")} - {"referrers"}
    assert {name for name, rows in tables.items() if rows} == personal  # the story covers all
    [row] = tables["patients"]
    assert (row["first_name"], row["phone"], row["email"], row["date_of_birth"]) == (
        "Zelda", "+13125550142", "Zelda.Q@example.com", "1980-04-02")
    assert row["custom"] == {"insurance": "Blue Cross ZQ-7731"}
    assert (row["sms_consent"], row["marketing_consent"]) == (True, True)
    assert [c["first_name"] for c in tables["contacts"]] == ["Ottoline"]
    assert {a["external_id"] for a in tables["appointments"]} == {"A1", "A2"}
    assert any("Zelda" in (tp["content"] or "") for tp in tables["touch_points"])
    assert {m["body"] for m in tables["inbound_messages"]} == {
        "C", "Zelda here, the wait today was terrible"}
    assert [o["address"] for o in tables["opt_outs"]] == ["zelda.q@example.com"]
    assert tables["provider_events"][0]["payload"]["To"] == "+13125550142"
    assert {e["kind"] for e in tables["case_events"]} >= {"opened", "note", "resolved"}
    assert [e["action"] for e in tables["audit_log"]] == ["patient.export"]

    # Nothing of Bart's is in Zelda's export, and the two share no row
    assert traces(json.dumps(zelda), BART_TRACES) == []
    assert traces(json.dumps(bart), ZELDA_TRACES) == []
    for name in personal:
        mine = {r["id"] for r in tables[name]}
        theirs = {r["id"] for r in bart["tables"][name]}
        assert not mine & theirs, name
    patient_id = row["id"]
    for name in ("contacts", "appointments", "events", "touch_points", "recovery_cases"):
        assert {r["patient_id"] for r in tables[name]} == {patient_id}, name


def test_export_command_writes_json_and_is_audited_with_counts_only(
        fortnight: Clinic, tmp_path: Path) -> None:
    result = cli_run(fortnight, "patient", "export", "P1")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["patient_id"] == "P1" and printed["tables"]["patients"][0]["last_name"] \
        == "Quartermaine"

    target = tmp_path / "zelda.json"
    result = cli_run(fortnight, "patient", "export", "P1", "--output", str(target))
    assert result.exit_code == 0, result.output
    written = json.loads(target.read_text(encoding="utf-8"))["tables"]
    assert written.pop("audit_log")[-1]["action"] == "patient.export"  # the first export
    assert written == {k: v for k, v in printed["tables"].items() if k != "audit_log"}

    with fortnight.db.transaction() as conn:
        entries = [e for e in audit.entries(conn) if e.action == "patient.export"
                   and e.actor.startswith("cli:") and e.actor != "cli:maya"]
    assert [(e.target, e.address, e.detail["to"]) for e in entries] == [
        ("patient:P1", "cli", "stdout"), ("patient:P1", "cli", "file")]
    assert entries[0].detail["rows"]["touch_points"] == len(printed["tables"]["touch_points"])
    assert traces(json.dumps([e.detail for e in entries]), ZELDA_TRACES) == []

    result = cli_run(fortnight, "patient", "export", "P404")
    assert result.exit_code == 1
    assert "no patient P404" in result.output and "Traceback" not in result.output


def _undo_erasure(data: dict[str, Any]) -> dict[str, Any]:
    """The report as it would be had the erasure not cancelled the pending messages."""
    for line in data["journeys"]:
        moved = line["cancelled"].pop(Reason.PATIENT_ERASED, 0)
        line["pending"] += moved
    return data


def test_erase_removes_every_trace_keeps_the_counts_and_is_audited(fortnight: Clinic) -> None:
    before_dump, before_report = dump(fortnight), report(fortnight)
    # her data was everywhere: the test below would catch a table erase forgot
    assert {table for table, text in before_dump.items() if traces(text, ZELDA_TRACES)} == {
        "patients", "contacts", "touch_points", "touch_point_history", "provider_events",
        "inbound_messages", "opt_outs", "recovery_cases", "case_events"}
    bart_before = export(fortnight, "P2")
    assert len(traces("\n".join(before_dump.values()), ZELDA_TRACES)) == len(ZELDA_TRACES)
    pending = [tp for tp in fortnight.touch_points(patient="P1")
               if tp.status == Status.PLANNED]
    assert pending  # the reminders of A2, still ahead

    result = cli_run(fortnight, "patient", "erase", "P1", "--yes")
    assert result.exit_code == 0, result.output
    assert f"{len(pending)} pending message(s) cancelled" in result.output

    after = dump(fortnight)
    for table, text in after.items():
        assert traces(text.replace(OPTED_OUT, ""), ZELDA_TRACES) == [], table
    # the opt-out of her address stays: it must hold if the address comes back
    assert OPTED_OUT in after["opt_outs"]
    # the same counts: only the pending messages moved, to cancelled (patient_erased)
    after_report = report(fortnight)
    erased = sum(line["cancelled"].get(Reason.PATIENT_ERASED, 0)
                 for line in after_report["journeys"])
    assert erased == len(pending)
    assert _undo_erasure(after_report) == before_report
    for tp in pending:
        [now] = [t for t in fortnight.touch_points(patient="P1") if t.id == tp.id]
        assert (now.status, now.reason) == (Status.CANCELLED, Reason.PATIENT_ERASED)
        assert fortnight.history(now)[-1].reason == Reason.PATIENT_ERASED
    # Bart is untouched
    bart_after = export(fortnight, "P2")
    assert bart_after["tables"] == bart_before["tables"]

    with fortnight.db.transaction() as conn:
        [entry] = [e for e in audit.entries(conn) if e.action == "patient.erase"]
        erased_at = conn.execute(select(patients.c.erased_at)
                                 .where(patients.c.external_id == "P1")).scalar()
    assert (entry.target, entry.address) == ("patient:P1", "cli")
    assert entry.detail["cancelled"] == len(pending)
    assert entry.detail["changed"]["patients"] == 1
    # off the waitlist, her preferences gone, her standing offer withdrawn
    assert entry.detail["changed"]["waitlist_entries"] == 1
    assert entry.detail["changed"]["slot_offers"] == 1
    assert "Dr. Lee" in export(fortnight, "P2")["tables"]["waitlist_entries"][0]["therapist"]
    [her_entry] = export(fortnight, "P1")["tables"]["waitlist_entries"]
    assert (her_entry["status"], her_entry["therapist"], her_entry["days"]) == (
        "withdrawn", "", [])
    assert traces(json.dumps(entry.detail), ZELDA_TRACES) == []
    assert erased_at == at("2026-11-06T12:00:00")

    # erasing again does nothing (and is not audited twice)
    result = cli_run(fortnight, "patient", "erase", "P1", "--yes")
    assert result.exit_code == 0, result.output
    assert "already erased on 2026-11-06 18:00 UTC" in result.output
    assert dump(fortnight) == after


def test_why_log_and_export_still_work_for_an_erased_patient(fortnight: Clinic) -> None:
    result = cli_run(fortnight, "patient", "erase", "P1", "--yes")
    assert result.exit_code == 0, result.output
    ids = [tp.id for tp in fortnight.touch_points(patient="P1")]

    for tp_id in ids:
        result = cli_run(fortnight, "why", str(tp_id))
        assert result.exit_code == 0, result.output
        assert traces(result.output, ZELDA_TRACES) == []
    result = cli_run(fortnight, "log", "--patient", "P1", "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == len(ids)
    assert traces(result.output, ZELDA_TRACES) == []
    cancelled = [tp.id for tp in fortnight.touch_points(patient="P1")
                 if tp.reason == Reason.PATIENT_ERASED]
    result = cli_run(fortnight, "why", str(cancelled[0]))
    assert "cancelled (patient_erased)" in result.output
    assert EXPLANATIONS[Reason.PATIENT_ERASED] in result.output

    exported = export(fortnight, "P1")
    assert exported["erased_at"] == "2026-11-06T18:00:00+00:00"
    assert traces(json.dumps(exported), ZELDA_TRACES) == []
    # (the opt-out of her address is kept, but nothing links it to her any more)
    assert exported["tables"]["opt_outs"] == []


def test_erase_asks_for_the_id_to_be_typed(fortnight: Clinic) -> None:
    result = cli_run(fortnight, "patient", "erase", "P1", input="P2\n")
    assert result.exit_code == 1
    assert "not erased" in result.output
    assert export(fortnight, "P1")["erased_at"] is None

    result = cli_run(fortnight, "patient", "erase", "P1", input="P1\n")
    assert result.exit_code == 0, result.output
    assert "Erased patient P1" in result.output
    assert export(fortnight, "P1")["erased_at"] is not None

    result = cli_run(fortnight, "patient", "erase", "P404", "--yes")
    assert result.exit_code == 1 and "no patient P404" in result.output


def test_erase_waits_for_a_message_being_sent(fortnight: Clinic) -> None:
    [tp] = [tp for tp in fortnight.touch_points(patient="P1")
            if tp.status == Status.PLANNED][:1]
    with fortnight.db.transaction() as conn:
        conn.execute(update(touch_points).where(touch_points.c.id == tp.id)
                     .values(status=Status.SENDING))
    result = cli_run(fortnight, "patient", "erase", "P1", "--yes")
    assert result.exit_code == 1
    assert "being sent right now" in result.output
    assert export(fortnight, "P1")["erased_at"] is None


def test_a_later_import_of_an_erased_patient_is_refused_for_their_rows_only(
        fortnight: Clinic) -> None:
    assert cli_run(fortnight, "patient", "erase", "P1", "--yes").exit_code == 0
    refusal = "patient P1 was erased on 2026-11-06; remove them from the export"

    with clock.travel_to(at("2026-11-07T09:00:00")):
        summary = fortnight.patients(patient("P3", first_name="Cleo"), patient("P1", **ZELDA))
        assert (summary.created, summary.updated, summary.rejected) == (1, 0, 1)
        assert [(p.line, p.message.startswith(refusal)) for p in summary.problems] == [
            (3, True)]
        summary = fortnight.appointments(
            appointment("A1", "P1", "2026-11-04T10:00:00" + CHICAGO, status="no_show"),
            appointment("A9", "P1", "2026-11-25T10:00:00" + CHICAGO),
            appointment("C9", "P3", "2026-11-25T11:00:00" + CHICAGO))
        assert (summary.created, summary.updated, summary.rejected) == (1, 0, 2)
        assert all(p.message.startswith(refusal) for p in summary.problems)
        summary = fortnight.contacts(contact("C1", "P1", first_name="Ottoline"),
                                     contact("C3", "P3", phone="(312) 555-0133"))
        assert (summary.created, summary.updated, summary.rejected) == (1, 0, 1)
    assert traces("\n".join(dump(fortnight).values()).replace(OPTED_OUT, ""),
                  ZELDA_TRACES) == []


def test_a_new_reason_explains_itself() -> None:
    assert "erased" in EXPLANATIONS[Reason.PATIENT_ERASED]


# --------------------------------------------------------------------------- retention


def test_retention_removes_only_older_message_text_in_batches_and_again_nothing(
        database_url: str, tmp_path: Path) -> None:
    clinic = Clinic(database_url, tmp_path)
    try:
        with clock.travel_to(at("2026-11-02T09:00:00")):
            clinic.patients(patient("P1", phone="(312) 555-0101"))
            clinic.tick()
        text_in(clinic, "2026-11-02T10:00:00", "+13125550101", "hello there", "SM1")
        with clock.travel_to(at("2026-11-20T09:00:00")):
            clinic.patients(patient("P2", phone="(312) 555-0102"))
            clinic.tick()
        text_in(clinic, "2026-11-20T10:00:00", "+13125550102", "hi again", "SM2")
        with clinic.db.transaction() as conn:
            sent = conn.execute(select(touch_points.c.id, touch_points.c.sent_at)
                                .where(touch_points.c.content.is_not(None))).all()
            for event_id, (tp_id, sent_at) in enumerate(sent):
                record_event(conn, ProviderEvent(
                    "twilio", f"E{event_id}", Kind.DELIVERED, "delivered", sent_at, tp_id,
                    raw={"To": "+1312555010x"}), sent_at)
        old = [tp_id for tp_id, sent_at in sent if sent_at < at("2026-11-10T00:00:00")]
        new = [tp_id for tp_id, sent_at in sent if sent_at >= at("2026-11-10T00:00:00")]
        assert old and new

        now = at("2026-11-25T03:30:00")
        nothing = patient_data.purge_message_bodies(clinic.db, None, now)
        assert nothing.total() == 0
        purged = patient_data.purge_message_bodies(clinic.db, timedelta(days=10), now,
                                                   batch_size=1)
        assert purged.as_dict() == {"touch_points": len(old), "inbound_messages": 1,
                                    "provider_events": len(old)}
        with clinic.db.transaction() as conn:
            content = dict(conn.execute(select(touch_points.c.id, touch_points.c.content)
                                        .where(touch_points.c.id.in_(old + new))).all())
            bodies = dict(conn.execute(select(inbound_messages.c.provider_message_id,
                                              inbound_messages.c.body)).all())
            payloads = [p for (p,) in conn.execute(select(provider_events.c.payload)
                                                   .order_by(provider_events.c.id))]
            statuses = {s for (s,) in conn.execute(select(touch_points.c.status)
                                                   .where(touch_points.c.id.in_(old)))}
        assert all(content[i] is None for i in old)
        assert all(content[i] for i in new)
        assert bodies == {"SM1": "", "SM2": "hi again"}
        assert payloads.count({}) == len(old) and len(payloads) == len(old) + len(new)
        assert statuses <= {Status.SENT, Status.DELIVERED}  # rows and statuses stay

        again = patient_data.purge_message_bodies(clinic.db, timedelta(days=10), now)
        assert again.total() == 0
    finally:
        clinic.close()


def test_the_daemon_housekeeping_applies_the_retention_setting(
        sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clinic = Clinic(sqlite_url, tmp_path, config_extra='\n[retention]\nmessage_bodies = "7d"\n')
    try:
        assert clinic.settings.retention.message_bodies == timedelta(days=7)
        with clock.travel_to(at("2026-11-02T09:00:00")):
            clinic.patients(patient("P1"))
            clinic.tick()
        sent = sum(1 for tp in clinic.touch_points() if tp.content)
        assert sent
        daemon = Daemon(clinic.settings, clinic.db, clinic.definitions,
                        {"sms": clinic.sms, "email": clinic.email}, lambda: clinic.definitions,
                        watch=False)
        with caplog.at_level(logging.INFO), clock.travel_to(at("2026-11-12T03:30:00")):
            daemon.housekeeping()
        assert not any(tp.content for tp in clinic.touch_points())
        assert f"removed the text of {sent} sent message(s)" in caplog.text
    finally:
        clinic.close()


@pytest.mark.parametrize("value", ["0", "off", "never"])
def test_retention_off_keeps_message_text_forever(value: str) -> None:
    settings = load_settings(None, {"retention.message_bodies": value}, environ={})
    assert settings.retention.message_bodies is None
    assert settings.describe()["retention.message_bodies"] == "off"
    default = load_settings(None, {}, environ={})
    assert default.retention.message_bodies == timedelta(days=365)


def test_an_erased_patient_lapses_no_more_and_leaves_the_referrer_digests(
        fortnight: Clinic) -> None:
    from datetime import date

    from sqlalchemy import insert, update

    from engine import patient_data
    from engine.referrals import digests
    from engine.store.records import patient_by_external_id
    from engine.store.schema import referrers

    def names(conn: Any) -> list[str]:
        return [line.name for digest in
                digests(conn, date(2026, 11, 1), "America/Chicago").values()
                for line in digest.lines.values()]

    with clock.travel_to(at("2026-11-06T13:00:00")), fortnight.db.transaction() as conn:
        referrer = conn.execute(insert(referrers).values(
            external_id="DR1", name="Lakeside Orthopedics", contact_name="", email=None,
            fax=None, row_hash="x", source="test", created_at=clock.now(),
            updated_at=clock.now()).returning(referrers.c.id)).scalar_one()
        conn.execute(update(patients).where(patients.c.external_id == "P1")
                     .values(referrer_id=referrer))
        assert names(conn) == ["Zelda Quartermaine"]  # (seen in November)
        patient_data.erase(conn, "P1", clock.now())
        erased = patient_by_external_id(conn, "P1")
        assert erased is not None and erased.removed_at is not None  # planning leaves them out
        assert names(conn) == []
    with clock.travel_to(at("2027-03-01T12:00:00")):  # long after their last visit
        fortnight.runner.sweep_lapses()
        fortnight.tick()
    assert fortnight.touch_points(patient="P1", journey="win-back") == []

"""Waitlist offers (engine/waitlist_offers.py), on SQLite and PostgreSQL: a cancelled
future visit frees a slot, offered in waves to matching waiting patients (who waited
longest first), never to the wrong ones, never at night where they are; offers expire;
an offer text whose slot closed is not sent (slot_closed).

Practice timezone: America/Chicago. Monday 2026-11-02 15:00 UTC is 09:00 CST.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import select

from engine import clock, waitlist
from engine.outcomes import EXPLANATIONS, Reason, Status
from engine.store.schema import patients, slot_offers, slots, waitlist_entries
from engine.waitlist import Preferences
from tests.support import Clinic, appointment, patient

MONDAY = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)  # 09:00 CST
VISIT = "2026-11-04T10:00:00-06:00"  # Wednesday 10:00 CST
VISIT_AT = datetime(2026, 11, 4, 16, 0, tzinfo=UTC)


def phone(n: int) -> str:
    return f"(312) 555-01{n:02d}"


def person(n: int, **fields: str) -> dict[str, str]:
    return patient(f"P{n}", **{"first_name": f"Pat{n}", "phone": phone(n), **fields})


@pytest.fixture
def clinic(database_url: str, tmp_path: Path) -> Iterator[Clinic]:
    practice = Clinic(database_url, tmp_path)
    yield practice
    practice.close()


def pid(clinic: Clinic, external_id: str) -> int:
    with clinic.db.transaction() as conn:
        return int(conn.execute(select(patients.c.id)
                                .where(patients.c.external_id == external_id)).scalar_one())


ANY = Preferences()


def wait(clinic: Clinic, *numbers: int, preferences: Preferences = ANY,
         start: datetime = MONDAY - timedelta(days=10)) -> None:
    """Put patients on the waitlist, the first listed waiting longest."""
    for i, n in enumerate(numbers):
        patient_id = pid(clinic, f"P{n}")
        with clinic.db.transaction() as conn:
            waitlist.put_entry(conn, patient_id, preferences, source="test",
                               now=start + timedelta(hours=i))


def cancel_visit(clinic: Clinic, number: int = 1, start: str = VISIT) -> None:
    clinic.appointments(appointment(f"A{number}", f"P{number}", start, status="cancelled"))


def offers(clinic: Clinic) -> list[Any]:
    with clinic.db.transaction() as conn:
        return list(conn.execute(select(slot_offers, patients.c.external_id)
                                 .join(patients, patients.c.id == slot_offers.c.patient_id)
                                 .order_by(slot_offers.c.id)))


def the_slot(clinic: Clinic) -> Any:
    with clinic.db.transaction() as conn:
        return conn.execute(select(slots)).one()


def offer_texts(clinic: Clinic) -> list[Any]:
    return [m for m in clinic.sms.sent if "Reply YES" in m.body or "Responda SI" in m.body]


def setup_practice(clinic: Clinic, *extra: dict[str, str]) -> None:
    with freeze_time(MONDAY - timedelta(days=20)):
        clinic.patients(*(person(n) for n in range(1, 7)), *extra)
        clinic.appointments(appointment("A1", "P1", VISIT))
        clinic.tick()


# --------------------------------------------------------------------------- waves


def test_a_cancelled_future_visit_is_offered_in_waves_longest_waiting_first(
        clinic: Clinic) -> None:
    setup_practice(clinic)
    wait(clinic, 1, 5, 2, 3, 4, 6)  # P1 freed the slot: never offered it back
    with freeze_time(MONDAY):
        cancel_visit(clinic)
        clinic.tick()
    slot = the_slot(clinic)
    assert (slot.status, slot.source, slot.waves) == ("open", "cancellation", 1)
    assert slot.freed_by_patient_id == pid(clinic, "P1")
    assert (slot.therapist, slot.duration_minutes) == ("Maya Chen, DPT", 60)
    assert [o.external_id for o in offers(clinic)] == ["P5", "P2", "P3"]
    first = offers(clinic)[0]
    assert first.wave == 1 and first.status == "offered"
    assert first.expires_at.replace(tzinfo=UTC) == MONDAY + timedelta(hours=2)
    texts = offer_texts(clinic)
    assert len(texts) == 3
    assert "Wed" in texts[0].body and "10:00" in texts[0].body, texts[0].body
    tp = clinic.one("waitlist", "offer", patient="P5")
    assert tp.anchor == f"slot:{slot.id}" and tp.status == Status.SENT
    with freeze_time(MONDAY + timedelta(minutes=5)):
        clinic.tick()  # not yet the next wave
    assert len(offers(clinic)) == 3
    with freeze_time(MONDAY + timedelta(minutes=10)):
        clinic.tick()
    assert [o.external_id for o in offers(clinic)] == ["P5", "P2", "P3", "P4", "P6"]
    assert {o.wave for o in offers(clinic)[3:]} == {2}
    assert the_slot(clinic).waves == 2
    with freeze_time(MONDAY + timedelta(minutes=20)):
        clinic.tick()  # nobody left: no one is offered twice
    assert len(offers(clinic)) == 5 and len(offer_texts(clinic)) == 5


def test_a_past_visit_cancelled_frees_no_slot(clinic: Clinic) -> None:
    setup_practice(clinic)
    wait(clinic, 2)
    with freeze_time(VISIT_AT + timedelta(hours=1)):
        cancel_visit(clinic)
        clinic.tick()
    with clinic.db.transaction() as conn:
        assert conn.execute(select(slots)).all() == []


def test_never_offered_to_the_wrong_patients(clinic: Clinic) -> None:
    setup_practice(clinic, person(7, sms_consent="no"), person(8, phone=""),
                   person(9))
    with freeze_time(MONDAY - timedelta(days=20)):
        # P2 has a visit the same local day (Wednesday afternoon), P3 the next day
        clinic.appointments(appointment("A1", "P1", VISIT),
                            appointment("A2", "P2", "2026-11-04T16:00:00-06:00"),
                            appointment("A3", "P3", "2026-11-05T09:00:00-06:00"))
    from engine.store.records import add_opt_out
    with clinic.db.transaction() as conn:
        add_opt_out(conn, "sms", "+13125550104", "all", "sms reply", "STOP", MONDAY)
        conn.execute(patients.update().where(patients.c.external_id == "P5")
                     .values(removed_at=MONDAY))
        conn.execute(patients.update().where(patients.c.external_id == "P6")
                     .values(erased_at=MONDAY))
    wait(clinic, 2, 3, 4, 5, 7, 8, 6)
    wait(clinic, 9, preferences=Preferences(days=("mon",)))  # Wednesday does not suit
    with freeze_time(MONDAY):
        cancel_visit(clinic)
        clinic.tick()
    assert [o.external_id for o in offers(clinic)] == ["P3"]


def test_no_offer_at_night_where_the_patient_is_a_later_wave_reaches_them(
        clinic: Clinic) -> None:
    setup_practice(clinic, person(7, timezone="Asia/Tokyo"))  # 00:00 there at 09:00 CST
    wait(clinic, 7, 2)
    with freeze_time(MONDAY):
        cancel_visit(clinic)
        clinic.tick()
    assert [o.external_id for o in offers(clinic)] == ["P2"]
    with freeze_time(MONDAY + timedelta(hours=8)):  # 08:00 in Tokyo
        clinic.tick()
    assert [o.external_id for o in offers(clinic)] == ["P2", "P7"]


def test_offers_expire_and_a_slot_that_started_expires(clinic: Clinic) -> None:
    setup_practice(clinic)
    wait(clinic, 2)
    with freeze_time(MONDAY):
        cancel_visit(clinic)
        clinic.tick()
    with freeze_time(MONDAY + timedelta(hours=2)):
        clinic.tick()
    assert [o.status for o in offers(clinic)] == ["expired"]
    assert the_slot(clinic).status == "open"
    with freeze_time(VISIT_AT):
        clinic.tick()
    assert the_slot(clinic).status == "expired"


def test_an_offer_text_whose_slot_closed_is_not_sent(clinic: Clinic) -> None:
    setup_practice(clinic)
    wait(clinic, 2)
    with freeze_time(MONDAY):
        cancel_visit(clinic)
        clinic.runner.plan_pending()
        clinic.runner.offer_slots()
        clinic.runner.plan_pending()
        slot_id = the_slot(clinic).id
        with clinic.db.transaction() as conn:
            waitlist.close_slot(conn, slot_id, now=MONDAY)
        clinic.tick()
    tp = clinic.one("waitlist", "offer", patient="P2")
    assert (tp.status, tp.reason) == (Status.CANCELLED, Reason.SLOT_CLOSED)
    assert offer_texts(clinic) == []
    assert "slot" in EXPLANATIONS[Reason.SLOT_CLOSED]


def test_waiting_entries_only(clinic: Clinic) -> None:
    setup_practice(clinic)
    wait(clinic, 2, 3)
    p2 = pid(clinic, "P2")
    with clinic.db.transaction() as conn:
        waitlist.withdraw_entry(conn, p2, now=MONDAY)
        assert conn.execute(select(waitlist_entries.c.status)
                            .where(waitlist_entries.c.patient_id == p2)).scalar() == "withdrawn"
    with freeze_time(MONDAY):
        cancel_visit(clinic)
        clinic.tick()
    assert [o.external_id for o in offers(clinic)] == ["P3"]


# --------------------------------------------------------------------------- yes claims


def e164(n: int) -> str:
    return f"+131255501{n:02d}"


def reply(clinic: Clinic, n: int, body: str, message_id: str | None = None,
          settings: Any = None) -> Any:
    from engine.replies import record_inbound, send_outgoing
    settings = settings or clinic.settings
    with clinic.db.transaction() as conn:
        handled = record_inbound(conn, settings, provider="twilio",
                                 message_id=message_id or f"SM-{n}-{body}",
                                 from_number=e164(n), to_number="+13125550199", body=body,
                                 now=clock.now())
    send_outgoing(clinic.db, clinic.definitions, settings,
                  {"sms": clinic.sms, "email": clinic.email}, handled, body, e164(n))
    return handled


def texts_to(clinic: Clinic, n: int) -> list[str]:
    return [m.body for m in clinic.sms.sent if m.to == e164(n)]


def offered_slot(clinic: Clinic, *waiting: int) -> None:
    setup_practice(clinic)
    wait(clinic, *waiting)
    with freeze_time(MONDAY):
        cancel_visit(clinic)
        clinic.tick()


def entry_status(clinic: Clinic, n: int) -> str:
    patient_id = pid(clinic, f"P{n}")
    with clinic.db.transaction() as conn:
        return str(conn.execute(select(waitlist_entries.c.status)
                                .where(waitlist_entries.c.patient_id == patient_id)).scalar())


@pytest.mark.parametrize("body", ["YES", "y", "Sí", "si", "ok", "Yes please!",
                                  "I'll take it"])
def test_a_yes_in_english_or_spanish_claims_the_slot(clinic: Clinic, body: str) -> None:
    offered_slot(clinic, 2, 3, 4)
    with freeze_time(MONDAY + timedelta(minutes=3)):
        handled = reply(clinic, 3, body)
    assert handled.intent == "waitlist_yes" and handled.claim.outcome == "won"
    slot = the_slot(clinic)
    assert (slot.status, slot.claimed_by_patient_id) == ("claimed", pid(clinic, "P3"))
    assert {o.external_id: o.status for o in offers(clinic)} == {
        "P2": "withdrawn", "P3": "claimed", "P4": "withdrawn"}
    assert entry_status(clinic, 3) == "claimed" and entry_status(clinic, 2) == "waiting"
    assert "staff member will confirm" in texts_to(clinic, 3)[-1]


def test_a_later_yes_is_told_it_was_taken_and_stays_on_the_list(clinic: Clinic) -> None:
    offered_slot(clinic, 2, 3)
    with freeze_time(MONDAY + timedelta(minutes=3)):
        assert reply(clinic, 2, "yes").claim.outcome == "won"
        late = reply(clinic, 3, "YES")
    assert late.claim.outcome == "taken"
    assert "just taken" in texts_to(clinic, 3)[-1]
    assert "still on the list" in texts_to(clinic, 3)[-1]
    assert {o.external_id: o.status for o in offers(clinic)} == {"P2": "claimed",
                                                                "P3": "taken"}
    assert entry_status(clinic, 3) == "waiting"
    assert the_slot(clinic).claimed_by_patient_id == pid(clinic, "P2")
    with freeze_time(MONDAY + timedelta(minutes=30)):
        clinic.tick()  # a claimed slot has no more waves
    assert len(offers(clinic)) == 2


def test_a_claim_cancels_the_unsent_offer_texts(clinic: Clinic) -> None:
    setup_practice(clinic)
    wait(clinic, 2, 3)
    with freeze_time(MONDAY):
        cancel_visit(clinic)
        clinic.runner.plan_pending()
        clinic.runner.offer_slots()
        clinic.runner.plan_pending()  # planned, not sent yet
        assert reply(clinic, 2, "yes").claim.outcome == "won"
        clinic.tick()
    tp = clinic.one("waitlist", "offer", patient="P3")
    assert (tp.status, tp.reason) == (Status.CANCELLED, Reason.SLOT_CLOSED)


def test_a_yes_without_a_standing_offer_confirms_the_reminder_as_before(
        clinic: Clinic) -> None:
    offered_slot(clinic, 2)
    with freeze_time(MONDAY + timedelta(hours=3)):  # P2's offer expired
        clinic.tick()
        handled = reply(clinic, 2, "yes")
    assert handled.intent != "waitlist_yes" and handled.claim is None
    assert the_slot(clinic).status == "open"


def test_auto_confirm_books_it_at_once(database_url: str, tmp_path: Path) -> None:
    clinic = Clinic(database_url, tmp_path, config_extra="\n[waitlist]\nauto_confirm = true\n")
    try:
        offered_slot(clinic, 2)
        with freeze_time(MONDAY + timedelta(minutes=1)):
            assert reply(clinic, 2, "yes").claim.booked
        assert the_slot(clinic).status == "booked"
        assert "booked" in texts_to(clinic, 2)[-1]
    finally:
        clinic.close()


def test_spanish_offer_and_replies(clinic: Clinic) -> None:
    with freeze_time(MONDAY - timedelta(days=20)):
        clinic.patients(person(7, language="es"), person(8, language="es"))
    offered_slot(clinic, 7, 8)
    assert any("Responda SI" in text for text in texts_to(clinic, 7))
    with freeze_time(MONDAY + timedelta(minutes=1)):
        reply(clinic, 7, "sí")
        reply(clinic, 8, "si")
    assert "personal" in texts_to(clinic, 7)[-1]
    assert "sigue en la lista" in texts_to(clinic, 8)[-1]


@pytest.mark.parametrize("attempt", range(2))
def test_two_simultaneous_yeses_on_two_workers_one_winner(clinic: Clinic, database_url: str,
                                                         attempt: int) -> None:
    import threading

    from engine.replies import record_inbound
    from engine.store.database import open_database
    offered_slot(clinic, 2, 3)
    url = database_url
    barrier = threading.Barrier(2)
    outcomes: dict[int, str] = {}
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        db = open_database(url)  # a worker of its own: its own connections
        try:
            barrier.wait()
            with db.transaction() as conn:
                handled = record_inbound(conn, clinic.settings, provider="twilio",
                                         message_id=f"SM-race-{n}", from_number=e164(n),
                                         to_number="+13125550199", body="YES",
                                         now=MONDAY + timedelta(minutes=2))
            outcomes[n] = handled.claim.outcome
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.dispose()

    threads = [threading.Thread(target=worker, args=(n,)) for n in (2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sorted(outcomes.values()) == ["taken", "won"]
    winner = next(n for n, outcome in outcomes.items() if outcome == "won")
    assert the_slot(clinic).claimed_by_patient_id == pid(clinic, f"P{winner}")
    assert sorted(o.status for o in offers(clinic)) == ["claimed", "taken"]


def test_a_claim_goes_back_to_the_practice(database_url: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from engine import outbound_webhooks
    from engine.store.schema import webhook_messages
    from tests import support
    monkeypatch.setattr(support, "PRACTICE_TOML", support.PRACTICE_TOML.replace(
        "[practice.links]", 'staff_email = "desk@riverside.example"\n\n[practice.links]', 1))
    clinic = Clinic(database_url, tmp_path)
    try:
        with clinic.db.transaction() as conn:
            outbound_webhooks.add_endpoint(conn, "https://emr.example/hooks", ["slot.claimed"],
                                           MONDAY)
        offered_slot(clinic, 2)
        with freeze_time(MONDAY + timedelta(minutes=4)):
            reply(clinic, 2, "yes")
        with clinic.db.transaction() as conn:
            [message] = conn.execute(select(webhook_messages)).all()
        assert message.type == "slot.claimed"
        data = message.payload["data"]
        slot = the_slot(clinic)
        assert data["slot_id"] == slot.id and data["patient_id"] == "P2"
        assert data["status"] == "claimed" and data["start_at"].startswith("2026-11-04T16:00")
        text = str(message.payload)
        assert "Pat2" not in text and "555" not in text
        [alert] = [m for m in clinic.email.sent if m.to == "desk@riverside.example"]
        assert "Pat2" in alert.subject and "claimed" in alert.subject
    finally:
        clinic.close()


# --------------------------------------------------------------------------- report


def test_the_report_counts_freed_offered_filled_and_the_value_recovered(
        database_url: str, tmp_path: Path) -> None:
    from engine.report import build_report, waitlist_lines
    clinic = Clinic(database_url, tmp_path, config_extra="")
    try:
        settings = clinic.settings.model_copy(update={
            "practice": clinic.settings.practice.model_copy(update={"visit_price": 120})})
        offered_slot(clinic, 2, 3)
        with freeze_time(MONDAY - timedelta(days=20)):  # a second freed slot, not taken
            clinic.appointments(appointment("A9", "P6", "2026-11-06T10:00:00-06:00"))
        with freeze_time(MONDAY + timedelta(minutes=1)):
            clinic.appointments(appointment("A9", "P6", "2026-11-06T10:00:00-06:00",
                                            status="cancelled"))
            clinic.tick()
        with freeze_time(MONDAY + timedelta(minutes=30)):
            reply(clinic, 2, "yes")
        with clinic.db.transaction() as conn:
            data = build_report(conn, clinic.definitions, MONDAY - timedelta(days=1),
                                MONDAY + timedelta(hours=1), settings=settings)
            plain = build_report(conn, clinic.definitions, MONDAY - timedelta(days=1),
                                 MONDAY + timedelta(hours=1))
        section = data["waitlist"]
        assert (section["freed"], section["offered"], section["filled"]) == (2, 2, 1)
        assert section["median_minutes_to_fill"] == 29.0  # the latest offer: slot 2
        assert section["visits_recovered"] == 1
        assert section["value_recovered"] == "120" and section["currency"] == "USD"
        assert plain["waitlist"]["value_recovered"] is None
        text = "\n".join(waitlist_lines(section))
        assert "filled 1" in text and "29m" in text and "worth 120 USD" in text
        # `touchpoint report` prints it, valued with practice.visit_price
        from click.testing import CliRunner

        from engine.cli import cli
        printed = CliRunner().invoke(cli, [
            "--config", str(clinic.config), "--db", clinic.settings.database_url,
            "--schedules", str(clinic.settings.schedules_dir),
            "--templates", str(clinic.settings.templates_dir),
            "--now", (MONDAY + timedelta(hours=1)).isoformat(), "report",
            "--since", "2026-11-01"], env={"TOUCHPOINT_VISIT_PRICE": "120"})
        assert printed.exit_code == 0, printed.output
        assert "Waitlist (freed slots)" in printed.output
        assert "visits recovered: 1, worth 120 USD" in printed.output
    finally:
        clinic.close()


def test_a_slot_closed_while_a_batch_sends_stops_the_offers_not_yet_sent(
        clinic: Clinic) -> None:
    setup_practice(clinic)
    wait(clinic, 2, 3, 4)
    closed: list[str] = []

    def close_during_the_first_send(message: Any) -> None:
        if closed or "Reply YES" not in message.body:
            return None
        slot_id = the_slot(clinic).id
        with clinic.db.transaction() as conn:  # staff withdraw it meanwhile
            closed.append(waitlist.close_slot(conn, slot_id, now=MONDAY))
        return None

    clinic.sms.fail_when(close_during_the_first_send)
    with freeze_time(MONDAY):
        cancel_visit(clinic)
        clinic.tick()
    assert closed == ["changed"]
    statuses = sorted((tp.status, tp.reason) for tp in clinic.touch_points(journey="waitlist"))
    assert statuses == sorted([(Status.SENT, None), (Status.CANCELLED, Reason.SLOT_CLOSED),
                               (Status.CANCELLED, Reason.SLOT_CLOSED)]), statuses

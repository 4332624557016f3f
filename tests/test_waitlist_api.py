"""The waitlist and slots over the REST API (engine/api/waitlist.py) on SQLite and
PostgreSQL: entries put, read and withdrawn with the CSV's checks; slots opened
(idempotent by external_id), confirmed and withdrawn; problem+json refusals; audit; wake.

Practice timezone: America/Chicago; the clock is pinned on Monday 2026-11-02 09:00 CST.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from engine import clock, waitlist
from engine.store.schema import patients, slots, waitlist_entries
from tests.test_api import MONDAY_9AM, PATIENT, PROBLEM, Api
from tests.test_docs import ROOT, _blocks, _curls

TOMORROW_9AM = "2026-11-03T09:00:00-06:00"
SLOT: dict[str, Any] = {"start_at": TOMORROW_9AM, "duration_minutes": 45,
                        "therapist": "Maya Chen, DPT", "location": "Main St",
                        "visit_type": "Follow-up"}
PREFS: dict[str, Any] = {"days": "mon-wed", "time_from": "8:00 am", "time_until": "12:00",
                         "therapist": "Maya Chen, DPT"}


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[Api]:
    rig = Api(database_url, tmp_path)
    assert rig.put("/patients/P1", PATIENT).status_code == 201
    yield rig
    rig.close()


def call(api: Api, method: str, path: str, body: Any = None, key: str | None = None) -> Any:
    return api.client.request(method, f"/api/v1{path}", json=body,
                              headers={"Authorization": f"Bearer {key or api.write}"})


def claim(api: Api, slot_id: int, patient_id: str = "P1") -> None:
    """What the offer engine does when a patient's yes wins (not this module's job)."""
    with api.clinic.db.transaction() as conn:
        who = conn.execute(select(patients.c.id)
                           .where(patients.c.external_id == patient_id)).scalar_one()
        conn.execute(slots.update().where(slots.c.id == slot_id).values(
            status="claimed", claimed_by_patient_id=who, claimed_at=MONDAY_9AM))


# --------------------------------------------------------------------------- entries


def test_put_creates_the_entry_and_the_same_put_again_changes_nothing(api: Api) -> None:
    made = call(api, "PUT", "/waitlist/P1", PREFS)
    assert made.status_code == 201, made.text
    assert made.json() == {
        "patient_id": "P1", "status": "waiting", "days": ["mon", "tue", "wed"],
        "time_from": "08:00", "time_until": "12:00", "therapist": "Maya Chen, DPT",
        "location": "", "visit_type": "", "earliest": None, "latest": None,
        "since": made.json()["since"], "updated_at": None,
        "stored_at": made.json()["stored_at"], "result": "created"}
    before = api.snapshot()
    again = call(api, "PUT", "/waitlist/P1", {**PREFS, "days": ["mon", "tue", "wed"]})
    assert (again.status_code, again.json()["result"]) == (200, "unchanged")
    assert api.snapshot() == before
    changed = call(api, "PUT", "/waitlist/P1", {"days": "fri"})
    assert (changed.status_code, changed.json()["result"]) == (200, "updated")
    got = api.get("/waitlist/P1", key=api.write)
    assert got.status_code == 200 and got.json()["days"] == ["fri"]
    assert got.json()["therapist"] == ""


def test_every_bad_field_is_named_and_nothing_is_written(api: Api) -> None:
    before = api.snapshot()
    bad = call(api, "PUT", "/waitlist/P1", {"days": "mon,funday", "time_from": "25:00",
                                             "earliest": "2026-12-01",
                                             "latest": "2026-11-01"})
    assert bad.status_code == 422
    assert bad.headers["content-type"] == PROBLEM
    errors = {e["field"]: e["detail"] for e in bad.json()["errors"]}
    assert set(errors) == {"days", "time_from", "latest"}
    assert errors["days"].startswith("days 'funday' is not a weekday")
    assert api.snapshot() == before
    unknown = call(api, "PUT", "/waitlist/P1", {"shoe_size": 9})
    assert [e["field"] for e in unknown.json()["errors"]] == ["shoe_size"]
    other = call(api, "PUT", "/waitlist/P1", {"patient_id": "P2"})
    assert [e["field"] for e in other.json()["errors"]] == ["patient_id"]


def test_an_unknown_patient_is_404_and_a_missing_entry_is_404(api: Api) -> None:
    nobody = call(api, "PUT", "/waitlist/P9", PREFS)
    assert (nobody.status_code, nobody.headers["content-type"]) == (404, PROBLEM)
    assert "PUT /api/v1/patients/P9 first" in nobody.json()["detail"]
    assert api.get("/waitlist/P1", key=api.write).status_code == 404
    assert call(api, "DELETE", "/waitlist/P1").status_code == 404
    assert api.rows(waitlist_entries) == []


def test_delete_withdraws_and_a_put_brings_the_patient_back(api: Api) -> None:
    call(api, "PUT", "/waitlist/P1", PREFS)
    gone = call(api, "DELETE", "/waitlist/P1")
    assert (gone.status_code, gone.json()["result"], gone.json()["status"]) == (
        200, "withdrawn", "withdrawn")
    assert call(api, "DELETE", "/waitlist/P1").json()["result"] == "unchanged"
    back = call(api, "PUT", "/waitlist/P1", PREFS)
    assert (back.status_code, back.json()["result"], back.json()["status"]) == (
        200, "updated", "waiting")


def test_an_older_update_is_a_409_that_changes_nothing(api: Api) -> None:
    newer = call(api, "PUT", "/waitlist/P1", {**PREFS, "updated_at": "2026-11-02T15:00:00Z"})
    assert newer.json()["updated_at"] == "2026-11-02T15:00:00+00:00"
    before = api.snapshot()
    late = call(api, "PUT", "/waitlist/P1", {"days": "fri",
                                              "updated_at": "2026-11-02T14:00:00Z"})
    assert (late.status_code, late.headers["content-type"]) == (409, PROBLEM)
    assert late.json()["type"] == "urn:touchpoint:problem:stale-update"
    assert late.json()["current"]["days"] == ["mon", "tue", "wed"]
    assert api.snapshot() == before
    later = call(api, "PUT", "/waitlist/P1", {**PREFS, "updated_at": "2026-11-02T16:00:00Z"})
    assert (later.json()["result"], later.json()["updated_at"]) == (
        "unchanged", "2026-11-02T16:00:00+00:00")
    assert api.rows(waitlist_entries)[0].source_updated_at == datetime(2026, 11, 2, 16,
                                                                        tzinfo=UTC)


def test_the_key_needs_write_records_and_each_request_is_audited(api: Api) -> None:
    assert call(api, "PUT", "/waitlist/P1", PREFS, key=api.read).status_code == 403
    assert api.client.put("/api/v1/waitlist/P1", json=PREFS).status_code == 401
    call(api, "PUT", "/waitlist/P1", PREFS)
    call(api, "PUT", "/waitlist/P1", {"days": "someday"})
    found = [(e.actor, e.action, e.target, e.detail) for e in api.audit()
             if e.action.startswith("api.waitlist")]
    assert found == [
        ("api-key:emr", "api.waitlist.put", "patient:P1", {"result": "created"}),
        ("api-key:emr", "api.waitlist.put", "patient:P1",
         {"status": 422, "refused": "invalid-fields", "fields": ["days"]})]


# --------------------------------------------------------------------------- slots


def test_a_slot_is_opened_with_its_location_and_read_back(api: Api) -> None:
    made = call(api, "POST", "/slots", SLOT)
    assert made.status_code == 201, made.text
    body = made.json()
    assert made.headers["location"] == f"/api/v1/slots/{body['id']}"
    assert (body["status"], body["start_at"], body["source"], body["waves"]) == (
        "open", "2026-11-03T09:00:00-06:00", "api", 0)
    assert body["claimed_by_patient_id"] is None
    got = api.get(f"/slots/{body['id']}", key=api.write)
    assert got.status_code == 200 and got.json() == body
    missing = api.get("/slots/99999", key=api.write)
    assert (missing.status_code, missing.headers["content-type"]) == (404, PROBLEM)


def test_a_slot_in_the_past_or_without_an_offset_is_422(api: Api) -> None:
    past = call(api, "POST", "/slots", {**SLOT, "start_at": "2026-11-02T08:00:00-06:00"})
    assert past.status_code == 422
    assert [e["field"] for e in past.json()["errors"]] == ["start_at"]
    naive = call(api, "POST", "/slots", {**SLOT, "start_at": "2026-11-03T09:00:00"})
    assert [e["field"] for e in naive.json()["errors"]] == ["start_at"]
    zero = call(api, "POST", "/slots", {**SLOT, "duration_minutes": 0})
    assert [e["field"] for e in zero.json()["errors"]] == ["duration_minutes"]
    assert api.rows(slots) == []


def test_the_same_external_id_is_200_when_the_same_and_409_when_different(api: Api) -> None:
    first = call(api, "POST", "/slots", {**SLOT, "external_id": "S-1"})
    assert first.status_code == 201
    same = call(api, "POST", "/slots", {**SLOT, "external_id": "S-1",
                                         "start_at": "2026-11-03T15:00:00Z"})
    assert (same.status_code, same.json()["id"]) == (200, first.json()["id"])
    assert "location" not in same.headers
    moved = call(api, "POST", "/slots", {**SLOT, "external_id": "S-1",
                                          "start_at": "2026-11-03T10:00:00-06:00"})
    assert (moved.status_code, moved.headers["content-type"]) == (409, PROBLEM)
    assert moved.json()["type"] == "urn:touchpoint:problem:slot-exists"
    assert moved.json()["current"]["id"] == first.json()["id"]
    assert len(api.rows(slots)) == 1


def test_confirm_and_withdraw_follow_the_slots_rules(api: Api) -> None:
    slot_id = call(api, "POST", "/slots", SLOT).json()["id"]
    early = call(api, "POST", f"/slots/{slot_id}/confirm")
    assert (early.status_code, early.headers["content-type"]) == (409, PROBLEM)
    assert early.json()["type"] == "urn:touchpoint:problem:slot-transition-refused"
    assert early.json()["slot_status"] == "open"
    assert early.json()["detail"] == f"slot {slot_id} is open: only a claimed slot can be " \
        "confirmed"
    claim(api, slot_id)
    assert api.get(f"/slots/{slot_id}", key=api.write).json()["claimed_by_patient_id"] == "P1"
    booked = call(api, "POST", f"/slots/{slot_id}/confirm")
    assert (booked.status_code, booked.json()["status"], booked.json()["result"]) == (
        200, "booked", "changed")
    assert booked.json()["claimed_by_patient_id"] == "P1"
    assert call(api, "POST", f"/slots/{slot_id}/confirm").json()["result"] == "unchanged"
    refused = call(api, "POST", f"/slots/{slot_id}/withdraw")
    assert (refused.status_code, refused.json()["slot_status"]) == (409, "booked")
    assert refused.json()["detail"] == f"slot {slot_id} is booked: only an open or claimed " \
        "slot can be withdrawn"

    other = call(api, "POST", "/slots", SLOT).json()["id"]
    closed = call(api, "POST", f"/slots/{other}/withdraw")
    assert (closed.status_code, closed.json()["status"]) == (200, "closed")
    assert call(api, "POST", f"/slots/{other}/withdraw").json()["result"] == "unchanged"
    assert call(api, "POST", "/slots/99999/withdraw").status_code == 404
    actions = [(e.action, e.detail) for e in api.audit() if e.action.startswith("api.slot.")]
    assert ("api.slot.confirm", {"status": 409, "refused": "slot-transition-refused"}) \
        in actions
    assert ("api.slot.confirm", {"result": "changed"}) in actions


def test_opening_a_slot_wakes_the_daemons_and_a_refusal_does_not(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    woken: list[str] = []
    monkeypatch.setattr("engine.wake.notify", lambda database: woken.append(database.url))
    call(api, "POST", "/slots", {**SLOT, "external_id": "S-1"})
    assert woken == [api.clinic.db.url]
    call(api, "POST", "/slots", {**SLOT, "external_id": "S-1"})  # the same: nothing new
    call(api, "POST", "/slots", {**SLOT, "start_at": "2026-11-01T09:00:00-06:00"})
    assert len(woken) == 1
    call(api, "PUT", "/waitlist/P1", PREFS)
    assert len(woken) == 2


# --------------------------------------------------------------------------- docs


def test_the_docs_waitlist_curl_examples_answer_as_shown(database_url: str,
                                                          tmp_path: Path) -> None:
    """docs/api.md's waitlist examples, run through the API (volatile times aside)."""
    [block] = _blocks((ROOT / "docs" / "api.md").read_text("utf-8"),
                      "The waitlist and freed slots")
    requests = _curls(block)
    assert [(m, p) for m, p, _, _ in requests] == [
        ("PUT", "/api/v1/waitlist/P1004"), ("POST", "/api/v1/slots"),
        ("POST", "/api/v1/slots/7/confirm"), ("POST", "/api/v1/slots/7/withdraw")]
    rig = Api(database_url, tmp_path)
    try:
        clock.set_now(datetime(2026, 12, 5, 12, 11, 42, tzinfo=UTC))
        assert rig.put("/patients/P1004", PATIENT).status_code == 201
        with rig.clinic.db.transaction() as conn:  # (slots 1-6, withdrawn: the next is 7)
            for _ in range(6):
                slot_id = waitlist.open_slot(conn, waitlist.NewSlot(
                    clock.now() + timedelta(days=1), 30), source="api", now=clock.now())
                assert slot_id is not None
                waitlist.close_slot(conn, slot_id, now=clock.now())
        volatile = {"since", "stored_at", "opened_at", "claimed_at", "booked_at",
                    "closed_at"}
        for method, path, body, answer in requests:
            if path.endswith("/confirm"):
                claim(rig, 7, "P1004")
            got = call(rig, method, path.removeprefix("/api/v1"), body)
            status = int(answer.split()[1]) if answer.startswith("HTTP/") else None
            shown = answer[answer.index("{"):]
            if status is not None:
                assert got.status_code == status, got.text
            if "…" in shown:
                assert got.status_code == 200
                assert '"status":"booked"' in shown and got.json()["status"] == "booked"
                assert got.json()["claimed_by_patient_id"] == "P1004"
                continue
            documented = json.loads(shown)
            assert {k: v for k, v in got.json().items() if k not in volatile} == {
                k: v for k, v in documented.items() if k not in volatile}
            if "location:" in answer:
                assert got.headers["location"] == "/api/v1/slots/7"
    finally:
        rig.close()


def test_a_claimed_entry_put_again_unchanged_stays_claimed(api: Api) -> None:
    call(api, "PUT", "/waitlist/P1", PREFS)
    with api.clinic.db.transaction() as conn:
        conn.execute(waitlist_entries.update().values(status="claimed"))
    again = call(api, "PUT", "/waitlist/P1", PREFS)
    assert (again.json()["result"], again.json()["status"]) == ("unchanged", "claimed")
    changed = call(api, "PUT", "/waitlist/P1", {**PREFS, "days": "fri"})
    assert (changed.json()["result"], changed.json()["status"]) == ("updated", "waiting")


def test_concurrent_posts_of_one_external_id_open_one_slot(api: Api) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: call(api, "POST", "/slots",
                                               {**SLOT, "external_id": "S-9"}), range(4)))
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 201], [
        a.text for a in answers]
    assert len(api.rows(slots)) == 1

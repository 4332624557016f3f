"""The console's cases and unknown deliveries: note, assign, resolve, settle — each
CSRF-checked, front desk and above, in the case's (or touch point's) history and audited."""

from __future__ import annotations

from datetime import timedelta

from click.testing import CliRunner

from engine import cases, clock
from engine.cli import cli
from engine.errors import AmbiguousChannelError
from engine.outcomes import Status
from engine.store.records import patient_by_external_id
from tests.console_support import HTML, NOW, Console
from tests.support import patient


def open_cases(console: Console) -> tuple[int, int]:
    console.clinic.patients(patient("P1", first_name="Lucia", last_name="Rivera"),
                            patient("P2", first_name="Tom", last_name="Rivers",
                                    phone="(312) 555-0199"))
    ids = []
    with console.clinic.db.transaction() as conn:
        for n, (pid, cause) in enumerate([("P1", "complaint"), ("P2", "low_score")], 1):
            found = patient_by_external_id(conn, pid)
            assert found is not None
            opened = cases.open_case(conn, console.clinic.settings, patient_id=found.id,
                                     cause=cause, key=f"test:{n}", detail=f"{cause} detail",
                                     now=NOW - timedelta(days=n))
            assert opened is not None
            ids.append(opened)
    return ids[0], ids[1]


def test_open_cases_are_listed_overdue_first_with_owner_age_and_due(console: Console) -> None:
    first, second = open_cases(console)
    console.sign_in("viewer@clinic.example.com")
    page = console.client.get("/cases", headers=HTML)
    assert page.status_code == 200
    assert page.text.index(f"Case {second}") < page.text.index(f"Case {first}")
    assert "overdue" in page.text
    assert "low score" in page.text and "Tom Rivers" in page.text
    assert "1 d 0 h" in page.text and "2 d 0 h" in page.text
    detail = console.client.get(f"/cases/{first}", headers=HTML)
    assert "complaint detail" in detail.text
    assert "Resolve case" not in detail.text  # a viewer may not act
    assert console.client.post(f"/cases/{first}/note", data={
        "csrf_token": console.csrf(), "text": "x"}).status_code == 403


def test_note_assign_and_resolve_a_case(console: Console) -> None:
    first, _ = open_cases(console)
    console.sign_in("desk@clinic.example.com")
    token = console.csrf()
    noted = console.client.post(f"/cases/{first}/note",
                                data={"csrf_token": token, "text": "Left a voicemail"})
    assert noted.status_code == 200 and "Note added." in noted.text
    assigned = console.client.post(f"/cases/{first}/assign",
                                   data={"csrf_token": token, "owner": "Dana  Lopez"})
    assert "Assigned to Dana Lopez." in assigned.text
    empty = console.client.post(f"/cases/{first}/resolve",
                                data={"csrf_token": token, "text": " "})
    assert empty.status_code == 422 and "say what was done" in empty.text
    resolved = console.client.post(f"/cases/{first}/resolve",
                                   data={"csrf_token": token, "text": "Rebooked for Monday"})
    assert "Resolved" in resolved.text
    with console.clinic.db.transaction() as conn:
        case = cases.get_case(conn, first)
        steps = [(s.kind, s.detail, s.by) for s in cases.history(conn, first)]
    assert case is not None and case.status == "resolved" and case.owner == "Dana Lopez"
    assert ("note", "Left a voicemail", "desk@clinic.example.com") in steps
    assert ("assigned", "to Dana Lopez", "desk@clinic.example.com") in steps
    assert [a for _, a in console.audit() if a.startswith("case.")] == [
        "case.note", "case.assign", "case.resolve"]
    assert f"Case {first}" not in console.client.get("/cases", headers=HTML).text
    assert console.client.post(f"/cases/{first}/note", data={"text": "x"}).status_code == 403


def test_the_command_line_assigns_too(console: Console) -> None:
    first, _ = open_cases(console)
    url = console.clinic.settings.database_url
    result = CliRunner().invoke(cli, ["--db", url, "case", str(first), "assign", "--to", "Sam"])
    assert result.exit_code == 0, result.output
    assert result.output == f"case {first} is now Sam's.\n"
    with console.clinic.db.transaction() as conn:
        assert [s.kind for s in cases.history(conn, first)][-1] == "assigned"
    refused = CliRunner().invoke(cli, ["--db", url, "case", str(first), "assign"])
    assert refused.exit_code == 2


def test_settle_an_unknown_delivery_with_a_note(console: Console) -> None:
    console.clinic.sms.script(AmbiguousChannelError("read timeout", provider="fake"))
    console.clinic.patients(patient("P1"))
    console.clinic.tick()
    [tp] = console.clinic.touch_points(status=Status.UNKNOWN)
    clock.set_now(NOW + timedelta(minutes=30))
    console.sign_in("desk@clinic.example.com")
    page = console.client.get("/unknown", headers=HTML)
    assert f"Touch point {tp.id}" in page.text
    no_note = console.client.post(f"/unknown/{tp.id}/settle",
                                  data={"csrf_token": console.csrf(), "action": "sent"})
    assert no_note.status_code == 422
    settled = console.client.post(f"/unknown/{tp.id}/settle", data={
        "csrf_token": console.csrf(), "action": "sent", "note": "Twilio shows it delivered"})
    assert settled.status_code == 200
    assert f"Touch point {tp.id} is now sent (reconciled)" in settled.text
    assert "None: every message's fate is known." in settled.text
    assert ("staff:desk@clinic.example.com", "touch_point.settle") in console.audit()

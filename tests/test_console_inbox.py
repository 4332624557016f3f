"""The console's inbox: conversations per patient, flagged ones first; reply, mark done and
opt out from the browser, each CSRF-checked, permitted by role and audited."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from engine import clock
from engine.replies import record_inbound
from engine.store.schema import opt_outs, touch_points
from tests.console_support import HTML, NOW, Console
from tests.support import patient

PRACTICE_NUMBER = "+13125550199"


def text_in(console: Console, sender: str, body: str, sid: str) -> int:
    with console.clinic.db.transaction() as conn:
        handled = record_inbound(conn, console.clinic.settings, provider="twilio",
                                 message_id=sid, from_number=sender,
                                 to_number=PRACTICE_NUMBER, body=body, now=clock.now())
    assert handled.inbound_id is not None
    return handled.inbound_id


def seed(console: Console) -> tuple[int, int]:
    console.clinic.patients(
        patient("P1", first_name="Lucia", last_name="Rivera", phone="(312) 555-0142"),
        patient("P2", first_name="Tom", last_name="Rivers", phone="(312) 555-0199"))
    console.clinic.tick()  # their welcome texts
    clock.set_now(NOW + timedelta(minutes=20))
    question = text_in(console, "+13125550142", "Can I bring my daughter along?", "SM1")
    clock.set_now(NOW + timedelta(minutes=21))
    unclear = text_in(console, "+13125550199", "please don't text me anymore", "SM2")
    return question, unclear


def test_conversations_put_possible_opt_outs_first_with_the_exchange(console: Console) -> None:
    seed(console)
    console.sign_in("viewer@clinic.example.com")
    page = console.client.get("/inbox", headers=HTML)
    assert page.status_code == 200
    text = page.text
    assert text.index("Tom Rivers") < text.index("Lucia Rivera")  # flagged first
    assert "Possible opt-out" in text
    assert "Can I bring my daughter along?" in text
    assert "Welcome to Riverside Physical Therapy" in text  # what we sent them, in the thread
    assert "Send reply" not in text  # a viewer may not act
    assert "+13125550142" not in text


def test_a_reply_goes_as_a_logged_touch_point_and_is_audited(console: Console) -> None:
    question, _ = seed(console)
    console.sign_in("desk@clinic.example.com")
    texts_before = len(console.clinic.sms.sent)
    answer = console.client.post(f"/inbox/{question}/reply",
                                 data={"csrf_token": console.csrf(),
                                       "text": "Of course — see you Thursday!"})
    assert answer.status_code == 200, answer.text
    assert "Reply sent" in answer.text
    [sent] = console.clinic.sms.sent[texts_before:]
    assert (sent.to, sent.body) == ("+13125550142", "Of course — see you Thursday!")
    with console.clinic.db.transaction() as conn:
        row = conn.execute(select(touch_points).where(
            touch_points.c.step == "staff-reply")).one()
    assert (row.journey, row.status, row.content) == (
        "replies", "sent", "Of course — see you Thursday!")
    assert ("staff:desk@clinic.example.com", "inbox.reply") in console.audit()
    refused = console.client.post(f"/inbox/{question}/reply", data={"text": "again"})
    assert refused.status_code == 403  # no CSRF token
    assert len(console.clinic.sms.sent) == texts_before + 1


def test_no_reply_to_an_opted_out_number_or_at_night(console: Console) -> None:
    question, _ = seed(console)
    console.sign_in("desk@clinic.example.com")
    clock.set_now(NOW.replace(hour=4) + timedelta(days=1))  # 22:00 in Chicago
    console.sign_in("desk@clinic.example.com")
    night = console.client.post(f"/inbox/{question}/reply",
                                data={"csrf_token": console.csrf(), "text": "Hi!"})
    assert night.status_code == 422
    assert "inside quiet hours" in night.text
    clock.set_now(NOW + timedelta(days=1))
    console.sign_in("desk@clinic.example.com")
    text_in(console, "+13125550142", "STOP", "SM3")
    before = len(console.clinic.sms.sent)
    stopped = console.client.post(f"/inbox/{question}/reply",
                                  data={"csrf_token": console.csrf(), "text": "Hi!"})
    assert stopped.status_code == 422
    assert "opted out of texts" in stopped.text
    assert len(console.clinic.sms.sent) == before


def test_mark_done_and_opt_out_from_the_inbox(console: Console) -> None:
    question, unclear = seed(console)
    console.sign_in("desk@clinic.example.com")
    done = console.client.post(f"/inbox/{question}/done", data={"csrf_token": console.csrf()})
    assert done.status_code == 200
    assert "Can I bring my daughter along?" not in done.text
    before = len(console.clinic.sms.sent)
    out = console.client.post(f"/inbox/{unclear}/opt-out", data={"csrf_token": console.csrf()})
    assert out.status_code == 200
    assert "is opted out of every text; the confirmation was sent." in out.text
    assert [m.to for m in console.clinic.sms.sent[before:]] == ["+13125550199"]
    with console.clinic.db.transaction() as conn:
        assert conn.execute(select(opt_outs.c.address, opt_outs.c.source)).all() == [
            ("+13125550199", "staff")]
    assert "No replies to read" in console.client.get("/inbox", headers=HTML).text
    actions = [a for _, a in console.audit()]
    assert "inbox.done" in actions and "inbox.opt-out" in actions
    missing = console.client.post("/inbox/999/done", data={"csrf_token": console.csrf()})
    assert missing.status_code == 404

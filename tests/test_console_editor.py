"""The console's editor over HTTP: live checks and previews, drafts, publish with the
forecast difference, versions put back; managers only, CSRF-checked, audited."""

from __future__ import annotations

from datetime import timedelta

from engine import clock, drafts
from tests.console_support import HTML, NOW, Console
from tests.support import appointment, patient

SMS = "message_templates/pre-visit/three-days-before.sms.j2"
SCHEDULE = "schedules/pre-visit.yaml"


def seed(console: Console) -> None:
    console.clinic.patients(patient("P1", first_name="Lucia", last_name="Rivera"))
    console.clinic.appointments(appointment("A1", "P1",
                                            start=(NOW + timedelta(days=4)).isoformat()))
    console.clinic.tick()


def test_only_managers_and_owners_open_the_editor(console: Console) -> None:
    console.sign_in("desk@clinic.example.com")
    assert console.client.get(f"/edit/{SMS}", headers=HTML).status_code == 403
    assert console.client.get("/publish", headers=HTML).status_code == 403
    assert console.client.post("/edit/check", data={"path": SMS, "content": "x"},
                               headers={"X-CSRF-Token": console.csrf()}).status_code == 403
    clock.set_now(NOW + timedelta(minutes=1))
    console.sign_in("manager@clinic.example.com")
    page = console.client.get(f"/edit/{SMS}", headers=HTML)
    assert page.status_code == 200
    assert "Fields you can use" in page.text
    assert "segment" in page.text  # the SMS preview with its segments
    assert console.client.get("/edit/schedules/../touchpoint.toml",
                              headers=HTML).status_code == 404


def test_the_check_names_a_misspelt_field_at_its_line_and_the_fix_previews(
        console: Console) -> None:
    console.sign_in("manager@clinic.example.com")
    original = (console.templates / "pre-visit/three-days-before.sms.j2").read_text()
    token = {"X-CSRF-Token": console.csrf()}
    typo = console.client.post("/edit/check", headers=token, data={
        "path": SMS, "content": "\n" + original.replace("recipient.first_name",
                                                        "recipient.frist_name")})
    assert typo.status_code == 200
    data = typo.json()
    assert "2" in data["lines"] and "frist_name" in data["lines"]["2"][0]
    assert "line 2" in data["problems"] and "did you mean" in data["problems"]
    fixed = console.client.post("/edit/check", headers=token, data={
        "path": SMS, "content": original.replace("Reply C", "Free parking. Reply C")})
    assert not any(m.startswith("error") for found in fixed.json()["lines"].values()
                   for m in found)
    assert "Free parking. Reply C to confirm" in fixed.json()["preview"]
    assert console.client.post("/edit/check", data={"path": SMS, "content": "x"}
                               ).status_code == 403  # no CSRF token


def test_save_review_publish_and_undo(console: Console) -> None:
    seed(console)
    console.sign_in("manager@clinic.example.com")
    token = console.csrf()
    schedule = (console.schedules / "pre-visit.yaml").read_text()
    moved = schedule.replace('{days_before: 3, at: "10:00"}', '{days_before: 3, at: "09:00"}')
    saved = console.client.post("/edit/save", data={"csrf_token": token, "path": SCHEDULE,
                                                    "content": moved})
    assert saved.status_code == 200 and "Draft saved" in saved.text
    assert (console.schedules / "pre-visit.yaml").read_text() == schedule  # not live yet
    review = console.client.get("/publish", headers=HTML)
    assert "What publishing changes in the next 14 days" in review.text
    assert "1 moved" in review.text and "P1" in review.text
    assert '<span class="added">+    when: {days_before: 3, at: &#34;09:00&#34;}' in review.text
    published = console.client.post("/publish", data={"csrf_token": token,
                                                      "note": "reminders at nine"})
    assert published.status_code == 200 and "Published version 1" in published.text
    assert (console.schedules / "pre-visit.yaml").read_text() == moved
    version = console.client.get("/versions/1", headers=HTML)
    assert "reminders at nine" in version.text
    undone = console.client.post("/versions/1/restore", data={"csrf_token": token,
                                                              "side": "before"})
    assert "are now drafts" in undone.text
    console.client.post("/publish", data={"csrf_token": token})
    assert (console.schedules / "pre-visit.yaml").read_text() == schedule
    actions = [a for _, a in console.audit()]
    assert actions.count("publish") == 2 and "draft.save" in actions and "revert" in actions


def test_publishing_is_refused_while_a_draft_has_errors(console: Console) -> None:
    console.sign_in("manager@clinic.example.com")
    token = console.csrf()
    original = (console.templates / "pre-visit/three-days-before.sms.j2").read_text()
    console.client.post("/edit/save", data={"csrf_token": token, "path": SMS,
                                            "content": original.replace("{{ practice.name }}",
                                                                        "{{ practice.nmae }}")})
    review = console.client.get("/publish", headers=HTML)
    assert "Problems to fix before publishing" in review.text
    assert 'action="/publish"' not in review.text
    refused = console.client.post("/publish", data={"csrf_token": token})
    assert refused.status_code == 422
    assert (console.templates / "pre-visit/three-days-before.sms.j2").read_text() == original
    with console.clinic.db.transaction() as conn:
        assert list(drafts.drafts(conn)) == [SMS]


def test_a_test_send_goes_to_the_signed_in_persons_own_phone_or_email(
        console: Console) -> None:
    from engine import staff

    console.sign_in("manager@clinic.example.com")
    token = console.csrf()
    content = (console.templates / "pre-visit/three-days-before.sms.j2").read_text()
    form = {"csrf_token": token, "path": SMS, "content": content.replace("Reply C", "Yo. Reply C"),
            "step": "pre-visit/three-days-before"}
    no_phone = console.client.post("/edit/test-send", data={**form, "channel": "sms"})
    assert no_phone.status_code == 422 and "users set-phone" in no_phone.text
    with console.clinic.db.transaction() as conn:
        staff.set_phone(conn, "manager@clinic.example.com", "(312) 555-0111")
    texted = console.client.post("/edit/test-send", data={**form, "channel": "sms"})
    assert texted.status_code == 200 and "Test sms sent to your phone" in texted.text
    [text] = console.clinic.sms.sent
    assert text.to == "+13125550111" and "Yo. Reply C" in text.body  # the draft's words
    mailed = console.client.post("/edit/test-send", data={**form, "channel": "email"})
    assert "Test email sent to your email" in mailed.text
    assert [m.to for m in console.clinic.email.sent] == ["manager@clinic.example.com"]
    assert [a for _, a in console.audit()].count("test-send") == 2

"""The console's front door, over plain HTTP: sign-in, sessions, CSRF, roles, audit.

The app is the real `touchpoint serve` app (``create_app``) under fastapi's TestClient,
on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from engine import clock, staff
from engine.store.schema import staff_sessions
from tests.console_support import HTML, NOW, PASSWORD, Console


def test_pages_redirect_to_sign_in_and_fetches_get_401(console: Console) -> None:
    page = console.client.get("/?view=today", headers=HTML)
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=/%3Fview%3Dtoday"
    assert console.client.get("/", headers={"accept": "application/json"}).status_code == 401
    assert console.client.post("/logout").status_code == 401


def test_signing_in_sets_a_locked_down_cookie_and_opens_the_page_asked_for(
        console: Console) -> None:
    answer = console.sign_in("Desk@Clinic.example.com", next="/?view=today")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/?view=today"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith("tp_session=")
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert "Secure" not in cookie  # (the test practice's public URL is not https)
    home = console.client.get("/", headers=HTML)
    assert home.status_code == 200
    assert "desk@clinic.example.com" in home.text
    assert "possible opt-outs to read first" in home.text
    assert console.audit() == [("staff:desk@clinic.example.com", "console.sign-in")]
    with console.clinic.db.transaction() as conn:
        stored = conn.execute(select(staff_sessions.c.token_hash)).scalar_one()
    assert stored not in cookie  # only the token's hash is kept


def test_console_pages_forbid_framing_and_outside_scripts(console: Console) -> None:
    console.sign_in("desk@clinic.example.com")
    page = console.client.get("/", headers=HTML)
    policy = page.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert console.client.get("/login").headers["x-frame-options"] == "DENY"
    assert "content-security-policy" not in console.client.get("/api/docs").headers


def test_the_cookie_is_secure_behind_https(database_url: str, tmp_path: Path) -> None:
    rig = Console(database_url, tmp_path,
                  extra='[webhooks]\npublic_url = "https://tp.clinic.example.com"\n')
    try:
        cookie = rig.sign_in("desk@clinic.example.com").headers["set-cookie"]
        assert "Secure" in cookie
    finally:
        rig.close()


def test_only_a_path_on_this_site_is_a_next_page(console: Console) -> None:
    for target in ("https://evil.example.com/", "//evil.example.com", "/\\evil.example.com"):
        answer = console.sign_in("desk@clinic.example.com", next=target)
        assert answer.headers["location"] == "/"


def test_a_wrong_password_is_refused_and_audited_with_the_email_masked(
        console: Console) -> None:
    answer = console.sign_in("desk@clinic.example.com", "not the passphrase")
    assert answer.status_code == 401
    assert "do not match an active account" in answer.text
    assert "set-cookie" not in answer.headers or "tp_session" not in answer.headers["set-cookie"]
    assert console.client.get("/", headers=HTML).status_code == 303
    [(actor, action)] = console.audit()
    assert action == "console.sign-in.refused"
    assert "desk@clinic.example.com" not in actor


def test_sign_in_without_the_form_token_is_refused(console: Console) -> None:
    answer = console.client.post("/login", data={"email": "desk@clinic.example.com",
                                                 "password": PASSWORD})
    assert answer.status_code == 403
    assert console.client.get("/", headers=HTML).status_code == 303


def test_attempts_are_limited_per_account_then_allowed_again(console: Console) -> None:
    for _ in range(5):
        assert console.sign_in("desk@clinic.example.com", "guess").status_code == 401
    throttled = console.sign_in("desk@clinic.example.com")  # (even the right password)
    assert throttled.status_code == 429
    assert 0 < int(throttled.headers["retry-after"]) <= 15 * 60
    # another account from the same address is not locked out by them
    assert console.sign_in("owner@clinic.example.com").status_code == 303
    clock.set_now(NOW + timedelta(minutes=16))
    assert console.sign_in("desk@clinic.example.com").status_code == 303
    throttles = [actor for actor, action in console.audit()
                 if action == "console.sign-in.throttled"]
    assert len(throttles) == 1
    assert "desk@clinic.example.com" not in throttles[0]


def test_attempts_are_limited_per_address_across_accounts(console: Console) -> None:
    for n in range(20):
        assert console.sign_in(f"guess{n}@clinic.example.com", "guess").status_code == 401
    assert console.sign_in("owner@clinic.example.com").status_code == 429


def test_a_session_ends_after_inactivity_and_after_its_longest_life(console: Console) -> None:
    console.sign_in("desk@clinic.example.com")
    clock.set_now(NOW + timedelta(minutes=29))
    assert console.client.get("/", headers=HTML).status_code == 200
    clock.set_now(NOW + timedelta(minutes=58))  # 29 minutes after the last request
    assert console.client.get("/", headers=HTML).status_code == 200
    clock.set_now(NOW + timedelta(minutes=89))  # 31 minutes idle
    assert console.client.get("/", headers=HTML).status_code == 303

    clock.set_now(NOW + timedelta(hours=1))
    console.sign_in("desk@clinic.example.com")
    for minutes in range(20, 12 * 60, 20):
        clock.set_now(NOW + timedelta(hours=1, minutes=minutes))
        assert console.client.get("/", headers=HTML).status_code == 200
    clock.set_now(NOW + timedelta(hours=13, minutes=1))
    assert console.client.get("/", headers=HTML).status_code == 303


def test_disabling_an_account_or_changing_its_password_ends_its_sessions(
        console: Console) -> None:
    console.sign_in("desk@clinic.example.com")
    with console.clinic.db.transaction() as conn:
        staff.set_password(conn, "desk@clinic.example.com", "a brand new passphrase",
                           NOW + timedelta(seconds=1))
    clock.set_now(NOW + timedelta(seconds=2))
    assert console.client.get("/", headers=HTML).status_code == 303
    console.sign_in("desk@clinic.example.com", "a brand new passphrase")
    assert console.client.get("/", headers=HTML).status_code == 200
    with console.clinic.db.transaction() as conn:
        staff.disable_user(conn, "desk@clinic.example.com", NOW + timedelta(seconds=3))
    assert console.client.get("/", headers=HTML).status_code == 303


def test_sign_out_needs_the_csrf_token_and_ends_the_session(console: Console) -> None:
    console.sign_in("desk@clinic.example.com")
    refused = console.client.post("/logout")
    assert refused.status_code == 403
    assert console.client.get("/", headers=HTML).status_code == 200
    out = console.client.post("/logout", data={"csrf_token": console.csrf()})
    assert out.status_code == 303
    assert out.headers["location"] == "/login"
    assert console.client.get("/", headers=HTML).status_code == 303
    assert [a for _, a in console.audit()] == ["console.sign-in", "console.sign-out"]


def test_the_csrf_token_may_come_as_a_header_for_fetches(console: Console) -> None:
    console.sign_in("desk@clinic.example.com")
    out = console.client.post("/logout", headers={"X-CSRF-Token": console.csrf()})
    assert out.status_code == 303


def test_a_viewer_sees_the_day_but_may_not_act(console: Console) -> None:
    console.sign_in("viewer@clinic.example.com")
    home = console.client.get("/", headers=HTML)
    assert home.status_code == 200
    assert "replies to read" in home.text


def test_only_owners_read_the_audit_log(console: Console) -> None:
    console.sign_in("desk@clinic.example.com")
    refused = console.client.get("/audit", headers=HTML)
    assert refused.status_code == 403
    assert "Not for your role" in refused.text
    assert "Audit log" not in console.client.get("/", headers=HTML).text
    clock.set_now(NOW + timedelta(minutes=1))
    console.sign_in("owner@clinic.example.com")
    page = console.client.get("/audit", headers=HTML)
    assert page.status_code == 200
    rows = page.text[page.text.index("<tbody>"):]
    assert rows.index("staff:owner@clinic.example.com") < rows.index(
        "staff:desk@clinic.example.com")  # newest first
    assert "console.sign-in" in rows

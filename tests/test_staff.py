"""Staff accounts: argon2 hashes, roles, `touchpoint users`, every change audited."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner
from sqlalchemy import select, update

from engine import audit, staff
from engine.cli import cli
from engine.errors import UserError
from engine.store.database import open_database
from engine.store.schema import staff_users

NOW = datetime(2026, 12, 5, 14, 0, tzinfo=UTC)
PASSWORD = "correct horse battery staple"


def run(url: str, *args: str, stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--db", url, "--now", NOW.isoformat(), *args],
                                input=stdin)
    return result.exit_code, result.output


def test_an_account_is_created_with_an_argon2_hash_and_signs_in(database_url: str) -> None:
    database = open_database(database_url)
    with database.transaction() as conn:
        user = staff.add_user(conn, "Dana@Clinic.example.com ", "manager", PASSWORD, NOW)
        stored = conn.execute(select(staff_users.c.password_hash)).scalar_one()
    assert user.email == "dana@clinic.example.com"
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored
    with database.transaction() as conn:
        assert staff.authenticate(conn, "DANA@clinic.example.com", PASSWORD) == user
        assert staff.authenticate(conn, "dana@clinic.example.com", PASSWORD + "!") is None
        assert staff.authenticate(conn, "nobody@clinic.example.com", PASSWORD) is None
    database.dispose()


def test_a_disabled_account_cannot_sign_in_and_the_last_owner_stays(database_url: str) -> None:
    database = open_database(database_url)
    with database.transaction() as conn:
        staff.add_user(conn, "owner@clinic.example.com", "owner", PASSWORD, NOW)
        staff.add_user(conn, "desk@clinic.example.com", "front-desk", PASSWORD, NOW)
        assert staff.disable_user(conn, "desk@clinic.example.com", NOW) is True
        assert staff.disable_user(conn, "desk@clinic.example.com", NOW) is False
        assert staff.authenticate(conn, "desk@clinic.example.com", PASSWORD) is None
        with pytest.raises(UserError, match="only active owner"):
            staff.disable_user(conn, "owner@clinic.example.com", NOW)
    database.dispose()


def test_an_old_hash_is_upgraded_at_the_next_sign_in(database_url: str) -> None:
    database = open_database(database_url)
    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)
    with database.transaction() as conn:
        staff.add_user(conn, "dana@clinic.example.com", "viewer", PASSWORD, NOW)
        conn.execute(update(staff_users).values(password_hash=weak))
        assert staff.authenticate(conn, "dana@clinic.example.com", PASSWORD) is not None
        upgraded = conn.execute(select(staff_users.c.password_hash)).scalar_one()
    assert upgraded != weak
    assert not PasswordHasher().check_needs_rehash(upgraded)
    database.dispose()


@pytest.mark.parametrize(("role", "allowed", "refused"), [
    ("owner", ["users", "audit", "publish", "reveal", "read"], []),
    ("manager", ["publish", "templates.edit", "reveal", "reply"], ["users", "settings", "audit"]),
    ("front-desk", ["reply", "inbox.done", "cases.change", "reveal", "settle", "read"],
     ["publish", "templates.edit", "users"]),
    ("viewer", ["read"], ["reveal", "reply", "settle", "publish", "users"]),
])
def test_each_role_may_do_what_it_says(role: str, allowed: list[str], refused: list[str]) -> None:
    assert all(staff.may(role, p) for p in allowed)
    assert not any(staff.may(role, p) for p in refused)
    assert not staff.may("intern", "read")


def test_weak_passwords_and_bad_input_are_refused(database_url: str) -> None:
    database = open_database(database_url)
    with database.transaction() as conn:
        with pytest.raises(UserError, match="at least 12"):
            staff.add_user(conn, "dana@clinic.example.com", "viewer", "short", NOW)
        with pytest.raises(UserError, match="cannot be the email"):
            staff.add_user(conn, "dana.lopez@clinic.example.com", "viewer",
                           "Dana.Lopez@clinic.example.com", NOW)
        with pytest.raises(UserError, match="not an email"):
            staff.add_user(conn, "dana", "viewer", PASSWORD, NOW)
        with pytest.raises(UserError, match="role must be"):
            staff.add_user(conn, "dana@clinic.example.com", "admin", PASSWORD, NOW)
        staff.add_user(conn, "dana@clinic.example.com", "viewer", PASSWORD, NOW)
        with pytest.raises(UserError, match="already a staff account"):
            staff.add_user(conn, "DANA@clinic.example.com", "owner", PASSWORD, NOW)
    database.dispose()


def test_the_users_commands_manage_accounts_and_are_audited(database_url: str) -> None:
    code, out = run(database_url, "users", "add", "owner@clinic.example.com", "--role", "owner",
                    "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 0, out
    assert "owner@clinic.example.com can now sign in as owner." in out
    code, out = run(database_url, "users", "add", "desk@clinic.example.com", "--role",
                    "front-desk", stdin=f"{PASSWORD}\n{PASSWORD}\n")
    assert code == 0, out
    assert PASSWORD not in out
    code, out = run(database_url, "users", "set-password", "desk@clinic.example.com",
                    "--password-stdin", stdin="another long passphrase\n")
    assert code == 0, out
    code, out = run(database_url, "users", "disable", "desk@clinic.example.com")
    assert code == 0, out
    assert "desk@clinic.example.com is disabled." in out
    code, out = run(database_url, "users", "list", "--json")
    listed = {u["email"]: u for u in json.loads(out)}
    assert listed["owner@clinic.example.com"]["disabled_at"] is None
    assert listed["desk@clinic.example.com"]["disabled_at"] == NOW.isoformat()
    assert "password_hash" not in listed["owner@clinic.example.com"]
    code, out = run(database_url, "users")
    assert "desk@clinic.example.com" in out
    assert "disabled 2026-12-05" in out

    code, out = run(database_url, "users", "set-password", "ghost@clinic.example.com",
                    "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 1
    assert "no staff account for ghost@clinic.example.com" in out
    code, out = run(database_url, "users", "add", "x@clinic.example.com", "--role", "viewer",
                    "--password-stdin", stdin="short\n")
    assert code == 1
    assert "at least 12 characters" in out

    database = open_database(database_url)
    with database.transaction() as conn:
        actions = [(e.action, e.target) for e in audit.entries(conn)]
        hashes = conn.execute(select(staff_users.c.password_hash)).scalars().all()
    database.dispose()
    assert actions == [("users.add", "staff:owner@clinic.example.com"),
                       ("users.add", "staff:desk@clinic.example.com"),
                       ("users.set-password", "staff:desk@clinic.example.com"),
                       ("users.disable", "staff:desk@clinic.example.com")]
    assert all(h.startswith("$argon2id$") for h in hashes)


@pytest.mark.slow
def test_the_demo_ends_with_how_to_open_the_console_and_an_account_that_works(
        tmp_path: Path) -> None:
    import re

    url = f"sqlite:///{tmp_path / 'demo.db'}"
    from tests.support import LIBRARY_SCHEDULES, LIBRARY_TEMPLATES

    result = CliRunner().invoke(cli, ["--db", url, "--schedules", str(LIBRARY_SCHEDULES),
                                      "--templates", str(LIBRARY_TEMPLATES),
                                      "demo", "--days", "2"])
    assert result.exit_code == 0, result.output
    tail = result.output[result.output.index("Open the console on the demo's data:"):]
    assert f"touchpoint --db {url}" in tail and " serve" in tail
    found = re.search(r"sign in as (\S+), password (\S+)", tail)
    assert found is not None
    database = open_database(url)
    with database.transaction() as conn:
        user = staff.authenticate(conn, found.group(1), found.group(2))
    database.dispose()
    assert user is not None and user.role == "owner"


def test_a_staff_phone_for_test_texts(database_url: str) -> None:
    run(database_url, "users", "add", "dana@clinic.example.com", "--role", "manager",
        "--password-stdin", "--phone", "312 555 0111", stdin=PASSWORD + "\n")
    code, out = run(database_url, "users", "set-phone", "dana@clinic.example.com",
                    "(312) 555-0122")
    assert code == 0, out
    assert out == "dana@clinic.example.com's test texts go to +13125550122.\n"
    code, out = run(database_url, "users", "set-phone", "dana@clinic.example.com", "12")
    assert code == 1 and "not a phone number" in out

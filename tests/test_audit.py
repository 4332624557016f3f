"""The audit log: appended in the caller's transaction, listed by `touchpoint audit`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine import audit
from engine.cli import cli
from engine.store.database import open_database

NOW = datetime(2026, 12, 5, 14, 0, tzinfo=UTC)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    open_database(url, check=False).upgrade()
    return url


def test_an_entry_is_kept_only_if_its_transaction_commits(db_url: str) -> None:
    database = open_database(db_url)
    with database.transaction() as conn:
        audit.record(conn, actor="cli:alice", action="patient.export", now=NOW,
                     target="patient:P1", address="cli", detail={"rows": 3})

    def failing_change() -> None:
        with database.transaction() as conn:
            audit.record(conn, actor="cli:bob", action="patient.erase", now=NOW)
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        failing_change()
    with database.transaction() as conn:
        found = list(audit.entries(conn))
    assert [(e.actor, e.action, e.target, e.detail) for e in found] == [
        ("cli:alice", "patient.export", "patient:P1", {"rows": 3})]
    database.dispose()


def test_the_command_lists_entries_since_a_day_as_text_and_json(db_url: str) -> None:
    database = open_database(db_url)
    with database.transaction() as conn:
        audit.record(conn, actor="api-key:emr", action="api.appointment.put",
                     now=datetime(2026, 12, 1, 15, 0, tzinfo=UTC), target="appointment:A1",
                     address="10.0.0.7")
        audit.record(conn, actor="cli:alice", action="patient.export", now=NOW,
                     target="patient:P1", address="cli")
    database.dispose()
    runner = CliRunner()
    result = runner.invoke(cli, ["--db", db_url, "audit"])
    assert result.exit_code == 0, result.output
    assert "api-key:emr  api.appointment.put appointment:A1 from 10.0.0.7" in result.output
    result = runner.invoke(cli, ["--db", db_url, "--set", "practice.timezone=America/Chicago",
                                 "audit", "--since", "2026-12-02", "--json"])
    assert result.exit_code == 0, result.output
    assert [e["action"] for e in json.loads(result.output)] == ["patient.export"]
    result = runner.invoke(cli, ["--db", db_url, "audit", "--since", "yesterday"])
    assert result.exit_code == 2
    assert "YYYY-MM-DD" in result.output


def test_an_empty_log_says_so(db_url: str) -> None:
    result = CliRunner().invoke(cli, ["--db", db_url, "audit"])
    assert result.exit_code == 0
    assert "The audit log is empty." in result.output

"""Docs that cannot drift: every command is in the README's reference, every setting in
docs/settings.md (tests/test_settings.py), the README's first screen stays true, and the
worked examples run: docs/hl7.md's SIU gets the ACK shown, docs/api.md's curl requests
get the answers shown."""

from __future__ import annotations

import json
import re
import shlex
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from fastapi.testclient import TestClient
from sqlalchemy import select

from engine import clock
from engine.api import keys
from engine.cli import cli
from engine.hl7.receive import Receiver
from engine.store.schema import appointments, patients
from engine.webhooks.app import Services, create_app
from tests.support import Clinic

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def command_paths(group: click.Group, prefix: str = "") -> list[str]:
    paths = []
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        paths.append(path)
        if isinstance(command, click.Group):
            paths.extend(command_paths(command, f"{path} "))
    return paths


def test_every_command_is_in_the_readme_reference() -> None:
    reference = README[README.index("## Command reference"):]
    missing = [path for path in command_paths(cli)
               if not any(form in reference for form in (
                   f"touchpoint {path}", f"`{path}`", f"`{path} "))]
    assert missing == []


def test_the_first_screen_has_the_two_commands_and_they_exist() -> None:
    first_screen = "\n".join(README.splitlines()[:25])
    assert "make demo" in first_screen and "make test" in first_screen
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "\ndemo:" in makefile and "\ntest:" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_linked_docs_exist() -> None:
    for link in ("docs/settings.md", "bench/README.md"):
        assert link in README
        assert (ROOT / link).is_file(), link


# --------------------------------------------------------------------------- worked examples


def _blocks(doc: str, section: str) -> list[str]:
    """The fenced code blocks of ``section`` (a ``## `` heading) of ``doc``, in order."""
    text = doc[doc.index(f"## {section}\n"):]
    end = text.find("\n## ", 4)
    text = text if end < 0 else text[:end]
    return [block.split("\n", 1)[1] for block in text.split("```")[1::2]]


def test_the_hl7_worked_example_gets_the_ack_the_docs_show(sqlite_url: str,
                                                           tmp_path: Path) -> None:
    sent, answered = _blocks((ROOT / "docs" / "hl7.md").read_text("utf-8"),
                             "Worked example")[:2]
    clock.set_now(datetime(2026, 12, 1, 15, 0, tzinfo=UTC))
    clinic = Clinic(sqlite_url, tmp_path)
    try:
        outcome = Receiver(clinic.db, clinic.settings, on_applied=lambda: None).receive(
            "\r".join(sent.strip().splitlines()))
        with clinic.db.transaction() as conn:
            [ana] = conn.execute(select(patients)).all()
            booked = conn.execute(select(appointments)).all()
    finally:
        clinic.close()
    documented = [segment.split("|") for segment in answered.strip().splitlines()]
    got = [segment.split("|") for segment in outcome.ack.split("\r") if segment]
    assert [s[0] for s in got] == [s[0] for s in documented] == ["MSH", "MSA"]
    assert got[1] == documented[1]  # MSA|AA|MSG00001
    # MSH: the same but for the ACK's own control id, which counts the ACKs sent
    same = [i for i in range(len(documented[0])) if i != 9]
    assert [got[0][i] for i in same] == [documented[0][i] for i in same]
    assert re.fullmatch(r"TP20261201150000\d{6}", got[0][9])
    assert (ana.external_id, ana.phone, ana.email, ana.language) == (
        "P2001", "+13125550142", "Ana.Reyes@example.com", "es")
    assert [(a.external_id, a.duration_minutes, a.location) for a in booked] == [
        ("A7781", 45, "Riverside PT & Sports Rehab")]


def _curls(block: str) -> list[tuple[str, str, dict[str, Any] | None, str]]:
    """Each documented ``curl`` request (method, path, JSON body) and what follows it."""
    lines = block.replace("\\\n", " ").splitlines()
    found = []
    for number, line in enumerate(lines):
        if not line.startswith("$ curl"):
            continue
        command = line[2:]
        while True:  # (a quoted body may go on over several lines)
            try:
                words = shlex.split(command)
                break
            except ValueError:
                number += 1
                command += "\n" + lines[number]
        method = words[words.index("-X") + 1] if "-X" in words else "GET"
        url = next(w for w in words if w.startswith("http"))
        body = json.loads(words[words.index("-d") + 1]) if "-d" in words else None
        answer = []
        for after in lines[number + 1:]:
            if after.startswith(("$", "#")):
                break
            answer.append(after)
        found.append((method, url.split("8000", 1)[1], body, "\n".join(answer)))
    return found


def test_the_api_worked_examples_curl_requests_answer_as_the_docs_show(
        database_url: str, tmp_path: Path) -> None:
    [block] = _blocks((ROOT / "docs" / "api.md").read_text("utf-8"), "Worked example")
    requests = [r for r in _curls(block) if r[0] == "PUT"]
    assert len(requests) == 3
    clock.set_now(datetime(2026, 12, 5, 12, 11, 42, tzinfo=UTC))
    clinic = Clinic(database_url, tmp_path)
    client = TestClient(create_app(Services(clinic.settings, clinic.db, clinic.definitions,
                                            {"sms": clinic.sms, "email": clinic.email})))
    try:
        with clinic.db.transaction() as conn:
            key = keys.create(conn, "emr-sync", keys.parse_scopes("write:records,read:log"),
                              clock.now())
        for method, path, body, answer in requests:
            got = client.request(method, path, json=body,
                                 headers={"Authorization": f"Bearer {key}"})
            status = int(answer.split()[1]) if answer.startswith("HTTP/") else None
            documented = json.loads(answer[answer.index("{"):])
            if status is None:
                assert got.status_code in (200, 201), got.text
                documented.pop("stored_at")
                assert got.json() | {"stored_at": None} == documented | {"stored_at": None}
            else:
                assert got.status_code == status
                assert got.headers["content-type"] == "application/problem+json"
                assert got.json() == documented
    finally:
        client.close()
        clinic.close()

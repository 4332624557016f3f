"""The console's test rig: the real `touchpoint serve` app under fastapi's TestClient, with
four staff accounts (owner, manager, front-desk, viewer) and a Clinic (tests/support.py)
whose schedules/ and message_templates/ are copies the console may publish to."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from engine import audit, clock, staff
from engine.live_definitions import LiveDefinitions
from engine.store.schema import staff_sessions
from engine.webhooks.app import Services, create_app
from tests.support import LIBRARY_SCHEDULES, LIBRARY_TEMPLATES, Clinic

NOW = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)
PASSWORD = "a long and private passphrase"
HTML = {"accept": "text/html,application/xhtml+xml"}


class Console:
    def __init__(self, database_url: str, folder: Path, extra: str = "", *,
                 follow: bool = False) -> None:
        """``follow``: the definitions follow edits of the files, as under `serve`."""
        clock.set_now(NOW)
        self.schedules, self.templates = folder / "schedules", folder / "message_templates"
        shutil.copytree(LIBRARY_SCHEDULES, self.schedules)
        shutil.copytree(LIBRARY_TEMPLATES, self.templates)
        self.clinic = Clinic(database_url, folder, config_extra=extra, schedules=self.schedules,
                             templates=self.templates)
        with self.clinic.db.transaction() as conn:
            for email, role in (("owner@clinic.example.com", "owner"),
                                ("manager@clinic.example.com", "manager"),
                                ("desk@clinic.example.com", "front-desk"),
                                ("viewer@clinic.example.com", "viewer")):
                staff.add_user(conn, email, role, PASSWORD, NOW)
        definitions = LiveDefinitions(self.clinic.settings, self.clinic.db,
                                      self.clinic.definitions, follow=follow)
        self.services = Services(self.clinic.settings, self.clinic.db, definitions,
                                 {"sms": self.clinic.sms, "email": self.clinic.email})
        self.client = TestClient(create_app(self.services), follow_redirects=False)

    def close(self) -> None:
        self.client.close()
        self.clinic.close()

    def login_form(self) -> str:
        page = self.client.get("/login", headers=HTML)
        assert page.status_code == 200
        found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert found
        return found.group(1)

    def sign_in(self, email: str, password: str = PASSWORD, **extra: str) -> Any:
        token = self.login_form()
        return self.client.post("/login", data={"email": email, "password": password,
                                                "csrf_token": token, **extra})

    def csrf(self) -> str:
        with self.clinic.db.transaction() as conn:
            return str(conn.execute(select(staff_sessions.c.csrf_token)
                                    .where(staff_sessions.c.ended_at.is_(None))
                                    .order_by(staff_sessions.c.id.desc())).scalars().first())

    def audit(self) -> list[tuple[str, str]]:
        with self.clinic.db.transaction() as conn:
            return [(e.actor, e.action) for e in audit.entries(conn)]

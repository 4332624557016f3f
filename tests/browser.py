"""Browser tests' rig: the real app served by uvicorn on 127.0.0.1, and Debian's Chromium
driven by Playwright (nothing downloads a browser here: `.ci/run` installs the `chromium`
package when it is missing).

Screenshots go to ``screenshots/`` at the repository's top (``TOUCHPOINT_SCREENSHOTS``
moves them) for a person to look at.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from playwright.sync_api import expect

from engine import clock, staff
from engine.webhooks.app import Services, create_app
from tests.support import LIBRARY_SCHEDULES, LIBRARY_TEMPLATES, Clinic

# A check of an edit renders every template (as `touchpoint validate` does): on a loaded
# machine that takes seconds, so assertions wait longer than Playwright's 5 s default.
expect.set_options(timeout=30_000)

CHROMIUM = os.environ.get("TOUCHPOINT_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("TOUCHPOINT_SCREENSHOTS",
                                  Path(__file__).resolve().parent.parent / "screenshots"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """``app`` served on a free local port for the block; yields its base URL."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                           access_log=False, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def screenshot_path(name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / f"{name}.png"


def console_clinic(database_url: str, folder: Path, now: datetime, password: str,
                   users: Mapping[str, str]) -> Clinic:
    """A practice whose console can edit its own copy of the shipped schedules and
    templates, with staff ``users`` (email → role) who sign in with ``password``."""
    clock.set_now(now)
    shutil.copytree(LIBRARY_SCHEDULES, folder / "schedules")
    shutil.copytree(LIBRARY_TEMPLATES, folder / "message_templates")
    clinic = Clinic(database_url, folder, schedules=folder / "schedules",
                    templates=folder / "message_templates")
    with clinic.db.transaction() as conn:
        for email, role in users.items():
            staff.add_user(conn, email, role, password, now)
    return clinic


@contextmanager
def serving_console(clinic: Clinic) -> Iterator[str]:
    """The whole app (console, API, webhooks) of ``clinic`` served; its base URL."""
    app = create_app(Services(clinic.settings, clinic.db, clinic.definitions,
                              {"sms": clinic.sms, "email": clinic.email}))
    with serving(app) as url:
        yield url

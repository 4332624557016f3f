"""The last good definitions, kept in the database for a daemon that starts on a bad edit.

Each time the daemon starts with, or reloads, schedules and templates that pass every
check, the text of every file under ``schedules/`` and ``message_templates/`` is kept in
``engine_state`` (key ``definitions.last_good``; written only when a file changed). A
daemon started while an edit is invalid runs those instead of refusing to start:
:func:`restore` writes them to a private folder, checks them again, and loads them from
there; the daemon logs that it does, and a valid edit replaces them as any reload does.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

from engine.definitions import Definitions
from engine.definitions.templates import ENCODING
from engine.errors import DefinitionError
from engine.settings import Settings
from engine.store.database import Database
from engine.store.records import get_state, put_state
from engine.validate import check_definitions

STATE_KEY = "definitions.last_good"
_SCHEDULE_FILES = ("*.yaml", "*.yml")


@dataclass(frozen=True)
class Restored:
    definitions: Definitions
    saved_at: str  # when they were kept (ISO 8601, UTC)
    folder: Path  # the private copy they are loaded from; remove it when done

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def snapshot(settings: Settings) -> dict[str, dict[str, str]]:
    """``{"schedules": {relative path: text}, "templates": {...}}`` of the files on disk."""
    files: dict[str, dict[str, str]] = {"schedules": {}, "templates": {}}
    for kind, folder, patterns in (("schedules", settings.schedules_dir, _SCHEDULE_FILES),
                                   ("templates", settings.templates_dir, ("**/*.j2",))):
        for pattern in patterns:
            for path in sorted(folder.glob(pattern)):
                relative = path.relative_to(folder).as_posix()
                files[kind][relative] = path.read_text(encoding=ENCODING)
    return files


def digest(files: dict[str, dict[str, str]]) -> str:
    """One fingerprint of a :func:`snapshot`: equal exactly when every file is."""
    text = "\0".join(f"{kind}/{name}\0{content}" for kind in sorted(files)
                     for name, content in sorted(files[kind].items()))
    return hashlib.sha256(text.encode()).hexdigest()


def save(db: Database, settings: Settings, now: datetime) -> bool:
    """Keep the files that just passed every check; False if they are already kept."""
    files = snapshot(settings)
    stamp = digest(files)
    with db.transaction() as conn:
        stored = get_state(conn, STATE_KEY)
        if stored is not None and stored.get("digest") == stamp:
            return False
        put_state(conn, STATE_KEY, {"saved_at": now.isoformat().replace("+00:00", "Z"),
                                    "digest": stamp, **files}, now)
    return True


def restore(db: Database, settings: Settings, now: datetime) -> Restored | None:
    """The kept definitions, checked again, or None if none were ever kept.

    Raises DefinitionError if the kept files no longer pass (a setting they rely on
    changed since)."""
    with db.transaction() as conn:
        stored = get_state(conn, STATE_KEY)
    if stored is None:
        return None
    folder = Path(tempfile.mkdtemp(prefix="touchpoint-last-good-"))
    try:
        for kind, subfolder in (("schedules", "schedules"), ("templates", "message_templates")):
            for name, content in dict(stored.get(kind) or {}).items():
                relative = PurePosixPath(name)
                if relative.is_absolute() or ".." in relative.parts:
                    raise DefinitionError(f"the kept definitions name an unsafe path: {name}")
                path = folder / subfolder / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(str(content), encoding="utf-8")
        (folder / "schedules").mkdir(exist_ok=True)
        (folder / "message_templates").mkdir(exist_ok=True)
        copy = settings.model_copy(update={"schedules_dir": folder / "schedules",
                                           "templates_dir": folder / "message_templates"})
        definitions = check_definitions(copy, now).raise_for_errors()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return Restored(definitions, str(stored.get("saved_at", "?")), folder)

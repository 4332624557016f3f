"""Edits to journeys and templates as drafts, checked and forecast before they go live.

The files under ``schedules/`` and ``message_templates/`` stay the source of truth,
editable by hand and by git. The console keeps what a manager types as a *draft* per file
(in the database); nothing reaches a patient until the drafts are *published*:

1. :func:`workspace` copies both folders to a temporary place and lays the drafts (and the
   text being typed, if any) over them;
2. :func:`check` runs every check of ``touchpoint validate`` there (the problems name the
   real files);
3. :func:`forecast_changes` forecasts the next days with the definitions running now and
   with the drafted ones, and compares them (what moves, what is cancelled, what new
   messages appear, which wording changes) — the `forecast --diff` engine;
4. :func:`publish` refuses anything :func:`check` calls an error, or a file changed on disk
   since its draft began, then writes the files (each atomically) and records a
   :class:`Version` (author, time, each file before and after). The daemon sees the change
   through its file watcher and reloads, as it does for a hand edit.

Any version can be put back (:func:`restore`): its files become drafts again (as they were
after that version, or before it), to be checked and published like any edit.

Paths are given as ``schedules/<file>.yaml`` or ``message_templates/<file>.j2`` and must
stay inside their folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from engine.definitions import Definitions
from engine.definitions.diagnostics import Diagnostic
from engine.definitions.templates import Fields
from engine.errors import NotFound, UserError
from engine.forecast import LIMITS_DAYS, Change, compare, forecast
from engine.preview import Preview, preview
from engine.samples import sample_context
from engine.settings import Settings
from engine.store.database import Database
from engine.store.schema import definition_drafts, definition_versions
from engine.validate import check_definitions

SCHEDULES, TEMPLATES = "schedules", "message_templates"
SUFFIXES = {SCHEDULES: (".yaml", ".yml"), TEMPLATES: (".j2",)}
MAX_FILE = 256 * 1024  # characters in one file


@dataclass(frozen=True)
class Draft:
    path: str
    content: str
    base_digest: str
    author: str
    updated_at: datetime


@dataclass(frozen=True)
class Version:
    id: int
    author: str
    at: datetime
    note: str
    files: Mapping[str, Mapping[str, str | None]]  # path → {"before", "after"} (None: absent)


def _digest(text: str | None) -> str:
    return "" if text is None else hashlib.sha256(text.encode()).hexdigest()


def _roots(settings: Settings) -> dict[str, Path]:
    return {SCHEDULES: settings.schedules_dir, TEMPLATES: settings.templates_dir}


def real_path(settings: Settings, path: str) -> Path:
    """The file ``path`` names, refusing anything outside the two folders."""
    parts = PurePosixPath(path).parts
    if len(parts) < 2 or parts[0] not in SUFFIXES or any(p in ("..", ".", "") for p in parts) \
            or "\\" in path or path.startswith("/"):
        raise UserError(f"{path!r} is not a file under schedules/ or message_templates/")
    if not parts[-1].endswith(SUFFIXES[parts[0]]):
        raise UserError(f"{path}: files under {parts[0]}/ end with "
                        f"{' or '.join(SUFFIXES[parts[0]])}")
    root = _roots(settings)[parts[0]].resolve()
    target = root.joinpath(*parts[1:]).resolve()
    if root not in target.parents:
        raise UserError(f"{path!r} is not inside {parts[0]}/")
    return target


def read_file(settings: Settings, path: str) -> str | None:
    """What the file holds on disk now (None: there is no such file)."""
    target = real_path(settings, path)
    try:
        return target.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def files(settings: Settings) -> list[str]:
    """Every editable file, as ``schedules/…`` and ``message_templates/…`` paths."""
    found = []
    for name, root in _roots(settings).items():
        if root.is_dir():
            found += [f"{name}/{p.relative_to(root).as_posix()}" for p in sorted(root.rglob("*"))
                      if p.is_file() and p.name.endswith(SUFFIXES[name])]
    return found


# --------------------------------------------------------------------------- drafts


def drafts(conn: Connection) -> dict[str, Draft]:
    return {row.path: Draft(row.path, row.content, row.base_digest, row.author, row.updated_at)
            for row in conn.execute(select(definition_drafts).order_by(definition_drafts.c.path))}


def save_draft(conn: Connection, settings: Settings, path: str, content: str, author: str,
               now: datetime) -> Draft | None:
    """Keep ``content`` as the draft of ``path`` (None, and no draft, when it is what the
    file holds already)."""
    if len(content) > MAX_FILE:
        raise UserError(f"{path} is over {MAX_FILE // 1024} KiB — a journey or template that "
                        "long is a mistake")
    content = content.replace("\r\n", "\n")
    on_disk = read_file(settings, path)
    existing = conn.execute(select(definition_drafts).where(definition_drafts.c.path == path)
                            ).first()
    if content == on_disk:
        conn.execute(delete(definition_drafts).where(definition_drafts.c.path == path))
        return None
    if existing is None:
        conn.execute(insert(definition_drafts).values(
            path=path, content=content, base_digest=_digest(on_disk), author=author,
            updated_at=now))
        base = _digest(on_disk)
    else:
        conn.execute(update(definition_drafts).where(definition_drafts.c.path == path)
                     .values(content=content, author=author, updated_at=now))
        base = existing.base_digest
    return Draft(path, content, base, author, now)


def discard_draft(conn: Connection, path: str) -> bool:
    return bool(conn.execute(delete(definition_drafts)
                             .where(definition_drafts.c.path == path)).rowcount)


# --------------------------------------------------------------------------- checking


@contextmanager
def workspace(settings: Settings, overlay: Mapping[str, str]) -> Iterator[Settings]:
    """Settings whose folders are a temporary copy of the real ones with ``overlay``
    (path → content) laid over them; removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="touchpoint-draft-") as tmp:
        roots = _roots(settings)
        copies = {name: Path(tmp) / name for name in roots}
        for name, root in roots.items():
            if root.is_dir():
                shutil.copytree(root, copies[name])
            else:
                copies[name].mkdir()
        for path, content in overlay.items():
            real_path(settings, path)  # (refuses a path outside the folders)
            target = Path(tmp).joinpath(*PurePosixPath(path).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content, encoding="utf-8")
        yield settings.model_copy(update={"schedules_dir": copies[SCHEDULES],
                                          "templates_dir": copies[TEMPLATES]})


def _relabel(found: Diagnostic, drafted: Settings) -> Diagnostic:
    """A problem found in the workspace, named by its logical path."""
    for name, root in _roots(drafted).items():
        prefix = str(root)
        if found.file == prefix or found.file.startswith(prefix + os.sep):
            rest = found.file[len(prefix):].lstrip(os.sep).replace(os.sep, "/")
            return Diagnostic(f"{name}/{rest}" if rest else name, found.line, found.message,
                              found.fix, found.severity, found.code)
    return found


@dataclass(frozen=True)
class Checked:
    definitions: Definitions
    problems: tuple[Diagnostic, ...]  # every problem, files named schedules/… and so on

    @property
    def errors(self) -> list[Diagnostic]:
        return [p for p in self.problems if p.severity == "error"]

    def of(self, path: str) -> list[Diagnostic]:
        return [p for p in self.problems if p.file == path]


def check(settings: Settings, overlay: Mapping[str, str], now: datetime) -> Checked:
    """Every check of `touchpoint validate`, on the files with ``overlay`` laid over them."""
    with workspace(settings, overlay) as drafted:
        definitions = check_definitions(drafted, now)
        problems = tuple(_relabel(d, drafted) for d in definitions.diagnostics)
    return Checked(definitions, problems)


def forecast_changes(db: Database, settings: Settings, running: Definitions,
                     overlay: Mapping[str, str], now: datetime,
                     days: float = LIMITS_DAYS) -> list[Change]:
    """What publishing ``overlay`` would change in the next ``days`` days."""
    before = forecast(db, settings, running, now, days)
    with workspace(settings, overlay) as drafted:
        definitions = check_definitions(drafted, now)
        if definitions.errors:
            raise UserError("the drafts have errors; fix them to see what they would change")
        after = forecast(db, drafted, definitions, now, days)
    return compare(before, after)


# --------------------------------------------------------------------------- publishing


def publish(conn: Connection, settings: Settings, author: str, now: datetime,
            note: str = "") -> Version:
    """Write every draft to its file and record the version (in ``conn``'s transaction:
    the drafts are gone and the version kept only if the files were written)."""
    pending = drafts(conn)
    if not pending:
        raise UserError("there is nothing to publish: no drafts")
    overlay = {path: d.content for path, d in pending.items()}
    found = check(settings, overlay, now)
    if found.errors:
        first = found.errors[0]
        raise UserError(f"{len(found.errors)} problem(s) must be fixed before publishing, "
                        f"e.g. {first}")
    changed: dict[str, dict[str, str | None]] = {}
    for path, draft in pending.items():
        current = read_file(settings, path)
        if _digest(current) != draft.base_digest:
            raise UserError(f"{path} changed on disk since this draft began (a hand edit or "
                            "git?) — open it again to see both, then publish")
        changed[path] = {"before": current, "after": draft.content}
    row = conn.execute(insert(definition_versions).values(
        author=author, at=now, note=note.strip(), files=changed)
        .returning(definition_versions.c.id)).one()
    conn.execute(delete(definition_drafts))
    for path, content in changed.items():
        _write(real_path(settings, path), content["after"] or "")
    return Version(row.id, author, now, note.strip(), changed)


def _write(target: Path, content: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.publishing")
    temporary.write_text(content, encoding="utf-8")
    os.replace(temporary, target)  # (a reader sees the old file or the new, never half)


def versions(conn: Connection, limit: int = 100) -> list[Version]:
    return [Version(row.id, row.author, row.at, row.note, row.files) for row in conn.execute(
        select(definition_versions).order_by(definition_versions.c.id.desc()).limit(limit))]


def version(conn: Connection, version_id: int) -> Version:
    row = conn.execute(select(definition_versions)
                       .where(definition_versions.c.id == version_id)).first()
    if row is None:
        raise NotFound(f"there is no version {version_id}")
    return Version(row.id, row.author, row.at, row.note, row.files)


def restore(conn: Connection, settings: Settings, version_id: int, side: str, author: str,
            now: datetime) -> list[str]:
    """Make drafts that put the files of version ``version_id`` back as they were
    ``side`` ("after" it was published, or "before" it); returns the paths drafted."""
    if side not in ("after", "before"):
        raise UserError("restore the files as they were 'after' the version or 'before' it")
    found = version(conn, version_id)
    drafted = []
    for path, contents in found.files.items():
        content = contents.get(side)
        if content is None:
            raise UserError(f"{path} did not exist {side} version {version_id}; Touchpoint "
                            "does not delete files — remove it by hand if you must")
        if save_draft(conn, settings, path, content, author, now) is not None:
            drafted.append(path)
    return drafted



def summary(changes: list[Change]) -> dict[str, Any]:
    """Counts of a forecast comparison, for a page's headline."""
    moved = sum(1 for c in changes if c.kind == "changed" and "at" in c.what)
    reworded = sum(1 for c in changes if c.kind == "changed" and "digest" in c.what)
    return {"added": sum(1 for c in changes if c.kind == "added"),
            "removed": sum(1 for c in changes if c.kind == "removed"),
            "moved": moved, "reworded": reworded, "total": len(changes)}


# --------------------------------------------------------------------------- editing


@dataclass
class Edit:
    """What the editor shows for the text being typed into one file."""

    path: str
    problems: list[Diagnostic]  # in this file, by line
    elsewhere: int  # errors in other files (other drafts)
    steps: list[tuple[str, str]]  # (journey, step) that use this template
    previews: list[Preview]  # one per step: as the recipients would get it


def template_name(path: str) -> tuple[str, str, str | None] | None:
    """(template name, channel, language) of a ``message_templates/…`` path."""
    parts = PurePosixPath(path).parts
    if not parts or parts[0] != TEMPLATES:
        return None
    pieces = parts[-1].split(".")
    if len(pieces) not in (3, 4) or pieces[-1] != "j2":
        return None
    language = pieces[1] if len(pieces) == 4 else None
    return "/".join([*parts[1:-1], pieces[0]]), pieces[-2], language


def try_edit(conn: Connection, settings: Settings, path: str, content: str, now: datetime,
             patient_id: str | None = None) -> Edit:
    """Check ``content`` as ``path`` (over the other drafts) and preview the steps that
    use it, for the sample patient or a real one."""
    real_path(settings, path)
    overlay = {p: d.content for p, d in drafts(conn).items()}
    overlay[path] = content.replace("\r\n", "\n")
    with workspace(settings, overlay) as drafted:
        definitions = check_definitions(drafted, now)
        problems = [_relabel(d, drafted) for d in definitions.diagnostics]
        mine = sorted((p for p in problems if p.file == path),
                      key=lambda p: (p.line or 0, p.severity != "error"))
        elsewhere = sum(1 for p in problems if p.file != path and p.severity == "error")
        edit = Edit(path, mine, elsewhere, [], [])
        named = template_name(path)
        if named is not None:
            name, channel, _ = named
            edit.steps = [(j.name, s.id) for j in definitions.journeys.values()
                          for s in j.steps if s.template == name and channel in s.channels]
            for journey, step in edit.steps:
                try:
                    edit.previews.append(preview(definitions, drafted, journey, step, now,
                                                 conn, patient_id))
                except UserError as exc:
                    edit.problems.append(Diagnostic(path, None, exc.message,
                                                    severity="warning", code="preview"))
    return edit


def template_fields(settings: Settings, now: datetime) -> dict[str, list[str]]:
    """The fields a template may use, by object (``patient``: first_name, …)."""
    found: dict[str, list[str]] = {}
    for name, value in sample_context(settings, now, recipient="contacts").items():
        if isinstance(value, Fields):
            found[name] = sorted(k for k in value._values if not k.startswith("_"))
        else:
            found[name] = []
    return dict(sorted(found.items()))

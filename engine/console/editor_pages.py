"""Journeys and templates, edited safely: drafts, live checks and previews, publish.

==============================  ==========================================================
GET  /edit                      every file under schedules/ and message_templates/, drafts
GET  /edit/{path}               the editor: text, problems by line, preview, fields
POST /edit/check                (fetch) problems and preview of the text being typed
POST /edit/save                 keep the text as the file's draft
POST /edit/discard              drop the file's draft
POST /edit/test-send            send the previewed step to the signed-in person
GET  /publish                   the drafts, their problems, what publishing would change
POST /publish                   write the drafts to the files, keep a version
GET  /versions                  published versions
GET  /versions/{id}             one version: each file before and after
POST /versions/{id}/restore     its files as drafts again (after it, or before it)
==============================  ==========================================================

Managers and owners only (``templates.edit``, ``publish``); every change is audited. The
application layer is :mod:`engine.drafts` (and :mod:`engine.preview`).
"""

from __future__ import annotations

import difflib
import json
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse

from engine import clock, drafts
from engine.console.core import Console, Guard, read_form, record_action, render, template
from engine.console.sessions import Session
from engine.errors import UserError
from engine.preview import send_test
from engine.timing import zone
from engine.validate import check_definitions


def add_routes(app: FastAPI, console: Console, guard: Guard) -> None:
    settings = console.settings
    practice = settings.practice.name

    def record(session: Session, request: Request, action: str, target: str = "",
               **detail: object) -> None:
        record_action(console, session, request, action, target, **detail)

    @app.get("/edit", response_class=HTMLResponse, include_in_schema=False)
    def edit_list(request: Request) -> Response:
        session = guard(request, "templates.edit")
        with console.db.transaction() as conn:
            pending = drafts.drafts(conn)
        return render("edit_list.html", session=session, practice=practice,
                      files=drafts.files(settings), drafts=pending,
                      rejected=console.live.problems)

    def editor(session: Session, path: str, *, content: str | None = None, notice: str = "",
               error: str = "", status: int = 200, patient: str = "") -> Response:
        now = clock.now()
        try:
            on_disk = drafts.read_file(settings, path)
        except UserError as exc:
            return render("not_found.html", 404, session=session, practice=practice,
                          what=exc.message)
        with console.db.transaction() as conn:
            draft = drafts.drafts(conn).get(path)
            text = content if content is not None else (
                draft.content if draft else on_disk or "")
            edit = drafts.try_edit(conn, settings, path, text, now, patient or None)
        return render("editor.html", status, session=session, practice=practice, path=path,
                      content=text, draft=draft, exists=on_disk is not None, edit=edit,
                      fields=drafts.template_fields(settings, now), notice=notice,
                      error=error, patient=patient, lines=json.dumps(_lines(edit)))

    @app.get("/edit/{path:path}", response_class=HTMLResponse, include_in_schema=False)
    def edit_file(request: Request, path: str, patient: str = "") -> Response:
        return editor(guard(request, "templates.edit"), path, patient=patient.strip()[:64])

    @app.post("/edit/check", include_in_schema=False)
    async def check(request: Request) -> Response:
        form = await read_form(request)
        guard(request, "templates.edit", form)
        path, patient = form.get("path", ""), form.get("patient", "").strip()[:64]
        try:
            with console.db.transaction() as conn:
                edit = drafts.try_edit(conn, settings, path, form.get("content", ""),
                                       clock.now(), patient or None)
        except UserError as exc:
            return JSONResponse({"detail": exc.message}, 422)
        return JSONResponse({
            "problems": template("_problems.html").render(edit=edit),
            "preview": template("_preview.html").render(edit=edit),
            "lines": _lines(edit)})

    @app.post("/edit/save", response_class=HTMLResponse, include_in_schema=False)
    async def save(request: Request) -> Response:
        form = await read_form(request)
        session = guard(request, "templates.edit", form)
        path, content = form.get("path", ""), form.get("content", "")
        try:
            with console.db.transaction() as conn:
                kept = drafts.save_draft(conn, settings, path, content, session.user.email,
                                         clock.now())
        except UserError as exc:
            return editor(session, path, content=content, error=exc.message, status=422)
        record(session, request, "draft.save" if kept else "draft.discard", path)
        return editor(session, path, notice="Draft saved. Nothing goes live until you "
                      "publish." if kept else "Same as the file: no draft kept.")

    @app.post("/edit/discard", response_class=HTMLResponse, include_in_schema=False)
    async def discard(request: Request) -> Response:
        form = await read_form(request)
        session = guard(request, "templates.edit", form)
        path = form.get("path", "")
        with console.db.transaction() as conn:
            dropped = drafts.discard_draft(conn, path)
        if dropped:
            record(session, request, "draft.discard", path)
        return editor(session, path, notice="Draft discarded." if dropped else "No draft.")

    @app.post("/edit/test-send", response_class=HTMLResponse, include_in_schema=False)
    async def test_send(request: Request) -> Response:
        form = await read_form(request)
        session = guard(request, "templates.edit", form)
        path, content = form.get("path", ""), form.get("content", "")
        journey, _, step = form.get("step", "").partition("/")
        channel = form.get("channel", "")
        to = session.user.email if channel == "email" else session.user.phone
        if not to:
            return editor(session, path, content=content, status=422,
                          error="Your account has no phone number for a test text — "
                                "`touchpoint users set-phone EMAIL PHONE` adds it.")
        overlay = {p: d.content for p, d in _drafts(console).items()}
        overlay[path] = content
        try:
            with drafts.workspace(settings, overlay) as drafted:
                definitions = check_definitions(drafted, clock.now()).raise_for_errors()
                sent = send_test(console.db, definitions, drafted, console.channels,
                                 journey, step, to, clock.now())
        except UserError as exc:
            return editor(session, path, content=content, error=exc.message, status=422)
        record(session, request, "test-send", path, touch_point=sent.id, channel=channel)
        where = "email" if channel == "email" else "phone"
        return editor(session, path, content=content,
                      notice=f"Test {channel} {sent.status} to your {where} "
                             f"(touch point {sent.id}).")

    def publish_page(session: Session, *, notice: str = "", error: str = "",
                     status: int = 200) -> Response:
        now = clock.now()
        with console.db.transaction() as conn:
            pending = drafts.drafts(conn)
        overlay = {p: d.content for p, d in pending.items()}
        checked = drafts.check(settings, overlay, now) if pending else None
        changes = []
        if checked is not None and not checked.errors:
            changes = drafts.forecast_changes(console.db, settings, console.definitions,
                                              overlay, now)
        diffs = {p: _diff(drafts.read_file(settings, p), d.content, p)
                 for p, d in pending.items()}
        tz = zone(settings.practice.timezone or "UTC")

        def local(at: str) -> str:
            instant = datetime.fromisoformat(at.replace("Z", "+00:00")).astimezone(tz)
            return f"{instant:%a %b %d %H:%M}"

        return render("publish.html", status, session=session, practice=practice,
                      drafts=pending, checked=checked, changes=changes, local=local,
                      summary=drafts.summary(changes), diffs=diffs, notice=notice,
                      error=error)

    @app.get("/publish", response_class=HTMLResponse, include_in_schema=False)
    def publish_get(request: Request) -> Response:
        return publish_page(guard(request, "publish"))

    @app.post("/publish", response_class=HTMLResponse, include_in_schema=False)
    async def publish_post(request: Request) -> Response:
        form = await read_form(request)
        session = guard(request, "publish", form)
        now = clock.now()
        try:
            with console.db.transaction() as conn:
                version = drafts.publish(conn, settings, session.user.email, now,
                                         form.get("note", ""))
        except UserError as exc:
            return publish_page(session, error=exc.message, status=422)
        record(session, request, "publish", f"version:{version.id}",
               files=sorted(version.files))
        console.live.reload("published")  # (what now runs)
        return versions_page(session, notice=f"Published version {version.id}: "
                             f"{len(version.files)} file(s) written. The daemon picks them "
                             "up within seconds.")

    def versions_page(session: Session, *, notice: str = "") -> Response:
        with console.db.transaction() as conn:
            found = drafts.versions(conn)
        return render("versions.html", session=session, practice=practice, versions=found,
                      notice=notice)

    @app.get("/versions", response_class=HTMLResponse, include_in_schema=False)
    def versions_get(request: Request) -> Response:
        return versions_page(guard(request, "templates.edit"))

    @app.get("/versions/{version_id}", response_class=HTMLResponse, include_in_schema=False)
    def version_get(request: Request, version_id: int) -> Response:
        session = guard(request, "templates.edit")
        try:
            with console.db.transaction() as conn:
                found = drafts.version(conn, version_id)
        except UserError as exc:
            return render("not_found.html", 404, session=session, practice=practice,
                          what=exc.message)
        diffs = {p: _diff(f.get("before"), f.get("after"), p) for p, f in found.files.items()}
        return render("version.html", session=session, practice=practice, version=found,
                      diffs=diffs)

    @app.post("/versions/{version_id}/restore", response_class=HTMLResponse,
              include_in_schema=False)
    async def restore(request: Request, version_id: int) -> Response:
        form = await read_form(request)
        session = guard(request, "publish", form)
        side = form.get("side", "after")
        try:
            with console.db.transaction() as conn:
                paths = drafts.restore(conn, settings, version_id, side, session.user.email,
                                       clock.now())
        except UserError as exc:
            return publish_page(session, error=exc.message, status=422)
        record(session, request, "revert" if side == "before" else "restore",
               f"version:{version_id}", files=paths)
        return publish_page(session, notice=f"Version {version_id}'s files as they were "
                            f"{side} it are now drafts: review what they change, then "
                            "publish." if paths else "The files are already like that.")


def _drafts(console: Console) -> dict[str, drafts.Draft]:
    with console.db.transaction() as conn:
        return drafts.drafts(conn)


def _lines(edit: drafts.Edit) -> dict[str, list[str]]:
    """Problems by line number, for the editor's gutter."""
    found: dict[str, list[str]] = {}
    for problem in edit.problems:
        if problem.line:
            found.setdefault(str(problem.line), []).append(
                f"{problem.severity}: {problem.message}")
    return found


def _diff(before: str | None, after: str | None, path: str) -> list[dict[str, Any]]:
    """A unified diff as lines with their kind (added, removed, context, header)."""
    lines = difflib.unified_diff((before or "").splitlines(), (after or "").splitlines(),
                                 f"{path} (before)", f"{path} (after)", lineterm="", n=2)
    kinds = {"+": "added", "-": "removed", "@": "header"}
    return [{"kind": "header" if line.startswith(("+++", "---")) else
             kinds.get(line[:1], "context"), "text": line} for line in lines]

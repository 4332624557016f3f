"""Errors of the REST API as RFC 9457 problem details (``application/problem+json``).

Every error under ``/api/`` has ``type`` (a ``urn:touchpoint:problem:…`` name), ``title``,
``status`` and ``detail``; a refused record adds ``errors: [{"field", "detail"}]`` naming
each bad field, a stale update adds ``current`` (the newer version stored). Messages
never echo patient data.

A body over the size limit is ``413 body-too-large`` (engine/webhooks/app.py's
``BodyLimit``); an exception no handler expected is ``500 internal-error``
(:class:`UnexpectedErrors`): its answer names nothing of the request and holds no
traceback, and the exception is logged server-side — its type, where it was raised and
its message masked (:func:`engine.privacy.redact`; a database error's message, which
can quote a row, is left out).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from pathlib import PurePath
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.privacy import redact

log = logging.getLogger("touchpoint.api")
MEDIA_TYPE = "application/problem+json"
API_PREFIX = "/api/"


class ProblemResponse(JSONResponse):
    media_type = MEDIA_TYPE


class Problem(Exception):
    """An API error: raised anywhere under a route, answered as problem+json."""

    def __init__(self, status: int, kind: str, detail: str, *, title: str | None = None,
                 headers: Mapping[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.title = title or HTTPStatus(status).phrase
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self, instance: str = "") -> dict[str, Any]:
        body: dict[str, Any] = {"type": f"urn:touchpoint:problem:{self.kind}",
                                "title": self.title, "status": self.status,
                                "detail": self.detail}
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body

    def response(self, instance: str = "") -> ProblemResponse:
        return ProblemResponse(self.body(instance), status_code=self.status,
                               headers=self.headers)


def invalid(errors: Sequence[Mapping[str, str]], detail: str = "") -> Problem:
    """422: the request names bad fields (nothing was changed)."""
    fields = ", ".join(dict.fromkeys(e["field"] for e in errors))
    return Problem(422, "invalid-fields",
                   detail or f"nothing was changed — correct {fields} and send it again",
                   title="The request has invalid fields", errors=list(errors))


def _field(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "path", "query", "header"):
        parts = parts[1:]
    return ".".join(parts) or "body"


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return exc.response(request.url.path)


async def _on_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if not request.url.path.startswith(API_PREFIX):
        return await request_validation_exception_handler(request, exc)
    errors = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            errors.append({"field": "body", "detail": "the body is not valid JSON"})
            continue
        # (pydantic's message, never the input value: it may be patient data)
        errors.append({"field": _field(error.get("loc", ())), "detail": str(error["msg"])})
    return invalid(errors).response(request.url.path)


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if not request.url.path.startswith(API_PREFIX):
        return await http_exception_handler(request, exc)
    slug = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "-")
    return Problem(exc.status_code, slug, str(exc.detail),
                   headers=exc.headers).response(request.url.path)


def too_large(limit: int) -> Problem:
    """413: the request body is over ``limit`` bytes (nothing was read or changed)."""
    return Problem(413, "body-too-large",
                   f"the request body is over the limit of {limit} bytes — nothing was "
                   "changed; send one record a request", title="The request body is too large")


def _described(exc: BaseException) -> str:
    """The exception for the server's log: its type and its message masked; a database
    error's message is left out (it can quote a row: names, numbers)."""
    if isinstance(exc, SQLAlchemyError):
        orig = getattr(exc, "orig", None)
        return type(exc).__name__ + (f" ({type(orig).__name__})" if orig is not None else "")
    said = redact(str(exc)).replace("\n", " ")[:300]
    return f"{type(exc).__name__}: {said}" if said else type(exc).__name__


def _route(scope: Scope) -> str:
    """The request's path with each path parameter as its name
    (``/api/v1/patients/{patient_id}``): the path itself names a record."""
    names = {str(v): k for k, v in (scope.get("path_params") or {}).items()}
    return "/".join(f"{{{names[part]}}}" if part in names else part
                    for part in str(scope.get("path", "")).split("/"))


def _where(exc: BaseException, frames: int = 6) -> str:
    """The innermost ``frames`` of the traceback as ``file:line in function`` (no source
    lines, no values)."""
    stack = traceback.extract_tb(exc.__traceback__)[-frames:]
    return " < ".join(f"{PurePath(f.filename).name}:{f.lineno} in {f.name}"
                      for f in reversed(stack))


class UnexpectedErrors:
    """ASGI middleware: an exception escaping a route under /api/ is answered ``500``
    problem+json (nothing of the request, no traceback) and logged with the route's
    template (``/api/v1/patients/{patient_id}``, not the id), :func:`_described` and
    where it was raised (:func:`_where`). Elsewhere — or once the answer has begun — the
    exception goes on to the server as before."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            if started:
                raise
            log.error("api: %s %s failed: %s (raised at %s)", scope.get("method"),
                      _route(scope), _described(exc), _where(exc),
                      extra={"event": "api_error"})
            problem = Problem(500, "internal-error",
                              "Touchpoint could not handle this request; nothing was "
                              "changed (one request, one transaction) and the error is in "
                              "the server's log — try again later")
            await problem.response()(scope, receive, send)


def install(app: FastAPI) -> None:
    """Answer errors under /api/ as problem+json (the app's other routes are unchanged)."""
    app.add_middleware(UnexpectedErrors)
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)

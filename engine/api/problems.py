"""Errors of the REST API as RFC 9457 problem details (``application/problem+json``).

Every error under ``/api/`` has ``type`` (a ``urn:touchpoint:problem:…`` name), ``title``,
``status`` and ``detail``; a refused record adds ``errors: [{"field", "detail"}]`` naming
each bad field, a stale update adds ``current`` (the newer version stored). Messages
never echo patient data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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


def install(app: FastAPI) -> None:
    """Answer errors under /api/ as problem+json (the app's other routes are unchanged)."""
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)

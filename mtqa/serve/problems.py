"""RFC 9457 problem details: every error the service answers is ``application/problem+json``."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.requests import Request

__all__ = ["PROBLEM_TYPE", "Problem", "ProblemError", "install_handlers", "problem_response",
           "validation_detail"]

logger = logging.getLogger(__name__)

#: base of the ``type`` URIs; each problem appends its slug
PROBLEM_TYPE = "urn:mtqa:problem:"
MEDIA_TYPE = "application/problem+json"

Problem = dict[str, Any]


class ProblemError(Exception):
    """An error the service answers with a problem document (raised inside request handling)."""

    def __init__(self, status: int, detail: str, *, slug: str | None = None,
                 headers: Mapping[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug or _slug(status)
        self.headers = dict(headers or {})
        self.extra = extra

    def to_dict(self) -> Problem:
        """The problem document."""
        return problem(self.status, self.detail, slug=self.slug, **self.extra)


def _slug(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "-")
    except ValueError:
        return f"http-{status}"


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def problem(status: int, detail: str, *, slug: str | None = None, **extra: Any) -> Problem:
    """A problem document: ``type``, ``title``, ``status``, ``detail`` and any extension members."""
    return {"type": PROBLEM_TYPE + (slug or _slug(status)), "title": _title(status),
            "status": status, "detail": detail, **extra}


def problem_response(status: int, detail: str, *, slug: str | None = None,
                     headers: Mapping[str, str] | None = None, **extra: Any) -> Response:
    """A problem document as a response."""
    body = json.dumps(problem(status, detail, slug=slug, **extra), ensure_ascii=False,
                      sort_keys=True)
    return Response(body, status_code=status, headers=dict(headers or {}), media_type=MEDIA_TYPE)


def validation_detail(errors: Any) -> tuple[str, list[dict[str, Any]]]:
    """A one-line detail naming each bad field, and the errors as plain data (no input echoed)."""
    items = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()))
        items.append({"field": loc, "message": str(e.get("msg", "")), "type": str(e.get("type", ""))})
    detail = "; ".join(f"{i['field']}: {i['message']}" for i in items) or "invalid request"
    return detail, items


async def _problem_handler(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, ProblemError):  # NOTE: registered for ProblemError only
        raise exc
    return problem_response(exc.status, exc.detail, slug=exc.slug, headers=exc.headers, **exc.extra)


async def _http_handler(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, StarletteHTTPException):
        raise exc
    detail = exc.detail if isinstance(exc.detail, str) else _title(exc.status_code)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no such resource: {request.url.path}"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return problem_response(exc.status_code, detail, headers=exc.headers)


async def _validation_handler(request: Request, exc: Exception) -> Response:
    detail, items = validation_detail(exc.errors())  # type: ignore[attr-defined]
    return problem_response(422, detail, slug="validation-error", errors=items)


async def _server_error_handler(request: Request, exc: Exception) -> Response:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(500, f"internal error ({type(exc).__name__}); see the server log")


def install_handlers(app: FastAPI) -> None:
    """Answer every error (ours, Starlette's 404/405, validation, crashes) with a problem."""
    from fastapi.exceptions import RequestValidationError

    app.add_exception_handler(ProblemError, _problem_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(Exception, _server_error_handler)


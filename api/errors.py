"""Map the domain error tree to HTTP, here and only here. Every error body is JSON:

    {"error": "<code>", "message": "<what went wrong and how to fix it>"}

No stack trace ever reaches a client: unexpected errors are logged with their trace and
answered with a 500 and a request id to find it in the logs.
"""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from streamrec.api.validation import describe, readable_errors
from streamrec.core.errors import (
    ConfigurationError,
    InvalidInput,
    NotFound,
    PublishError,
    ServiceUnavailable,
    StreamrecError,
)
from streamrec.core.unavailable import SERVICE_ERRORS, service_unavailable

log = logging.getLogger(__name__)

_STATUS: list[tuple[type[StreamrecError], int, str]] = [
    (NotFound, status.HTTP_404_NOT_FOUND, "not_found"),
    (InvalidInput, status.HTTP_422_UNPROCESSABLE_CONTENT, "invalid_input"),
    (ServiceUnavailable, status.HTTP_503_SERVICE_UNAVAILABLE, "service_unavailable"),
    (PublishError, status.HTTP_503_SERVICE_UNAVAILABLE, "publish_failed"),
    (ConfigurationError, status.HTTP_500_INTERNAL_SERVER_ERROR, "configuration_error"),
]
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "too_many_requests",
    503: "service_unavailable",
}


def error_body(code: str, message: str, **extra: object) -> dict[str, object]:
    return {"error": code, "message": message, **extra}


async def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    extra: dict[str, object] = {}
    if isinstance(exc, PublishError):
        # The client must know what Kafka may hold: how much was confirmed, and the ids that
        # make re-sending the whole batch safe.
        extra = {"published": exc.published, "unconfirmed": exc.failed, "event_ids": exc.event_ids}
    for kind, code, name in _STATUS:
        if isinstance(exc, kind):
            return JSONResponse(error_body(name, str(exc), **extra), status_code=code)
    return JSONResponse(error_body("error", str(exc)), status_code=500)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    """A Redis or SQL connection/timeout error escaped a store: the service is down, 503."""
    unavailable = service_unavailable(exc)
    if unavailable is None:  # registered only for the types it translates; kept honest
        return await _unexpected(request, exc)
    log.warning("%s %s: %s", request.method, request.url.path, unavailable)
    return await _domain_error(request, unavailable)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == status.HTTP_400_BAD_REQUEST and isinstance(exc.__cause__, ValueError):
        # FastAPI answers a body it cannot decode (not UTF-8) with a bare 400; like any other
        # malformed JSON (its json_invalid error) it is a broken rule: the documented 422.
        return JSONResponse(
            error_body("invalid_input", f"body: not valid JSON in UTF-8 ({exc.__cause__})"),
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )
    headers = getattr(exc, "headers", None)
    if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        # Starlette's Allow names the methods of the first route matching the path only; a
        # path served by several routes (GET and POST /v1/training/jobs) allows all of theirs.
        headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
    code = _HTTP_CODES.get(exc.status_code, "error")
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=headers
    )


def _allowed_methods(request: Request) -> list[str]:
    """The methods the OpenAPI document gives the request's path (generated once, cached)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        if compile_path(template)[0].match(request.url.path):
            methods |= {method.upper() for method in operations}
    return sorted(methods)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = readable_errors(exc.errors())
    return JSONResponse(
        error_body("invalid_input", describe(exc.errors()), details=errors),
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = uuid.uuid4().hex[:12]
    log.exception(
        "unhandled error %s on %s %s", request_id, request.method, request.url.path, exc_info=exc
    )
    return JSONResponse(
        error_body("internal_error", f"internal error (id {request_id}); see the server log"),
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StreamrecError, _domain_error)
    for kind in SERVICE_ERRORS:
        app.add_exception_handler(kind, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)

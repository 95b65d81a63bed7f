"""Request body size limit, as a plain ASGI middleware (like ``api.app.RequestTimer``).

A body larger than ``Settings.max_request_bytes`` is answered 413 before anything parses it:
at once when ``Content-Length`` says so, and, for a chunked or under-declared body, as soon as
the bytes received pass the limit (the app never sees more than the limit).

``SqlTimeLimit`` bounds the SQL a request makes: each PostgreSQL round trip while serving it
fails after ``Settings.sql_timeout_seconds`` (``core.db.sql_timeout``), a 503.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamrec.api.errors import error_body
from streamrec.core.db import sql_timeout


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` while the app reads the body: FastAPI re-raises an
    ``HTTPException`` from body reading (anything else it turns into a 400), and the error
    handlers answer it as 413 JSON."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _message(limit))


def _message(limit: int) -> str:
    return (
        f"the request body is larger than {limit} bytes (STREAMREC_MAX_REQUEST_BYTES): "
        "send less per request, e.g. split the batch"
    )


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _reject(send, self.max_bytes)
            return

        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def noting_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, noting_send)
        except BodyTooLarge:
            # Reached here only when no error handler answered it (a plain Starlette app).
            if started:
                raise
            await _reject(send, self.max_bytes)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # malformed: the server rejects it; counting still applies
    return None


async def _reject(send: Send, limit: int) -> None:
    body = json.dumps(error_body("payload_too_large", _message(limit))).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # The unread body is still on the wire: do not reuse this connection for it.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class SqlTimeLimit:
    """Every PostgreSQL round trip made while serving a request (on the event loop or in the
    threads ``asyncio.to_thread`` starts for it) ends within ``seconds``: a hung server gives a
    503 naming SQL instead of a request that never answers. Work outside requests (consumers,
    migrations at start-up, training jobs) is not bounded."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with sql_timeout(self.seconds):
            await self.app(scope, receive, send)

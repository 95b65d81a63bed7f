"""What the SDK raises. The Kafka publishers raise the domain errors of ``core.errors``; the HTTP
clients raise ``StreamrecClientError`` and its subclasses, which fit into the same tree, so one
``except`` covers both ways of talking to streamrec:

    StreamrecError                      every error streamrec raises on purpose
    ├── PublishError                    publishers: Kafka did not acknowledge events (retried)
    ├── ServiceUnavailable              something did not answer: try again later
    │   ├── (publishers)                Kafka did not answer, or the publisher is not started
    │   ├── APIConnectionError          client: the API did not answer, after the retries
    │   └── ServiceUnavailableError     client: the API answered 503, after the retries
    └── StreamrecClientError            every error of the HTTP clients
        ├── APIConnectionError          connection refused or reset, timeout; __cause__ is httpx's
        └── APIStatusError              an error status: status_code, code, message, body
            ├── AuthError               401/403: missing or wrong X-API-Key
            ├── NotFoundError           404: unknown user, item, model or version
            ├── InvalidRequestError     413/422: details names each field and its rule
            └── ServiceUnavailableError 503: Kafka, Redis, SQL or Qdrant behind the API is down

Any other error status (409, 429, 500) is a plain ``APIStatusError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from streamrec.core.errors import PublishError, ServiceUnavailable, StreamrecError

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "AuthError",
    "FieldError",
    "InvalidRequestError",
    "NotFoundError",
    "PublishError",
    "ServiceUnavailable",
    "ServiceUnavailableError",
    "StreamrecClientError",
    "StreamrecError",
    "error_for_response",
]


class StreamrecClientError(StreamrecError):
    """Base of every error the HTTP clients raise on purpose."""


class APIConnectionError(StreamrecClientError, ServiceUnavailable):
    """No answer from the API after the retries: connection refused or reset, or a timeout."""


class APIStatusError(StreamrecClientError):
    """The API answered with an error status. ``code`` and ``message`` are the API's error body
    (``{"error": code, "message": message}``); ``body`` is all of it."""

    def __init__(
        self, summary: str, *, status_code: int, code: str, message: str, body: dict[str, Any]
    ) -> None:
        super().__init__(summary)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.body = body


class AuthError(APIStatusError):
    """401 or 403: a write without the ingest key, or an admin call without the admin key."""


class NotFoundError(APIStatusError):
    """404: an unknown user (history), item, model or version."""


@dataclass(frozen=True)
class FieldError:
    """One broken rule of a rejected request: ``events[1].rating``, the rule, its type."""

    field: str
    msg: str
    type: str = ""


class InvalidRequestError(APIStatusError):
    """422 (a field breaks a rule; ``details`` names each) or 413 (too many events or bytes in
    one request: lower the client's ``batch_size``)."""

    @property
    def details(self) -> list[FieldError]:
        return [
            FieldError(str(d.get("field", "")), str(d.get("msg", "")), str(d.get("type", "")))
            for d in self.body.get("details") or []
            if isinstance(d, dict)
        ]


class ServiceUnavailableError(APIStatusError, ServiceUnavailable):
    """503 after the retries: a service behind the API is down. When Kafka did not take a batch
    of events (``code == "publish_failed"``), ``published`` and ``unconfirmed`` count them and
    ``event_ids`` lists the batch: re-sending it is safe (consumers drop ids they applied)."""

    @property
    def published(self) -> int | None:
        return self.body.get("published")

    @property
    def unconfirmed(self) -> int | None:
        return self.body.get("unconfirmed")

    @property
    def event_ids(self) -> list[str]:
        return list(self.body.get("event_ids") or [])


_BY_STATUS: dict[int, type[APIStatusError]] = {
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    413: InvalidRequestError,
    422: InvalidRequestError,
    503: ServiceUnavailableError,
}


def error_for_response(response: httpx.Response) -> APIStatusError:
    """The documented error for an error response (which must have been read)."""
    try:
        parsed = response.json()
    except ValueError:  # a proxy's HTML page, or an empty body
        parsed = None
    body: dict[str, Any] = (
        parsed if isinstance(parsed, dict) else {"message": response.text[:500].strip()}
    )
    code = str(body.get("error") or response.reason_phrase or "error")
    message = str(body.get("message") or response.reason_phrase)
    request = response.request
    kind = _BY_STATUS.get(response.status_code, APIStatusError)
    return kind(
        f"{request.method} {request.url.path}: {response.status_code} {code}: {message}",
        status_code=response.status_code,
        code=code,
        message=message,
        body=body,
    )

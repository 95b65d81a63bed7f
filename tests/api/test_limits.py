"""A request body over STREAMREC_MAX_REQUEST_BYTES gets 413 before it is parsed, whether its
size is declared (Content-Length) or it streams in chunks (issue 11, item 6)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from streamrec.api.app import create_app
from streamrec.core.settings import Settings
from tests.api.test_errors import RATING, assert_error
from tests.conftest import INGEST_KEY

pytestmark = pytest.mark.kafka

LIMIT = 4096
HEADERS = {"X-API-Key": INGEST_KEY, "content-type": "application/json"}


@pytest.fixture
async def limited(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update={"max_request_bytes": LIMIT}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://streamrec") as client:
            yield client


class Chunks:
    """A request body streamed in chunks of valid JSON (a list of ratings), counting how much
    the server pulled."""

    def __init__(self, events: int) -> None:
        self.events = events
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(self.events):
            chunk = (b"[" if i == 0 else b",") + json.dumps(RATING).encode()
            self.sent += len(chunk)
            yield chunk
        yield b"]"


def batch_of(events: int) -> bytes:
    return json.dumps([RATING] * events).encode()


async def test_a_body_within_the_limit_is_accepted(limited: httpx.AsyncClient) -> None:
    body = batch_of(40)
    assert len(body) < LIMIT
    response = await limited.post("/v1/events", content=body, headers=HEADERS)
    assert response.status_code == 202, response.text


async def test_a_declared_oversized_body_is_413_unread(limited: httpx.AsyncClient) -> None:
    body = Chunks(10_000)
    declared = {**HEADERS, "content-length": str(10 * LIMIT)}
    response = await limited.post("/v1/events", content=body, headers=declared)
    assert_error(response, 413, "payload_too_large", str(LIMIT), "STREAMREC_MAX_REQUEST_BYTES")
    assert body.sent == 0  # refused on the header alone: not a byte was read


async def test_a_real_oversized_body_is_413(limited: httpx.AsyncClient) -> None:
    response = await limited.post("/v1/events", content=batch_of(200), headers=HEADERS)
    assert_error(response, 413, "payload_too_large", str(LIMIT))


async def test_a_chunked_oversized_body_is_413_once_past_the_limit(
    limited: httpx.AsyncClient,
) -> None:
    body = Chunks(10_000)  # ~700 kB, no Content-Length: Transfer-Encoding chunked
    response = await limited.post("/v1/events", content=body, headers=HEADERS)
    assert_error(response, 413, "payload_too_large", str(LIMIT))
    # Reading stopped at the first chunk past the limit, long before the end of the stream.
    assert LIMIT < body.sent < LIMIT + 200, body.sent


async def test_other_routes_are_limited_too(limited: httpx.AsyncClient) -> None:
    texts = {"texts": ["x" * 1000] * 10}
    response = await limited.post("/v1/embeddings/doc2vec/bulk", json=texts)
    assert_error(response, 413, "payload_too_large")


def test_the_default_admits_the_largest_event_batch() -> None:
    longest_id = "u" * 128
    event = {**RATING, "user_id": longest_id, "item_id": longest_id}
    event |= {"event_id": "6f1c9d7e-8a4b-4c2d-9e3f-0a1b2c3d4e5f", "ts": "2024-01-01T00:00:00Z"}
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    largest = json.dumps([event] * defaults.max_events_per_request).encode()
    assert len(largest) < defaults.max_request_bytes

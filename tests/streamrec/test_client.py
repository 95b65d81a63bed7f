"""The HTTP clients: a round trip through the real app (its consumers running in-process,
reached over httpx's ASGI transport), the API's errors as the documented exceptions, and the
retries against transport-level fakes (httpx.MockTransport) that answer 503 or fail to connect.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable, Iterator, Sequence

import httpx
import pytest

from streamrec.client import AsyncStreamrecClient, RetryPolicy, StreamrecClient
from streamrec.core.errors import ServiceUnavailable
from streamrec.errors import (
    APIConnectionError,
    AuthError,
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
)
from streamrec.schemas.api import EventsAccepted, HistoryItem, Recommendations
from streamrec.schemas.events import ClickEvent, ItemEvent, RatingEvent
from streamrec.schemas.models import ModelName
from tests.conftest import INGEST_KEY, wait_until

BASE = "http://streamrec"
Handler = Callable[[httpx.Request], httpx.Response]


class LoopTransport(httpx.BaseTransport):
    """Lets a blocking client, run in a worker thread, reach the app on the test's event loop:
    each request is handed to an async transport on that loop."""

    def __init__(self, transport: httpx.AsyncBaseTransport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()

        async def send() -> httpx.Response:
            forwarded = httpx.Request(
                request.method, request.url, headers=request.headers, content=body
            )
            response = await self._transport.handle_async_request(forwarded)
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
            return httpx.Response(response.status_code, headers=response.headers, content=raw)

        return asyncio.run_coroutine_threadsafe(send(), self._loop).result()


def _accepted(request: httpx.Request) -> httpx.Response:
    """What the API answers a POST of events, counted from the body."""
    sent = json.loads(request.content)
    batch = sent if isinstance(sent, list) else [sent]
    topics: dict[str, int] = {}
    for event in batch:
        topic = {"rating": "streamrec.ratings", "click": "streamrec.clicks"}[event["type"]]
        topics[topic] = topics.get(topic, 0) + 1
    return httpx.Response(202, json={"accepted": len(batch), "by_topic": topics})


def _failing_then(failures: Sequence[httpx.Response | Exception], then: Handler) -> Handler:
    """A handler that answers (or raises) ``failures`` in order, then hands over to ``then``."""
    pending = iter(failures)

    def handle(request: httpx.Request) -> httpx.Response:
        failure = next(pending, None)
        if failure is None:
            return then(request)
        if isinstance(failure, Exception):
            raise failure
        return failure

    return handle


def _unavailable() -> httpx.Response:
    return httpx.Response(
        503, json={"error": "service_unavailable", "message": "Redis is unavailable"}
    )


class Recorder:
    """Requests a handler saw, and the waits the client asked for instead of sleeping."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

    def transport(self) -> httpx.MockTransport:
        def record(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return self.handler(request)

        return httpx.MockTransport(record)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield port


# -- against the running app ---------------------------------------------------------------------
@pytest.mark.kafka
async def test_a_rating_posted_through_the_client_reaches_history_and_recommendations(
    app_client: tuple,
) -> None:
    app, _ = app_client
    transport = httpx.ASGITransport(app=app)
    async with AsyncStreamrecClient(BASE, api_key=INGEST_KEY, transport=transport) as client:
        catalog = await client.publish_many(
            [
                ItemEvent(item_id="m1", title="Heat (1995)", genres=["Crime", "Drama"]),
                ItemEvent(item_id="m2", title="Clueless (1995)", genres=["Comedy"]),
            ]
        )
        assert catalog == EventsAccepted(accepted=2, by_topic={"streamrec.items": 2})
        rated = await client.publish(RatingEvent(user_id="alice", item_id="m1", rating=4.5))
        assert rated == EventsAccepted(accepted=1, by_topic={"streamrec.ratings": 1})

        async def in_history() -> bool:
            try:
                history = await client.history("alice")
            except NotFoundError:  # the features group has not applied the rating yet
                return False
            return history.items == [HistoryItem(item_id="m1", title="Heat (1995)")]

        await wait_until(in_history)
        history = await client.history("alice")
        assert (history.user_id, history.ratings, history.mean_rating) == ("alice", 1, 4.5)

        for_bob = await client.recommendations("bob", k=5)
        assert isinstance(for_bob, Recommendations)
        assert for_bob.model == ModelName.POPULAR and not for_bob.known_user
        assert [(i.item_id, i.title) for i in for_bob.items][:1] == [("m1", "Heat (1995)")]
        for_alice = await client.recommendations("alice", k=5)  # what she rated is left out
        assert "m1" not in [i.item_id for i in for_alice.items]
        with_seen = await client.recommendations("alice", k=5, exclude_seen=False)
        assert "m1" in [i.item_id for i in with_seen.items]


@pytest.mark.kafka
async def test_the_blocking_client_counts_each_click_of_a_list_once(app_client: tuple) -> None:
    """Three click objects are three events (each its own event_id): history counts three."""
    app, _ = app_client
    transport = LoopTransport(httpx.ASGITransport(app=app), asyncio.get_running_loop())
    client = StreamrecClient(BASE, api_key=INGEST_KEY, transport=transport)
    try:
        clicks = [ClickEvent(user_id="carol", item_id="m1") for _ in range(3)]
        accepted = await asyncio.to_thread(client.publish_many, clicks)
        assert accepted == EventsAccepted(accepted=3, by_topic={"streamrec.clicks": 3})

        async def counted() -> bool:
            try:
                history = await asyncio.to_thread(client.history, "carol")
            except NotFoundError:
                return False
            return history.clicks == 3

        await wait_until(counted)
    finally:
        client.close()


@pytest.mark.kafka
async def test_the_apis_errors_are_the_documented_exceptions(app_client: tuple) -> None:
    app, _ = app_client
    transport = httpx.ASGITransport(app=app)
    async with AsyncStreamrecClient(BASE, api_key=INGEST_KEY, transport=transport) as client:
        # A rating of 7 that only the server checks (model_construct skips validation).
        bad = RatingEvent.model_construct(user_id="alice", item_id="m1", rating=7.0)
        with pytest.raises(InvalidRequestError) as invalid:
            await client.publish_many([RatingEvent(user_id="alice", item_id="m1", rating=4), bad])
        assert (invalid.value.status_code, invalid.value.code) == (422, "invalid_input")
        assert [d.field for d in invalid.value.details] == ["events[1].rating"]
        assert "less than or equal to 5" in invalid.value.details[0].msg
        assert "events[1].rating" in str(invalid.value)

        with pytest.raises(NotFoundError, match="has no events yet") as missing:
            await client.history("nobody")
        assert (missing.value.status_code, missing.value.code) == (404, "not_found")

    async with AsyncStreamrecClient(BASE, transport=transport) as anonymous:
        with pytest.raises(AuthError, match="X-API-Key") as denied:
            await anonymous.publish(RatingEvent(user_id="alice", item_id="m1", rating=4))
        assert denied.value.status_code == 401


# -- batching and retries (transport-level fakes) ------------------------------------------------
async def test_publish_many_sends_requests_of_at_most_batch_size_in_order() -> None:
    recorder = Recorder(_accepted)
    events = [RatingEvent(user_id="u", item_id=str(n), rating=3) for n in range(5)]
    async with AsyncStreamrecClient(
        BASE, api_key="k", batch_size=2, transport=recorder.transport()
    ) as client:
        accepted = await client.publish_many(iter(events))
        assert await client.publish_many([]) == EventsAccepted(accepted=0, by_topic={})
    assert accepted == EventsAccepted(accepted=5, by_topic={"streamrec.ratings": 5})
    sent = [json.loads(r.content) for r in recorder.requests]
    assert [[e["item_id"] for e in batch] for batch in sent] == [["0", "1"], ["2", "3"], ["4"]]
    assert all(r.headers["X-API-Key"] == "k" for r in recorder.requests)


async def test_a_503_is_retried_with_growing_waits_and_the_same_event_ids() -> None:
    recorder = Recorder(_failing_then([_unavailable(), _unavailable()], _accepted))
    event = RatingEvent(user_id="u", item_id="i", rating=3)
    async with AsyncStreamrecClient(
        BASE, transport=recorder.transport(), sleep=recorder.asleep
    ) as client:
        assert (await client.publish(event)).accepted == 1
    assert recorder.sleeps == [0.2, 0.4]
    assert [json.loads(r.content)["event_id"] for r in recorder.requests] == [
        str(event.event_id)
    ] * 3


def test_the_blocking_client_retries_a_503_and_reads_the_answer() -> None:
    answer = Recommendations(
        request_id="r", user_id="u", model="popular", known_user=False, items=[]
    )
    recorder = Recorder(
        _failing_then(
            [_unavailable()], lambda _: httpx.Response(200, text=answer.model_dump_json())
        )
    )
    with StreamrecClient(BASE, transport=recorder.transport(), sleep=recorder.sleep) as client:
        assert client.recommendations("u", k=3, genres=["Drama", "Crime"]) == answer
    assert recorder.sleeps == [0.2]
    query = recorder.requests[-1].url.params
    assert (query["k"], query["exclude_seen"]) == ("3", "true")
    assert query.get_list("genres") == ["Drama", "Crime"]
    assert "model" not in query and "version" not in query  # the API's defaults


def test_retry_after_replaces_the_backoff_within_the_cap() -> None:
    slow = [
        httpx.Response(503, headers={"Retry-After": "1.5"}),
        httpx.Response(503, headers={"Retry-After": "120"}),
    ]
    recorder = Recorder(
        _failing_then(slow, lambda _: httpx.Response(200, json={"user_id": "u", "items": []}))
    )
    with StreamrecClient(BASE, transport=recorder.transport(), sleep=recorder.sleep) as client:
        assert client.history("u").user_id == "u"
    assert recorder.sleeps == [1.5, RetryPolicy().max_backoff_seconds]


async def test_a_503_after_the_last_retry_carries_what_kafka_may_hold() -> None:
    body = {
        "error": "publish_failed",
        "message": "Kafka did not acknowledge 1 of 1 events",
        "published": 0,
        "unconfirmed": 1,
        "event_ids": ["e1"],
    }
    recorder = Recorder(lambda _: httpx.Response(503, json=body))
    retry = RetryPolicy(retries=2, backoff_seconds=0.5)
    async with AsyncStreamrecClient(
        BASE, transport=recorder.transport(), retry=retry, sleep=recorder.asleep
    ) as client:
        with pytest.raises(ServiceUnavailableError, match="publish_failed") as failed:
            await client.publish(RatingEvent(user_id="u", item_id="i", rating=3))
    assert len(recorder.requests) == 3 and recorder.sleeps == [0.5, 1.0]
    error = failed.value
    assert (error.published, error.unconfirmed, error.event_ids) == (0, 1, ["e1"])
    assert isinstance(error, ServiceUnavailable)  # one except for "try later", Kafka or API


def test_an_error_a_retry_cannot_fix_is_raised_at_once() -> None:
    recorder = Recorder(lambda _: httpx.Response(404, json={"error": "not_found", "message": "x"}))
    client = StreamrecClient(BASE, transport=recorder.transport(), sleep=recorder.sleep)
    with client, pytest.raises(NotFoundError):
        client.similar_items("i", model=ModelName.MF)
    assert len(recorder.requests) == 1 and recorder.sleeps == []
    assert recorder.requests[0].url == f"{BASE}/v1/items/i/similar?model=mf&k=10"


async def test_connection_errors_are_retried_then_raised_as_api_connection_error() -> None:
    refused = httpx.ConnectError("connection refused")
    recovered = Recorder(_failing_then([refused], _accepted))
    async with AsyncStreamrecClient(
        BASE, transport=recovered.transport(), sleep=recovered.asleep
    ) as client:
        assert (await client.publish(ClickEvent(user_id="u", item_id="i"))).accepted == 1
    assert recovered.sleeps == [0.2]

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    down = Recorder(refuse)
    async with AsyncStreamrecClient(BASE, transport=down.transport(), sleep=down.asleep) as client:
        with pytest.raises(APIConnectionError, match="no answer after 4 attempt") as failed:
            await client.history("u")
    assert isinstance(failed.value.__cause__, httpx.ConnectError)
    assert isinstance(failed.value, ServiceUnavailable) and len(down.requests) == 4


def test_a_closed_port_is_an_api_connection_error_naming_the_address(closed_port: int) -> None:
    sleeps: list[float] = []
    base = f"http://127.0.0.1:{closed_port}"
    client = StreamrecClient(base, retry=RetryPolicy(retries=1), sleep=sleeps.append)
    with client, pytest.raises(APIConnectionError, match=f"GET {base}/v1/users/u/history: "):
        client.history("u")
    assert sleeps == [0.2]


def test_a_transport_error_a_retry_cannot_fix_is_raised_at_once() -> None:
    sleeps: list[float] = []
    client = StreamrecClient("ftp://streamrec", sleep=sleeps.append)
    with client, pytest.raises(APIConnectionError, match="UnsupportedProtocol") as failed:
        client.history("u")
    assert isinstance(failed.value.__cause__, httpx.UnsupportedProtocol) and sleeps == []


def test_ids_are_escaped_in_paths() -> None:
    recorder = Recorder(lambda _: httpx.Response(200, json={"user_id": "a/b?c", "items": []}))
    with StreamrecClient(BASE, transport=recorder.transport()) as client:
        client.history("a/b?c", n=5)
    assert recorder.requests[0].url.raw_path == b"/v1/users/a%2Fb%3Fc/history?n=5"


def test_a_batch_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="batch_size is at least 1"):
        StreamrecClient(BASE, batch_size=0)

"""HTTP clients of the streamrec API: ``StreamrecClient`` (blocking) and ``AsyncStreamrecClient``.

    with StreamrecClient("http://localhost:8000", api_key=INGEST_KEY) as client:
        client.publish(RatingEvent(user_id="alice", item_id="m1", rating=4.5))
        top = client.recommendations("alice", k=5)       # a schemas.api.Recommendations

Events go to ``POST /v1/events`` in requests of at most ``batch_size`` events (the API's limit,
``STREAMREC_MAX_EVENTS_PER_REQUEST``, is 1,000 by default). Answers are the API's own response
models (``schemas.api``). A request the API cannot serve for now (503; 502 and 504 from a proxy in
front of it) or that gets no answer (connection refused or reset, a timeout) is retried with
exponential backoff (``RetryPolicy``); what still fails raises the errors of ``streamrec.errors``.
Retrying a POST of events is safe: each event keeps its ``event_id``, and the consumers apply an
id once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from streamrec.errors import APIConnectionError, error_for_response
from streamrec.schemas.api import (
    EventsAccepted,
    Recommendations,
    RerankPolicy,
    SimilarItems,
    UserHistory,
)
from streamrec.schemas.events import Event, EventListAdapter
from streamrec.schemas.models import ModelName

__all__ = ["DEFAULT_BATCH_SIZE", "AsyncStreamrecClient", "RetryPolicy", "StreamrecClient"]

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

DEFAULT_BATCH_SIZE = 1000  # the API's default STREAMREC_MAX_EVENTS_PER_REQUEST
RETRIED_STATUSES = frozenset({502, 503, 504})
# Failures after which the request may not have reached the API, or its answer was lost. Other
# transport errors (an unsupported URL scheme, a misconfigured proxy) do not get better by
# waiting: raised at once, as APIConnectionError too.
RETRIED_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
_JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a request is retried: ``retries`` times after the first
    attempt, waiting ``backoff_seconds`` before the first retry and twice as long before each
    next one, at most ``max_backoff_seconds`` (a 503's ``Retry-After`` in seconds, when the
    API or a proxy sends one, replaces the backoff, within the same cap)."""

    retries: int = 3
    backoff_seconds: float = 0.2
    max_backoff_seconds: float = 5.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff_seconds < 0 or self.max_backoff_seconds < 0:
            raise ValueError(f"retries and waits are not negative: {self}")

    def wait(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait after failed attempt ``attempt`` (0: the first one); None when no
        retry is left."""
        if attempt >= self.retries:
            return None
        after = _retry_after(response) if response is not None else None
        wait = self.backoff_seconds * 2**attempt if after is None else after
        return min(wait, self.max_backoff_seconds)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:  # an HTTP date: rare on a 503, and the backoff serves as well
        return None


class _Requests:
    """What both clients send and how they read the answers (no I/O here)."""

    def __init__(self, retry: RetryPolicy, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size is at least 1, not {batch_size}")
        self._retry = retry
        self._batch_size = batch_size

    def _batches(self, events: Iterable[Event]) -> Iterator[list[Event]]:
        batch: list[Event] = []
        for event in events:
            batch.append(event)
            if len(batch) == self._batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _next_wait(self, attempt: int, outcome: httpx.Response | Exception) -> float | None:
        """How long to wait before retrying, None to stop here (success, or an answer or
        failure a retry would not change, or no retry left)."""
        if isinstance(outcome, httpx.Response):
            if outcome.status_code not in RETRIED_STATUSES:
                return None
            wait = self._retry.wait(attempt, outcome)
            what = f"{outcome.status_code} {outcome.reason_phrase}"
        elif isinstance(outcome, RETRIED_ERRORS):
            wait = self._retry.wait(attempt, None)
            what = repr(outcome)
        else:
            return None
        if wait is not None:
            log.warning("%s; retry %d/%d in %.2fs", what, attempt + 1, self._retry.retries, wait)
        return wait


def _headers(api_key: str | None) -> dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


def _user_path(user_id: str, what: str) -> str:
    return f"/v1/users/{quote(user_id, safe='')}/{what}"


def _similar_path(item_id: str) -> str:
    return f"/v1/items/{quote(item_id, safe='')}/similar"


def _event_body(event: Event) -> bytes:
    return event.model_dump_json().encode()


def _batch_body(batch: list[Event]) -> bytes:
    return EventListAdapter.dump_json(batch)


def _recommendation_params(
    k: int,
    model: ModelName | str | None,
    exclude_seen: bool,
    genres: Sequence[str] | None,
    variant: str,
    rerank: RerankPolicy | None,
    version: int | None,
) -> dict[str, Any]:
    return _without_none(
        {
            "k": k,
            "model": model,
            "exclude_seen": exclude_seen,
            "genres": list(genres) if genres else None,
            "variant": variant,
            "rerank": rerank,
            "version": version,
        }
    )


def _without_none(params: Mapping[str, Any]) -> dict[str, Any]:
    """The query parameters given: one left out takes the API's default (model=: popular for
    recommendations, the content model for similar items)."""
    return {name: value for name, value in params.items() if value is not None}


def _parse(response: httpx.Response, model: type[M]) -> M:
    if response.is_error:
        raise error_for_response(response)
    return model.model_validate_json(response.content)


def _connection_error(
    method: str, url: httpx.URL, attempts: int, exc: Exception
) -> APIConnectionError:
    return APIConnectionError(
        f"{method} {url}: no answer after {attempts} attempt(s): {type(exc).__name__}: {exc}"
    )


def _merge(answers: Sequence[EventsAccepted]) -> EventsAccepted:
    by_topic: Counter[str] = Counter()
    for answer in answers:
        by_topic.update(answer.by_topic)
    return EventsAccepted(accepted=sum(a.accepted for a in answers), by_topic=dict(by_topic))


class StreamrecClient(_Requests):
    """A blocking client of the API (``httpx.Client``); use it as a context manager, or
    ``close()`` it. ``api_key`` (the ingest or admin key) is needed to publish events.
    ``timeout`` bounds each attempt; ``transport`` replaces httpx's network transport (tests,
    custom TLS or proxies); ``sleep`` waits between retries (tests pass one that records)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 10.0,
        retry: RetryPolicy = RetryPolicy(),
        batch_size: int = DEFAULT_BATCH_SIZE,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(retry, batch_size)
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def publish(self, event: Event) -> EventsAccepted:
        """Publish one event; returns once Kafka has it (202)."""
        return _parse(self._post_events(_event_body(event)), EventsAccepted)

    def publish_many(self, events: Iterable[Event]) -> EventsAccepted:
        """Publish events in requests of at most ``batch_size``, in order; the counts of all
        of them. When one request fails, those before it are published: re-sending the whole
        lot is safe (the same event ids)."""
        answers = [
            _parse(self._post_events(_batch_body(batch)), EventsAccepted)
            for batch in self._batches(events)
        ]
        return _merge(answers)

    def recommendations(
        self,
        user_id: str,
        *,
        k: int = 10,
        model: ModelName | str | None = None,
        exclude_seen: bool = True,
        genres: Sequence[str] | None = None,
        variant: str = "default",
        rerank: RerankPolicy | None = None,
        version: int | None = None,
    ) -> Recommendations:
        """``GET /v1/users/{user_id}/recommendations`` (see the API section of the README)."""
        params = _recommendation_params(k, model, exclude_seen, genres, variant, rerank, version)
        return _parse(
            self._request("GET", _user_path(user_id, "recommendations"), params), Recommendations
        )

    def similar_items(
        self, item_id: str, *, model: ModelName | str | None = None, k: int = 10
    ) -> SimilarItems:
        """``GET /v1/items/{item_id}/similar``: nearest items in ``model``'s item vectors."""
        params = _without_none({"model": model, "k": k})
        return _parse(self._request("GET", _similar_path(item_id), params), SimilarItems)

    def history(self, user_id: str, *, n: int = 50) -> UserHistory:
        """``GET /v1/users/{user_id}/history``: recent items and counters; ``NotFoundError``
        for a user with no events yet."""
        return _parse(self._request("GET", _user_path(user_id, "history"), {"n": n}), UserHistory)

    def _post_events(self, body: bytes) -> httpx.Response:
        return self._request("POST", "/v1/events", content=body)

    def _request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        content: bytes | None = None,
    ) -> httpx.Response:
        attempt = 0
        while True:
            outcome: httpx.Response | Exception
            try:
                outcome = self._http.request(
                    method, path, params=params, content=content, headers=_JSON if content else None
                )
            except httpx.TransportError as exc:
                outcome = exc
            wait = self._next_wait(attempt, outcome)
            if wait is None:
                if isinstance(outcome, Exception):
                    url = self._http.base_url.join(path)
                    raise _connection_error(method, url, attempt + 1, outcome) from outcome
                return outcome
            self._sleep(wait)
            attempt += 1


class AsyncStreamrecClient(_Requests):
    """The same client on asyncio (``httpx.AsyncClient``); ``async with`` it, or
    ``await aclose()``. ``transport`` may be ``httpx.ASGITransport(app=app)`` to talk to an
    app in the same process."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 10.0,
        retry: RetryPolicy = RetryPolicy(),
        batch_size: int = DEFAULT_BATCH_SIZE,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(retry, batch_size)
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def publish(self, event: Event) -> EventsAccepted:
        """Publish one event; returns once Kafka has it (202)."""
        return _parse(await self._post_events(_event_body(event)), EventsAccepted)

    async def publish_many(self, events: Iterable[Event]) -> EventsAccepted:
        """Publish events in requests of at most ``batch_size``, one after the other, in
        order; the counts of all of them. When one request fails, those before it are
        published: re-sending the whole lot is safe (the same event ids)."""
        answers = [
            _parse(await self._post_events(_batch_body(batch)), EventsAccepted)
            for batch in self._batches(events)
        ]
        return _merge(answers)

    async def recommendations(
        self,
        user_id: str,
        *,
        k: int = 10,
        model: ModelName | str | None = None,
        exclude_seen: bool = True,
        genres: Sequence[str] | None = None,
        variant: str = "default",
        rerank: RerankPolicy | None = None,
        version: int | None = None,
    ) -> Recommendations:
        """``GET /v1/users/{user_id}/recommendations`` (see the API section of the README)."""
        params = _recommendation_params(k, model, exclude_seen, genres, variant, rerank, version)
        response = await self._request("GET", _user_path(user_id, "recommendations"), params)
        return _parse(response, Recommendations)

    async def similar_items(
        self, item_id: str, *, model: ModelName | str | None = None, k: int = 10
    ) -> SimilarItems:
        """``GET /v1/items/{item_id}/similar``: nearest items in ``model``'s item vectors."""
        params = _without_none({"model": model, "k": k})
        return _parse(await self._request("GET", _similar_path(item_id), params), SimilarItems)

    async def history(self, user_id: str, *, n: int = 50) -> UserHistory:
        """``GET /v1/users/{user_id}/history``: recent items and counters; ``NotFoundError``
        for a user with no events yet."""
        response = await self._request("GET", _user_path(user_id, "history"), {"n": n})
        return _parse(response, UserHistory)

    async def _post_events(self, body: bytes) -> httpx.Response:
        return await self._request("POST", "/v1/events", content=body)

    async def _request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        content: bytes | None = None,
    ) -> httpx.Response:
        attempt = 0
        while True:
            outcome: httpx.Response | Exception
            try:
                outcome = await self._http.request(
                    method, path, params=params, content=content, headers=_JSON if content else None
                )
            except httpx.TransportError as exc:
                outcome = exc
            wait = self._next_wait(attempt, outcome)
            if wait is None:
                if isinstance(outcome, Exception):
                    url = self._http.base_url.join(path)
                    raise _connection_error(method, url, attempt + 1, outcome) from outcome
                return outcome
            await self._sleep(wait)
            attempt += 1

"""The streamrec SDK: what an app needs to feed streamrec and read its recommendations.

    import streamrec

    # straight into Kafka (async; SyncEventPublisher blocks)
    async with streamrec.EventPublisher(["127.0.0.1:9092"]) as publisher:
        await publisher.publish(streamrec.RatingEvent(user_id="alice", item_id="m1", rating=4.5))

    # through the API (blocking; AsyncStreamrecClient on asyncio)
    with streamrec.StreamrecClient("http://localhost:8000", api_key=INGEST_KEY) as client:
        client.publish(streamrec.ClickEvent(user_id="alice", item_id="m1"))
        top = client.recommendations("alice", k=5)

It imports the event and API models (pydantic), the publishers (aiokafka) and httpx: nothing of
the server (no torch, gensim, FastAPI, Redis or SQL clients). Errors: ``streamrec.errors``.

The server's packages are installed under this one too (``streamrec.core``, ``streamrec.stores``,
… ``streamrec.apps``: streamrec/ links to the repository's top-level folders), so nothing generic
such as ``core`` or ``api`` lands in the global import namespace. Importing one of them runs this
file first, which is why the SDK's names load on first use (PEP 562) rather than here: the CLI and
the server do not pay for aiokafka and httpx unless they use them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamrec.client import (
        DEFAULT_BATCH_SIZE,
        AsyncStreamrecClient,
        RetryPolicy,
        StreamrecClient,
    )
    from streamrec.errors import (
        APIConnectionError,
        APIStatusError,
        AuthError,
        FieldError,
        InvalidRequestError,
        NotFoundError,
        PublishError,
        ServiceUnavailable,
        ServiceUnavailableError,
        StreamrecClientError,
        StreamrecError,
    )
    from streamrec.producers.publisher import EventPublisher, SyncEventPublisher
    from streamrec.schemas.api import (
        EventsAccepted,
        FallbackReason,
        HistoryItem,
        Recommendations,
        RecommendedItem,
        RerankedBy,
        SimilarItems,
        UserHistory,
    )
    from streamrec.schemas.events import (
        ClickEvent,
        Event,
        EventAdapter,
        ImpressionEvent,
        ItemEvent,
        PolicyLog,
        RatingEvent,
    )
    from streamrec.schemas.models import ModelName
    from streamrec.schemas.topics import Topic

# Where each name of the SDK lives, imported on first use.
_SOURCES = {
    "EventPublisher": "streamrec.producers.publisher",
    "SyncEventPublisher": "streamrec.producers.publisher",
    "EventsAccepted": "streamrec.schemas.api",
    "FallbackReason": "streamrec.schemas.api",
    "HistoryItem": "streamrec.schemas.api",
    "Recommendations": "streamrec.schemas.api",
    "RecommendedItem": "streamrec.schemas.api",
    "RerankedBy": "streamrec.schemas.api",
    "SimilarItems": "streamrec.schemas.api",
    "UserHistory": "streamrec.schemas.api",
    "ClickEvent": "streamrec.schemas.events",
    "Event": "streamrec.schemas.events",
    "EventAdapter": "streamrec.schemas.events",
    "ImpressionEvent": "streamrec.schemas.events",
    "ItemEvent": "streamrec.schemas.events",
    "PolicyLog": "streamrec.schemas.events",
    "RatingEvent": "streamrec.schemas.events",
    "ModelName": "streamrec.schemas.models",
    "Topic": "streamrec.schemas.topics",
    "DEFAULT_BATCH_SIZE": "streamrec.client",
    "AsyncStreamrecClient": "streamrec.client",
    "RetryPolicy": "streamrec.client",
    "StreamrecClient": "streamrec.client",
    "APIConnectionError": "streamrec.errors",
    "APIStatusError": "streamrec.errors",
    "AuthError": "streamrec.errors",
    "FieldError": "streamrec.errors",
    "InvalidRequestError": "streamrec.errors",
    "NotFoundError": "streamrec.errors",
    "PublishError": "streamrec.errors",
    "ServiceUnavailable": "streamrec.errors",
    "ServiceUnavailableError": "streamrec.errors",
    "StreamrecClientError": "streamrec.errors",
    "StreamrecError": "streamrec.errors",
}


def __getattr__(name: str) -> Any:
    """``streamrec.EventPublisher`` and the rest: imported when first read, then cached."""
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module 'streamrec' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_SOURCES])


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "APIConnectionError",
    "APIStatusError",
    "AsyncStreamrecClient",
    "AuthError",
    "ClickEvent",
    "Event",
    "EventAdapter",
    "EventPublisher",
    "EventsAccepted",
    "FallbackReason",
    "FieldError",
    "HistoryItem",
    "ImpressionEvent",
    "InvalidRequestError",
    "ItemEvent",
    "ModelName",
    "NotFoundError",
    "PolicyLog",
    "PublishError",
    "RatingEvent",
    "Recommendations",
    "RecommendedItem",
    "RerankedBy",
    "RetryPolicy",
    "ServiceUnavailable",
    "ServiceUnavailableError",
    "SimilarItems",
    "StreamrecClient",
    "StreamrecClientError",
    "StreamrecError",
    "SyncEventPublisher",
    "Topic",
    "UserHistory",
]

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
"""

from __future__ import annotations

from producers.publisher import EventPublisher, SyncEventPublisher
from schemas.api import (
    EventsAccepted,
    FallbackReason,
    HistoryItem,
    Recommendations,
    RecommendedItem,
    RerankedBy,
    SimilarItems,
    UserHistory,
)
from schemas.events import (
    ClickEvent,
    Event,
    EventAdapter,
    ImpressionEvent,
    ItemEvent,
    PolicyLog,
    RatingEvent,
)
from schemas.models import ModelName
from schemas.topics import Topic
from streamrec.client import DEFAULT_BATCH_SIZE, AsyncStreamrecClient, RetryPolicy, StreamrecClient
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

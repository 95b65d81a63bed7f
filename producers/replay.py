"""Replay a MovieLens folder or a synthetic stream into the topics, in event-time order.

The catalog goes first (one ItemEvent per item), then every rating in time order. Event ids
are derived from the data (uuid5 of dataset, user, item, time), so replaying the same file
twice within the de-duplication window changes nothing downstream.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from streamrec.core.datasets import InteractionData
from streamrec.producers.publisher import EventPublisher
from streamrec.schemas.events import Event, ItemEvent, RatingEvent

_NAMESPACE = uuid.UUID("6f1d7f5e-4c1a-4b9b-9a35-2f0f6c3c2a11")


@dataclass(frozen=True)
class ReplaySummary:
    events: int
    items: int
    ratings: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


def replay_events(data: InteractionData, *, limit: int | None = None) -> Iterator[Event]:
    """The catalog, then the ratings in event-time order, as events."""
    for item in data.items.values():
        yield ItemEvent(
            event_id=uuid.uuid5(_NAMESPACE, f"{data.name}/item/{item.item_id}"),
            item_id=item.item_id,
            title=item.title,
            genres=list(item.genres),
            year=item.year,
            text=item.text,
            ts=datetime.fromtimestamp(data.ratings[0].ts if data.ratings else 0, UTC),
        )
    ratings = data.ratings if limit is None else data.ratings[:limit]
    for r in ratings:
        yield RatingEvent(
            event_id=uuid.uuid5(_NAMESPACE, f"{data.name}/{r.user_id}/{r.item_id}/{r.ts}"),
            user_id=r.user_id,
            item_id=r.item_id,
            rating=r.rating,
            ts=datetime.fromtimestamp(r.ts, UTC),
        )


async def replay(
    data: InteractionData,
    publisher: EventPublisher,
    *,
    rate: float | None = None,
    limit: int | None = None,
    chunk: int = 1000,
    on_progress: Callable[[int], None] | None = None,
) -> ReplaySummary:
    """Publish the data; ``rate`` caps events/s (None = as fast as Kafka takes them)."""
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive (events per second)")
    if rate is not None:
        chunk = max(1, min(chunk, int(rate / 20) or 1))  # about 20 sends per second
    started = time.perf_counter()
    sent = items = 0
    buffer: list[Event] = []

    async def flush() -> None:
        nonlocal sent
        await publisher.publish_many(buffer)
        sent += len(buffer)
        if on_progress is not None:
            on_progress(len(buffer))
        buffer.clear()
        if rate is not None:  # sleep until the schedule says the next chunk may go
            ahead = sent / rate - (time.perf_counter() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)

    for event in replay_events(data, limit=limit):
        items += isinstance(event, ItemEvent)
        buffer.append(event)
        if len(buffer) >= chunk:
            await flush()
    if buffer:
        await flush()
    return ReplaySummary(
        events=sent, items=items, ratings=sent - items, seconds=time.perf_counter() - started
    )


def total_events(data: InteractionData, limit: int | None = None) -> int:
    return len(data.items) + (len(data.ratings) if limit is None else min(limit, len(data.ratings)))

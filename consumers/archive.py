"""Consumer group ``streamrec-archive``: every event into SQL, and ids into the id registry."""

from __future__ import annotations

import asyncio

from faststream.kafka import KafkaBroker

from streamrec.consumers.decode import DecodedBatch
from streamrec.consumers.dlq import DeadLetterSink
from streamrec.consumers.subscriber import subscribe_batches
from streamrec.core.ids import IdKind, IdRegistry
from streamrec.core.metrics import Metrics
from streamrec.core.settings import Settings
from streamrec.schemas.events import ImpressionEvent, ItemEvent, SourcedEvent
from streamrec.schemas.topics import ConsumerGroup
from streamrec.stores.catalog import Archive


def archive_events(archive: Archive, ids: IdRegistry, events: list[SourcedEvent]) -> int:
    """Register new ids (in log order, so indices follow first appearance), then archive."""
    users: list[str] = []
    items: list[str] = []
    for sourced in events:
        event = sourced.event
        if isinstance(event, ImpressionEvent):
            items.extend(event.item_ids)
        else:
            items.append(event.item_id)
        if not isinstance(event, ItemEvent):  # an item event's user_id is its publisher
            users.append(event.user_id)
    if users:
        ids.assign(IdKind.USER, users)
    if items:
        ids.assign(IdKind.ITEM, items)
    return archive.write_batch(events)


def register(
    broker: KafkaBroker,
    archive: Archive,
    ids: IdRegistry,
    dead_letters: DeadLetterSink,
    metrics: Metrics,
    settings: Settings,
) -> None:
    """Subscribe the archive group to every event topic."""

    async def apply(batch: DecodedBatch) -> int:
        return await asyncio.to_thread(archive_events, archive, ids, batch.events)

    subscribe_batches(
        broker,
        ConsumerGroup.ARCHIVE,
        apply,
        dead_letters,
        metrics,
        settings,
        retry="archiving a batch to SQL",
    )

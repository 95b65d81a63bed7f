"""Consumer group ``streamrec-archive``: every event into SQL, and ids into the id registry."""

from __future__ import annotations

import asyncio
from collections import Counter

from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from consumers.decode import decode_batch
from consumers.dlq import DeadLetterSink
from consumers.policy import batch_subscriber_options, event_topics, settle, with_backoff
from core.ids import IdKind, IdRegistry
from core.metrics import Metrics
from core.settings import Settings
from schemas.events import ImpressionEvent, ItemEvent, SourcedEvent
from schemas.topics import ConsumerGroup
from stores.catalog import Archive

GROUP = ConsumerGroup.ARCHIVE.value


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

    @broker.subscriber(
        *event_topics(settings, ConsumerGroup.ARCHIVE), **batch_subscriber_options(settings, GROUP)
    )
    async def archive_events_to_sql(body: list[bytes | None], msg: KafkaMessage) -> None:
        async with settle(msg, GROUP):
            batch = decode_batch(msg.raw_message, GROUP)
            await dead_letters.send(batch.dead)
            if not batch.events:
                return
            with metrics.batch_seconds.labels(GROUP).time():
                await with_backoff(
                    lambda: asyncio.to_thread(archive_events, archive, ids, batch.events),
                    what="archiving a batch to SQL",
                )
            for topic, n in Counter(s.topic for s in batch.events).items():
                metrics.events_consumed.labels(GROUP, topic).inc(n)

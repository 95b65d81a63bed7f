"""Consumer group ``streamrec-features``: events → Redis feature state (stores.features)."""

from __future__ import annotations

import logging
from collections import Counter

from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from consumers.decode import decode_batch
from consumers.dlq import DeadLetterSink
from consumers.policy import batch_subscriber_options, event_topics, settle, with_backoff
from core.kafka_log import topic_partitions
from core.metrics import Metrics
from core.settings import Settings
from schemas.events import SourcedEvent
from schemas.topics import GROUP_TOPICS, ConsumerGroup
from stores.catalog import Archive
from stores.features import ApplyResult, FeatureStore, RejectedEvents
from stores.rebuild import state_behind_archive

GROUP = ConsumerGroup.FEATURES.value
log = logging.getLogger(__name__)


async def follow_log(
    store: FeatureStore,
    archive: Archive,
    bootstrap: list[str],
    log_id: str,
    settings: Settings,
) -> str | None:
    """Before the group's first batch: make its stored offsets those of the log ``log_id``.

    On a new log (every `up` with the embedded broker) the offsets of the old one are dropped,
    so the new log's events are applied instead of skipped as "redelivered". Returns why the
    feature state is older than the archive (then `streamrec rebuild` repairs it), or None.
    """
    behind = await state_behind_archive(store, archive, GROUP, log_id)
    if behind is not None:
        log.warning(
            "feature state older than the archive: %s; to rebuild it, stop this process and "
            "run `streamrec rebuild --wipe`",
            behind,
        )
    topics = [t.value for t in GROUP_TOPICS[ConsumerGroup.FEATURES]]
    # Topics not created yet (real Kafka creates them as the subscribers start) get the
    # configured partition count: their offsets are dropped too.
    partitions = set(await topic_partitions(bootstrap, topics))
    partitions |= {(t, p) for t in topics for p in range(settings.topic_partitions)}
    previous = await store.adopt_log(GROUP, log_id, sorted(partitions))
    if previous:
        log.info("new Kafka log %s (was %s): offsets of the old log dropped", log_id, previous)
    return behind


def record_batch_metrics(
    metrics: Metrics, group: str, events: list[SourcedEvent], result: ApplyResult
) -> None:
    """Once per batch, not per event: label lookups cost more than the increments."""
    for topic, n in Counter(s.topic for s in events).items():
        metrics.events_consumed.labels(group, topic).inc(n)
    if result.redelivered:
        metrics.events_skipped.labels(group, "redelivered").inc(result.redelivered)
    if result.duplicates:
        metrics.events_skipped.labels(group, "duplicate_event_id").inc(result.duplicates)
    histogram = metrics.event_to_state_seconds.labels(group)
    for lag in result.lag_seconds:
        histogram.observe(lag)


def register(
    broker: KafkaBroker,
    store: FeatureStore,
    dead_letters: DeadLetterSink,
    metrics: Metrics,
    settings: Settings,
) -> None:
    """Subscribe the features group to every event topic."""

    @broker.subscriber(
        *event_topics(settings, ConsumerGroup.FEATURES), **batch_subscriber_options(settings, GROUP)
    )
    async def apply_events_to_features(body: list[bytes | None], msg: KafkaMessage) -> None:
        async with settle(msg, GROUP):
            batch = decode_batch(msg.raw_message, GROUP)
            await dead_letters.send(batch.dead)

            async def dead_letter_unappliable(rejected: RejectedEvents) -> None:
                # Sent before the rest of the batch and its offsets are written: a crash in
                # between redelivers the batch, and these are rejected (and sent) again.
                await dead_letters.send(batch.dead_letters_of(GROUP, rejected))

            with metrics.batch_seconds.labels(GROUP).time():
                result = await with_backoff(
                    lambda: store.apply_batch(
                        GROUP, batch.events, batch.positions, on_rejected=dead_letter_unappliable
                    ),
                    what="applying a batch to Redis",
                )
            record_batch_metrics(metrics, GROUP, batch.events, result)

"""Consumer group ``streamrec-features``: events → Redis feature state (stores.features)."""

from __future__ import annotations

from collections import Counter

from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from consumers.decode import decode_batch
from consumers.dlq import DeadLetterSink
from consumers.policy import batch_subscriber_options, event_topics, with_backoff
from core.metrics import Metrics
from core.settings import Settings
from schemas.events import SourcedEvent
from schemas.topics import ConsumerGroup
from stores.features import ApplyResult, FeatureStore

GROUP = ConsumerGroup.FEATURES.value


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
        batch = decode_batch(msg.raw_message, GROUP)
        await dead_letters.send(batch.dead)
        with metrics.batch_seconds.labels(GROUP).time():
            result = await with_backoff(
                lambda: store.apply_batch(GROUP, batch.events, batch.positions),
                what="applying a batch to Redis",
            )
        record_batch_metrics(metrics, GROUP, batch.events, result)

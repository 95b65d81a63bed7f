"""Consumer group ``streamrec-features``: events → Redis feature state (stores.features)."""

from __future__ import annotations

import logging
from collections import Counter

from faststream.kafka import KafkaBroker

from streamrec.consumers.decode import DecodedBatch
from streamrec.consumers.dlq import DeadLetterSink
from streamrec.consumers.subscriber import count_skipped, subscribe_batches
from streamrec.core.kafka_log import topic_partitions
from streamrec.core.metrics import Metrics
from streamrec.core.settings import Settings
from streamrec.schemas.topics import GROUP_TOPICS, ConsumerGroup
from streamrec.stores.catalog import Archive
from streamrec.stores.features import ApplyResult, FeatureStore, RejectedEvents
from streamrec.stores.rebuild import state_behind_archive

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


def record_apply_metrics(metrics: Metrics, group: str, result: ApplyResult) -> None:
    """What the store skipped, and how fresh the applied events were (once per batch)."""
    count_skipped(
        metrics,
        group,
        Counter({"redelivered": result.redelivered, "duplicate_event_id": result.duplicates}),
    )
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

    async def apply(batch: DecodedBatch) -> ApplyResult:
        async def dead_letter_unappliable(rejected: RejectedEvents) -> None:
            # Sent before the rest of the batch and its offsets are written: a crash in
            # between redelivers the batch, and these are rejected (and sent) again.
            await dead_letters.send(batch.dead_letters_of(GROUP, rejected))

        return await store.apply_batch(
            GROUP, batch.events, batch.positions, on_rejected=dead_letter_unappliable
        )

    subscribe_batches(
        broker,
        ConsumerGroup.FEATURES,
        apply,
        dead_letters,
        metrics,
        settings,
        retry="applying a batch to Redis",
        record=lambda result: record_apply_metrics(metrics, GROUP, result),
        # A batch of dead letters only still moves the stored offsets on.
        apply_empty=True,
    )

"""The one batch subscriber every consumer group runs; a group brings only its apply step.

For each batch read from the group's topics (``consumers.policy``: explicit ack, options):

1. decode it: every record is a valid event of its topic or a dead letter (``consumers.decode``);
2. send the dead letters to the DLQ with their reasons; their neighbours go on;
3. apply the valid events (the group's ``apply``), timed in ``streamrec_consumer_batch_seconds``
   and, when the group names its step (``retry``), retried with backoff on a transient error
   (``policy.with_backoff``);
4. count the applied events per topic (``streamrec_events_consumed_total``) and let the group
   record what its apply returned (``record``: skipped events, freshness);
5. acknowledge the batch (``policy.settle``): an error anywhere above rewinds it instead, so it
   is delivered again.

A batch whose records were all invalid is not applied unless the group asks (``apply_empty``:
the features group still stores the offsets it has handled).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from streamrec.consumers.decode import DecodedBatch, decode_batch
from streamrec.consumers.dlq import DeadLetterSink
from streamrec.consumers.policy import batch_subscriber_options, event_topics, settle, with_backoff
from streamrec.core.metrics import Metrics
from streamrec.core.settings import Settings
from streamrec.schemas.events import SourcedEvent
from streamrec.schemas.topics import ConsumerGroup

R = TypeVar("R")
Apply = Callable[[DecodedBatch], Awaitable[R]]


def subscribe_batches(
    broker: KafkaBroker,
    group: ConsumerGroup,
    apply: Apply[R],
    dead_letters: DeadLetterSink,
    metrics: Metrics,
    settings: Settings,
    *,
    retry: str | None,
    record: Callable[[R], None] | None = None,
    apply_empty: bool = False,
) -> None:
    """Subscribe ``group`` to its topics with the batch handler described in the module doc.

    ``retry``: what ``apply`` does, for the retry log lines ("applying a batch to Redis");
    None when it must not be retried (it is not idempotent within the process). ``apply`` is
    then called once per delivery, and again only when the batch is delivered again.
    """
    name = group.value

    async def run(batch: DecodedBatch) -> R:
        if retry is None:
            return await apply(batch)
        return await with_backoff(lambda: apply(batch), what=retry)

    @broker.subscriber(*event_topics(settings, group), **batch_subscriber_options(settings, name))
    async def handle_batch(msg: KafkaMessage) -> None:
        async with settle(msg, name):
            batch = decode_batch(msg.raw_message, name)
            await dead_letters.send(batch.dead)
            if not batch.events and not apply_empty:
                return
            with metrics.batch_seconds.labels(name).time():
                result = await run(batch)
            count_consumed(metrics, name, batch.events)
            if record is not None:
                record(result)


def count_consumed(metrics: Metrics, group: str, events: Sequence[SourcedEvent]) -> None:
    """Once per batch and topic, not per event: label lookups cost more than the increments."""
    for topic, n in Counter(s.topic for s in events).items():
        metrics.events_consumed.labels(group, topic).inc(n)


def count_skipped(metrics: Metrics, group: str, reasons: Counter[str]) -> None:
    """Events a group read but did not apply, by reason."""
    for reason, n in reasons.items():
        if n:
            metrics.events_skipped.labels(group, reason).inc(n)

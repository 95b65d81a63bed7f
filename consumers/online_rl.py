"""Consumer group ``streamrec-online-rl``: the live stream feeds the online DQN learner.

The learning itself (joining slates with their feedback, the replay buffer, training in a
worker thread, snapshots) is ``trainer.online.OnlineLearner``; this group only hands it each
batch's valid events (bad records go to the DLQ) and schedules a training pass. Kafka offsets
move on as soon as the batch is joined.

Not retried: ``observe`` changes the learner's in-memory state as it goes, so a second attempt
within the process could join events twice. A failing batch is rewound and delivered again.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from faststream.kafka import KafkaBroker

from streamrec.consumers.decode import DecodedBatch
from streamrec.consumers.dlq import DeadLetterSink
from streamrec.consumers.subscriber import count_skipped, subscribe_batches
from streamrec.core.metrics import Metrics
from streamrec.core.settings import Settings
from streamrec.schemas.topics import ConsumerGroup
from streamrec.trainer.online import OnlineLearner

GROUP = ConsumerGroup.ONLINE_RL.value


async def observe_batch(learner: OnlineLearner, batch: DecodedBatch) -> Counter[str]:
    """Hand the batch to the learner and start training if due; returns the events the learner
    skipped, by reason."""
    joiner = learner.joiner
    before = Counter(joiner.skipped) if joiner is not None else Counter[str]()
    await asyncio.to_thread(learner.observe, [s.event for s in batch.events])
    learner.schedule_training()
    if learner.joiner is None:
        return Counter({"no_doc2vec_active": len(batch.events)})
    return learner.joiner.skipped - before


def register(
    broker: KafkaBroker,
    learner: OnlineLearner,
    dead_letters: DeadLetterSink,
    metrics: Metrics,
    settings: Settings,
) -> None:
    """Subscribe the online-RL group to impressions, clicks and ratings."""

    async def apply(batch: DecodedBatch) -> Counter[str]:
        return await observe_batch(learner, batch)

    subscribe_batches(
        broker,
        ConsumerGroup.ONLINE_RL,
        apply,
        dead_letters,
        metrics,
        settings,
        retry=None,
        record=lambda skipped: count_skipped(metrics, GROUP, skipped),
    )

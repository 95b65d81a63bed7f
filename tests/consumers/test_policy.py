"""The ack policy on the embedded broker: a commit refused because of a rebalance."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError

from consumers.app import build_consumer_broker
from core.lag import consumer_lag
from core.metrics import Metrics
from producers.publisher import EventPublisher
from schemas.events import RatingEvent
from schemas.topics import ConsumerGroup
from stores.features import user_key
from tests.conftest import wait_until

pytestmark = pytest.mark.kafka
FEATURES = ConsumerGroup.FEATURES.value


async def test_a_commit_failed_by_a_rebalance_redelivers_the_batch(services, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    commit = AIOKafkaConsumer.commit
    failures = []

    async def commit_once_refused(self, offsets=None):  # type: ignore[no-untyped-def]
        if not failures:  # the first commit meets a rebalance
            failures.append(1)
            raise CommitFailedError("the group has already rebalanced")
        return await commit(self, offsets)

    monkeypatch.setattr(AIOKafkaConsumer, "commit", commit_once_refused)
    metrics = Metrics()
    broker = build_consumer_broker(services, metrics, [ConsumerGroup.FEATURES])
    await broker.start()
    try:
        async with EventPublisher(services.kafka_bootstrap) as publisher:
            await publisher.publish_many(
                [RatingEvent(user_id="c", item_id=f"i{n}", rating=3) for n in range(20)]
            )

        async def drained() -> bool:
            report = await consumer_lag(services.kafka_bootstrap, [FEATURES], with_seconds=False)
            return report.total_lag == 0 and bool(failures)

        await wait_until(drained)
        # The consumer lives on: later events are applied too.
        async with EventPublisher(services.kafka_bootstrap) as publisher:
            await publisher.publish(RatingEvent(user_id="c", item_id="late", rating=3))
        await wait_until(drained)
    finally:
        await broker.stop()
    assert await services.redis.hget(user_key("c"), "ratings") == "21"  # none lost or doubled
    redelivered = metrics.registry.get_sample_value(
        "streamrec_events_skipped_total", {"group": FEATURES, "reason": "redelivered"}
    )
    assert redelivered and redelivered > 0  # the refused batch was read again

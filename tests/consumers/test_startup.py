"""Consumer groups start together: ``build_consumer_broker(...).start()`` on the embedded
Kafka (real protocol), where every group join waits out the cluster's initial rebalance
delay (~3 s)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from faststream.kafka import KafkaBroker
from faststream.kafka import Topic as KafkaTopic

from consumers.app import DEFAULT_GROUPS, build_consumer_broker
from core.metrics import Metrics
from core.services import Services
from core.settings import Settings
from schemas.topics import Topic
from stores.vectors import VectorStore, open_vector_store


@pytest.fixture
def vector_store(settings: Settings) -> Iterator[VectorStore]:
    store = open_vector_store(settings)
    yield store
    store.close()


async def _probe_join_seconds(services: Services) -> float:
    """How long one group's join takes on this cluster: a group of its own, never used again
    (a group rejoined after its member left waits longer on the mock cluster)."""
    probe = KafkaBroker(services.kafka_bootstrap)

    @probe.subscriber(
        KafkaTopic(Topic.RATINGS.value, declare=False), group_id="streamrec-test-probe"
    )
    async def ignore(body: bytes) -> None:
        pass

    started = time.perf_counter()
    await probe.start()
    seconds = time.perf_counter() - started
    await probe.stop()
    return seconds


async def test_groups_join_at_the_same_time(services: Services, vector_store: VectorStore) -> None:
    one = await _probe_join_seconds(services)
    broker = build_consumer_broker(services, Metrics(), DEFAULT_GROUPS, vector_store)
    started = time.perf_counter()
    await broker.start()
    together = time.perf_counter() - started
    try:
        assert len(broker.subscribers) == len(DEFAULT_GROUPS) > 1
        for subscriber in broker.subscribers:
            assert subscriber.running
            assert subscriber.consumer is not None
            assert subscriber.consumer.assignment(), f"{subscriber.group_id} has no partitions"
    finally:
        await broker.stop()
    # One after another, n joins take n times one join; together, about one.
    assert together < 2 * one, (
        f"{len(DEFAULT_GROUPS)} groups took {together:.1f}s, 1 took {one:.1f}s"
    )


async def test_a_failed_start_stops_the_groups_already_starting(
    services: Services, vector_store: VectorStore
) -> None:
    broker = build_consumer_broker(services, Metrics(), DEFAULT_GROUPS, vector_store)
    failing = broker.subscribers[1]

    async def fail() -> None:
        await asyncio.sleep(0.2)  # the other groups are joining by now
        raise RuntimeError("cannot start this one")

    failing.start = fail  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="cannot start this one"):
        await broker.start()
    assert not broker.running
    for subscriber in broker.subscribers:
        assert subscriber.consumer is None  # stopped (or never created)
        assert not subscriber.running

"""Consumer groups start together: ``build_consumer_broker(...).start()`` on the embedded
Kafka (real protocol), where every group join waits out the cluster's initial rebalance
delay (~3 s)."""

from __future__ import annotations

import asyncio

import pytest

from streamrec.consumers.app import DEFAULT_GROUPS, build_consumer_broker
from streamrec.core.metrics import Metrics
from streamrec.core.services import Services
from streamrec.stores.factory import Stores


async def test_groups_join_at_the_same_time(services: Services, stores: Stores) -> None:
    """Every group's start (its join) begins before any of them finishes: the joins overlap.
    (How long they take is measured, not asserted: one join waits out the cluster's rebalance
    delay.)"""
    broker = build_consumer_broker(stores, Metrics(), DEFAULT_GROUPS)
    steps: list[tuple[str, str]] = []
    for subscriber in broker.subscribers:
        original = subscriber.start

        async def traced(start=original, group: str = subscriber.group_id) -> None:  # type: ignore[no-untyped-def]
            steps.append(("entered", group))
            await start()
            steps.append(("joined", group))

        subscriber.start = traced  # type: ignore[method-assign]
    await broker.start()
    try:
        assert len(broker.subscribers) == len(DEFAULT_GROUPS) > 1
        for subscriber in broker.subscribers:
            assert subscriber.running
            assert subscriber.consumer is not None
            assert subscriber.consumer.assignment(), f"{subscriber.group_id} has no partitions"
    finally:
        await broker.stop()
    first_joined = [kind for kind, _ in steps].index("joined")
    assert steps[:first_joined] == [("entered", s.group_id) for s in broker.subscribers], steps


async def test_a_failed_start_stops_the_groups_already_starting(
    services: Services, stores: Stores
) -> None:
    broker = build_consumer_broker(stores, Metrics(), DEFAULT_GROUPS)
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

"""The SDK (``EventPublisher``, ``SyncEventPublisher``) against a private embedded broker:
what lands where, as what, in which order, and what a caller sees when Kafka is not there."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from streamrec.consumers.decode import decode_batch
from streamrec.core.embedded import EmbeddedKafka
from streamrec.core.errors import PublishError, ServiceUnavailable
from streamrec.core.metrics import Metrics
from streamrec.producers.publisher import EventPublisher, SyncEventPublisher
from streamrec.schemas.events import (
    ClickEvent,
    Event,
    EventAdapter,
    ImpressionEvent,
    ItemEvent,
    RatingEvent,
)
from streamrec.schemas.topics import EVENT_TOPICS, Topic

pytestmark = pytest.mark.kafka
# Turns a hang (the bug these tests guard against) into a failure; never reached when it works.
HANG = 60.0


@pytest.fixture
def kafka() -> Iterator[EmbeddedKafka]:
    """A broker of this test only: it may ``close()`` it to take Kafka away."""
    broker = EmbeddedKafka()
    broker.ensure_topics([t.value for t in Topic])
    yield broker
    broker.close()


@pytest.fixture
def closed_port() -> str:
    """An address nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


async def read_back(
    bootstrap: Sequence[str], topics: Sequence[Topic] = EVENT_TOPICS
) -> list[ConsumerRecord]:
    """Every record on ``topics``, up to the end offsets as they are now, in offset order per
    partition (no group: nothing is committed)."""
    reader = AIOKafkaConsumer(
        *(t.value for t in topics),
        bootstrap_servers=list(bootstrap),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await reader.start()
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + HANG
    try:
        # Without a group the reader is assigned every partition once it has the metadata.
        while {tp.topic for tp in reader.assignment()} != {t.value for t in topics}:
            assert time.monotonic() < deadline, f"assigned only {reader.assignment()}"
            records.extend(
                r for part in (await reader.getmany(timeout_ms=100)).values() for r in part
            )
        partitions = list(reader.assignment())
        starts = await reader.beginning_offsets(partitions)
        ends = await reader.end_offsets(partitions)
        total = sum(ends[tp] - starts[tp] for tp in partitions)
        while len(records) < total:
            assert time.monotonic() < deadline, f"read {len(records)} of {total} records"
            for part in (await reader.getmany(timeout_ms=200)).values():
                records.extend(part)
    finally:
        await reader.stop()
    return sorted(records, key=lambda r: (r.topic, r.partition, r.offset))


def publisher_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "streamrec-publisher"}


def published(metrics: Metrics, topic: Topic) -> float | None:
    return metrics.registry.get_sample_value(
        "streamrec_events_published_total", {"topic": topic.value}
    )


async def test_each_event_lands_on_its_topic_keyed_as_consumers_decode_it(
    kafka: EmbeddedKafka,
) -> None:
    events: list[Event] = [
        RatingEvent(user_id="alice", item_id="m1", rating=4.5),
        ClickEvent(user_id="bob", item_id="m2", request_id="r1", position=0, model="mf"),
        ImpressionEvent(user_id="bob", request_id="r1", item_ids=["m2", "m3"], model="mf"),
        # Published by "catalog", keyed by the item: an item's upserts stay in order.
        ItemEvent(item_id="m9", title="Heat (1995)", genres=["Crime", "Drama"]),
    ]
    metrics = Metrics()
    async with EventPublisher([kafka.bootstrap], metrics=metrics) as publisher:
        assert publisher.started
        assert await publisher.publish_many(events) == 4
        assert await publisher.publish_many([]) == 0
    assert not publisher.started

    records = await read_back([kafka.bootstrap])
    assert {(r.topic, r.key) for r in records} == {
        (Topic.RATINGS.value, b"alice"),
        (Topic.CLICKS.value, b"bob"),
        (Topic.IMPRESSIONS.value, b"bob"),
        (Topic.ITEMS.value, b"m9"),
    }
    # The bytes are what the consumer groups read: every event decodes, none is dead-lettered.
    decoded = decode_batch(records, "test")
    assert decoded.dead == []
    assert sorted((s.event for s in decoded.events), key=events.index) == events
    for topic in EVENT_TOPICS:
        assert published(metrics, topic) == 1.0


async def test_publish_many_writes_every_event_in_order_per_key(kafka: EmbeddedKafka) -> None:
    events: list[Event] = []
    for n in range(90):  # three users and two catalog items, interleaved
        if n % 5 == 4:
            events.append(ItemEvent(item_id=f"m{n % 2}", title=f"title {n}"))
        else:
            events.append(RatingEvent(user_id=f"u{n % 3}", item_id=f"i{n}", rating=3))
    # No linger: the batch leaves in several requests, in flight together.
    async with EventPublisher([kafka.bootstrap], linger_ms=0) as publisher:
        assert await publisher.publish_many(iter(events)) == len(events)

    records = await read_back([kafka.bootstrap], [Topic.RATINGS, Topic.ITEMS])
    assert len(records) == len(events)
    sent: dict[str, list[str]] = defaultdict(list)
    for event in events:
        sent[event.key].append(str(event.event_id))
    landed: dict[str, list[str]] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    for record in records:
        assert record.key is not None and record.value is not None
        landed[record.key.decode()].append(str(EventAdapter.validate_json(record.value).event_id))
        partitions[record.key.decode()].add(record.partition)
    assert landed == sent
    assert all(len(p) == 1 for p in partitions.values())  # one key, one partition


async def test_copies_of_one_event_are_all_written_and_share_its_event_id(
    kafka: EmbeddedKafka,
) -> None:
    """Issue 15: ``publish_many([ClickEvent(...)] * 3)`` writes three records with one
    ``event_id``, so the consumers (which drop an id they applied: tests/integration/
    test_pipeline.py) count one click. The SDK writes what it is given; the README builds one
    event per click."""
    click = ClickEvent(user_id="alice", item_id="m1")
    async with EventPublisher([kafka.bootstrap]) as publisher:
        assert await publisher.publish_many([click] * 3) == 3
    records = await read_back([kafka.bootstrap], [Topic.CLICKS])
    assert [EventAdapter.validate_json(r.value) for r in records if r.value] == [click] * 3


async def test_a_publisher_stops_and_starts_again(kafka: EmbeddedKafka) -> None:
    publisher = EventPublisher([kafka.bootstrap], timeout_seconds=HANG)
    with pytest.raises(ServiceUnavailable, match="not started"):
        await publisher.publish(RatingEvent(user_id="u", item_id="early", rating=1))
    await publisher.stop()  # stopping what never started is harmless
    for item in ("first", "second"):
        await publisher.start()
        await publisher.start()  # so is starting twice
        await publisher.publish(RatingEvent(user_id="u", item_id=item, rating=2))
        await publisher.stop()
        await publisher.stop()
        with pytest.raises(ServiceUnavailable, match="not started"):
            await publisher.publish(RatingEvent(user_id="u", item_id="late", rating=1))
        with pytest.raises(ServiceUnavailable, match="not started"):
            await publisher.check(timeout_seconds=1.0)
    records = await read_back([kafka.bootstrap], [Topic.RATINGS])
    items = [RatingEvent.model_validate_json(r.value).item_id for r in records if r.value]
    assert items == ["first", "second"]


async def test_an_unreachable_broker_is_service_unavailable(closed_port: str) -> None:
    publisher = EventPublisher([closed_port])
    with pytest.raises(ServiceUnavailable, match=f"Kafka at {closed_port} did not answer"):
        async with publisher:
            pytest.fail("the block ran without Kafka")
    assert not publisher.started
    with pytest.raises(ServiceUnavailable, match="not started"):
        async with asyncio.timeout(HANG):  # aiokafka would wait for a connection forever
            await publisher.publish(RatingEvent(user_id="u", item_id="i", rating=3))


async def test_kafka_gone_after_start_is_a_publish_error_and_stop_gives_up(
    kafka: EmbeddedKafka,
) -> None:
    metrics = Metrics()
    batch = [RatingEvent(user_id=f"u{n}", item_id="i", rating=3) for n in range(3)]
    publisher = EventPublisher([kafka.bootstrap], timeout_seconds=1.0, metrics=metrics)
    # Without the timeout, both the publish and leaving the block wait for Kafka forever.
    async with asyncio.timeout(HANG), publisher:
        await publisher.publish(RatingEvent(user_id="u", item_id="i", rating=3))
        await publisher.check(timeout_seconds=HANG)
        kafka.close()  # the mock cluster goes away with its client
        with pytest.raises(PublishError, match="within 1s") as caught:
            await publisher.publish_many(batch)
        with pytest.raises(ServiceUnavailable, match="did not answer"):
            await publisher.check(timeout_seconds=1.0)
    # The block was left: stop gave up on the three events in flight.
    assert not publisher.started
    error = caught.value
    assert (error.failed, error.published) == (3, 0)
    assert error.event_ids == [str(e.event_id) for e in batch]  # what makes a re-send safe
    assert published(metrics, Topic.RATINGS) == 1.0


def dropped(metrics: Metrics, reason: str) -> float | None:
    return metrics.registry.get_sample_value(
        "streamrec_events_dropped_total", {"topic": Topic.IMPRESSIONS.value, "reason": reason}
    )


def impression(n: int) -> ImpressionEvent:
    return ImpressionEvent(user_id=f"u{n % 3}", request_id=f"r{n}", item_ids=["m1"], model="mf")


async def test_publish_later_returns_at_once_and_stop_sends_every_buffered_event(
    kafka: EmbeddedKafka,
) -> None:
    """The API's impressions: buffered without waiting for Kafka, sent in batches by one
    background task, every one of them sent by the time ``stop`` returns."""
    metrics = Metrics()
    sent = [impression(n) for n in range(200)]
    async with EventPublisher([kafka.bootstrap], metrics=metrics) as publisher:
        for event in sent:
            assert publisher.publish_later(event) is None  # a plain call: nothing to await
    records = await read_back([kafka.bootstrap], [Topic.IMPRESSIONS])
    assert sorted(r.value for r in records if r.value) == sorted(
        e.model_dump_json().encode() for e in sent
    )
    assert published(metrics, Topic.IMPRESSIONS) == 200.0
    assert dropped(metrics, "buffer_full") is None


async def test_publish_later_drops_and_counts_what_the_buffer_cannot_hold(
    kafka: EmbeddedKafka,
) -> None:
    metrics = Metrics()
    publisher = EventPublisher([kafka.bootstrap], metrics=metrics, buffer_size=5)
    publisher.publish_later(impression(0))  # before start: nowhere to go
    assert dropped(metrics, "not_started") == 1.0
    async with publisher:
        # Appended in one go, before the sender task runs: five fit, the rest are dropped.
        for n in range(8):
            publisher.publish_later(impression(n))
    assert dropped(metrics, "buffer_full") == 3.0
    assert published(metrics, Topic.IMPRESSIONS) == 5.0


async def test_publish_later_with_kafka_gone_counts_the_events_not_acknowledged(
    kafka: EmbeddedKafka,
) -> None:
    metrics = Metrics()
    publisher = EventPublisher([kafka.bootstrap], timeout_seconds=1.0, metrics=metrics)
    async with asyncio.timeout(HANG), publisher:
        await publisher.check(timeout_seconds=HANG)
        kafka.close()
        for n in range(3):
            publisher.publish_later(impression(n))
    # stop waited for the sender within its budget: the three are counted, not silently lost.
    assert (dropped(metrics, "not_acknowledged") or 0) + (dropped(metrics, "stopped") or 0) == 3
    assert not publisher.started


def test_the_sync_publisher_publishes_and_closes_its_thread(kafka: EmbeddedKafka) -> None:
    before = publisher_threads()
    events = [RatingEvent(user_id="u", item_id=f"i{n}", rating=3) for n in range(3)]
    metrics = Metrics()
    with SyncEventPublisher([kafka.bootstrap], metrics=metrics) as publisher:
        assert len(publisher_threads() - before) == 1
        publisher.publish(events[0])
        assert publisher.publish_many(events[1:]) == 2
    assert publisher_threads() == before
    records = asyncio.run(read_back([kafka.bootstrap], [Topic.RATINGS]))
    assert [EventAdapter.validate_json(r.value) for r in records if r.value] == events
    assert published(metrics, Topic.RATINGS) == 3.0


def test_a_sync_publisher_without_kafka_raises_and_leaves_no_thread(closed_port: str) -> None:
    before = publisher_threads()
    with pytest.raises(ServiceUnavailable, match=f"Kafka at {closed_port} did not answer"):
        SyncEventPublisher([closed_port])
    assert publisher_threads() == before

"""Consumer lag (core/lag.py): the Burrow-style status rules as pure functions over synthetic
windows, and the shared reader against the embedded Kafka with a real consumer group that
commits: its numbers, its lag in seconds, its cache and its statuses over a window, driven by
a fake clock (no sleeps)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streamrec.core.embedded import EmbeddedKafka
from streamrec.core.errors import ServiceUnavailable
from streamrec.core.lag import (
    LagReader,
    LagStatus,
    PartitionWindow,
    Sample,
    StatusRules,
    consumer_lag,
    group_status,
    partition_status,
)
from streamrec.core.metrics import Metrics
from streamrec.schemas.topics import ConsumerGroup, Topic
from tests.conftest import FakeClock

RULES = StatusRules(window_seconds=60.0, stop_seconds=300.0)
OK, UNKNOWN, WARN, STALL, STOP, ERR = (
    LagStatus.OK,
    LagStatus.UNKNOWN,
    LagStatus.WARN,
    LagStatus.STALL,
    LagStatus.STOP,
    LagStatus.ERR,
)


def window(*readings: tuple[float, int, int]) -> list[Sample]:
    """Samples from (at, committed position, lag) readings."""
    return [Sample(at, position + lag, position, lag) for at, position, lag in readings]


# -- the rules, as pure functions ---------------------------------------------------------------


def test_no_sample_is_unknown() -> None:
    assert partition_status([], now=100.0, rules=RULES) is UNKNOWN


def test_lag_zero_anywhere_in_the_window_is_ok() -> None:
    # Even with the offset standing still since: Burrow rule 1, the group caught up.
    samples = window((0, 10, 0), (30, 10, 5), (60, 10, 9))
    assert partition_status(samples, now=60, rules=RULES) is OK


def test_an_offset_going_backwards_is_err() -> None:
    samples = window((0, 50, 3), (30, 20, 40), (60, 25, 35))
    assert partition_status(samples, now=60, rules=RULES) is ERR


def test_a_lagging_offset_standing_still_is_stall_once_the_window_is_complete() -> None:
    samples = window((0, 10, 4), (30, 10, 6), (59, 10, 8))
    assert partition_status(samples, now=59, rules=RULES) is UNKNOWN  # 59 s of a 60 s window
    samples = window((0, 10, 4), (30, 10, 6), (60, 10, 8))
    assert partition_status(samples, now=60, rules=RULES) is STALL


def test_standing_still_for_the_stop_threshold_is_stop() -> None:
    samples = window((240, 10, 4), (270, 10, 4), (300, 10, 4))
    # The offset last moved at 0: 300 s ago, the threshold.
    assert partition_status(samples, now=300, rules=RULES, moved_at=0.0) is STOP
    assert partition_status(samples, now=300, rules=RULES, moved_at=1.0) is STALL


def test_moving_while_the_lag_grows_over_the_whole_window_is_warn() -> None:
    samples = window((0, 10, 5), (30, 20, 8), (60, 30, 8), (61, 31, 12))
    assert partition_status(samples, now=61, rules=RULES) is WARN


def test_moving_and_catching_up_somewhere_is_ok() -> None:
    samples = window((0, 10, 5), (30, 20, 9), (45, 30, 7), (60, 40, 12))
    assert partition_status(samples, now=60, rules=RULES) is OK
    # Moving with a steady lag: not falling behind.
    steady = window((0, 10, 5), (30, 20, 5), (60, 30, 5))
    assert partition_status(steady, now=60, rules=RULES) is OK


def test_group_status_is_the_worst_partition_status() -> None:
    assert group_status([OK, WARN, OK]) is WARN
    assert group_status([OK, UNKNOWN]) is UNKNOWN
    assert group_status([STALL, STOP, WARN]) is STOP
    assert group_status([ERR, STOP]) is ERR
    assert group_status([]) is UNKNOWN


def test_the_window_slides_and_keeps_one_anchor_sample_before_it() -> None:
    history = PartitionWindow()
    for at in range(0, 100, 10):
        history.add(Sample(float(at), 20, 10, 10), window_seconds=30.0)
    # At 90 the window reaches back to 60; the sample at 60 is its anchor.
    assert [s.at for s in history.samples] == [60.0, 70.0, 80.0, 90.0]
    assert history.moved_at == 0.0  # never moved since first seen
    history.add(Sample(100.0, 25, 15, 10), window_seconds=30.0)
    assert history.moved_at == 100.0


def test_a_stalled_partition_goes_unknown_stall_stop_and_back_to_ok(clock: FakeClock) -> None:
    rules = StatusRules(window_seconds=20.0, stop_seconds=50.0)
    history = PartitionWindow()

    def read(position: int, lag: int) -> LagStatus:
        history.add(Sample(clock(), position + lag, position, lag), rules.window_seconds)
        status = history.status(clock(), rules)
        clock.advance(5.0)
        return status

    assert read(10, 0) is OK
    # Messages arrive, the committed offset stands still from now on.
    statuses = [read(10, lag) for lag in range(1, 12)]
    # OK while the caught-up reading is in the window; STALL once the lagging readings span
    # it all; STOP once nothing moved for stop_seconds.
    assert statuses == [OK] * 4 + [STALL] * 5 + [STOP] * 2
    assert read(25, 0) is OK  # caught up


# -- the reader, against the embedded Kafka -----------------------------------------------------

GROUP = ConsumerGroup.RETRAIN.value  # reads streamrec.ratings only
TOPIC = Topic.RATINGS.value
RECORD_TIME = 900.0  # Unix seconds of every record produced here; the clock starts at 1000


@pytest.fixture
async def kafka() -> AsyncIterator[list[str]]:
    broker = await asyncio.to_thread(EmbeddedKafka, 4)
    await asyncio.to_thread(broker.ensure_topics, [t.value for t in Topic])
    yield [broker.bootstrap]
    broker.close()


async def produce(bootstrap: list[str], per_partition: Sequence[int]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for partition, count in enumerate(per_partition):
            for n in range(count):
                await producer.send_and_wait(
                    TOPIC, b"%d" % n, partition=partition, timestamp_ms=int(RECORD_TIME * 1000)
                )
    finally:
        await producer.stop()


async def commit(bootstrap: list[str], offsets: dict[int, int]) -> None:
    """Commit offsets for GROUP as its consumer does (OffsetCommit), after reading up to them.
    No auto-commit: on stop it would commit the position it initialised from the previously
    committed offset, now and then after this commit, moving it back (a flaky STALL)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(TOPIC, p) for p in offsets])
        await consumer.commit({TopicPartition(TOPIC, p): o for p, o in offsets.items()})
    finally:
        await consumer.stop()


def rows(report: Any) -> dict[int, tuple[int, int | None, int]]:
    (group,) = report.groups
    return {p.partition: (p.end_offset, p.committed_offset, p.lag) for p in group.partitions}


async def test_lag_numbers_from_end_and_committed_offsets(
    kafka: list[str], clock: FakeClock
) -> None:
    await produce(kafka, [5, 3, 2, 0])
    await commit(kafka, {0: 5, 1: 1})
    async with LagReader(kafka, [GROUP], clock=clock) as reader:
        report = await reader.report()
    assert rows(report) == {0: (5, 5, 0), 1: (3, 1, 2), 2: (2, None, 2), 3: (0, None, 0)}
    assert report.total_lag == 4 and report.measured_at == clock()
    (group,) = report.groups
    by_partition = {p.partition: p for p in group.partitions}
    # The age of the oldest unconsumed record, from its Kafka timestamp.
    assert by_partition[1].lag_seconds == pytest.approx(clock() - RECORD_TIME)
    assert by_partition[2].lag_seconds == pytest.approx(clock() - RECORD_TIME)
    assert by_partition[0].lag_seconds == 0.0
    assert group.max_lag_seconds == pytest.approx(100.0)
    # One reading has no window: lagging partitions are UNKNOWN, caught-up ones OK.
    assert [by_partition[p].status for p in range(4)] == [OK, UNKNOWN, UNKNOWN, OK]
    assert group.status is UNKNOWN
    assert group.members is None  # the mock cluster does not serve DescribeGroups


async def test_a_second_read_within_the_interval_does_not_ask_kafka(
    kafka: list[str], clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    fetch_offsets = AIOKafkaAdminClient.list_consumer_group_offsets

    async def counted(self: AIOKafkaAdminClient, group_id: str, *args: Any, **kw: Any) -> Any:
        calls.append(group_id)
        return await fetch_offsets(self, group_id, *args, **kw)

    monkeypatch.setattr(AIOKafkaAdminClient, "list_consumer_group_offsets", counted)
    await produce(kafka, [2, 0, 0, 0])
    async with LagReader(kafka, [GROUP], refresh_seconds=5.0, clock=clock) as reader:
        first = await reader.report()
        assert calls == [GROUP]
        clock.advance(4.9)
        await produce(kafka, [1, 0, 0, 0])
        assert await reader.report() is first  # cached: Kafka not asked
        assert calls == [GROUP] and reader.readings == 1
        clock.advance(0.1)
        second = await reader.report()
    assert calls == [GROUP, GROUP] and reader.readings == 2
    assert (first.total_lag, second.total_lag) == (2, 3)


async def test_a_group_that_stops_committing_reaches_stall_and_comes_back_ok(
    kafka: list[str], clock: FakeClock
) -> None:
    rules = StatusRules(window_seconds=20.0, stop_seconds=600.0)
    metrics = Metrics()
    async with LagReader(kafka, [GROUP], refresh_seconds=5.0, rules=rules, clock=clock) as reader:
        metrics.export_lag(lambda: reader.latest)

        def gauge(status: LagStatus) -> float | None:
            labels = {"group": GROUP, "status": status.value}
            return metrics.registry.get_sample_value("streamrec_consumer_group_status", labels)

        await produce(kafka, [3, 0, 0, 0])
        await commit(kafka, {0: 3})
        assert (await reader.report()).groups[0].status is OK
        # Messages keep arriving; the group commits nothing more.
        seen = []
        for _ in range(5):
            clock.advance(5.0)
            await produce(kafka, [1, 0, 0, 0])
            seen.append((await reader.report()).groups[0].status)
        assert seen == [OK, OK, OK, OK, STALL]  # STALL as the caught-up reading leaves the window
        assert gauge(STALL) == 1.0 and gauge(OK) == 0.0
        lag = {"group": GROUP, "topic": TOPIC, "partition": "0"}
        assert metrics.registry.get_sample_value("streamrec_consumer_lag_messages", lag) == 5.0
        seconds = metrics.registry.get_sample_value("streamrec_consumer_lag_seconds", lag)
        assert seconds == pytest.approx(clock() - RECORD_TIME)
        # It commits again, up to the end.
        await commit(kafka, {0: 8})
        clock.advance(5.0)
        report = await reader.report()
    assert report.groups[0].status is OK and report.total_lag == 0
    assert gauge(OK) == 1.0 and gauge(STALL) == 0.0
    assert metrics.registry.get_sample_value("streamrec_consumer_lag_messages", lag) == 0.0


async def test_consumer_lag_reads_once_with_clients_of_its_own(kafka: list[str]) -> None:
    await produce(kafka, [0, 4, 0, 0])
    report = await consumer_lag(kafka, [GROUP], with_seconds=False)
    assert rows(report)[1] == (4, None, 4)
    assert report.groups[0].partitions[1].lag_seconds is None  # not asked for


async def test_kafka_down_is_service_unavailable_and_not_retried_within_the_interval(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    connects: list[object] = []
    start = AIOKafkaAdminClient.start

    async def counted(self: AIOKafkaAdminClient) -> None:
        connects.append(self)
        await start(self)

    monkeypatch.setattr(AIOKafkaAdminClient, "start", counted)
    # Nothing listens on port 1: the connection is refused.
    async with LagReader(["127.0.0.1:1"], [GROUP], refresh_seconds=5.0, clock=clock) as reader:
        with pytest.raises(ServiceUnavailable, match="did not answer a lag reading"):
            await reader.report()
        assert len(connects) == 1
        clock.advance(4.0)
        with pytest.raises(ServiceUnavailable, match="did not answer a lag reading"):
            await reader.report()  # the last failure again, without asking Kafka
        assert len(connects) == 1
        clock.advance(1.0)
        with pytest.raises(ServiceUnavailable):
            await reader.report()  # the interval is over: tried again
        assert len(connects) == 2
    assert reader.readings == 0 and reader.latest is None

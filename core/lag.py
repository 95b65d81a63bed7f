"""Consumer lag per group, topic and partition: end offset - committed offset.

Computed from ``committed()`` and ``end_offsets()``, which both the librdkafka mock cluster and
real Kafka serve (the mock does not serve ListGroups/DescribeGroups). Lag in seconds is the age
of the oldest unconsumed message, read with one fetch per lagging partition; it is left out
when that message cannot be fetched in time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import BaseModel

from schemas.topics import GROUP_TOPICS, ConsumerGroup


class PartitionLag(BaseModel):
    topic: str
    partition: int
    end_offset: int
    committed_offset: int | None
    lag: int
    lag_seconds: float | None = None


class GroupLag(BaseModel):
    group: str
    partitions: list[PartitionLag]
    total_lag: int
    max_lag_seconds: float | None = None


class LagReport(BaseModel):
    groups: list[GroupLag]
    total_lag: int
    measured_at: float


async def _partitions(bootstrap: list[str], topics: Sequence[str]) -> list[TopicPartition]:
    """Partitions of the topics that exist (a missing topic has no lag yet)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    return [
        TopicPartition(topic["topic"], part["partition"])
        for topic in described
        if topic["error_code"] == 0
        for part in sorted(topic["partitions"], key=lambda p: p["partition"])
    ]


async def _oldest_age(bootstrap: list[str], positions: dict[TopicPartition, int]) -> dict:
    """Age in seconds of the message at each position (the oldest one not yet consumed)."""
    if not positions:
        return {}
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        reader.assign(list(positions))
        for tp, offset in positions.items():
            reader.seek(tp, offset)
        ages: dict[TopicPartition, float] = {}
        deadline = time.monotonic() + 1.0
        while len(ages) < len(positions) and time.monotonic() < deadline:
            fetched = await reader.getmany(timeout_ms=200, max_records=1)
            now = time.time()
            for tp, records in fetched.items():
                if records and tp not in ages:
                    ages[tp] = max(0.0, now - records[0].timestamp / 1000.0)
                    reader.pause(tp)
        return ages
    finally:
        await reader.stop()


async def group_lag(
    bootstrap: list[str], group: str, topics: Sequence[str], with_seconds: bool = True
) -> GroupLag:
    partitions = await _partitions(bootstrap, topics)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions) if partitions else {}
        starts = await consumer.beginning_offsets(partitions) if partitions else {}
        committed = {tp: await consumer.committed(tp) for tp in partitions}
    finally:
        await consumer.stop()
    behind = {
        tp: committed[tp] if committed[tp] is not None else starts[tp]
        for tp in partitions
        if ends[tp] > (committed[tp] if committed[tp] is not None else starts[tp])
    }
    ages = await _oldest_age(bootstrap, behind) if with_seconds else {}
    rows = []
    for tp in partitions:
        position = committed[tp] if committed[tp] is not None else starts[tp]
        lag = max(ends[tp] - position, 0)
        rows.append(
            PartitionLag(
                topic=tp.topic,
                partition=tp.partition,
                end_offset=ends[tp],
                committed_offset=committed[tp],
                lag=lag,
                lag_seconds=0.0 if lag == 0 else ages.get(tp),
            )
        )
    seconds = [r.lag_seconds for r in rows if r.lag_seconds is not None]
    return GroupLag(
        group=group,
        partitions=rows,
        total_lag=sum(r.lag for r in rows),
        max_lag_seconds=max(seconds) if seconds else None,
    )


ALL_GROUPS: tuple[str, ...] = tuple(group.value for group in GROUP_TOPICS)


async def consumer_lag(
    bootstrap: list[str],
    groups: Sequence[str] = ALL_GROUPS,
    with_seconds: bool = True,
) -> LagReport:
    """Lag of each group over the topics it reads (``GROUP_TOPICS``)."""
    reports = await asyncio.gather(
        *(
            group_lag(bootstrap, g, [t.value for t in GROUP_TOPICS[ConsumerGroup(g)]], with_seconds)
            for g in groups
        )
    )
    return LagReport(
        groups=list(reports), total_lag=sum(g.total_lag for g in reports), measured_at=time.time()
    )

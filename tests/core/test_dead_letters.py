"""The DLQ tail reader the API shows dead letters with: exact totals, counts per group and
source topic, the newest letters as readable excerpts, reading only what was added, a record
that is not a dead letter shown as such, and a cache timed by the injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer

from streamrec.core.dead_letters import (
    EXCERPT_CHARS,
    UNREADABLE,
    DeadLetterTail,
    dead_letter_headers,
)
from streamrec.core.services import Services
from streamrec.schemas.events import DeadLetter
from streamrec.schemas.topics import Topic
from tests.conftest import FakeClock

pytestmark = pytest.mark.kafka
START = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def letter(
    n: int, group: str = "streamrec-features", payload: bytes | None = b"{bad"
) -> DeadLetter:
    return DeadLetter(
        source_topic=Topic.RATINGS.value,
        source_partition=n % 2,
        source_offset=n,
        source_key=f"u{n}".encode(),
        consumer_group=group,
        error=f"Invalid JSON number {n}",
        payload=payload,
        failed_at=START + timedelta(seconds=n),
    )


async def publish(services: Services, records: list[tuple[DeadLetter | None, bytes]]) -> None:
    """Write to the DLQ topic: a dead letter as the consumers write it, or (None) raw bytes."""
    producer = AIOKafkaProducer(bootstrap_servers=services.kafka_bootstrap)
    await producer.start()
    try:
        for dead, raw in records:
            if dead is None:
                await producer.send_and_wait(Topic.DLQ.value, raw, key=b"x")
                continue
            headers = [(k, v.encode()) for k, v in dead_letter_headers(dead).items()]
            await producer.send_and_wait(
                Topic.DLQ.value, dead.payload, key=dead.source_key, headers=headers
            )
    finally:
        await producer.stop()


async def test_totals_counts_and_the_newest_letters_read_incrementally(services: Services) -> None:
    async with DeadLetterTail(services.kafka_bootstrap, keep=3) as tail:
        empty = await tail.refresh()  # no DLQ topic yet: nothing, not an error
        assert (empty.total, empty.unread, empty.counts, empty.letters) == (0, 0, [], [])

        big = b'{"rating": ' + "é".encode() * 1000 + b"\xff"
        await publish(services, [(letter(1), b""), (letter(2, payload=big), b"")])
        first = await tail.refresh()
        assert (first.total, first.unread) == (2, 0)
        assert [(c.consumer_group, c.source_topic, c.count) for c in first.counts] == [
            ("streamrec-features", Topic.RATINGS.value, 2)
        ]
        newest = first.letters[0]
        assert (newest.source_offset, newest.reason, newest.key) == (
            2,
            "Invalid JSON number 2",
            "u2",
        )
        assert newest.payload_bytes == len(big)
        assert newest.payload_excerpt == '{"rating": ' + "é" * (EXCERPT_CHARS - 11)
        assert first.letters[1].payload_excerpt == "{bad"

        await publish(
            services,
            [(letter(3, group="streamrec-archive", payload=None), b""), (None, b"plain text")],
        )
        second = await tail.refresh()
        assert (second.total, second.unread) == (4, 0)
        counts = {(c.consumer_group, c.count) for c in second.counts}
        assert counts == {("streamrec-features", 2), ("streamrec-archive", 1), (UNREADABLE, 1)}
        assert len(second.letters) == 3  # keep=3: the oldest left out
        by_group = {v.consumer_group: v for v in second.letters}
        assert by_group["streamrec-archive"].payload_bytes is None  # a null value
        foreign = by_group[UNREADABLE]
        assert foreign.reason.startswith("not a streamrec dead letter: JSONDecodeError")
        assert foreign.payload_excerpt == "plain text"
        assert tail.readings == 3


async def test_report_is_cached_for_the_refresh_interval(
    services: Services, clock: FakeClock
) -> None:
    async with DeadLetterTail(services.kafka_bootstrap, refresh_seconds=5, clock=clock) as tail:
        await publish(services, [(letter(1), b"")])
        assert (await tail.report()).total == 1
        await publish(services, [(letter(2), b"")])
        clock.advance(4.9)
        assert (await tail.report()).total == 1 and tail.readings == 1  # cached
        clock.advance(0.2)
        assert (await tail.report()).total == 2 and tail.readings == 2

"""The dead-letter topic ``streamrec.dlq``: writing dead letters, reading them, replaying them.

**Format.** The rejected record itself, key and value byte for byte, with its context in
``streamrec.dlq.*`` headers: defined in ``core.dead_letters`` (the API reads it too), the
reasons for it are there.

**Replay.** ``replay_dead_letters`` re-publishes chosen dead letters to their source topic,
each source record at most once (``stores.dlq_replays`` records it durably before the publish).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streamrec.consumers.decode import dead_letter_kind
from streamrec.core.dead_letters import dead_letter_headers, letter_from_record
from streamrec.core.kafka_log import topic_partitions
from streamrec.core.metrics import Metrics
from streamrec.schemas.events import DeadLetter
from streamrec.schemas.topics import Topic
from streamrec.stores.dlq_replays import DlqReplayLog, SourceRecord

if TYPE_CHECKING:
    from faststream.kafka import KafkaBroker

log = logging.getLogger(__name__)

# Set on a replayed record: where in the DLQ it came from (consumers ignore headers).
H_REPLAYED_FROM = "streamrec.replayed_from"


class DeadLetterSink:
    def __init__(self, broker: KafkaBroker, metrics: Metrics) -> None:
        self._broker = broker
        self._metrics = metrics

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        for letter in letters:
            await self._broker.publish(
                letter.payload,  # bytes go out as they are (FastStream adds no encoding)
                topic=Topic.DLQ.value,
                key=letter.source_key,
                headers=dead_letter_headers(letter),
            )
            kind = dead_letter_kind(letter)
            self._metrics.dead_letters.labels(
                letter.consumer_group, letter.source_topic, kind
            ).inc()
            log.warning(
                "dead letter from %s[%d]@%d (%s): %s",
                letter.source_topic,
                letter.source_partition,
                letter.source_offset,
                letter.consumer_group,
                letter.error,
            )


# -- reading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredDeadLetter:
    """A dead letter as read back from the DLQ topic, with its own coordinates there."""

    dlq_partition: int
    dlq_offset: int
    letter: DeadLetter

    @property
    def kind(self) -> str:
        return dead_letter_kind(self.letter)

    @property
    def source(self) -> SourceRecord:
        letter = self.letter
        return SourceRecord(
            letter.source_topic,
            letter.source_partition,
            letter.source_offset,
            letter.source_timestamp_ms,
        )


Progress = Callable[[str, int, int], None]  # (phase, done, total)


async def read_dead_letters(
    bootstrap: list[str], on_progress: Progress | None = None
) -> list[StoredDeadLetter]:
    """Every dead letter in the DLQ topic now (up to its end offsets at the start), in order."""
    tps = [TopicPartition(t, p) for t, p in await topic_partitions(bootstrap, [Topic.DLQ.value])]
    if not tps:
        return []
    # Positions are set by hand (seek to the start offsets): an assigned partition without one
    # is reset by ``auto_offset_reset``, and with the default (latest) that reset could land
    # after ``seek_to_beginning`` and skip every letter (tests/consumers/test_dlq.py flaked).
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        total = sum(end[tp] - begin[tp] for tp in tps)
        letters: list[StoredDeadLetter] = []
        if on_progress is not None:
            on_progress("reading", 0, total)
        for tp in tps:
            consumer.seek(tp, begin[tp])
        pending = {tp for tp in tps if end[tp] > begin[tp]}
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= end[tp]:
                        break
                    letter = letter_from_record(record.key, record.value, record.headers)
                    letters.append(StoredDeadLetter(tp.partition, record.offset, letter))
            for tp in list(pending):
                if await consumer.position(tp) >= end[tp]:
                    pending.discard(tp)
            if on_progress is not None:
                on_progress("reading", len(letters), total)
        letters.sort(key=lambda s: (s.letter.failed_at, s.dlq_partition, s.dlq_offset))
        return letters
    finally:
        await consumer.stop()


# -- choosing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """Which dead letters: every given filter must match (none given: all of them)."""

    at: frozenset[tuple[int, int]] = frozenset()  # DLQ (partition, offset)
    topics: frozenset[str] = frozenset()  # source topics
    kinds: frozenset[str] = frozenset()  # dead_letter_kind
    groups: frozenset[str] = frozenset()  # consumer groups

    @property
    def empty(self) -> bool:
        return not (self.at or self.topics or self.kinds or self.groups)

    def matches(self, stored: StoredDeadLetter) -> bool:
        letter = stored.letter
        return (
            (not self.at or (stored.dlq_partition, stored.dlq_offset) in self.at)
            and (not self.topics or letter.source_topic in self.topics)
            and (not self.kinds or stored.kind in self.kinds)
            and (not self.groups or letter.consumer_group in self.groups)
        )


# -- replaying --------------------------------------------------------------------------------


@dataclass
class ReplaySummary:
    letters: int = 0  # dead letters selected
    records: int = 0  # distinct source records among them (one per group that rejected it)
    published: int = 0
    already: list[SourceRecord] = field(default_factory=list)  # replayed by an earlier run
    unconfirmed: list[SourceRecord] = field(default_factory=list)  # claimed, not acknowledged
    empty: list[SourceRecord] = field(default_factory=list)  # null values: never replayed
    dry_run: bool = False


def distinct_sources(letters: Sequence[StoredDeadLetter]) -> dict[SourceRecord, StoredDeadLetter]:
    """One dead letter per source record (the first in DLQ order)."""
    chosen: dict[SourceRecord, StoredDeadLetter] = {}
    for stored in sorted(letters, key=lambda s: (s.dlq_partition, s.dlq_offset)):
        chosen.setdefault(stored.source, stored)
    return chosen


async def replay_dead_letters(
    bootstrap: list[str],
    replays: DlqReplayLog,
    selection: Selection,
    *,
    dry_run: bool = False,
    chunk: int = 500,
    on_progress: Progress | None = None,
) -> ReplaySummary:
    """Re-publish the selected dead letters' original key and value to their source topic.

    Each source record goes back at most once, whichever run and however many groups
    dead-lettered it: it is claimed in SQL (committed) before it is sent, and marked
    published once Kafka acknowledged it (``acks=all``)."""
    letters = [s for s in await read_dead_letters(bootstrap, on_progress) if selection.matches(s)]
    sources = distinct_sources(letters)
    before = await asyncio.to_thread(replays.replayed, sources)
    summary = ReplaySummary(letters=len(letters), records=len(sources), dry_run=dry_run)
    summary.already = sorted(before, key=_order)
    # A null value is no event whatever the fix: nothing to give back to the topic.
    summary.empty = sorted((s for s in sources if sources[s].letter.payload is None), key=_order)
    todo = [
        stored
        for source, stored in sources.items()
        if source not in before and stored.letter.payload is not None
    ]
    if dry_run or not todo:
        return summary
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        if on_progress is not None:
            on_progress("publishing", 0, len(todo))
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            claimed = await asyncio.to_thread(replays.claim_many, [_claim(s) for s in part])
            summary.already.extend(s.source for s in part if s.source not in claimed)
            sent = [s for s in part if s.source in claimed]
            summary.unconfirmed.extend(s.source for s in sent)  # until acknowledged below
            futures = [await producer.send(*_record(s)) for s in sent]
            results = await asyncio.gather(*futures, return_exceptions=True)
            acked = [s.source for s, r in zip(sent, results, strict=True) if _is_ack(r)]
            await asyncio.to_thread(replays.mark_published_many, acked)
            summary.published += len(acked)
            done = set(acked)
            summary.unconfirmed = [r for r in summary.unconfirmed if r not in done]
            for stored, result in zip(sent, results, strict=True):
                if not _is_ack(result):
                    log.error(
                        "replaying %s[%d]@%d was not acknowledged (it will not be retried): %s",
                        stored.letter.source_topic,
                        stored.letter.source_partition,
                        stored.letter.source_offset,
                        result,
                    )
            if on_progress is not None:
                on_progress("publishing", min(start + chunk, len(todo)), len(todo))
        await producer.flush()
    finally:
        await producer.stop()
    return summary


def _order(record: SourceRecord) -> tuple[str, int, int]:
    return (record.topic, record.partition, record.offset)


def _claim(stored: StoredDeadLetter) -> tuple[SourceRecord, int, int]:
    return (stored.source, stored.dlq_partition, stored.dlq_offset)


def _is_ack(result: object) -> bool:
    return not isinstance(result, BaseException)


def _record(stored: StoredDeadLetter) -> tuple:
    letter = stored.letter
    origin = f"{Topic.DLQ.value}[{stored.dlq_partition}]@{stored.dlq_offset}"
    stamp = datetime.now(UTC).isoformat()
    return (
        letter.source_topic,
        letter.payload,
        letter.source_key,
        None,  # partition: the producer's partitioner picks it from the key, as it did first
        None,  # timestamp: now (the event time is inside the payload)
        [(H_REPLAYED_FROM, origin.encode()), (H_REPLAYED_FROM + ".at", stamp.encode())],
    )

"""The dead-letter topic ``streamrec.dlq``: its record format, and a tail reader for showing it.

**Format (binary-safe).** A dead-letter record is the rejected record itself, as Kafka
Connect's DLQ writes it: its value is the original value and its key the original key, byte
for byte, and the context travels in headers (``streamrec.dlq.*``: source topic, partition,
offset and timestamp, consumer group, error, failed_at). Chosen over a JSON envelope with a
base64 field because the bytes stay exactly the bytes (nothing to decode, any size, any
encoding), the DLQ keeps the source key for partitioning, ``kcat``/Kafka UIs show the original
message as it was, and a replay is a plain re-send of key and value. The one thing FastStream's
publish cannot carry is a null value without a key (it sends ``b""``), so that case is marked
with a header. The reason stays readable: ``streamrec.dlq.error`` is UTF-8 text. The format
lives here, below the consumers that write it (``consumers.dlq``) and the API that shows it.

**Tail reader.** ``DeadLetterTail`` is what the API keeps to show the DLQ on ``/ops``: one
admin client and one group-less consumer, long-lived, that read only the records added since
the last reading (at most every ``refresh_seconds``, and for at most ``read_seconds`` a
reading, so a long DLQ is read over several readings), count letters per consumer group and
source topic, and keep excerpts of the newest ``keep``. ``total`` is exact at each reading
(end - start offsets).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from types import TracebackType

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from streamrec.core.errors import ServiceUnavailable
from streamrec.schemas.api import DeadLetterCount, DeadLetterView, RecentDeadLetters
from streamrec.schemas.events import DeadLetter
from streamrec.schemas.topics import Topic

__all__ = [
    "DeadLetterTail",
    "dead_letter_headers",
    "letter_from_record",
]

log = logging.getLogger(__name__)

HEADER_PREFIX = "streamrec.dlq."
H_TOPIC = HEADER_PREFIX + "source.topic"
H_PARTITION = HEADER_PREFIX + "source.partition"
H_OFFSET = HEADER_PREFIX + "source.offset"
H_TIMESTAMP = HEADER_PREFIX + "source.timestamp"
H_GROUP = HEADER_PREFIX + "group"
H_ERROR = HEADER_PREFIX + "error"
H_FAILED_AT = HEADER_PREFIX + "failed_at"
H_NULL_VALUE = HEADER_PREFIX + "null_value"  # only when the original value was null

UNREADABLE = "(not a dead letter)"  # the group shown for a DLQ record of another format
EXCERPT_CHARS = 240
_KAFKA_ERRORS = (KafkaError, OSError, TimeoutError)


def dead_letter_headers(letter: DeadLetter) -> dict[str, str]:
    headers = {
        H_TOPIC: letter.source_topic,
        H_PARTITION: str(letter.source_partition),
        H_OFFSET: str(letter.source_offset),
        H_TIMESTAMP: str(letter.source_timestamp_ms),
        H_GROUP: letter.consumer_group,
        H_ERROR: letter.error,
        H_FAILED_AT: letter.failed_at.isoformat(),
    }
    if letter.payload is None:
        headers[H_NULL_VALUE] = "true"
    return headers


def letter_from_record(key: bytes | None, value: bytes | None, headers: Iterable) -> DeadLetter:
    """The ``DeadLetter`` a DLQ record carries (``headers``: aiokafka's (name, bytes) pairs).

    Records written before the DLQ became binary-safe were a JSON envelope with the payload as
    text (non-UTF-8 bytes already replaced): they are read as such."""
    found = {name: raw for name, raw in headers}
    if H_TOPIC not in found:
        envelope = json.loads(value or b"{}")
        old_payload, old_key = envelope.get("payload"), envelope.get("source_key")
        return DeadLetter(
            source_topic=envelope["source_topic"],
            source_partition=envelope["source_partition"],
            source_offset=envelope["source_offset"],
            source_key=old_key.encode() if old_key is not None else None,
            consumer_group=envelope["consumer_group"],
            error=envelope["error"],
            payload=old_payload.encode() if old_payload is not None else None,
            failed_at=envelope["failed_at"],
        )

    def text(name: str) -> str:
        return found[name].decode()

    return DeadLetter(
        source_topic=text(H_TOPIC),
        source_partition=int(text(H_PARTITION)),
        source_offset=int(text(H_OFFSET)),
        source_timestamp_ms=int(text(H_TIMESTAMP)) if H_TIMESTAMP in found else -1,
        source_key=key,
        consumer_group=text(H_GROUP),
        error=text(H_ERROR),
        payload=None if H_NULL_VALUE in found else (value if value is not None else None),
        failed_at=datetime.fromisoformat(text(H_FAILED_AT)),
    )


def _excerpt(raw: bytes | None, chars: int = EXCERPT_CHARS) -> str | None:
    if raw is None:
        return None
    # Only the start is decoded: a multi-megabyte payload costs no more than a short one.
    return raw[: chars * 4].decode("utf-8", errors="replace")[:chars]


def view_of(record: ConsumerRecord[bytes, bytes]) -> DeadLetterView:
    """What ``/ops`` shows of one DLQ record. A record that is not a dead letter (written to the
    topic by something else) is shown as such, with the reason it could not be read."""
    try:
        letter = letter_from_record(record.key, record.value, record.headers)
    except (ValueError, KeyError, TypeError) as exc:  # JSON, UTF-8, int(), missing fields
        return DeadLetterView(
            dlq_partition=record.partition,
            dlq_offset=record.offset,
            source_topic="?",
            source_partition=-1,
            source_offset=-1,
            consumer_group=UNREADABLE,
            reason=f"not a streamrec dead letter: {type(exc).__name__}: {exc}",
            failed_at=datetime.fromtimestamp(record.timestamp / 1000.0, UTC),
            key=_excerpt(record.key),
            payload_bytes=None if record.value is None else len(record.value),
            payload_excerpt=_excerpt(record.value),
        )
    return DeadLetterView(
        dlq_partition=record.partition,
        dlq_offset=record.offset,
        source_topic=letter.source_topic,
        source_partition=letter.source_partition,
        source_offset=letter.source_offset,
        consumer_group=letter.consumer_group,
        reason=letter.error,
        # An aware time, so that letters sort together (a naive one is taken as UTC).
        failed_at=letter.failed_at
        if letter.failed_at.tzinfo
        else letter.failed_at.replace(tzinfo=UTC),
        key=_excerpt(letter.source_key),
        payload_bytes=None if letter.payload is None else len(letter.payload),
        payload_excerpt=_excerpt(letter.payload),
    )


class DeadLetterTail:
    """A process's reader of the DLQ topic for display (see the module docstring).

    ``report()`` answers from the last reading while it is younger than ``refresh_seconds`` and
    reads again otherwise (one reading at a time); a failed reading raises ServiceUnavailable
    and is not retried before the interval is over. ``clock`` (Unix seconds) times the cache.
    """

    def __init__(
        self,
        bootstrap: list[str],
        *,
        keep: int = 50,
        refresh_seconds: float = 5.0,
        timeout_seconds: float = 5.0,
        read_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bootstrap = bootstrap
        self.keep = keep
        self.refresh_seconds = refresh_seconds
        self._timeout = timeout_seconds
        self._read_seconds = read_seconds
        self._clock = clock
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self._next: dict[TopicPartition, int] = {}  # the next offset to read per partition
        self._counts: dict[tuple[str, str], DeadLetterCount] = {}
        self._newest: list[DeadLetterView] = []  # newest first, at most ``keep``
        self._latest: RecentDeadLetters | None = None
        self._failure: tuple[float, ServiceUnavailable] | None = None
        self.readings = 0  # successful readings of Kafka, for tests

    async def __aenter__(self) -> DeadLetterTail:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def report(self) -> RecentDeadLetters:
        """Counts and the newest letters, at most ``refresh_seconds`` (plus one reading) old."""
        async with self._lock:
            now = self._clock()
            if self._latest is not None and now - self._latest.measured_at < self.refresh_seconds:
                return self._latest
            if self._failure is not None and now - self._failure[0] < self.refresh_seconds:
                raise self._failure[1]
            return await self._refresh_locked()

    async def refresh(self) -> RecentDeadLetters:
        """Read the DLQ now, whatever the age of the last reading."""
        async with self._lock:
            return await self._refresh_locked()

    async def close(self) -> None:
        admin, consumer = self._admin, self._consumer
        self._admin = self._consumer = None
        if consumer is not None:
            await consumer.stop()
        if admin is not None:
            await admin.close()

    async def _refresh_locked(self) -> RecentDeadLetters:
        try:
            async with asyncio.timeout(self._timeout):
                total, unread = await self._read()
        except _KAFKA_ERRORS as exc:
            failure = ServiceUnavailable(
                f"Kafka at {', '.join(self.bootstrap)} did not answer a read of the dead-letter "
                f"topic: {exc or type(exc).__name__}"
            )
            if self._failure is None:
                log.warning("%s", failure)  # once per outage
            self._failure = (self._clock(), failure)
            await self.close()  # reconnect from scratch next time
            raise failure from exc
        self._failure = None
        self.readings += 1
        self._latest = RecentDeadLetters(
            measured_at=self._clock(),
            total=total,
            unread=unread,
            counts=sorted(self._counts.values(), key=lambda c: (c.consumer_group, c.source_topic)),
            letters=list(self._newest),
        )
        return self._latest

    async def _connect(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._consumer is None:
            await self.close()
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None
            )
            self._admin, self._consumer = admin, consumer
            await admin.start()
            await consumer.start()
        return self._admin, self._consumer

    async def _read(self) -> tuple[int, int]:
        """Read what was added since the last reading; (records in the topic, not read yet)."""
        admin, consumer = await self._connect()
        # Described at each reading: the topic may have appeared or grown since.
        described = await admin.describe_topics([Topic.DLQ.value])
        tps = [
            TopicPartition(Topic.DLQ.value, p["partition"])
            for topic in described
            if topic["error_code"] == 0  # a topic that does not exist yet holds no letter
            for p in sorted(topic["partitions"], key=lambda p: p["partition"])
        ]
        if not tps:
            return 0, 0
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:  # records deleted by retention before they were read are skipped
            self._next[tp] = max(self._next.get(tp, starts[tp]), starts[tp])
        todo = {tp: ends[tp] for tp in tps if ends[tp] > self._next[tp]}
        if todo:
            await self._read_until(consumer, todo)
        total = sum(ends[tp] - starts[tp] for tp in tps)
        return total, sum(max(ends[tp] - self._next[tp], 0) for tp in tps)

    async def _read_until(
        self, consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]
    ) -> None:
        consumer.assign(list(ends))
        for tp in ends:
            consumer.seek(tp, self._next[tp])
        deadline = time.monotonic() + self._read_seconds
        pending = set(ends)
        try:
            while pending and (left := deadline - time.monotonic()) > 0:
                batches = await consumer.getmany(*pending, timeout_ms=max(int(left * 1000), 1))
                for tp, records in batches.items():
                    self._add([view_of(r) for r in records])
                    if records:
                        self._next[tp] = records[-1].offset + 1
                    if self._next[tp] >= ends[tp]:
                        pending.discard(tp)
        finally:
            consumer.assign([])  # no background fetching between readings

    def _add(self, views: list[DeadLetterView]) -> None:
        for view in views:
            key = (view.consumer_group, view.source_topic)
            seen = self._counts.get(key)
            self._counts[key] = DeadLetterCount(
                consumer_group=view.consumer_group,
                source_topic=view.source_topic,
                count=(seen.count if seen else 0) + 1,
                newest_failed_at=max(seen.newest_failed_at, view.failed_at)
                if seen
                else view.failed_at,
            )
        newest = sorted(
            [*self._newest, *views],
            key=lambda v: (v.failed_at, v.dlq_partition, v.dlq_offset),
            reverse=True,
        )
        self._newest = newest[: self.keep]

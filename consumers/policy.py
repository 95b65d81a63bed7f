"""The consumers' ack and error policy, in one place.

* A bad record never fails a batch: it goes to the DLQ (``consumers.decode``).
* A failing backing service (Redis, SQL) is retried in place with exponential backoff; if it
  is still down after the retries, the handler raises and ``settle`` seeks the partitions
  back, so the batch is delivered again later. Offsets are committed to Kafka only after the
  batch's state is committed (at-least-once), and the state itself is idempotent, so
  re-delivery never double-counts.
* A commit that fails because the group is rebalancing (aiokafka ``CommitFailedError`` and
  kin) is not an error of the batch: ``settle`` logs one line and rewinds, and the batch is
  read again (by this member or the one that now owns the partition).

Acknowledgement is explicit (FastStream's ``AckPolicy.MANUAL``; every handler runs its body
inside ``settle``): FastStream's automatic ack would log a commit failure as CRITICAL with a
traceback and move on past the batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    IllegalStateError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from faststream import AckPolicy
from faststream.kafka import Topic as KafkaTopic
from faststream.kafka.message import KafkaMessage

from streamrec.core.errors import ServiceUnavailable
from streamrec.core.settings import Settings
from streamrec.core.unavailable import SERVICE_ERRORS
from streamrec.schemas.topics import GROUP_TOPICS, ConsumerGroup

T = TypeVar("T")
log = logging.getLogger(__name__)

# Every outage the API answers 503 for (core.unavailable), plus a vector store that is down.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    *SERVICE_ERRORS,
    ServiceUnavailable,
    ConnectionError,
    TimeoutError,
)


async def with_backoff(
    action: Callable[[], Awaitable[T]],
    what: str,
    attempts: int = 5,
    first_delay: float = 0.2,
    max_delay: float = 5.0,
) -> T:
    """Run ``action``; on a transient error wait 0.2, 0.4, 0.8 ... s and try again."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return await action()
        except TRANSIENT_ERRORS as exc:
            if attempt == attempts:
                log.error("%s failed %d times, giving the batch back: %s", what, attempt, exc)
                raise
            log.warning(
                "%s failed (attempt %d/%d), retrying in %.1fs: %s",
                what,
                attempt,
                attempts,
                delay,
                exc,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)
    raise AssertionError("unreachable")


def event_topics(settings: Settings, group: ConsumerGroup) -> list[KafkaTopic]:
    """The topics ``group`` subscribes to (``GROUP_TOPICS``). On real Kafka FastStream creates
    missing ones with our partition count; the embedded mock cluster does not serve
    CreateTopics, and ``core.services`` has already created them there."""
    return [
        KafkaTopic(
            topic.value,
            num_partitions=settings.topic_partitions,
            replication_factor=settings.topic_replication,
            declare=not settings.embedded_kafka,
        )
        for topic in GROUP_TOPICS[group]
    ]


def batch_subscriber_options(settings: Settings, group: str) -> dict[str, Any]:
    """Options every streamrec batch subscriber shares."""
    return {
        "group_id": group,
        "batch": True,
        "max_records": settings.consumer_batch_size,
        "batch_timeout_ms": settings.consumer_batch_timeout_ms,
        "auto_offset_reset": "earliest",
        # aiokafka waits up to 500 ms for a fetch to fill by default: too long for freshness.
        "fetch_max_wait_ms": settings.consumer_fetch_max_wait_ms,
        **session_options(settings),
        "ack_policy": AckPolicy.MANUAL,  # each handler settles its batch (``settle``)
        "decoder": raw_values,
    }


EMBEDDED_SESSION_TIMEOUT_MS = 3500


def session_options(settings: Settings) -> dict[str, int]:
    """Group session timing (see ``Settings.consumer_session_timeout_ms``); measured with
    benchmarks/consumer_resume.py. Heartbeats at a quarter of the session, so three can be
    lost before the member is."""
    session = settings.consumer_session_timeout_ms or (
        EMBEDDED_SESSION_TIMEOUT_MS if settings.embedded_kafka else 10_000
    )
    return {"session_timeout_ms": session, "heartbeat_interval_ms": max(250, session // 4)}


async def raw_values(message: Any, _original: Any) -> list[bytes | None]:
    """Hand the handler the raw bytes: validation is per record (bad ones go to the DLQ)."""
    return [record.value for record in message.raw_message]


# What a commit raises when the group rebalanced under it (aiokafka wraps the first three of
# the broker's errors in CommitFailedError; IllegalStateError: no partitions assigned now).
REBALANCE_ERRORS: tuple[type[BaseException], ...] = (
    CommitFailedError,
    RebalanceInProgressError,
    IllegalGenerationError,
    UnknownMemberIdError,
    IllegalStateError,
)


@asynccontextmanager
async def settle(msg: KafkaMessage, group: str) -> AsyncIterator[None]:
    """Acknowledge the batch ``msg`` once the body has committed its state; else rewind.

    * the body raises: the partitions are sought back to the batch's first records and the
      error propagates (FastStream logs it): the batch is delivered again;
    * the commit fails because of a rebalance: one log line, the same rewind, no error: the
      batch is delivered again and its state writes are idempotent (offsets, event ids).
    """
    try:
        yield
    except Exception:
        rewind(msg)
        raise
    try:
        await msg.ack()
    except REBALANCE_ERRORS as exc:
        log.warning(
            "%s: offsets not committed, the group is rebalancing (%s); the batch will be "
            "delivered again",
            group,
            type(exc).__name__,
        )
        rewind(msg)


def rewind(msg: KafkaMessage) -> None:
    """Seek each partition of the batch that this member still owns back to its first record
    in the batch (a partition revoked meanwhile restarts from its committed offset anyway)."""
    consumer = msg.consumer
    owned = consumer.assignment() if isinstance(consumer, AIOKafkaConsumer) else None
    records = msg.raw_message if isinstance(msg.raw_message, tuple | list) else (msg.raw_message,)
    earliest: dict[TopicPartition, int] = {}
    for record in records:
        partition = TopicPartition(record.topic, record.partition)
        earliest[partition] = min(earliest.get(partition, record.offset), record.offset)
    for partition, offset in earliest.items():
        if owned is None or partition in owned:
            consumer.seek(partition=partition, offset=offset)

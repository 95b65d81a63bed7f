"""The consumers' ack and error policy, in one place.

* A bad record never fails a batch: it goes to the DLQ (``consumers.decode``).
* A failing backing service (Redis, SQL) is retried in place with exponential backoff; if it
  is still down after the retries, the handler raises and FastStream's ``NACK_ON_ERROR``
  policy seeks the partitions back, so the batch is delivered again later. Offsets are
  committed to Kafka only after the batch's state is committed (at-least-once), and the
  state itself is idempotent, so re-delivery never double-counts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from faststream import AckPolicy
from faststream.kafka import Topic as KafkaTopic
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import OperationalError

from core.settings import Settings
from schemas.topics import GROUP_TOPICS, ConsumerGroup

T = TypeVar("T")
log = logging.getLogger(__name__)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OperationalError,
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
        "ack_policy": AckPolicy.NACK_ON_ERROR,
        "decoder": raw_values,
    }


async def raw_values(message: Any, _original: Any) -> list[bytes | None]:
    """Hand the handler the raw bytes: validation is per record (bad ones go to the DLQ)."""
    return [record.value for record in message.raw_message]

"""The consumers' ack and error policy: ``with_backoff`` (the sleep recorded, not waited),
``settle`` and ``rewind`` on stand-in batches, and on the embedded broker a commit refused
because of a rebalance."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaConnectionError
from faststream.kafka.message import KafkaMessage
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DisconnectionError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from streamrec.consumers import policy
from streamrec.consumers.app import build_consumer_broker
from streamrec.consumers.policy import (
    REBALANCE_ERRORS,
    TRANSIENT_ERRORS,
    rewind,
    settle,
    with_backoff,
)
from streamrec.core.errors import ServiceUnavailable, StateConflict
from streamrec.core.lag import consumer_lag
from streamrec.core.metrics import Metrics
from streamrec.core.unavailable import SERVICE_ERRORS
from streamrec.producers.publisher import EventPublisher
from streamrec.schemas.events import RatingEvent
from streamrec.schemas.topics import ConsumerGroup
from streamrec.stores.features import user_key
from tests.conftest import wait_until

FEATURES = ConsumerGroup.FEATURES.value


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays ``with_backoff`` waits, recorded instead of waited."""
    delays: list[float] = []

    async def record(delay: float) -> None:
        delays.append(delay)

    monkeypatch.setattr(policy.asyncio, "sleep", record)
    return delays


def failing(
    *errors: BaseException, result: str = "applied"
) -> tuple[Callable[[], Awaitable[str]], list[int]]:
    """An action that raises ``errors`` in turn, then returns ``result``; and its call count."""
    calls: list[int] = []
    pending = list(errors)

    async def action() -> str:
        calls.append(len(calls) + 1)
        if pending:
            raise pending.pop(0)
        return result

    return action, calls


# One of each outage the API answers 503 for (core.unavailable), plus the domain error a
# store raises for one (a vector store that is down) and the builtin ones.
TRANSIENT = [
    RedisConnectionError("connection refused"),
    RedisTimeoutError("timed out"),
    OperationalError("SELECT 1", {}, Exception("server closed the connection")),
    InterfaceError("SELECT 1", {}, Exception("connection already closed")),
    DisconnectionError("invalidated"),
    PoolTimeoutError("QueuePool limit reached"),
    ServiceUnavailable("Qdrant is unavailable"),
    ConnectionRefusedError(111, "refused"),
    TimeoutError(),
]


def test_every_outage_the_api_answers_503_for_is_retried() -> None:
    assert set(SERVICE_ERRORS) <= set(TRANSIENT_ERRORS)
    assert ServiceUnavailable in TRANSIENT_ERRORS
    assert set(SERVICE_ERRORS) <= {type(e) for e in TRANSIENT}  # each is exercised below


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: type(e).__name__)
async def test_a_transient_error_is_retried_and_the_result_returned(
    error: BaseException, sleeps: list[float]
) -> None:
    action, calls = failing(error, error)
    assert await with_backoff(action, "applying a batch") == "applied"
    assert len(calls) == 3
    assert sleeps == [0.2, 0.4]  # the defaults: 0.2 s, doubling


async def test_the_last_failure_is_raised_after_growing_capped_delays(
    sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    errors = [ConnectionError(f"down {n}") for n in range(5)]
    action, calls = failing(*errors)
    with pytest.raises(ConnectionError) as caught:
        await with_backoff(action, "applying a batch", attempts=5, first_delay=1.0, max_delay=3.0)
    assert caught.value is errors[-1]
    assert len(calls) == 5
    assert sleeps == [1.0, 2.0, 3.0, 3.0]
    [given_up] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "applying a batch failed 5 times, giving the batch back" in given_up.getMessage()


async def test_one_attempt_is_no_retry(sleeps: list[float]) -> None:
    action, calls = failing(TimeoutError())
    with pytest.raises(TimeoutError):
        await with_backoff(action, "applying a batch", attempts=1)
    assert len(calls) == 1 and sleeps == []


@pytest.mark.parametrize(
    "error",
    [
        ValueError("a bug"),
        # A DBAPIError like OperationalError, but the statement's fault: retrying cannot help.
        IntegrityError("INSERT", {}, Exception("duplicate key")),
        StateConflict("sr:u:{x} is a string"),
        asyncio.CancelledError(),  # the consumer is stopping
    ],
    ids=lambda e: type(e).__name__,
)
async def test_other_errors_are_raised_at_once(error: BaseException, sleeps: list[float]) -> None:
    action, calls = failing(error)
    with pytest.raises(type(error)):
        await with_backoff(action, "applying a batch")
    assert len(calls) == 1 and sleeps == []


class Seeks:
    """The ``seek`` of a consumer, recorded."""

    def __init__(self) -> None:
        self.offsets: dict[TopicPartition, int] = {}

    def __call__(self, partition: TopicPartition, offset: int) -> None:
        self.offsets[partition] = offset


@dataclass
class Batch:
    """What ``settle`` and ``rewind`` use of FastStream's ``KafkaMessage``."""

    raw_message: Any
    consumer: Any = field(default_factory=lambda: SimpleNamespace(seek=Seeks()))
    ack_error: BaseException | None = None
    acks: int = 0

    async def ack(self) -> None:
        self.acks += 1
        if self.ack_error is not None:
            raise self.ack_error

    @property
    def seeks(self) -> dict[TopicPartition, int]:
        return cast(dict[TopicPartition, int], self.consumer.seek.offsets)

    @property
    def message(self) -> KafkaMessage:
        return cast(KafkaMessage, self)


def record(topic: str, partition: int, offset: int) -> SimpleNamespace:
    return SimpleNamespace(topic=topic, partition=partition, offset=offset)


RECORDS = (
    record("streamrec.ratings", 0, 5),
    record("streamrec.ratings", 1, 9),
    record("streamrec.ratings", 0, 6),
    record("streamrec.clicks", 2, 3),
)
FIRST_OF_BATCH = {
    TopicPartition("streamrec.ratings", 0): 5,
    TopicPartition("streamrec.ratings", 1): 9,
    TopicPartition("streamrec.clicks", 2): 3,
}


async def test_settle_acknowledges_a_batch_whose_state_is_committed() -> None:
    batch = Batch(RECORDS)
    async with settle(batch.message, FEATURES):
        assert batch.acks == 0  # not before the body has committed its state
    assert batch.acks == 1 and batch.seeks == {}


async def test_settle_rewinds_a_failed_batch_and_raises() -> None:
    batch = Batch(RECORDS)
    with pytest.raises(RedisConnectionError):
        async with settle(batch.message, FEATURES):
            raise RedisConnectionError("gone after the retries")
    assert batch.acks == 0
    assert batch.seeks == FIRST_OF_BATCH  # delivered again from its first record


@pytest.mark.parametrize("error", REBALANCE_ERRORS, ids=lambda e: e.__name__)
async def test_a_commit_refused_by_a_rebalance_rewinds_without_error(
    error: type[BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    batch = Batch(list(RECORDS), ack_error=error())
    async with settle(batch.message, FEATURES):
        pass
    assert batch.acks == 1
    assert batch.seeks == FIRST_OF_BATCH
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{FEATURES}: offsets not committed, the group is rebalancing" in warning.getMessage()


async def test_another_commit_failure_is_raised_without_a_rewind() -> None:
    # The batch's state is committed; the next commit covers its offsets.
    batch = Batch(RECORDS, ack_error=KafkaConnectionError("broker gone"))
    with pytest.raises(KafkaConnectionError):
        async with settle(batch.message, FEATURES):
            pass
    assert batch.seeks == {}


async def test_rewind_skips_partitions_this_member_no_longer_owns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")  # never started
    owned = {TopicPartition("streamrec.ratings", 0), TopicPartition("streamrec.clicks", 2)}
    monkeypatch.setattr(consumer, "assignment", lambda: owned)
    monkeypatch.setattr(consumer, "seek", Seeks())
    batch = Batch(RECORDS, consumer=consumer)
    try:
        rewind(batch.message)
    finally:
        await consumer.stop()
    assert batch.seeks == {tp: o for tp, o in FIRST_OF_BATCH.items() if tp in owned}


def test_rewind_of_a_single_record() -> None:
    batch = Batch(record("streamrec.items", 3, 42))  # a subscriber without batch=True
    rewind(batch.message)
    assert batch.seeks == {TopicPartition("streamrec.items", 3): 42}


@pytest.mark.kafka
async def test_a_commit_failed_by_a_rebalance_redelivers_the_batch(
    services, stores, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    commit = AIOKafkaConsumer.commit
    failures = []

    async def commit_once_refused(self, offsets=None):  # type: ignore[no-untyped-def]
        if not failures:  # the first commit meets a rebalance
            failures.append(1)
            raise CommitFailedError("the group has already rebalanced")
        return await commit(self, offsets)

    monkeypatch.setattr(AIOKafkaConsumer, "commit", commit_once_refused)
    metrics = Metrics()
    broker = build_consumer_broker(stores, metrics, [ConsumerGroup.FEATURES])
    await broker.start()
    try:
        async with EventPublisher(services.kafka_bootstrap) as publisher:
            await publisher.publish_many(
                [RatingEvent(user_id="c", item_id=f"i{n}", rating=3) for n in range(20)]
            )

        async def drained() -> bool:
            report = await consumer_lag(services.kafka_bootstrap, [FEATURES], with_seconds=False)
            return report.total_lag == 0 and bool(failures)

        await wait_until(drained)
        # The consumer lives on: later events are applied too.
        async with EventPublisher(services.kafka_bootstrap) as publisher:
            await publisher.publish(RatingEvent(user_id="c", item_id="late", rating=3))
        await wait_until(drained)
    finally:
        await broker.stop()
    assert await services.redis.hget(user_key("c"), "ratings") == "21"  # none lost or doubled
    redelivered = metrics.registry.get_sample_value(
        "streamrec_events_skipped_total", {"group": FEATURES, "reason": "redelivered"}
    )
    assert redelivered and redelivered > 0  # the refused batch was read again

"""The batch subscriber every group runs, with a recording apply step: FastStream's in-memory
TestKafkaBroker drives the handler (the ack policy on a real broker: tests/consumers/
test_policy.py; each group's apply: the group's own tests)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage

from streamrec.consumers import policy
from streamrec.consumers.decode import DecodedBatch
from streamrec.consumers.dlq import DeadLetterSink
from streamrec.consumers.subscriber import subscribe_batches
from streamrec.core.metrics import Metrics
from streamrec.core.settings import Settings
from streamrec.schemas.events import ClickEvent, RatingEvent
from streamrec.schemas.topics import ConsumerGroup, Topic

GROUP = ConsumerGroup.VECTORS  # any group: the skeleton is the same for all
GOOD = [RatingEvent(user_id=f"u{n}", item_id="i", rating=3) for n in range(2)]
BAD = json.dumps({"type": "rating", "user_id": "u", "item_id": "i", "rating": 9}).encode()


class Step:
    """An apply step that records its batches and first raises ``failures`` in turn."""

    def __init__(self, *failures: BaseException) -> None:
        self.batches: list[DecodedBatch] = []
        self.recorded: list[int] = []
        self._failures = list(failures)

    async def apply(self, batch: DecodedBatch) -> int:
        self.batches.append(batch)
        if self._failures:
            raise self._failures.pop(0)
        return len(batch.events)


def _subscribed(
    step: Step, metrics: Metrics, **options: Any
) -> tuple[KafkaBroker, list[tuple[bytes, dict[str, Any]]]]:
    """A broker with the skeleton around ``step`` and a window on the DLQ topic."""
    broker = KafkaBroker(["localhost:9092"])
    subscribe_batches(
        broker,
        GROUP,
        step.apply,
        DeadLetterSink(broker, metrics),
        metrics,
        Settings(_env_file=None),
        **({"retry": "testing", "record": step.recorded.append} | options),
    )
    letters: list[tuple[bytes, dict[str, Any]]] = []

    @broker.subscriber(Topic.DLQ.value)
    async def on_dead_letter(body: object, msg: KafkaMessage) -> None:
        letters.append((msg.body, msg.headers))

    return broker, letters


def _sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"group": GROUP.value, **labels})


def _consumed(metrics: Metrics, topic: Topic) -> float | None:
    return _sample(metrics, "streamrec_events_consumed_total", topic=topic.value)


async def test_bad_records_are_dead_lettered_and_their_neighbours_applied() -> None:
    step, metrics = Step(), Metrics()
    broker, letters = _subscribed(step, metrics)
    click = ClickEvent(user_id="u", item_id="i")
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish_batch(
            GOOD[0].model_dump_json().encode(),
            BAD,
            GOOD[1].model_dump_json().encode(),
            topic=Topic.RATINGS.value,
        )
        await test_broker.publish_batch(click.model_dump_json().encode(), topic=Topic.CLICKS.value)
    [(body, headers)] = letters
    assert body == BAD
    assert headers["streamrec.dlq.group"] == GROUP.value
    assert "less than or equal to 5" in headers["streamrec.dlq.error"]
    assert [[s.event for s in b.events] for b in step.batches] == [GOOD, [click]]
    assert step.recorded == [2, 1]  # what each apply returned, once per batch
    assert _consumed(metrics, Topic.RATINGS) == 2.0
    assert _consumed(metrics, Topic.CLICKS) == 1.0
    assert _sample(metrics, "streamrec_consumer_batch_seconds_count") == 2.0


@pytest.mark.parametrize("apply_empty", [False, True])
async def test_a_batch_of_dead_letters_only_is_applied_when_the_group_asks(
    apply_empty: bool,
) -> None:
    step, metrics = Step(), Metrics()
    broker, letters = _subscribed(step, metrics, apply_empty=apply_empty)
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish_batch(BAD, topic=Topic.RATINGS.value)
    assert len(letters) == 1
    if apply_empty:  # the group still learns how far the batch went (the features offsets)
        [batch] = step.batches
        assert batch.events == [] and batch.positions == {(Topic.RATINGS.value, 0): 0}
        assert step.recorded == [0]
    else:
        assert step.batches == [] and step.recorded == []
        assert _sample(metrics, "streamrec_consumer_batch_seconds_count") is None


async def test_a_transient_failure_is_retried_with_backoff() -> None:
    step, metrics = Step(ConnectionError("redis went away")), Metrics()
    broker, _ = _subscribed(step, metrics)
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish_batch(
            GOOD[0].model_dump_json().encode(), topic=Topic.RATINGS.value
        )
    assert len(step.batches) == 2  # the same batch, applied again after the backoff
    assert step.recorded == [1]
    assert _consumed(metrics, Topic.RATINGS) == 1.0


@pytest.mark.parametrize(
    ("retry", "error"),
    [
        (None, ConnectionError("transient, but the group's apply is not retried")),
        ("testing", ValueError("not transient: never retried")),
    ],
)
async def test_a_failed_apply_rewinds_the_batch_and_counts_nothing(
    retry: str | None, error: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    rewound: list[KafkaMessage] = []
    monkeypatch.setattr(policy, "rewind", rewound.append)
    step, metrics = Step(error), Metrics()
    broker, _ = _subscribed(step, metrics, retry=retry)
    async with TestKafkaBroker(broker) as test_broker:
        with pytest.raises(type(error)):
            await test_broker.publish_batch(
                GOOD[0].model_dump_json().encode(), topic=Topic.RATINGS.value
            )
    assert len(step.batches) == 1
    assert len(rewound) == 1  # settle seeks the batch back: Kafka delivers it again
    assert step.recorded == [] and _consumed(metrics, Topic.RATINGS) is None

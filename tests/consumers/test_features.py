"""The features subscriber in isolation: FastStream's in-memory TestKafkaBroker drives the
handler; the store is a fake at the I/O boundary (its real behaviour is tested against Redis
in tests/stores/test_features.py)."""

from __future__ import annotations

import json

from faststream.kafka import KafkaBroker, TestKafkaBroker

from consumers import features
from consumers.dlq import DeadLetterSink
from core.metrics import Metrics
from core.settings import Settings
from schemas.events import RatingEvent, SourcedEvent
from schemas.topics import Topic
from stores.features import ApplyResult


class RecordingStore:
    def __init__(self) -> None:
        self.batches: list[tuple[str, list[SourcedEvent], dict]] = []

    async def apply_batch(
        self, group: str, events: list[SourcedEvent], positions: dict | None = None
    ) -> ApplyResult:
        self.batches.append((group, list(events), dict(positions or {})))
        return ApplyResult(applied=len(events), redelivered=0, duplicates=0)


async def test_valid_events_are_applied_and_bad_ones_dead_lettered() -> None:
    settings = Settings(_env_file=None)
    broker = KafkaBroker(["localhost:9092"])
    store, metrics = RecordingStore(), Metrics()
    features.register(
        broker,
        store,
        DeadLetterSink(broker, metrics),
        metrics,  # type: ignore[arg-type]
        settings,
    )

    @broker.subscriber(Topic.DLQ.value)
    async def on_dead_letter(letter: dict) -> None:  # the test's window on the DLQ topic
        pass

    good = RatingEvent(user_id="u", item_id="i", rating=4)
    bad = {"type": "rating", "user_id": "u", "item_id": "i", "rating": 9}
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish_batch(
            good.model_dump_json().encode(), json.dumps(bad).encode(), topic=Topic.RATINGS.value
        )
        on_dead_letter.mock.assert_called_once()
        letter = on_dead_letter.mock.call_args.args[0]
    assert letter["consumer_group"] == "streamrec-features"
    assert "less than or equal to 5" in letter["error"]
    [(group, events, positions)] = store.batches
    assert group == "streamrec-features"
    assert [s.event for s in events] == [good]
    assert positions == {(Topic.RATINGS.value, 0): 0}
    consumed = metrics.registry.get_sample_value(
        "streamrec_events_consumed_total",
        {"group": "streamrec-features", "topic": Topic.RATINGS.value},
    )
    assert consumed == 1.0

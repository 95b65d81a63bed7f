"""The features subscriber in isolation: FastStream's in-memory TestKafkaBroker drives the
handler; the store is a fake at the I/O boundary (its real behaviour is tested against Redis
in tests/stores/test_features.py)."""

from __future__ import annotations

import json

from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage

from streamrec.consumers import features
from streamrec.consumers.dlq import DeadLetterSink
from streamrec.core.metrics import Metrics
from streamrec.core.settings import Settings
from streamrec.schemas.events import RatingEvent, SourcedEvent
from streamrec.schemas.topics import Topic
from streamrec.stores.features import ApplyResult, OnRejected


class RecordingStore:
    """Records batches; refuses the events of users in ``refuse`` as the real store refuses
    events whose keys hold a foreign type: through the dead-letter callback."""

    def __init__(self, refuse: frozenset[str] = frozenset()) -> None:
        self.batches: list[tuple[str, list[SourcedEvent], dict]] = []
        self._refuse = refuse

    async def apply_batch(
        self,
        group: str,
        events: list[SourcedEvent],
        positions: dict | None = None,
        on_rejected: OnRejected | None = None,
    ) -> ApplyResult:
        refused = [
            (s, "feature state cannot be updated: test")
            for s in events
            if s.event.user_id in self._refuse
        ]
        if refused:
            assert on_rejected is not None
            await on_rejected(refused)
        kept = [s for s in events if s.event.user_id not in self._refuse]
        self.batches.append((group, kept, dict(positions or {})))
        return ApplyResult(len(kept), 0, 0, rejected=len(refused))


def _subscribed(store: RecordingStore, metrics: Metrics) -> tuple[KafkaBroker, list]:
    """A broker with the features subscriber and a window on the DLQ topic."""
    broker = KafkaBroker(["localhost:9092"])
    features.register(
        broker,
        store,  # type: ignore[arg-type]
        DeadLetterSink(broker, metrics),
        metrics,
        Settings(_env_file=None),
    )
    letters: list[tuple[bytes, dict]] = []

    @broker.subscriber(Topic.DLQ.value)
    async def on_dead_letter(body: object, msg: KafkaMessage) -> None:
        letters.append((msg.body, msg.headers))

    return broker, letters


async def test_valid_events_are_applied_and_bad_ones_dead_lettered() -> None:
    store, metrics = RecordingStore(), Metrics()
    broker, letters = _subscribed(store, metrics)

    good = RatingEvent(user_id="u", item_id="i", rating=4)
    bad = {"type": "rating", "user_id": "u", "item_id": "i", "rating": 9}
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish_batch(
            good.model_dump_json().encode(), json.dumps(bad).encode(), topic=Topic.RATINGS.value
        )
    [(body, headers)] = letters
    assert body == json.dumps(bad).encode()  # the original bytes, context in headers
    assert headers["streamrec.dlq.group"] == "streamrec-features"
    assert "less than or equal to 5" in headers["streamrec.dlq.error"]
    [(group, events, positions)] = store.batches
    assert group == "streamrec-features"
    assert [s.event for s in events] == [good]
    assert positions == {(Topic.RATINGS.value, 0): 0}
    consumed = metrics.registry.get_sample_value(
        "streamrec_events_consumed_total",
        {"group": "streamrec-features", "topic": Topic.RATINGS.value},
    )
    assert consumed == 1.0


async def test_events_the_store_cannot_apply_are_dead_lettered_with_their_bytes() -> None:
    store, metrics = RecordingStore(refuse=frozenset({"victim"})), Metrics()
    broker, letters = _subscribed(store, metrics)
    victim = RatingEvent(user_id="victim", item_id="i", rating=4).model_dump_json().encode()
    neighbours = [RatingEvent(user_id=f"u{n}", item_id="i", rating=3) for n in range(3)]
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish_batch(
            neighbours[0].model_dump_json().encode(),
            victim,
            *(e.model_dump_json().encode() for e in neighbours[1:]),
            topic=Topic.RATINGS.value,
        )
    [(body, headers)] = letters
    assert body == victim
    assert headers["streamrec.dlq.error"] == "feature state cannot be updated: test"
    [(_, applied, positions)] = store.batches
    assert [s.event for s in applied] == neighbours
    assert set(positions) == {(Topic.RATINGS.value, 0)}  # the test broker numbers all 0
    dead = metrics.registry.get_sample_value(
        "streamrec_dead_letters_total",
        {"group": "streamrec-features", "topic": Topic.RATINGS.value, "reason": "state_conflict"},
    )
    assert dead == 1.0

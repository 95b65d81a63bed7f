"""Replay: catalog first, ratings in time order, ids stable across runs; publisher errors."""

from __future__ import annotations

import pytest

from streamrec.core.datasets import synthetic
from streamrec.core.errors import ServiceUnavailable
from streamrec.producers.publisher import EventPublisher
from streamrec.producers.replay import replay_events, total_events
from streamrec.schemas.events import ItemEvent, RatingEvent


def test_catalog_then_ratings_with_stable_event_ids() -> None:
    data = synthetic(n_users=10, n_items=5, n_events=50, seed=2)
    first = list(replay_events(data))
    assert all(isinstance(e, ItemEvent) for e in first[:5])
    ratings = [e for e in first if isinstance(e, RatingEvent)]
    assert [e.ts for e in ratings] == sorted(e.ts for e in ratings)
    assert [e.event_id for e in replay_events(data)] == [e.event_id for e in first]
    assert len(first) == total_events(data) == 55
    assert len(list(replay_events(data, limit=10))) == total_events(data, limit=10) == 15


async def test_unreachable_kafka_is_a_clear_error() -> None:
    publisher = EventPublisher(["127.0.0.1:9"])
    with pytest.raises(ServiceUnavailable, match=r"Kafka at 127.0.0.1:9 did not answer"):
        await publisher.start()

"""End to end over real parts: HTTP/SDK → embedded Kafka (TCP) → consumers → Redis and SQL."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streamrec.consumers.app import build_consumer_broker
from streamrec.consumers.dlq import read_dead_letters
from streamrec.core.datasets import load_movielens, synthetic
from streamrec.core.ids import IdKind
from streamrec.core.lag import consumer_lag
from streamrec.core.metrics import Metrics
from streamrec.producers.publisher import EventPublisher, SyncEventPublisher
from streamrec.producers.replay import replay
from streamrec.schemas.events import ClickEvent, ItemEvent, RatingEvent
from streamrec.schemas.topics import EVENT_TOPICS, ConsumerGroup, Topic
from streamrec.stores.catalog import Archive
from streamrec.stores.features import item_key, user_key
from streamrec.stores.schema import create_schema
from tests.conftest import INGEST_KEY, wait_until

pytestmark = pytest.mark.kafka
FEATURES = ConsumerGroup.FEATURES.value


async def _user_counter(services, user_id: str, field: str) -> int:  # type: ignore[no-untyped-def]
    value = await services.redis.hget(user_key(user_id), field)
    return int(value or 0)


async def _lag(services, group: str) -> int:  # type: ignore[no-untyped-def]
    report = await consumer_lag(services.kafka_bootstrap, groups=[group], with_seconds=False)
    return report.total_lag


async def _wait_drained(services, timeout: float = 30.0, interval: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    """Wait until the features group has consumed everything in the topics."""

    async def drained() -> bool:
        return await _lag(services, FEATURES) == 0

    await wait_until(drained, timeout=timeout, interval=interval)


async def test_http_and_sdk_events_reach_redis_and_sql(app_client) -> None:  # type: ignore[no-untyped-def]
    app, client = app_client
    runtime = app.state.runtime
    services = runtime.services
    headers = {"X-API-Key": INGEST_KEY}
    item = {"type": "item", "item_id": "m1", "title": "Heat (1995)", "genres": ["Crime"]}
    assert (await client.post("/v1/events", json=item, headers=headers)).status_code == 202

    async def catalogued() -> bool:  # topics are ordered apart: let the catalog land first
        return await services.redis.hget(item_key("m1"), "genres") == "Crime"

    await wait_until(catalogued)
    ratings = [
        {"type": "rating", "user_id": "alice", "item_id": f"m{i}", "rating": 4.5} for i in (1, 2, 3)
    ]
    response = await client.post("/v1/events", json=ratings, headers=headers)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 3, "by_topic": {"streamrec.ratings": 3}}

    async with EventPublisher(services.kafka_bootstrap) as publisher:
        await publisher.publish(ClickEvent(user_id="alice", item_id="m1"))
    sync = await asyncio.to_thread(SyncEventPublisher, services.kafka_bootstrap)
    await asyncio.to_thread(sync.publish, ClickEvent(user_id="alice", item_id="m2"))
    await asyncio.to_thread(sync.close)

    async def arrived() -> bool:
        history = await client.get("/v1/users/alice/history")
        if history.status_code != 200:
            return False
        body = history.json()
        return body["ratings"] == 3 and body["clicks"] == 2

    await wait_until(arrived)
    body = (await client.get("/v1/users/alice/history")).json()
    assert [i["item_id"] for i in body["items"]][:2] == ["m2", "m1"]  # clicks, newest first
    assert body["items"][1]["title"] == "Heat (1995)"
    assert body["genre_affinity"] == {"Crime": pytest.approx(0.8 + 1.0)}  # m1: rated 4.5, clicked
    archive = Archive(services.engine)

    async def archived() -> bool:
        return await asyncio.to_thread(archive.count_interactions) == 5

    await wait_until(archived)
    assert await asyncio.to_thread(services.ids.lookup, IdKind.USER, ["alice"]) == {"alice": 0}
    items = await asyncio.to_thread(services.ids.lookup, IdKind.ITEM, ["m1", "m2", "m3"])
    assert sorted(items.values()) == [0, 1, 2]

    recs = (await client.get("/v1/users/alice/recommendations", params={"k": 5})).json()
    assert recs["known_user"] is True
    assert recs["items"] == []  # alice has seen every item there is
    other = (await client.get("/v1/users/bob/recommendations", params={"k": 2})).json()
    assert other["known_user"] is False
    # m1 and m2 both have a rating and a click; m2's click is newer, so decay ranks it first
    assert [i["item_id"] for i in other["items"]] == ["m2", "m1"]


@pytest.mark.movielens
async def test_movielens_replay_matches_ratings_csv(services, stores, ml100k) -> None:  # type: ignore[no-untyped-def]
    create_schema(services.engine)
    data = load_movielens(ml100k)
    broker = build_consumer_broker(stores, Metrics(), [ConsumerGroup.FEATURES])
    await broker.start()
    try:
        async with EventPublisher(services.kafka_bootstrap) as publisher:
            summary = await replay(data, publisher)
        assert summary.events == len(data.ratings) + len(data.items)

        await _wait_drained(services, timeout=240, interval=0.5)
    finally:
        await broker.stop()
    truth = Counter(r.user_id for r in data.ratings)
    async with services.redis.pipeline(transaction=False) as pipe:
        for user in truth:
            pipe.hget(user_key(user), "ratings")
        counts = await pipe.execute()
    got = {user: int(c or 0) for user, c in zip(truth, counts, strict=True)}
    assert got == dict(truth)


async def _rewind_group(services, group: str) -> None:  # type: ignore[no-untyped-def]
    """Join the group, take every partition, commit offset 0 and leave."""
    rewind = AIOKafkaConsumer(
        *[t.value for t in EVENT_TOPICS],
        bootstrap_servers=services.kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await rewind.start()
    wanted = 4 * len(EVENT_TOPICS)
    try:
        deadline = asyncio.get_running_loop().time() + 60  # joins take seconds under load
        while len(rewind.assignment()) < wanted:
            assert asyncio.get_running_loop().time() < deadline, (
                f"rewind got {len(rewind.assignment())} of {wanted} partitions"
            )
            await rewind.getmany(timeout_ms=100)
        await rewind.commit({tp: 0 for tp in rewind.assignment()})
    finally:
        await rewind.stop()


async def test_restart_over_same_messages_does_not_double_count(services, stores) -> None:  # type: ignore[no-untyped-def]
    create_schema(services.engine)
    data = synthetic(n_users=50, n_items=40, n_events=3000, seed=3)
    truth = Counter(r.user_id for r in data.ratings)
    async with EventPublisher(services.kafka_bootstrap) as publisher:
        await replay(data, publisher)

    metrics = Metrics()
    first = build_consumer_broker(stores, metrics, [ConsumerGroup.FEATURES])
    await first.start()
    try:

        async def partly_applied() -> bool:
            return sum([await _user_counter(services, u, "ratings") for u in truth]) > 0

        await wait_until(partly_applied, timeout=60)
    finally:
        await first.stop()  # stopped mid-stream (or just after): state and commits as they are

    # A crash between the Redis commit and the Kafka commit: Kafka forgets every commit, so
    # the restarted consumer receives all the messages again.
    await _rewind_group(services, FEATURES)
    assert await _lag(services, FEATURES) == len(data.ratings) + len(data.items)

    second = build_consumer_broker(stores, metrics, [ConsumerGroup.FEATURES])
    await second.start()
    try:
        await _wait_drained(services, timeout=120)
    finally:
        await second.stop()
    for user, n in truth.items():
        assert await _user_counter(services, user, "ratings") == n, user
    skipped = metrics.registry.get_sample_value(
        "streamrec_events_skipped_total", {"group": FEATURES, "reason": "redelivered"}
    )
    assert skipped and skipped > 0  # the redelivery really happened, and was recognised


async def test_duplicate_event_ids_are_applied_once(services, stores) -> None:  # type: ignore[no-untyped-def]
    create_schema(services.engine)
    event = RatingEvent(user_id="dup", item_id="x", rating=3)
    broker = build_consumer_broker(stores, Metrics(), [ConsumerGroup.FEATURES])
    await broker.start()
    try:
        async with EventPublisher(services.kafka_bootstrap) as publisher:
            await publisher.publish_many([event, event])
            await publisher.publish(event)
            await publisher.publish(RatingEvent(user_id="dup", item_id="y", rating=5))

        await _wait_drained(services)
    finally:
        await broker.stop()
    assert await _user_counter(services, "dup", "ratings") == 2


async def _read_topic(services, topic: str, expected: int) -> list[dict]:  # type: ignore[no-untyped-def]
    reader = AIOKafkaConsumer(
        topic,
        bootstrap_servers=services.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await reader.start()
    found: list[dict] = []
    try:
        for _ in range(100):
            batches = await reader.getmany(timeout_ms=200)
            for records in batches.values():
                found.extend(json.loads(r.value) for r in records)
            if len(found) >= expected:
                break
    finally:
        await reader.stop()
    return found


async def test_bad_messages_go_to_dlq_and_valid_ones_around_them_apply(services, stores) -> None:  # type: ignore[no-untyped-def]
    create_schema(services.engine)
    valid = [RatingEvent(user_id="dl", item_id=f"i{n}", rating=4) for n in range(2)]
    bad = {
        "malformed": b'{"type": "rating", "user_id": "dl", ',
        "wrong_type": json.dumps(
            {"type": "rating", "user_id": "dl", "item_id": "i9", "rating": "lots"}
        ).encode(),
        "rating_9": json.dumps(
            {"type": "rating", "user_id": "dl", "item_id": "i9", "rating": 9}
        ).encode(),
        "unknown_type": json.dumps({"type": "purchase", "user_id": "dl", "item_id": "i9"}).encode(),
    }
    producer = AIOKafkaProducer(bootstrap_servers=services.kafka_bootstrap)
    await producer.start()
    try:  # same key, so same partition: the bad ones sit between the valid ones in the log
        await producer.send_and_wait(
            Topic.RATINGS.value, valid[0].model_dump_json().encode(), key=b"dl"
        )
        for payload in bad.values():
            await producer.send_and_wait(Topic.RATINGS.value, payload, key=b"dl")
        await producer.send_and_wait(
            Topic.RATINGS.value, valid[1].model_dump_json().encode(), key=b"dl"
        )
    finally:
        await producer.stop()

    metrics = Metrics()
    broker = build_consumer_broker(stores, metrics, [ConsumerGroup.FEATURES])
    await broker.start()
    try:
        await _wait_drained(services)
    finally:
        await broker.stop()
    assert await _user_counter(services, "dl", "ratings") == 2

    letters = [s.letter for s in await read_dead_letters(services.kafka_bootstrap)]
    assert len(letters) == 4
    reasons = [letter.error for letter in letters]
    assert "Invalid JSON" in reasons[0]
    assert "rating" in reasons[1] and "valid number" in reasons[1]
    assert "rating" in reasons[2] and "less than or equal to 5" in reasons[2]
    assert "purchase" in reasons[3]
    for letter, payload in zip(letters, bad.values(), strict=True):
        assert letter.payload == payload  # the original bytes (binary-safe DLQ)
        assert letter.source_topic == Topic.RATINGS.value
        assert letter.consumer_group == FEATURES
        assert letter.source_key == b"dl"
    counted = {
        kind: metrics.registry.get_sample_value(
            "streamrec_dead_letters_total",
            {"group": FEATURES, "topic": Topic.RATINGS.value, "reason": kind},
        )
        for kind in ("malformed_json", "invalid", "unknown_type")
    }
    assert counted == {"malformed_json": 1.0, "invalid": 2.0, "unknown_type": 1.0}


async def test_lag_counts_unconsumed_events_and_returns_to_zero(services, stores) -> None:  # type: ignore[no-untyped-def]
    create_schema(services.engine)
    events = [ItemEvent(item_id="z")] + [
        RatingEvent(user_id=f"u{n}", item_id="z", rating=3) for n in range(25)
    ]
    async with EventPublisher(services.kafka_bootstrap) as publisher:
        await publisher.publish_many(events)
    report = await consumer_lag(services.kafka_bootstrap, groups=[FEATURES])
    assert report.total_lag == 26
    lagging = [p for p in report.groups[0].partitions if p.lag > 0]
    assert lagging and all(p.lag_seconds is not None and p.lag_seconds >= 0 for p in lagging)
    assert all(p.committed_offset is None for p in report.groups[0].partitions)

    broker = build_consumer_broker(stores, Metrics(), [ConsumerGroup.FEATURES])
    await broker.start()
    try:
        await _wait_drained(services)
    finally:
        await broker.stop()
    report = await consumer_lag(services.kafka_bootstrap, groups=[FEATURES])
    assert report.total_lag == 0
    assert sum(p.end_offset for p in report.groups[0].partitions) == 26
    store = stores.features
    assert [item for item, _ in await store.popular(1)] == ["z"]


async def test_ops_lag_endpoint(app_client) -> None:  # type: ignore[no-untyped-def]
    _app, client = app_client
    response = await client.post(
        "/v1/events",
        json=[{"type": "rating", "user_id": "l", "item_id": "q", "rating": 2}] * 3,
        headers={"X-API-Key": INGEST_KEY},
    )
    assert response.status_code == 202

    async def drained() -> bool:
        body = (await client.get("/v1/ops/lag")).json()
        ends = sum(p["end_offset"] for g in body["groups"] for p in g["partitions"])
        return body["total_lag"] == 0 and ends == 15  # 3 ratings, read by 5 groups

    await wait_until(drained)
    body = (await client.get("/v1/ops/lag")).json()
    assert {g["group"]: {p["topic"] for p in g["partitions"]} for g in body["groups"]} == {
        "streamrec-features": {
            "streamrec.items",
            "streamrec.ratings",
            "streamrec.clicks",
            "streamrec.impressions",
        },
        "streamrec-archive": {
            "streamrec.items",
            "streamrec.ratings",
            "streamrec.clicks",
            "streamrec.impressions",
        },
        "streamrec-vectors": {"streamrec.ratings", "streamrec.clicks", "streamrec.items"},
        "streamrec-online-rl": {
            "streamrec.impressions",
            "streamrec.clicks",
            "streamrec.ratings",
        },
        "streamrec-retrain": {"streamrec.ratings"},
    }

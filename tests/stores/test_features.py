"""FeatureStore against real Redis: exactly-once effect, decay, sequences, reads."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from schemas.events import ClickEvent, ImpressionEvent, ItemEvent, RatingEvent, SourcedEvent
from stores.features import FeatureStore

G = "test-group"
DAY = 86_400.0


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(1_700_000_000 + seconds, UTC)


def sourced(
    events: list, topic: str = "streamrec.ratings", partition: int = 0, start: int = 0
) -> list[SourcedEvent]:
    return [SourcedEvent(e, topic, partition, start + n) for n, e in enumerate(events)]


@pytest.fixture
async def store(services) -> FeatureStore:  # type: ignore[no-untyped-def]
    return FeatureStore(services.redis, recent_cap=3, half_life_days=1.0)


async def test_counts_sums_and_history(store: FeatureStore) -> None:
    catalog = sourced(
        [ItemEvent(item_id="m1", title="Heat", genres=["Crime", "Drama"])], topic="streamrec.items"
    )
    ratings = sourced(
        [
            RatingEvent(user_id="u", item_id="m1", rating=5, ts=at(10)),
            RatingEvent(user_id="u", item_id="m2", rating=2, ts=at(20)),
        ]
    )
    result = await store.apply_batch(G, catalog + ratings)
    assert (result.applied, result.redelivered, result.duplicates) == (3, 0, 0)
    stats = await store.user_stats("u")
    assert stats["ratings"] == "2" and float(stats["rating_sum"]) == 7.0
    assert await store.recent_items("u") == ["m2", "m1"]
    assert await store.genre_affinity("u") == {"Crime": 1.0, "Drama": 1.0}
    assert (await store.item_meta(["m1"]))["m1"] == {
        "title": "Heat",
        "genres": "Crime|Drama",
        "year": "",
    }


async def test_redelivered_offsets_and_repeated_ids_apply_once(store: FeatureStore) -> None:
    events = sourced([RatingEvent(user_id="u", item_id=f"i{n}", rating=3) for n in range(4)])
    await store.apply_batch(G, events[:3])
    again = await store.apply_batch(G, events)  # a crash before the Kafka commit: all again
    assert (again.applied, again.redelivered) == (1, 3)
    same_id = RatingEvent(event_id=events[0].event.event_id, user_id="u", item_id="i9", rating=3)
    dup = await store.apply_batch(G, sourced([same_id], partition=1))
    assert (dup.applied, dup.duplicates) == (0, 1)
    assert (await store.user_stats("u"))["ratings"] == "4"
    assert await store.applied_offset(G, "streamrec.ratings", 0) == 3
    assert await store.applied_offset(G, "streamrec.ratings", 1) == 0


async def test_dead_lettered_positions_still_advance_the_offset(store: FeatureStore) -> None:
    await store.apply_batch(G, [], positions={("streamrec.ratings", 2): 41})
    assert await store.applied_offset(G, "streamrec.ratings", 2) == 41


async def test_recent_items_follow_event_time_and_are_capped(store: FeatureStore) -> None:
    clicks = [ClickEvent(user_id="u", item_id=f"i{n}", ts=at(100 - n)) for n in range(5)]
    await store.apply_batch(G, sourced(clicks, topic="streamrec.clicks"))
    # arrival order i0..i4 but event times decrease: newest first is i0, i1, i2 (cap 3)
    assert await store.recent_items("u") == ["i0", "i1", "i2"]
    assert await store.popular(10, exclude_seen_of="u") == []  # all five are seen


async def test_popularity_decays_with_a_half_life(store: FeatureStore) -> None:
    old = [RatingEvent(user_id=f"o{n}", item_id="old", rating=4, ts=at(0)) for n in range(3)]
    new = [RatingEvent(user_id=f"n{n}", item_id="new", rating=4, ts=at(2 * DAY)) for n in range(2)]
    await store.apply_batch(G, sourced(old + new))
    ranked = dict(await store.popular(2))
    # 3 events two half-lives ago weigh 3/4 of one event now: 2 recent events win
    assert ranked["new"] / ranked["old"] == pytest.approx(2 / 0.75)


async def test_landmark_rebase_keeps_the_ranking(store: FeatureStore) -> None:
    await store.apply_batch(G, sourced([RatingEvent(user_id="a", item_id="x", rating=4, ts=at(0))]))
    later = RatingEvent(user_id="b", item_id="y", rating=4, ts=at(100 * DAY))
    await store.apply_batch(G, sourced([later], start=1))
    ranked = await store.popular(2)
    assert [item for item, _ in ranked] == ["y", "x"]
    assert ranked[0][1] < 2.0**64  # rescaled: scores stay far from float overflow


async def test_impressions_and_clicks_count_per_variant(store: FeatureStore, services) -> None:  # type: ignore[no-untyped-def]
    request = uuid.uuid4().hex
    await store.apply_batch(
        G,
        sourced(
            [
                ImpressionEvent(
                    user_id="u",
                    request_id=request,
                    item_ids=["a", "b"],
                    model="popular",
                    variant="B",
                ),
            ],
            topic="streamrec.impressions",
        ),
    )
    await store.apply_batch(
        G,
        sourced(
            [
                ClickEvent(
                    user_id="u", item_id="a", request_id=request, model="popular", variant="B"
                ),
            ],
            topic="streamrec.clicks",
        ),
    )
    counters = await services.redis.hgetall("sr:variants")
    assert counters == {"popular|B|impressions": "1", "popular|B|clicks": "1"}
    assert (await store.user_stats("u"))["impressions"] == "1"

"""FeatureStore against real Redis: exactly-once effect, decay, sequences, reads."""

from __future__ import annotations

import math
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.core.errors import StateConflict
from streamrec.core.services import Services
from streamrec.schemas.events import (
    ClickEvent,
    ImpressionEvent,
    ItemEvent,
    RatingEvent,
    SourcedEvent,
)
from streamrec.stores.features import (
    LANDMARK,
    FeatureStore,
    decay_weight,
    item_key,
    item_pending_key,
    move_landmark,
    user_key,
)

G = "test-group"
DAY = 86_400.0
FUTURE_BOUND = datetime(2200, 1, 1, tzinfo=UTC).timestamp()  # beyond any clock plus skew


# Replayed ml-100k ratings are of 1997-98; the API stamps a served list's impression with the
# wall clock (a fixed past instant here, so the test does not read the clock).
REPLAYED = datetime(1997, 9, 20, tzinfo=UTC).timestamp()
SERVED_NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(1_700_000_000 + seconds, UTC)


def replayed(days: float) -> datetime:
    return datetime.fromtimestamp(REPLAYED + days * DAY, UTC)


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


async def test_ids_that_look_like_other_keys_never_break_a_batch(store: FeatureStore) -> None:
    """Issue 11: `196:seen` named user 196's seen set; WRONGTYPE lost most of the batch."""
    first = [RatingEvent(user_id="196", item_id="m0", rating=4, ts=at(0))]
    await store.apply_batch(G, sourced(first))
    tricky = ["196:seen", "196:seq", "{196}", "196}", "seen"]
    batch = [RatingEvent(user_id=u, item_id="m1", rating=5, ts=at(1)) for u in tricky]
    batch += [RatingEvent(user_id=f"u{n}", item_id=f"m{n % 7}", rating=3) for n in range(995)]
    result = await store.apply_batch(G, sourced(batch, start=1))
    assert (result.applied, result.rejected) == (1000, 0)
    for user in ["196", *tricky]:
        assert (await store.user_stats(user))["ratings"] == "1", user
    assert await store.seen_items("196") == {"m0"}
    assert await store.seen_items("196:seen") == {"m1"}
    items = await store.item_meta(["m1"])
    assert items["m1"]["title"] == ""
    item_stats = await store._redis.hget(item_key("m1"), "ratings")
    assert int(item_stats) == len(tricky) + sum(1 for n in range(995) if n % 7 == 1)
    assert await store.applied_offset(G, "streamrec.ratings", 0) == 1000


async def test_a_key_of_a_foreign_type_dead_letters_its_events_only(
    store: FeatureStore, services
) -> None:  # type: ignore[no-untyped-def]
    """What cannot be applied is found before anything is written; the neighbours apply."""
    await services.redis.set(user_key("victim"), "written by someone else")
    batch = [RatingEvent(user_id="victim", item_id="m1", rating=5, ts=at(1))]
    batch += [RatingEvent(user_id=f"u{n}", item_id="m1", rating=3, ts=at(2)) for n in range(999)]
    events = sourced(batch)

    with pytest.raises(StateConflict, match=r"sr:u:\{victim\} is a string"):
        await store.apply_batch(G, events)  # no dead-letter callback: nothing is written
    assert await store.applied_offset(G, "streamrec.ratings", 0) == -1
    assert await store.user_stats("u0") == {}

    dead: list[tuple[SourcedEvent, str]] = []

    async def dead_letter(rejected: list[tuple[SourcedEvent, str]]) -> None:
        dead.extend(rejected)

    result = await store.apply_batch(G, events, on_rejected=dead_letter)
    assert (result.applied, result.rejected) == (999, 1)
    assert [s.event.user_id for s, _ in dead] == ["victim"]
    assert "Redis key sr:u:{victim} holds a string" in dead[0][1]
    for n in (0, 500, 998):
        assert (await store.user_stats(f"u{n}"))["ratings"] == "1"
    assert await services.redis.get(user_key("victim")) == "written by someone else"
    assert await store._redis.hget(item_key("m1"), "ratings") == "999"
    assert await store.applied_offset(G, "streamrec.ratings", 0) == 999


async def test_a_smaller_redelivered_batch_never_lowers_the_offset(store: FeatureStore) -> None:
    events = sourced([RatingEvent(user_id="u", item_id=f"i{n}", rating=3) for n in range(10)])
    await store.apply_batch(G, events)
    assert await store.applied_offset(G, "streamrec.ratings", 0) == 9
    again = await store.apply_batch(G, events[:4])  # a rebalance hands back an older batch
    assert (again.applied, again.redelivered) == (0, 4)
    assert await store.applied_offset(G, "streamrec.ratings", 0) == 9
    await store.apply_batch(G, [], positions={("streamrec.ratings", 0): 2})
    assert await store.applied_offset(G, "streamrec.ratings", 0) == 9
    assert (await store.user_stats("u"))["ratings"] == "10"


async def test_a_rescale_that_underflows_still_applies(services) -> None:  # type: ignore[no-untyped-def]
    """Issue 11: a rescale factor that underflowed to 0.0 was skipped while the landmark
    moved, and every later event then added 0 (popularity frozen for good)."""
    store = FeatureStore(services.redis, half_life_days=1.0 / DAY)  # one-second half-life
    await store.apply_batch(
        G, sourced([RatingEvent(user_id="a", item_id="old", rating=4, ts=at(0))])
    )
    jump = RatingEvent(user_id="b", item_id="new", rating=4, ts=at(5000))
    await store.apply_batch(G, sourced([jump], start=1))
    after = RatingEvent(user_id="c", item_id="newer", rating=4, ts=at(5001))
    await store.apply_batch(G, sourced([after], start=2))
    ranked = dict(await store.popular(3))
    assert ranked["old"] == 0.0  # 5,000 half-lives ago: decayed to nothing, and rescaled so
    assert 0 < ranked["new"] < ranked["newer"] < 2.0**66  # later events still count


def _replayed_ratings() -> tuple[list[RatingEvent], list[RatingEvent]]:
    """1997 ratings before and after a served list. Decayed at the newest (day 10, half-life
    one day) b > c > a, which is neither the order of the ids nor of the counts."""

    def rating(user: str, item: str, day: float) -> RatingEvent:
        return RatingEvent(user_id=user, item_id=item, rating=4, ts=replayed(day))

    before = [rating(f"u{n}", "a", 0) for n in range(3)] + [rating("u3", "b", 0)]
    after = [rating("u4", "b", 10), rating("u5", "c", 9), rating("u6", "c", 9)]
    return before, after


@pytest.mark.parametrize("where", ["before any rating", "between batches", "inside a batch"])
async def test_an_impression_stamped_now_leaves_replayed_popularity_as_it_was(
    store: FeatureStore, services: Services, where: str
) -> None:
    """Issue 13: an impression stamped with the wall clock moved the landmark ~10,000
    half-lives (here: one day each) past replayed 1997 ratings, and every score became 0.0."""
    before, after = _replayed_ratings()
    shown = ImpressionEvent(
        user_id="viewer", request_id="r1", item_ids=["a", "b"], model="popular", ts=SERVED_NOW
    )

    async def popular_after(impression: list[ImpressionEvent]) -> list[tuple[str, float]]:
        await services.redis.flushdb()
        batches: list[list[Any]]
        if where == "before any rating":
            batches = [impression, before, after]
        elif where == "between batches":
            batches = [before, impression, after]
        else:
            batches = [before, [*after[:1], *impression, *after[1:]]]
        applied = 0
        for batch in batches:
            await store.apply_batch(G, sourced(batch, start=applied))
            applied += len(batch)
            if where == "before any rating" and batch is impression and impression:
                assert await services.redis.get(LANDMARK) is None  # no popularity yet
        return await store.popular(10)

    with_impression = await popular_after([shown])
    assert (await store.user_stats("viewer"))["impressions"] == "1"  # counted all the same
    assert await store.popular(10) == with_impression
    without = await popular_after([])
    assert with_impression == without  # the same landmark, so the same scores exactly
    newest = max(e.ts.timestamp() for e in before + after)
    decayed: Counter[str] = Counter()
    for event in before + after:
        decayed[event.item_id] += 2.0 ** ((event.ts.timestamp() - newest) / DAY)
    assert [item for item, _ in with_impression] == ["b", "c", "a"]
    scores = dict(with_impression)
    assert all(score > 0.0 for score in scores.values())
    for item in "ac":
        assert scores[item] / scores["b"] == pytest.approx(decayed[item] / decayed["b"], rel=1e-12)


async def test_a_click_moves_the_landmark_as_a_rating_does(
    store: FeatureStore, services: Services
) -> None:
    """Clicks add popularity, so a click far past the landmark moves it (and rescales)."""
    ratings = [RatingEvent(user_id=f"u{n}", item_id="x", rating=4, ts=at(0)) for n in range(2)]
    ratings.append(RatingEvent(user_id="u2", item_id="y", rating=4, ts=at(0)))
    await store.apply_batch(G, sourced(ratings))
    first = float(await services.redis.get(LANDMARK))
    click = ClickEvent(user_id="u3", item_id="z", ts=at(100 * DAY))
    await store.apply_batch(G, sourced([click], topic="streamrec.clicks"))
    assert float(await services.redis.get(LANDMARK)) > first + 64 * DAY
    ranked = await store.popular(3)
    assert [item for item, _ in ranked] == ["z", "x", "y"]
    scores = dict(ranked)
    assert scores["x"] == 2 * scores["y"] > 0.0  # a power-of-two rescale is exact
    assert scores["z"] < 2.0**64


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.lists(
        st.lists(st.floats(min_value=0.0, max_value=FUTURE_BOUND), min_size=1, max_size=5),
        min_size=1,
        max_size=8,
    ),
    st.sampled_from([1.0, 3600.0, 7 * DAY, 365 * DAY]),
)
def test_decay_arithmetic_holds_for_every_accepted_time(
    batches: list[list[float]], half_life: float
) -> None:
    """For any accepted event times (epoch floor to the far side of the future bound), in any
    order: no weight or factor overflows or is NaN, the newest event adds a weight >= 1
    (popularity keeps moving), and stored scores equal the decayed counts they stand for."""
    landmark: float | None = None
    score = 0.0  # one item's stored score, relative to the current landmark
    decayed_sum_at = []  # every event time so far
    for times in batches:
        landmark_after, factor = move_landmark(times, landmark, half_life)
        if factor is not None:
            assert math.isfinite(factor) and 0.0 <= factor <= 1.0
            score *= factor
        landmark = landmark_after
        weights = [decay_weight(t, landmark, half_life) for t in times]
        assert all(math.isfinite(w) and 0.0 <= w < 2.0**65 for w in weights)
        score += sum(weights)
        decayed_sum_at.extend(times)
        # The newest event so far always counts: one more of it moves the score by >= 1.
        assert decay_weight(max(decayed_sum_at), landmark, half_life) >= 1.0
        assert math.isfinite(score)
    # The stored score, expressed at the newest time, equals the exactly decayed count.
    newest = max(decayed_sum_at)
    assert landmark is not None
    expected = sum(2.0 ** ((t - newest) / half_life) for t in decayed_sum_at)
    got = score * 2.0 ** ((landmark - newest) / half_life)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-300)


async def test_genre_affinity_does_not_depend_on_which_topic_came_first(services) -> None:  # type: ignore[no-untyped-def]
    """Ratings and clicks of an item the catalog has not named yet are credited to the user's
    genres when it arrives: the same affinity as with the catalog first (what a rebuild does)."""
    catalog = [ItemEvent(item_id="m1", title="Heat", genres=["Crime", "Drama"])]
    interactions = [
        RatingEvent(user_id="u", item_id="m1", rating=5, ts=at(1)),
        ClickEvent(user_id="u", item_id="m1", ts=at(2)),
        RatingEvent(user_id="v", item_id="m1", rating=1, ts=at(3)),
    ]
    first = FeatureStore(services.redis)
    await first.apply_batch("catalog-first", sourced(catalog, topic="streamrec.items"))
    await first.apply_batch("catalog-first", sourced(interactions, start=1))
    expected = {user: await first.genre_affinity(user) for user in ("u", "v")}
    assert expected == {"u": {"Crime": 2.0, "Drama": 2.0}, "v": {"Crime": -0.6, "Drama": -0.6}}
    await services.redis.flushdb()

    late = FeatureStore(services.redis)
    await late.apply_batch("catalog-late", sourced(interactions))
    assert await late.genre_affinity("u") == {}
    assert await services.redis.exists(item_pending_key("m1"))
    await late.apply_batch("catalog-late", sourced(catalog, topic="streamrec.items"))
    for user in ("u", "v"):
        assert await late.genre_affinity(user) == pytest.approx(expected[user])
    assert not await services.redis.exists(item_pending_key("m1"))  # credited once
    more = RatingEvent(user_id="u", item_id="m1", rating=5, ts=at(4))
    await late.apply_batch("catalog-late", sourced([more], start=3))
    assert await late.genre_affinity("u") == {"Crime": 3.0, "Drama": 3.0}

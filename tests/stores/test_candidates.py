"""The request path's precomputed lists in Redis: encoding, per-version hashes, the live pointer,
and retention that never removes the live version's hashes."""

from __future__ import annotations

from streamrec.schemas.events import ClickEvent, RatingEvent, SourcedEvent
from streamrec.stores.candidates import (
    Ranked,
    RequestState,
    SeenTail,
    candidates_key,
    live_key,
    neighbours_key,
)
from streamrec.stores.factory import Stores
from streamrec.stores.features import user_seen_key, user_seen_log_key


def test_an_entry_survives_its_encoding() -> None:
    ranked = Ranked(["m1", "m|2", "é"], [3.25, 0.1234567891, -1e-7], 1_700_000_000_000)
    decoded = Ranked.decode(ranked.encode())
    assert decoded.items == ranked.items and decoded.updated_ms == ranked.updated_ms
    assert decoded.scores == [3.25, 0.123457, -0.0]  # 6 decimals are kept
    assert Ranked.decode(Ranked(["a"], [1.0]).encode()).updated_ms is None
    assert not decoded.vector_fixed
    assert Ranked.decode(Ranked(["a"], [1.0], 5, vector_fixed=True).encode()).vector_fixed


async def test_written_entries_are_read_per_version_with_the_seen_set(stores: Stores) -> None:
    store = stores.candidates
    store.write_candidates("mf", 1, {"u1": Ranked(["a", "b"], [2.0, 1.0], 5)})
    store.write_candidates("mf", 2, {"u1": Ranked(["c"], [9.0], 6)})
    store.write_neighbours("mf", 2, {"a": Ranked(["c", "b"], [0.5, 0.25])})
    click = ClickEvent(user_id="u1", item_id="b")
    await stores.features.apply_batch("test", [SourcedEvent(click, "streamrec.clicks", 0, 0)])

    ranked, seen = await store.user_candidates("mf", 1, "u1")
    assert ranked == Ranked(["a", "b"], [2.0, 1.0], 5) and seen == {"b"}
    assert (await store.user_candidates("mf", 2, "u1"))[0] == Ranked(["c"], [9.0], 6)
    assert (await store.user_candidates("mf", 3, "u1"))[0] is None
    assert (await store.user_candidates("mf", 1, "nobody")) == (None, set())
    assert await store.item_neighbours("mf", 2, "a") == Ranked(["c", "b"], [0.5, 0.25])
    assert await store.item_neighbours("mf", 1, "a") is None

    assert await store.live_version("mf") is None
    store.set_live("mf", 2)
    assert await store.live_version("mf") == 2 and store.live_version_sync("mf") == 2
    assert store.seen_after(["u1", "nobody"], [0, 0]) == [SeenTail(["b"], 0), SeenTail([], 0)]


def _clicks(user: str, items: list[str], first_offset: int) -> list[SourcedEvent]:
    return [
        SourcedEvent(
            ClickEvent(user_id=user, item_id=item), "streamrec.clicks", 0, first_offset + n
        )
        for n, item in enumerate(items)
    ]


async def test_the_seen_log_is_read_from_where_a_reader_stopped(stores: Stores) -> None:
    store, features = stores.candidates, stores.features
    await features.apply_batch("test", _clicks("u1", ["a", "b", "a"], 0))
    first = store.seen_after(["u1"], [0])[0]
    assert first == SeenTail(["a", "b"], 0) and first.end == 2  # each item once, in order
    await features.apply_batch("test", _clicks("u1", ["b", "c", "d", "c"], 3))
    assert store.seen_after(["u1"], [first.end]) == [SeenTail(["c", "d"], 2)]
    assert store.seen_after(["u1"], [4]) == [SeenTail([], 4)]
    assert await features.seen_items("u1") == {"a", "b", "c", "d"}


async def test_a_shorter_log_is_read_whole_and_a_set_without_a_log_seeds_it(
    stores: Stores,
) -> None:
    store, redis = stores.candidates, stores.services.redis
    await redis.sadd(user_seen_key("old"), "x", "y")  # state written before the log existed
    await stores.features.apply_batch("test", _clicks("old", ["y", "z"], 0))
    tail = store.seen_after(["old"], [0])[0]
    assert sorted(tail.items[:2]) == ["x", "y"] and tail.items[2:] == ["z"]
    await redis.delete(user_seen_key("old"), user_seen_log_key("old"))  # a rebuild from scratch
    await stores.features.apply_batch("test", _clicks("old", ["w"], 2))
    assert store.seen_after(["old"], [tail.end]) == [SeenTail(["w"], 0)]  # from the start


async def test_dropping_a_version_unlinks_its_hashes_and_never_the_live_ones(
    stores: Stores,
) -> None:
    store = stores.candidates
    for version in (1, 2):
        store.write_candidates("mf", version, {"u1": Ranked(["a"], [1.0], 1)})
        store.write_neighbours("mf", version, {"a": Ranked(["b"], [1.0])})
    store.set_live("mf", 2)
    redis = stores.services.redis

    assert store.drop_version("mf", 1) is True
    assert await redis.exists(candidates_key("mf", 1), neighbours_key("mf", 1)) == 0
    assert store.drop_version("mf", 2) is False  # the live one: refused, kept
    assert await redis.exists(candidates_key("mf", 2), neighbours_key("mf", 2)) == 2
    assert await redis.get(live_key("mf")) == "2"
    assert store.has_version("mf", 2) and not store.has_version("mf", 1)


def test_keys_live_under_the_prefix_one_hash_per_version() -> None:
    assert candidates_key("content", 3) == "sr:cand:content:v3"
    assert neighbours_key("mf", 1) == "sr:nbr:mf:v1"
    assert live_key("sasrec") == "sr:live:sasrec"


async def test_a_request_reads_counters_candidates_and_seen_set_in_one_round_trip(
    stores: Stores,
) -> None:
    store = stores.candidates
    store.write_candidates("mf", 4, {"u1": Ranked(["a", "b"], [2.0, 1.0], 5)})
    rating = RatingEvent(user_id="u1", item_id="b", rating=4)
    await stores.features.apply_batch("test", [SourcedEvent(rating, "streamrec.ratings", 0, 0)])
    expected_stats = await stores.features.user_stats("u1")

    state = await store.request_state("u1", "mf", 4)
    assert state.stats == expected_stats and state.stats["ratings"] == "1"
    assert state.ranked == Ranked(["a", "b"], [2.0, 1.0], 5) and state.seen == {"b"}
    assert state.recent == []  # not asked for
    # A re-ranker's state rides along: the newest distinct items, newest first.
    assert (await store.request_state("u1", "mf", 4, recent=5)).recent == ["b"]
    # Without a model (popular): the counters alone; an unknown user: empty everything.
    assert await store.request_state("u1") == RequestState(expected_stats)
    assert await store.request_state("u1", recent=5) == RequestState(expected_stats, recent=["b"])
    assert await store.request_state("nobody", "mf", 4, recent=5) == RequestState({})

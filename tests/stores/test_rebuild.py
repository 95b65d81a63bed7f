"""`streamrec rebuild`'s core: the feature state rebuilt from the SQL archive equals, count
for count, the state the consumers built from the log; the features group's offsets are left
so that a consumer afterwards neither re-applies archived events nor skips new ones."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from streamrec.core.services import Services
from streamrec.schemas.events import (
    ClickEvent,
    ImpressionEvent,
    ItemEvent,
    RatingEvent,
    SourcedEvent,
)
from streamrec.schemas.topics import ConsumerGroup, Topic
from streamrec.stores.catalog import Archive
from streamrec.stores.factory import Stores
from streamrec.stores.rebuild import rebuild_features, snapshot_features, state_behind_archive
from streamrec.stores.schema import create_schema
from tests.conftest import consume_until_drained

pytestmark = pytest.mark.kafka
FEATURES = ConsumerGroup.FEATURES.value
GROUPS = [ConsumerGroup.FEATURES, ConsumerGroup.ARCHIVE]
# Replayed-data times (ml-100k is of 1997-98), and one list served "now": the API stamps its
# impression with the wall clock (a fixed past instant here), ~1,500 half-lives later.
T0 = datetime(1997, 9, 20, tzinfo=UTC).timestamp()
SERVED_NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
USERS = [f"u{n}" for n in range(8)]
ITEMS = [f"m{n}" for n in range(12)]


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, UTC)


def _interactions() -> list:  # type: ignore[type-arg]
    events: list = []  # type: ignore[type-arg]
    for n in range(240):
        user, item, ts = USERS[(n // 4) % 8], ITEMS[(n * 5) % 12], at(n * 3_000.0)
        kind = n % 4
        if kind in (0, 1):
            events.append(RatingEvent(user_id=user, item_id=item, rating=0.5 + n % 10 / 2, ts=ts))
        elif kind == 2:
            variant = "exp:a" if n % 3 else "exp:b"
            events.append(
                ClickEvent(user_id=user, item_id=item, ts=ts, model="mf", variant=variant)
            )
        else:
            shown = [ITEMS[(n + k) % 12] for k in range(3)]
            events.append(
                ImpressionEvent(user_id=user, request_id=f"r{n}", item_ids=shown, model="mf", ts=ts)
            )
        if n == 120:  # mid-replay; the rebuild applies it last (event-time order)
            served = ImpressionEvent(
                user_id=user, request_id="served", item_ids=ITEMS[:3], model="pop", ts=SERVED_NOW
            )
            events.append(served)
    return events


async def _consume(stores: Stores, events: list) -> None:  # type: ignore[type-arg]
    """Run the features and archive groups until both have consumed ``events``."""
    await consume_until_drained(stores, GROUPS, events)


async def _snapshot(stores: Stores):  # type: ignore[no-untyped-def]
    settings = stores.settings
    return await snapshot_features(
        stores.services.redis,
        stores.features,
        USERS,
        ITEMS,
        settings.popularity_half_life_days,
        reference_ts=T0,
    )


async def test_rebuild_after_flushdb_equals_what_the_consumers_built(
    services: Services, stores: Stores
) -> None:
    await asyncio.to_thread(create_schema, services.engine)
    catalog = [
        ItemEvent(item_id=item, title=f"Film {item}", genres=["Drama", f"G{n % 3}"], year=1990 + n)
        for n, item in enumerate(ITEMS)
    ]
    await _consume(stores, catalog)  # the catalog first: every rating finds its genres
    await _consume(stores, _interactions())
    store, archive = stores.features, Archive(services.engine)
    original = await _snapshot(stores)
    u0 = original.users["u0"]
    assert u0["ratings"] and u0["clicks"] and u0["impressions"] and u0["g:Drama"]
    assert original.items["m0"]["impressions"] > 0 and original.variants
    positions = await asyncio.to_thread(archive.positions, services.kafka_log_id)
    assert {t for t, _ in positions} == {Topic.RATINGS, Topic.CLICKS, Topic.IMPRESSIONS}
    offsets = {tp: await store.applied_offset(FEATURES, *tp) for tp in positions}

    await services.redis.flushdb()
    assert len((await _snapshot(stores)).differences(original)) > 100  # the comparison sees
    assert await state_behind_archive(store, archive, FEATURES, "a-new-log") is not None
    report = await rebuild_features(store, archive, FEATURES, services.kafka_log_id, chunk=50)

    assert (report.items, report.interactions) == (12, 241)
    rebuilt = await _snapshot(stores)
    assert rebuilt.differences(original) == []
    # The served impression moved no landmark: replayed popularity is a ranking, not 0.0s.
    assert min(original.popularity.values()) > 0.0
    assert {tp: await store.applied_offset(FEATURES, *tp) for tp in positions} == offsets
    assert await store.log_of(FEATURES) == services.kafka_log_id
    assert await state_behind_archive(store, archive, FEATURES, "a-new-log") is None

    # A features consumer afterwards on the same log: archived events are not applied again
    # (a redelivery is recognised by the restored guard), new ones are.
    (topic, partition), high = next(iter(positions.items()))
    old = RatingEvent(user_id="u0", item_id="m0", rating=5, ts=at(1))
    redelivered = await store.apply_batch(FEATURES, [SourcedEvent(old, topic, partition, high)])
    assert (redelivered.applied, redelivered.redelivered) == (0, 1)
    await _consume(stores, [RatingEvent(user_id="u0", item_id="m1", rating=4, ts=at(10**6))])
    assert int((await store.user_stats("u0"))["ratings"]) == u0["ratings"] + 1  # type: ignore[operator]


async def test_archive_beyond_the_applied_offsets_of_a_gone_log_is_reported(
    services: Services,
    stores: Stores,
) -> None:
    await asyncio.to_thread(create_schema, services.engine)
    store = stores.features
    await store.adopt_log(FEATURES, "old-log", [])
    await store.apply_batch(FEATURES, [], positions={(Topic.RATINGS.value, 0): 4})
    archive = Archive(services.engine, log_id="old-log")
    rating = RatingEvent(user_id="u", item_id="m", rating=3, ts=at(0))
    archive.write_batch([SourcedEvent(rating, Topic.RATINGS.value, 0, 4)])
    assert await state_behind_archive(store, archive, FEATURES, "new-log") is None

    later = RatingEvent(user_id="u", item_id="m2", rating=3, ts=at(1))
    archive.write_batch([SourcedEvent(later, Topic.RATINGS.value, 0, 9)])  # never applied
    behind = await state_behind_archive(store, archive, FEATURES, "new-log")
    assert behind is not None and "up to 5 events" in behind and "old-log" in behind
    assert await state_behind_archive(store, archive, FEATURES, "old-log") is None  # same log

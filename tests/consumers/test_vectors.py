"""The vectors consumer: it follows the published alias (hot swap), and an item event with text
makes a new item searchable in the live content collection (the per-user vector logic is
tested in tests/trainer/test_user_vectors.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamrec.consumers.app import build_consumer_broker
from streamrec.consumers.vectors import (
    FixedVectorLists,
    ModelCache,
    VectorsUpdater,
    parse_kept_versions,
)
from streamrec.core.datasets import synthetic
from streamrec.core.db import create_db_engine
from streamrec.core.errors import ConfigurationError
from streamrec.core.ids import IdKind, IdRegistry
from streamrec.core.metrics import Metrics
from streamrec.core.settings import Settings
from streamrec.producers.publisher import EventPublisher
from streamrec.schemas.events import ClickEvent, ItemEvent, SourcedEvent
from streamrec.schemas.topics import ConsumerGroup
from streamrec.stores.candidates import (
    CandidateStore,
    Ranked,
    candidates_key,
    neighbours_key,
)
from streamrec.stores.candidates import sync_client as candidates_sync_client
from streamrec.stores.factory import Stores
from streamrec.stores.model_registry import ModelRegistry
from streamrec.stores.schema import create_schema
from streamrec.stores.vectors import EdgeVectorStore
from streamrec.trainer.data import build
from streamrec.trainer.doc2vec import Doc2VecConfig, Doc2VecModel
from streamrec.trainer.live import publish_version
from streamrec.trainer.models import build_model
from streamrec.trainer.models.mf import MF, MFConfig
from streamrec.trainer.user_vectors import LoadedModel
from tests.conftest import FakeClock, wait_until

CATALOG = synthetic(n_users=10, n_items=12, n_events=80, n_genres=2, seed=4)


def test_model_cache_follows_the_published_alias(tmp_path: Path, clock: FakeClock) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path}/t.db")
    create_schema(engine)
    ids, models = IdRegistry(engine), ModelRegistry(engine, tmp_path / "models")
    inter = build(CATALOG, ids)
    with EdgeVectorStore(tmp_path / "qdrant") as store:
        cache = ModelCache(models, store, refresh_seconds=5.0, clock=clock)
        assert cache.current() == ([], set())  # nothing published: nothing to do, no error
        for seed in (0, 1):
            models.register("mf", build_model("mf", inter, dim=4, seed=seed), activate=True)
        publish_version(models, store, ids, engine, "mf", version=1)
        clock.advance(5.0)
        loaded, changed = cache.current()
        assert changed == {"mf"} and [m.version for m in loaded] == [1]
        publish_version(models, store, ids, engine, "mf", version=2)
        clock.advance(1.0)
        assert [m.version for m in cache.current()[0]] == [1]  # not due for a check yet
        clock.advance(4.0)
        loaded, changed = cache.current()
        assert changed == {"mf"} and [m.version for m in loaded] == [2]
        assert store.collection_exists("users_mf__v2")
    engine.dispose()


def _publish_content(stores: Stores) -> Doc2VecModel:
    d2v = Doc2VecModel(Doc2VecConfig(vector_size=8, epochs=5)).fit(CATALOG.items, stores.ids)
    stores.models.register("doc2vec", d2v, activate=True)
    publish_version(stores.models, stores.vectors, stores.ids, stores.engine, "content")
    return d2v


async def test_an_item_event_with_text_becomes_similar_item_searchable(stores: Stores) -> None:
    await asyncio.to_thread(_publish_content, stores)
    store = stores.vectors
    known = next(iter(CATALOG.items))
    fresh = ItemEvent(
        item_id="fresh",  # unknown to the id registry: the vectors group registers it
        title="Starlight Harbour",
        genres=["Drama"],
        year=2031,
        text="A lighthouse keeper and a runaway ship on a winter coast",
    )
    broker = build_consumer_broker(stores, Metrics(), [ConsumerGroup.VECTORS])
    await broker.start()
    try:
        async with EventPublisher(stores.services.kafka_bootstrap) as publisher:
            await publisher.publish_many([fresh])

        async def searchable() -> bool:
            index = stores.ids.lookup(IdKind.ITEM, ["fresh"]).get("fresh")
            return index is not None and bool(store.retrieve("items_content", [index]))

        await wait_until(searchable, timeout=30.0, interval=0.02)
    finally:
        await broker.stop()

    index = stores.ids.lookup(IdKind.ITEM, ["fresh"])["fresh"]
    record = store.retrieve("items_content", [index])[0]
    assert record.payload == {
        "item_id": "fresh",
        "title": "Starlight Harbour",
        "genres": ["Drama"],
        "year": 2031,
        "popularity": 0.0,
    }
    # It is a neighbour of the catalog's items, and has neighbours of its own.
    everyone = store.count("items_content")
    known_vector = store.retrieve("items_content", [stores.ids.lookup(IdKind.ITEM, [known])[known]])
    hits = store.query("items_content", known_vector[0].vector, everyone)
    assert "fresh" in {h.payload["item_id"] for h in hits}
    assert store.query("items_content", record.vector, 1)[0].id == index


async def test_a_known_item_keeps_its_vector_and_takes_the_new_details(stores: Stores) -> None:
    await asyncio.to_thread(_publish_content, stores)
    store = stores.vectors
    item = next(iter(CATALOG.items))
    index = stores.ids.lookup(IdKind.ITEM, [item])[item]
    before = store.retrieve("items_content", [index])[0]
    cache = ModelCache(stores.models, store)
    updater = VectorsUpdater(stores.features, stores.ids, cache, store)
    renamed = ItemEvent(item_id=item, title="Renamed", genres=["Comedy"], text="other words")

    written = await updater.handle([SourcedEvent(renamed, "streamrec.items", 0, 0)])

    after = store.retrieve("items_content", [index])[0]
    assert written == 1
    np.testing.assert_allclose(after.vector, before.vector)  # trained on its text: kept
    assert after.payload == {
        **before.payload,
        "title": "Renamed",
        "genres": ["Comedy"],
        "year": None,
    }


async def test_item_events_without_a_content_version_change_nothing(stores: Stores) -> None:
    cache = ModelCache(stores.models, stores.vectors)
    updater = VectorsUpdater(stores.features, stores.ids, cache, stores.vectors)
    event = ItemEvent(item_id="lonely", title="Nothing published yet", text="words")
    assert await updater.handle([SourcedEvent(event, "streamrec.items", 0, 0)]) == 0
    assert stores.vectors.list_collections() == []


async def test_an_item_without_any_words_gets_no_vector(stores: Stores) -> None:
    await asyncio.to_thread(_publish_content, stores)
    cache = ModelCache(stores.models, stores.vectors)
    updater = VectorsUpdater(stores.features, stores.ids, cache, stores.vectors)
    event = ItemEvent(item_id="mute", title="!!!")  # nothing to infer a vector from
    assert await updater.handle([SourcedEvent(event, "streamrec.items", 0, 0)]) == 0
    index = stores.ids.lookup(IdKind.ITEM, ["mute"])["mute"]  # registered all the same
    assert stores.vectors.retrieve("items_content", [index]) == []


def _publish_mf(stores: Stores, *, with_candidates: bool = True) -> None:
    inter = build(CATALOG, stores.ids)
    stores.models.register("mf", build_model("mf", inter, dim=4, seed=0), activate=True)
    candidates = stores.candidates if with_candidates else None
    publish_version(
        stores.models, stores.vectors, stores.ids, stores.engine, "mf", candidates=candidates
    )


async def test_a_users_event_rewrites_their_candidates_from_the_new_vector(
    stores: Stores,
) -> None:
    await asyncio.to_thread(_publish_mf, stores)
    candidates = stores.candidates
    user = "newcomer"  # no trained row: a fold-in of the items clicked
    assert (await candidates.user_candidates("mf", 1, user))[0] is None
    cache = ModelCache(stores.models, stores.vectors)
    updater = VectorsUpdater(
        stores.features, stores.ids, cache, stores.vectors, candidates=candidates
    )
    items = sorted(CATALOG.items)[:2]
    clicks = [
        SourcedEvent(ClickEvent(user_id=user, item_id=i), "streamrec.clicks", 0, n)
        for n, i in enumerate(items)
    ]

    assert await updater.handle(clicks) == 1

    entry, _ = await candidates.user_candidates("mf", 1, user)
    assert entry is not None and entry.updated_ms is not None
    assert not set(items) & set(entry.items)  # the batch's items, seen though not applied yet
    index = stores.ids.lookup(IdKind.USER, [user])[user]
    vector = stores.vectors.retrieve("users_mf__v1", [index])[0]
    assert entry.updated_ms == vector.payload["updated_ms"]
    exclude = list(stores.ids.lookup(IdKind.ITEM, items).values())
    hits = stores.vectors.query("items_mf", vector.vector, len(entry.items), exclude_ids=exclude)
    assert entry.items == [h.payload["item_id"] for h in hits]


async def test_a_trained_users_list_is_written_again_only_once_their_seen_set_grew(
    stores: Stores, settings: Settings
) -> None:
    """MF's row of a user it was trained on does not change with events, and the edge filters
    what is seen at request time: the group writes such a user once per version and process,
    then again only after a quarter of the list (here 2 of 8) may have become seen."""
    await asyncio.to_thread(_publish_mf, stores)
    sync = candidates_sync_client(stores.services.redis_url, settings)
    writer = CandidateStore.writer(sync, settings.model_copy(update={"candidates_per_user": 8}))
    cache = ModelCache(stores.models, stores.vectors)
    updater = VectorsUpdater(stores.features, stores.ids, cache, stores.vectors, candidates=writer)
    trained = stores.ids.external_ids(IdKind.USER)[0]  # index 0: a row of the model
    newcomer = "newcomer"  # no trained row: a fold-in, recomputed at each event
    items = sorted(CATALOG.items)
    offset = 0

    async def click(item: str) -> int:
        """One click each for the trained user and the newcomer, applied to the feature
        store first (as the features group would); returns the vectors written."""
        nonlocal offset
        events = [
            SourcedEvent(ClickEvent(user_id=u, item_id=item), "streamrec.clicks", 0, offset + n)
            for n, u in enumerate((trained, newcomer))
        ]
        offset += len(events)
        await stores.features.apply_batch("test", events)
        return await updater.handle(events)

    async def entry(user: str) -> Ranked:
        found, _ = await stores.candidates.user_candidates("mf", 1, user)
        assert found is not None
        return found

    assert await click(items[0]) == 2  # first met: both written
    first = await entry(trained)
    assert first.vector_fixed and not (await entry(newcomer)).vector_fixed
    assert await click(items[1]) == 1  # one more seen item: only the newcomer
    assert await entry(trained) == first
    assert await click(items[2]) == 2  # two more since the trained user's write
    second = await entry(trained)
    assert second.updated_ms is not None and first.updated_ms is not None
    assert second.updated_ms >= first.updated_ms and not set(items[:3]) & set(second.items)
    sync.close()


async def test_a_kept_version_serves_a_new_user_too(stores: Stores, caplog: Any) -> None:
    """STREAMREC_VECTORS_KEPT_VERSIONS: version 1, no longer live, gets the vectors and
    candidates of users it never saw, as the live version 2 does; once its collections are
    gone it is followed no more."""
    await asyncio.to_thread(_publish_mf, stores)  # v1
    await asyncio.to_thread(_publish_mf, stores)  # v2, live; v1 kept for rollback
    candidates = stores.candidates
    cache = ModelCache(stores.models, stores.vectors, kept=parse_kept_versions("mf=1"))
    updater = VectorsUpdater(
        stores.features, stores.ids, cache, stores.vectors, candidates=candidates
    )
    user, items = "latecomer", sorted(CATALOG.items)[:2]
    clicks = [
        SourcedEvent(ClickEvent(user_id=user, item_id=i), "streamrec.clicks", 0, n)
        for n, i in enumerate(items)
    ]

    assert await updater.handle(clicks) == 2  # one vector in each version

    index = stores.ids.lookup(IdKind.USER, [user])[user]
    for version in (1, 2):
        assert stores.vectors.retrieve(f"users_mf__v{version}", [index])
        entry, _ = await candidates.user_candidates("mf", version, user)
        assert entry is not None and not set(items) & set(entry.items)

    stores.vectors.delete_collection("users_mf__v1")  # retention removed it
    with caplog.at_level("WARNING"):
        assert await updater.handle(clicks) == 1  # the live version only, and no error
        assert await updater.handle(clicks) == 1
    gone = [r for r in caplog.records if "no longer kept fresh" in r.getMessage()]
    assert len(gone) == 1  # said once


def test_kept_versions_name_vector_models() -> None:
    assert parse_kept_versions(" mf=1, doc2vec=3 ") == {"mf": 1, "content": 3}
    for bad in ("dqn=1", "mf", "mf=0"):
        with pytest.raises(ConfigurationError, match="STREAMREC_VECTORS_KEPT_VERSIONS"):
            parse_kept_versions(bad)


class PointerWatch(CandidateStore):
    """The real store, noting how many candidate and neighbour entries the version had when
    the live pointer moved to it."""

    def __init__(self, store: CandidateStore) -> None:
        super().__init__(store._async, store._sync, store.per_user, store.neighbours)
        self.at_pointer: list[tuple[int, int, int]] = []

    def set_live(self, model: str, version: int) -> None:
        entries = self._sync.hlen(candidates_key(model, version))
        items = self._sync.hlen(neighbours_key(model, version))
        self.at_pointer.append((version, entries, items))
        super().set_live(model, version)


async def test_a_version_published_without_redis_is_backfilled_before_the_pointer_moves(
    stores: Stores,
) -> None:
    await asyncio.to_thread(_publish_mf, stores, with_candidates=False)  # the bare CLI's way
    candidates = PointerWatch(stores.candidates)
    assert await candidates.live_version("mf") is None
    assert not candidates.has_version("mf", 1)
    fresher = Ranked(["i0"], [9.0], 2**40)  # written meanwhile from a newer vector: kept
    candidates.write_candidates("mf", 1, {"u0": fresher})
    cache = ModelCache(stores.models, stores.vectors)
    updater = VectorsUpdater(
        stores.features, stores.ids, cache, stores.vectors, candidates=candidates
    )

    await updater.follow_aliases()  # what the watcher does at start, with no event at all

    users = stores.ids.external_ids(IdKind.USER)
    with_vectors = stores.vectors.retrieve("users_mf__v1", list(range(len(users))))
    published_items = stores.vectors.count("items_mf__v1")
    assert candidates.at_pointer == [(1, len(with_vectors), published_items)]
    assert await candidates.live_version("mf") == 1
    assert (await candidates.user_candidates("mf", 1, "u0"))[0] == fresher
    # Another user's entry is the engine's ranking of the stored vector, seen items left out.
    record = next(r for r in with_vectors if users[r.id] != "u0")
    entry, seen = await candidates.user_candidates("mf", 1, users[record.id])
    assert entry is not None and entry.updated_ms == record.payload["updated_ms"]
    assert entry.vector_fixed  # every user with a stored vector here is one mf was trained on
    exclude = list(stores.ids.lookup(IdKind.ITEM, seen).values())
    hits = stores.vectors.query("items_mf", record.vector, len(entry.items), exclude_ids=exclude)
    assert entry.items == [h.payload["item_id"] for h in hits]
    assert len(entry.items) == min(candidates.per_user, published_items - len(exclude))

    await updater.follow_aliases()  # the pointer names the version now: nothing redone
    await updater.handle([])
    assert len(candidates.at_pointer) == 1


async def test_a_failed_backfill_leaves_the_pointer_and_is_tried_again(stores: Stores) -> None:
    await asyncio.to_thread(_publish_mf, stores, with_candidates=False)
    candidates = stores.candidates
    cache = ModelCache(stores.models, stores.vectors)
    updater = VectorsUpdater(
        stores.features, stores.ids, cache, stores.vectors, candidates=candidates
    )
    broken = OSError("Redis went away mid-backfill")

    def fail(*_args: Any, **_kwargs: Any) -> None:
        raise broken

    original = candidates.write_neighbours
    candidates.write_neighbours = fail  # type: ignore[method-assign]
    try:
        with pytest.raises(OSError, match="mid-backfill"):
            await updater.follow_aliases()
        assert await candidates.live_version("mf") is None
    finally:
        candidates.write_neighbours = original  # type: ignore[method-assign]

    await updater.follow_aliases()  # not due for an alias check: the pending pointer is retried
    assert await candidates.live_version("mf") == 1
    assert await candidates.item_neighbours("mf", 1, sorted(CATALOG.items)[0]) is not None


async def test_after_the_backfill_requests_are_served_from_candidates(settings: Any) -> None:
    """The CLI's publish (no Redis), then the vectors group's backfill: the API serves a user
    with history from Redis, never through the vector query."""
    import httpx

    from streamrec.api.app import create_app
    from tests.api.test_serving import CountingVectors

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        stores = runtime.stores
        await asyncio.to_thread(_publish_mf, stores, with_candidates=False)
        fake = CountingVectors()
        runtime.serving = fake
        user = next(u for u in stores.ids.external_ids(IdKind.USER))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://streamrec") as client:

            async def recommend() -> dict[str, Any]:
                params: dict[str, str | int] = {"model": "mf", "k": 3}
                response = await client.get(f"/v1/users/{user}/recommendations", params=params)
                assert response.status_code == 200, response.text
                return dict(response.json())

            before = await recommend()  # no live pointer yet: the vector query serves
            assert fake.calls == [("recommend", user)]
            assert [i["item_id"] for i in before["items"]] == ["from-vectors"]

            cache = ModelCache(stores.models, stores.vectors)
            updater = VectorsUpdater(
                stores.features, stores.ids, cache, stores.vectors, candidates=stores.candidates
            )
            await updater.follow_aliases()

            after = await recommend()
            assert fake.calls == [("recommend", user)]  # not reached again
            entry, _ = await stores.candidates.user_candidates("mf", 1, user)
            assert entry is not None
            assert [i["item_id"] for i in after["items"]] == entry.items[:3]
            assert (after["version"], after["fallback"]) == (1, False)


async def test_a_new_content_items_neighbours_are_written_with_its_vector(
    stores: Stores,
) -> None:
    await asyncio.to_thread(lambda: _publish_content_with(stores, candidates=stores.candidates))
    candidates = stores.candidates
    cache = ModelCache(stores.models, stores.vectors)
    updater = VectorsUpdater(
        stores.features, stores.ids, cache, stores.vectors, candidates=candidates
    )
    fresh = ItemEvent(
        item_id="fresh",
        title="Starlight Harbour",
        genres=["Drama"],
        text="A lighthouse keeper and a runaway ship on a winter coast",
    )
    assert await candidates.item_neighbours("content", 1, "fresh") is None

    assert await updater.handle([SourcedEvent(fresh, "streamrec.items", 0, 0)]) == 1

    near = await candidates.item_neighbours("content", 1, "fresh")
    index = stores.ids.lookup(IdKind.ITEM, ["fresh"])["fresh"]
    record = stores.vectors.retrieve("items_content", [index])[0]
    hits = stores.vectors.query(
        "items_content", record.vector, candidates.neighbours, exclude_ids=[index]
    )
    assert near is not None and near.items == [h.payload["item_id"] for h in hits]
    # It is a candidate for users from now on: a user whose fold-in is its own vector.
    assert updater._index(cache.loaded["content"]).top(np.array([record.vector]), 1)[0].items == [
        "fresh"
    ]


def _publish_content_with(stores: Stores, candidates: Any) -> None:
    d2v = Doc2VecModel(Doc2VecConfig(vector_size=8, epochs=5)).fit(CATALOG.items, stores.ids)
    stores.models.register("doc2vec", d2v, activate=True)
    publish_version(
        stores.models, stores.vectors, stores.ids, stores.engine, "content", candidates=candidates
    )


def test_fixed_vector_lists_are_due_when_first_met_and_when_the_seen_set_grew() -> None:
    net = MF(MFConfig(n_users=5, n_items=3, dim=2))
    mf = LoadedModel("mf", 1, net, np.zeros((3, 2)), "users_mf__v1")
    lists = FixedVectorLists(refresh_after=3, capacity=2)
    assert lists.due(mf, 4, seen=10)  # never written by this process
    lists.wrote(mf, 4, seen=10)
    assert not lists.due(mf, 4, seen=12) and lists.due(mf, 4, seen=13)
    assert lists.due(mf, 5, seen=0)  # beyond the trained rows: a fold-in, always due
    lists.wrote(mf, 5, seen=0)
    assert lists.due(mf, 5, seen=0)
    v2 = LoadedModel("mf", 2, mf.net, mf.items, "users_mf__v2")
    assert lists.due(v2, 4, seen=10)  # another version: its own list
    lists.wrote(mf, 1, seen=0)
    lists.wrote(mf, 2, seen=0)  # past the capacity: the least recently written (4) goes
    assert lists.due(mf, 4, seen=10) and not lists.due(mf, 2, seen=0)

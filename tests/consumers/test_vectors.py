"""The vectors consumer: it follows the published alias (hot swap), and an item event with text
makes a new item searchable in the live content collection (the per-user vector logic is
tested in tests/trainer/test_user_vectors.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from consumers.app import build_consumer_broker
from consumers.vectors import ModelCache, VectorsUpdater
from core.datasets import synthetic
from core.db import create_db_engine
from core.ids import IdKind, IdRegistry
from core.metrics import Metrics
from producers.publisher import EventPublisher
from schemas.events import ItemEvent, SourcedEvent
from schemas.topics import ConsumerGroup
from stores.factory import Stores
from stores.model_registry import ModelRegistry
from stores.schema import create_schema
from stores.vectors import EdgeVectorStore
from tests.conftest import FakeClock, wait_until
from trainer.data import build
from trainer.doc2vec import Doc2VecConfig, Doc2VecModel
from trainer.live import publish_version
from trainer.models import build_model

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

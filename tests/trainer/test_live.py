"""Going live: item vectors, every user's vector, then the alias swap (``publish_version``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine

from streamrec.core.errors import NotFound
from streamrec.core.ids import IdKind
from streamrec.schemas.events import ClickEvent, ItemEvent, RatingEvent, SourcedEvent
from streamrec.stores.catalog import Archive
from streamrec.stores.model_registry import ModelRegistry
from streamrec.stores.vectors import EdgeVectorStore
from streamrec.trainer.data import build
from streamrec.trainer.doc2vec import Doc2VecConfig, Doc2VecModel
from streamrec.trainer.live import publish_version
from streamrec.trainer.models import build_model
from streamrec.trainer.publish import item_matrix
from tests.trainer.conftest import fill_archive, small_data


@pytest.fixture
def world(engine: Engine, tmp_path: Path) -> Iterator[dict[str, Any]]:
    data = small_data()
    ratings = [
        RatingEvent(user_id=r.user_id, item_id=r.item_id, rating=r.rating) for r in data.ratings
    ]
    ids = fill_archive(engine, data, ratings)
    store = EdgeVectorStore(tmp_path / "qdrant")
    yield {
        "engine": engine,
        "ids": ids,
        "data": data,
        "store": store,
        "models": ModelRegistry(engine, tmp_path / "models"),
        "tmp": tmp_path,
    }
    store.close()


def _publish(world: dict[str, Any], model: str, **kwargs: Any):  # type: ignore[no-untyped-def]
    return publish_version(
        world["models"], world["store"], world["ids"], world["engine"], model, **kwargs
    )


def _register_mf(world: dict[str, Any], seed: int = 0) -> None:
    inter = build(world["data"], world["ids"])
    world["models"].register("mf", build_model("mf", inter, dim=4, seed=seed), activate=True)


def test_every_user_with_history_has_a_vector_before_the_alias_swaps(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, store = world["ids"], world["store"]
    _register_mf(world)
    # A user who arrived after training: history in the archive, no row in the model.
    late = [RatingEvent(user_id="late", item_id=i, rating=5) for i in ("i1", "i2")]
    ids.assign(IdKind.USER, ["late"])
    Archive(world["engine"]).write_batch([SourcedEvent(e, "r", 1, n) for n, e in enumerate(late)])
    users = {r.user_id for r in world["data"].ratings} | {"late"}
    wanted = sorted(ids.lookup(IdKind.USER, users).values())
    at_swap: dict[str, Any] = {}
    swap = store.swap_alias

    def watched(alias: str, collection: str) -> str | None:
        at_swap["users"] = [r.id for r in store.retrieve("users_mf__v1", wanted)]
        at_swap["count"] = store.count("users_mf__v1")
        return swap(alias, collection)

    monkeypatch.setattr(store, "swap_alias", watched)
    progress: list[tuple[str, int, int]] = []
    done = _publish(world, "mf", on_progress=lambda *p: progress.append(p))

    assert at_swap["users"] == wanted  # every one of them, before the alias moved
    assert at_swap["count"] == done.users == len(users)
    assert (done.collection, done.users_collection) == ("items_mf__v1", "users_mf__v1")
    assert store.resolve_alias("items_mf") == "items_mf__v1"
    assert progress[-1] == ("users", len(users), len(users))
    assert ("items", 30, 30) in progress and progress.index(("items", 30, 30)) < len(progress) - 1
    late_idx = ids.lookup(IdKind.USER, ["late"])["late"]
    vector = store.retrieve("users_mf__v1", [late_idx])[0]
    items = item_matrix(world["models"].load("mf", 1))
    i1, i2 = (ids.lookup(IdKind.ITEM, [i])[i] for i in ("i1", "i2"))
    np.testing.assert_allclose(vector.vector, items[[i1, i2]].mean(0), rtol=1e-5)  # fold-in
    assert vector.payload["version"] == 1


def test_a_failed_user_pass_leaves_the_alias_where_it_was(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = world["store"]
    _register_mf(world)
    _publish(world, "mf")
    _register_mf(world, seed=1)
    upsert = store.upsert

    def failing(collection: str, *args: Any) -> None:
        if collection.startswith("users_"):
            raise OSError("disk full")  # not transient: bulk_upsert does not retry it
        upsert(collection, *args)

    monkeypatch.setattr(store, "upsert", failing)
    with pytest.raises(OSError, match="disk full"):
        _publish(world, "mf")
    assert store.resolve_alias("items_mf") == "items_mf__v1"
    assert store.count("items_mf__v2") == 30  # its items were written: a rerun resumes


def test_publishing_a_version_again_refreshes_its_users(world: dict[str, Any]) -> None:
    ids, store = world["ids"], world["store"]
    _register_mf(world)
    _publish(world, "mf", checkpoint_dir=world["tmp"] / "ckpt")
    _register_mf(world, seed=1)
    assert _publish(world, "mf").previous == "items_mf__v1"
    ids.assign(IdKind.USER, ["returning"])
    Archive(world["engine"]).write_batch(
        [SourcedEvent(RatingEvent(user_id="returning", item_id="i3", rating=4), "r", 2, 0)]
    )
    rollback = _publish(world, "mf", version=1, checkpoint_dir=world["tmp"] / "ckpt")
    assert (rollback.previous, store.resolve_alias("items_mf")) == ("items_mf__v2", "items_mf__v1")
    assert rollback.points == 30  # the items' checkpoint was complete: not written again
    returning = ids.lookup(IdKind.USER, ["returning"])["returning"]
    assert store.retrieve("users_mf__v1", [returning])  # a user v1 had never seen


def test_a_deleted_items_collection_is_written_again_despite_its_checkpoint(
    world: dict[str, Any],
) -> None:
    store = world["store"]
    _register_mf(world)
    _publish(world, "mf", checkpoint_dir=world["tmp"] / "ckpt")
    _register_mf(world, seed=1)
    _publish(world, "mf", checkpoint_dir=world["tmp"] / "ckpt")
    store.delete_collection("items_mf__v1")  # retention dropped it; its checkpoint stayed
    _publish(world, "mf", version=1, checkpoint_dir=world["tmp"] / "ckpt")
    assert store.count("items_mf__v1") == 30


def test_content_infers_items_newer_than_the_doc2vec_version(world: dict[str, Any]) -> None:
    ids, store = world["ids"], world["store"]
    d2v = Doc2VecModel(Doc2VecConfig(vector_size=8, epochs=2)).fit(world["data"].items, ids)
    world["models"].register("doc2vec", d2v, activate=True)
    new = ItemEvent(item_id="fresh", title="A brand new space drama", genres=["Drama"])
    ids.assign(IdKind.ITEM, ["fresh", "no-text"])  # newer than the model
    Archive(world["engine"]).write_batch([SourcedEvent(new, "streamrec.items", 1, 0)])

    done = _publish(world, "content")
    assert (done.alias, done.collection, done.inferred) == ("items_content", "items_content__v1", 1)
    assert store.count("items_content") == len(world["data"].items) + 1
    fresh = ids.lookup(IdKind.ITEM, ["fresh"])["fresh"]
    record = store.retrieve("items_content", [fresh])[0]
    text = " ".join([new.title, *new.genres])
    inferred = d2v.infer(text)  # a cosine collection stores it normalised
    np.testing.assert_allclose(record.vector, inferred / np.linalg.norm(inferred), rtol=1e-4)
    assert record.payload["title"] == new.title and record.payload["popularity"] == 0.0


def test_unknown_versions_are_refused_before_any_write(world: dict[str, Any]) -> None:
    with pytest.raises(NotFound, match="no active version"):
        _publish(world, "mf")
    with pytest.raises(NotFound, match="has no version 3"):
        _publish(world, "mf", version=3)
    assert world["store"].list_collections() == []


async def test_every_user_has_candidates_and_every_item_neighbours_before_the_swap(
    world: dict[str, Any], stores: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a candidate store, the publish writes every user's top-C unseen items (as the
    engine ranks them) and every item's neighbours before the alias moves, and the Redis live
    pointer right after."""
    import asyncio

    from streamrec.stores.candidates import Ranked, candidates_key, neighbours_key

    ids, store, candidates = world["ids"], world["store"], stores.candidates
    redis = stores.services.redis
    _register_mf(world)
    users = sorted({r.user_id for r in world["data"].ratings})
    # A user's seen items (the feature store's) never come back as candidates.
    first = world["data"].ratings[0]
    click = SourcedEvent(ClickEvent(user_id=first.user_id, item_id="i3"), "streamrec.clicks", 0, 0)
    await stores.features.apply_batch("test", [click])
    at_swap: dict[str, Any] = {}
    swap = store.swap_alias

    def watched(alias: str, collection: str) -> str | None:
        sync = candidates._sync
        at_swap["users"] = sorted(sync.hkeys(candidates_key("mf", 1)))
        at_swap["items"] = sync.hlen(neighbours_key("mf", 1))
        at_swap["live"] = candidates.live_version_sync("mf")
        return swap(alias, collection)

    monkeypatch.setattr(store, "swap_alias", watched)
    await asyncio.to_thread(_publish, world, "mf", candidates=candidates)

    assert at_swap == {"users": users, "items": 30, "live": None}
    assert await candidates.live_version("mf") == 1
    index = ids.lookup(IdKind.USER, [first.user_id])[first.user_id]
    vector = store.retrieve("users_mf__v1", [index])[0]
    raw = await redis.hget(candidates_key("mf", 1), first.user_id)
    entry = Ranked.decode(raw)
    assert entry.updated_ms == vector.payload["updated_ms"]
    assert entry.vector_fixed  # a user mf was trained on: its row, until the next version
    assert len(entry.items) == min(candidates.per_user, 30 - 1)  # 30 items, i3 seen
    assert "i3" not in entry.items
    i3 = ids.lookup(IdKind.ITEM, ["i3"])["i3"]
    hits = store.query("items_mf", vector.vector, 10, exclude_ids=[i3])
    assert entry.items[:10] == [h.payload["item_id"] for h in hits]  # as the engine ranks
    near = Ranked.decode(await redis.hget(neighbours_key("mf", 1), "i1"))
    i1 = ids.lookup(IdKind.ITEM, ["i1"])["i1"]
    item = store.retrieve("items_mf", [i1])[0]
    expected = store.query("items_mf", item.vector, candidates.neighbours, exclude_ids=[i1])
    assert near.items == [h.payload["item_id"] for h in expected]

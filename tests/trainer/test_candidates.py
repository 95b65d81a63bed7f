"""``CandidateIndex`` ranks as the vector engine does: the same lists as ``VectorStore.query``
(dot product, and cosine for doc2vec's collections), exclusions left out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from streamrec.core.ids import IdKind
from streamrec.schemas.events import ClickEvent, SourcedEvent
from streamrec.stores.candidates import SeenTail
from streamrec.stores.factory import Stores
from streamrec.stores.vectors import EdgeVectorStore
from streamrec.trainer.candidates import CandidateIndex, SeenRows

N_ITEMS, DIM = 60, 8


@pytest.mark.parametrize("distance", ["dot", "cosine"])
def test_top_and_neighbours_agree_with_the_engine(tmp_path: Path, distance: str) -> None:
    rng = np.random.default_rng(5)
    items = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    items *= rng.uniform(0.2, 3.0, size=(N_ITEMS, 1)).astype(np.float32)  # cosine != dot
    rows = np.arange(3, 3 + N_ITEMS)  # registry indices need not start at 0
    names = [f"i{r}" for r in rows]
    users = rng.normal(size=(5, DIM)).astype(np.float32)
    index = CandidateIndex(rows, items, names, distance)
    with EdgeVectorStore(tmp_path / "qdrant") as store:
        store.create_item_version("m", DIM, distance, 1)  # type: ignore[arg-type]
        store.upsert("items_m__v1", rows.tolist(), items, [{"item_id": n} for n in names])
        # Registry indices to leave out; 0 and 999 are indices this version does not hold.
        seen = [np.array([5, 9]), np.array([], np.int64), np.array([3, 0, 999]), None, None]
        exclude = [np.asarray(s if s is not None else [], np.int64) for s in seen]
        ranked = index.top(users, 10, exclude)
        for user, excluded, got in zip(users, exclude, ranked, strict=True):
            hits = store.query("items_m__v1", user, 10, exclude_ids=excluded.tolist())
            assert got.items == [h.payload["item_id"] for h in hits]
            np.testing.assert_allclose(got.scores, [h.score for h in hits], rtol=1e-4, atol=1e-5)
            assert not set(got.items) & {f"i{r}" for r in excluded}
        near = index.neighbours([rows[4]], 7)[names[4]]
        hits = store.query("items_m__v1", items[4], 7, exclude_ids=[int(rows[4])])
        assert near.items == [h.payload["item_id"] for h in hits]
        assert names[4] not in index.neighbours(None, N_ITEMS)[names[4]].items


def test_added_items_rank_and_a_short_catalog_gives_what_there_is() -> None:
    index = CandidateIndex([0, 1], np.array([[1.0, 0.0], [0.0, 1.0]]), ["a", "b"])
    index.add([2, 0], np.array([[2.0, 2.0], [3.0, 0.0]]), ["c", "a"])  # a new item, a new vector
    assert len(index) == 3
    top = index.top(np.array([[1.0, 0.0]]), 10, [np.array([1])])[0]
    assert top.items == ["a", "c"] and top.scores == [3.0, 2.0]  # b excluded, a's new vector
    assert index.neighbours([2], 5)["c"].items == ["a", "b"]


async def test_seen_rows_hold_what_was_read_and_read_only_what_was_added(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    stores.ids.assign(IdKind.ITEM, ["a", "b", "c"])
    rows = SeenRows(stores.candidates, stores.ids, capacity=1)
    offsets = iter(range(100))

    async def click(user: str, *items: str) -> None:
        events = [
            SourcedEvent(ClickEvent(user_id=user, item_id=i), "streamrec.clicks", 0, next(offsets))
            for i in items
        ]
        await stores.features.apply_batch("test", events)

    await click("u1", "b", "a")
    assert [r.tolist() for r in rows.rows_many(["u1", "u2"])] == [[1, 0], []]
    await click("u1", "new")  # an item new to the registry is registered as it is read
    assert rows.rows_many(["u1"])[0].tolist() == [1, 0, 3]

    starts: list[list[int]] = []
    read = stores.candidates.seen_after

    def spied(users: Sequence[str], first: Sequence[int]) -> list[SeenTail]:
        starts.append(list(first))
        return read(users, first)

    monkeypatch.setattr(stores.candidates, "seen_after", spied)
    rows.rows_many(["u1"])  # held: read from where it stopped
    rows.rows_many(["u2"])  # capacity 1: u1 goes
    assert rows.rows_many(["u1"])[0].tolist() == [1, 0, 3]
    assert starts == [[3], [0], [0]]

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import numpy as np
import pytest
from sqlalchemy import Engine

from streamrec.core.datasets import InteractionData, Item, Rating
from streamrec.core.errors import InvalidInput
from streamrec.core.ids import IdKind, IdRegistry
from streamrec.stores.catalog import InteractionRow, ItemRow
from streamrec.trainer.data import (
    Interactions,
    build,
    count_batches,
    eval_set,
    from_archive,
    iter_batches,
    leave_one_out,
    pad_sequences,
    random_split,
    sample_negatives,
    sequence_windows,
    split_counts,
)


def _data(rows: list[tuple[str, str, float, int]], items: tuple[str, ...] = ()) -> InteractionData:
    catalog = {
        i: Item(i, f"title {i}", ("Drama",) if i.endswith("1") else ("Comedy",)) for i in items
    }
    return InteractionData("hand", [Rating(*r) for r in rows], catalog)


def test_build_maps_ids_through_the_registry(registry: IdRegistry) -> None:
    data = _data([("u1", "a1", 4, 1), ("u2", "b2", 3, 2), ("u1", "b2", 5, 3)], ("a1", "b2", "c3"))
    inter = build(data, registry)
    items = registry.lookup(IdKind.ITEM, ["a1", "b2", "c3"])
    assert inter.items.tolist() == [items["a1"], items["b2"], items["b2"]]
    assert inter.n_items == 3  # the unrated catalog item c3 has a row too
    assert inter.genres == ("Comedy", "Drama")
    assert inter.item_genres[items["a1"]].tolist() == [0.0, 1.0]
    assert inter.window == (1, 3)


def test_rebuild_with_new_items_keeps_old_indices(registry: IdRegistry) -> None:
    first = build(_data([("u1", "a", 4, 1), ("u2", "b", 3, 2)]), registry)
    second = build(_data([("u3", "c", 4, 3), ("u1", "b", 3, 4), ("u1", "a", 3, 5)]), registry)
    assert first.n_items == 2 and second.n_items == 3
    assert second.items.tolist() == [2, 1, 0]  # a and b keep 0 and 1; c appended


def test_empty_data_is_refused(registry: IdRegistry) -> None:
    with pytest.raises(InvalidInput):
        build(InteractionData("empty", []), registry)


def _inter(users: list[int], items: list[int], n_items: int = 10) -> Interactions:
    n = len(users)
    return Interactions(
        users=np.array(users, dtype=np.int64),
        items=np.array(items, dtype=np.int64),
        ratings=np.full(n, 4.0, dtype=np.float32),
        ts=np.arange(n, dtype=np.int64),
        n_users=max(users) + 1,
        n_items=n_items,
        genres=(),
        item_genres=np.zeros((n_items, 0), dtype=np.float32),
    )


def test_leave_one_out_by_time() -> None:
    inter = _inter([0, 1, 0, 0, 1, 0, 2], [1, 2, 3, 4, 5, 6, 7])
    split = leave_one_out(inter)
    assert inter.items[split.test].tolist() == [6]  # user 0's last; user 1, 2: too short
    assert inter.items[split.valid].tolist() == [4]
    assert sorted(inter.items[split.train].tolist()) == [1, 2, 3, 5, 7]
    es = eval_set(inter, split, "test")
    assert es.users.tolist() == [0]
    assert es.history[0].tolist() == [1, 3, 4]  # time order, valid included
    assert es.seen[0].tolist() == [1, 3, 4]
    assert eval_set(inter, split, "valid").history[0].tolist() == [1, 3]


def test_split_counts_match_recbole() -> None:
    assert split_counts(10, (0.8, 0.1, 0.1)) == [8, 1, 1]
    assert split_counts(5, (0.8, 0.1, 0.1)) == [3, 1, 1]  # fractional parts get one row each
    assert split_counts(2, (0.8, 0.1, 0.1)) == [1, 0, 1]
    assert split_counts(23, (0.8, 0.1, 0.1)) == [19, 2, 2]


def test_random_split_per_user_is_a_partition() -> None:
    users = [u for u in range(3) for _ in range(20)]
    inter = _inter(users, list(range(60)), n_items=60)
    split = random_split(inter, seed=7)
    all_rows = np.concatenate([split.train, split.valid, split.test])
    assert sorted(all_rows.tolist()) == list(range(60))
    for u in range(3):
        assert (inter.users[split.valid] == u).sum() == 2
        assert (inter.users[split.test] == u).sum() == 2
    again = random_split(inter, seed=7)
    assert again.test.tolist() == split.test.tolist()  # seeded


def test_random_split_over_all_rows() -> None:
    inter = _inter([0] * 50 + [1] * 50, list(range(100)), n_items=100)
    split = random_split(inter, by_user=False)
    assert (len(split.train), len(split.valid), len(split.test)) == (80, 10, 10)


def test_sequence_windows_cover_every_transition() -> None:
    inter = _inter([0] * 7, [0, 1, 2, 3, 4, 5, 6])
    inputs, targets = sequence_windows(inter, max_len=4)
    # windows from the end: items 2..6 and 0..2 (one item shared), shifted by +1, left-padded.
    assert inputs.tolist() == [[3, 4, 5, 6], [0, 0, 1, 2]]
    assert targets.tolist() == [[4, 5, 6, 7], [0, 0, 2, 3]]  # item 0 is never a target


def test_overlapping_windows() -> None:
    inter = _inter([0] * 7, [0, 1, 2, 3, 4, 5, 6])
    inputs, targets = sequence_windows(inter, max_len=4, stride=2)
    assert inputs.tolist() == [[3, 4, 5, 6], [1, 2, 3, 4], [0, 0, 1, 2]]
    # each target once, where its context is longest: only the last 2 of a later window
    assert targets.tolist() == [[0, 0, 6, 7], [0, 0, 4, 5], [0, 0, 2, 3]]


def test_pad_sequences_keeps_recent_items() -> None:
    out = pad_sequences([np.array([5, 6, 7]), np.array([1])], max_len=2)
    assert out.tolist() == [[7, 8], [0, 2]]


def test_sampled_negatives_avoid_known_items() -> None:
    inter = _inter([0, 0, 0, 1], [0, 1, 2, 3], n_items=5)
    rng = np.random.default_rng(0)
    neg = sample_negatives(inter, np.zeros(200, dtype=np.int64), 1, rng)
    assert set(neg[:, 0].tolist()) <= {3, 4}


def test_negatives_of_a_subset_use_the_subsets_items() -> None:
    # known_keys is cached per Interactions: a subset (a train split) must not inherit it.
    inter = _inter([0, 0, 0, 1], [0, 1, 2, 3], n_items=5)
    rng = np.random.default_rng(0)
    sample_negatives(inter, np.zeros(10, dtype=np.int64), 1, rng)  # fills the cache
    train = inter.subset(np.array([0, 3]))  # user 0 keeps item 0 only
    neg = sample_negatives(train, np.zeros(300, dtype=np.int64), 2, rng)
    assert set(neg.reshape(-1).tolist()) == {1, 2, 3, 4}


def test_batches_have_the_shapes_models_expect() -> None:
    inter = _inter([0, 0, 1, 1, 1], [0, 1, 2, 3, 4])
    rng = np.random.default_rng(0)
    pointwise = list(iter_batches("pointwise", inter, 4, rng, neg=2))
    assert sum(len(b["labels"]) for b in pointwise) == 15
    assert sum(float(b["labels"].sum()) for b in pointwise) == 5
    pairwise = next(iter(iter_batches("pairwise", inter, 8, rng)))
    assert set(pairwise) == {"users", "pos", "neg"}
    with pytest.raises(InvalidInput):
        list(iter_batches("nope", inter, 8, rng))


@pytest.mark.parametrize(
    ("kind", "opts"),
    [
        ("ratings", {}),
        ("pairwise", {}),
        ("pointwise", {"neg": 3}),
        ("sequence", {"max_len": 2}),
        ("sequence", {"max_len": 2, "stride": 1}),
    ],
)
def test_count_batches_is_what_an_epoch_yields(kind: str, opts: dict[str, float]) -> None:
    """The training progress bar's total: interactions alone undercount pointwise (negatives)
    and miscount sequences (windows per user)."""
    inter = _inter([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2], [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1])
    yielded = list(iter_batches(kind, inter, 3, np.random.default_rng(0), **opts))
    assert count_batches(kind, inter, 3, **opts) == len(yielded)
    with pytest.raises(InvalidInput):
        count_batches("nope", inter, 3)


def test_from_archive_reads_ratings_and_catalog(sqlite_engine: Engine) -> None:
    now = datetime(2024, 1, 1, tzinfo=UTC)
    rows = [
        {
            "event_id": uuid.uuid4(),
            "type": t,
            "user_id": u,
            "item_id": i,
            "rating": r,
            "ts": now.replace(second=s),
            "topic": "x",
            "partition": 0,
            "offset": s,
        }
        for t, u, i, r, s in [
            ("rating", "u1", "m1", 4.0, 2),
            ("rating", "u2", "m2", 2.0, 1),
            ("click", "u1", "m2", None, 3),
        ]
    ]
    with sqlite_engine.begin() as conn:
        conn.execute(InteractionRow.__table__.insert(), rows)
        conn.execute(
            ItemRow.__table__.insert(),
            [
                {
                    "item_id": "m1",
                    "title": "One",
                    "genres": ["Drama"],
                    "year": 1999,
                    "text": "",
                    "updated_at": now,
                },
            ],
        )
    data = from_archive(sqlite_engine)
    assert [(r.user_id, r.item_id, r.rating) for r in data.ratings] == [
        ("u2", "m2", 2.0),
        ("u1", "m1", 4.0),
    ]
    assert data.ratings[0].ts == int(now.replace(second=1).timestamp())
    assert data.items["m1"].genres == ("Drama",)
    with_clicks = from_archive(sqlite_engine, types=("rating", "click"))
    assert with_clicks.ratings[-1].rating == 5.0


@pytest.mark.movielens
def test_movielens_100k_through_the_registry(ml100k_path, registry: IdRegistry) -> None:  # type: ignore[no-untyped-def]
    from streamrec.core.datasets import load_movielens

    inter = build(load_movielens(ml100k_path), registry)
    assert (len(inter), inter.n_users, inter.n_items) == (100_000, 943, 1682)
    split = leave_one_out(inter)
    assert len(split.test) == len(split.valid) == 943  # every ml-100k user has >= 20 ratings
    assert np.all(np.diff(inter.ts) >= 0)

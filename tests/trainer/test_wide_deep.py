"""Wide & Deep with user demographics: read from every MovieLens layout that has them, encoded
through the id registry, used by the model, and optional (the model works without them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from streamrec.core.datasets import InteractionData, Item, Rating, User, load_movielens
from streamrec.core.ids import IdKind, IdRegistry
from streamrec.trainer.data import Interactions, age_group, build, random_split
from streamrec.trainer.evaluate import evaluate_click
from streamrec.trainer.loop import TrainConfig, fit
from streamrec.trainer.models import build_model
from streamrec.trainer.models.base import Query
from streamrec.trainer.models.wide_deep import WideDeep

SMALL = {"dim": 8, "hidden": (16, 8)}


def test_demographics_from_every_movielens_layout(tmp_path: Path) -> None:
    csv_dir, ml100k, ml1m = (tmp_path / n for n in ("csv", "ml100k", "ml1m"))
    for folder in (csv_dir, ml100k, ml1m):
        folder.mkdir()
    (csv_dir / "ratings.csv").write_text("userId,movieId,rating,timestamp\n7,1,4,10\n")
    (csv_dir / "users.csv").write_text("userId,age,gender,occupation,zip\n7,24,M,writer,1\n")
    (ml100k / "u.data").write_text("7\t1\t4\t10\n")
    (ml100k / "u.user").write_text("7|24|M|writer|85711\n")
    (ml1m / "ratings.dat").write_text("7::1::4::10\n")
    (ml1m / "users.dat").write_text("7::M::18::20::48067\n")  # age group 18, occupation code 20
    assert load_movielens(csv_dir).users == {"7": User("7", 24, "M", "writer")}
    assert load_movielens(ml100k).users == {"7": User("7", 24, "M", "writer")}
    assert load_movielens(ml1m).users == {"7": User("7", 18, "M", "20")}
    (csv_dir / "users.csv").unlink()
    assert load_movielens(csv_dir).users == {}  # optional: ml-latest has no users file


def test_user_features_go_through_the_registry(registry: IdRegistry) -> None:
    rows = [Rating("b", "i", 4, 1), Rating("a", "i", 3, 2), Rating("c", "i", 3, 3)]
    users = {"a": User("a", 17, "F", None), "b": User("b", 30, "M", "writer"), "z": User("z", 1)}
    inter = build(InteractionData("hand", rows, {}, users), registry)
    assert inter.user_feature_names == (
        "age=25-34",
        "age=<18",
        "gender=F",
        "gender=M",
        "occupation=writer",
    )  # z never rated: not in the vocabulary
    index = {u: int(inter.users[n]) for n, u in enumerate(["b", "a", "c"])}
    assert inter.user_features[index["a"]].tolist() == [0, 1, 1, 0, 0]
    assert inter.user_features[index["b"]].tolist() == [1, 0, 0, 1, 1]
    assert inter.user_features[index["c"]].tolist() == [0, 0, 0, 0, 0]  # no demographics
    assert [age_group(a) for a in (1, 18, 24, 25, 49, 50, 56, 90)] == [
        "<18",
        "18-24",
        "18-24",
        "25-34",
        "45-49",
        "50-55",
        "56+",
        "56+",
    ]


def _taste_by_gender(registry: IdRegistry, with_users: bool) -> Interactions:
    """Women like genre A, men genre B: a user's demographics alone predict the label."""
    rng = np.random.default_rng(0)
    items = {f"i{n}": Item(f"i{n}", "", ("A",) if n % 2 else ("B",)) for n in range(40)}
    users = {f"u{n}": User(f"u{n}", 30, "F" if n % 2 else "M", None) for n in range(80)}
    rows = []
    for t, (u, i) in enumerate(
        zip(rng.integers(0, 80, 3000), rng.integers(0, 40, 3000), strict=True)
    ):
        liked = (u % 2) == (i % 2)
        rows.append(Rating(f"u{u}", f"i{i}", 5.0 if liked else 1.0, t))
    return build(InteractionData("taste", rows, items, users if with_users else {}), registry)


def _cold_auc(
    inter: Interactions, registry: IdRegistry, kind: IdKind, cold_ids: list[str]
) -> float:
    """AUC on the users (or items) ``cold_ids``, left out of training and with their id
    embeddings zeroed as a newcomer starts (noise would be a coin toss): only their features
    can tell them apart."""
    rows, table = (inter.users, "user_emb") if kind is IdKind.USER else (inter.items, "item_emb")
    cold = np.isin(rows, list(registry.lookup(kind, cold_ids).values()))
    model = build_model("wide_deep", inter, **SMALL)
    config = TrainConfig(epochs=8, batch_size=256, lr=1e-2, threads=1, patience=8)
    fit(model, inter.subset(np.flatnonzero(~cold)), None, config)
    with torch.no_grad():
        getattr(model, table).weight[np.unique(rows[cold])] = 0.0
    return evaluate_click(model, inter, np.flatnonzero(cold))["auc"]


def _cold_user_auc(inter: Interactions, registry: IdRegistry) -> float:
    """10 women and 10 men, so that item popularity alone scores 0.5."""
    return _cold_auc(inter, registry, IdKind.USER, [f"u{n}" for n in range(20)])


def test_demographics_predict_cold_users(registry: IdRegistry) -> None:
    assert _cold_user_auc(_taste_by_gender(registry, with_users=True), registry) > 0.9


def test_without_demographics_cold_users_are_a_guess(registry: IdRegistry) -> None:
    # The control for the test above: same data minus users, and the model is as it was before
    # demographics existed (no extra parameters), so older checkpoints load.
    inter = _taste_by_gender(registry, with_users=False)
    assert inter.user_feature_names == ()
    assert not hasattr(build_model("wide_deep", inter, **SMALL), "feat_cross")
    assert abs(_cold_user_auc(inter, registry) - 0.5) < 0.1


def test_demographics_survive_save_load_and_growth(registry: IdRegistry, tmp_path: Path) -> None:
    inter = _taste_by_gender(registry, with_users=True)
    model = build_model("wide_deep", inter, **SMALL)
    split = random_split(inter, by_user=False)
    fit(model, inter.subset(split.train), None, TrainConfig(epochs=2, threads=1))
    model.save_artifacts(tmp_path)
    loaded = WideDeep.load_artifacts(tmp_path)
    assert loaded.config.user_features == ("age=25-34", "gender=F", "gender=M")
    users, items = torch.as_tensor(inter.users[:50]), torch.as_tensor(inter.items[:50])
    with torch.no_grad():
        assert torch.equal(loaded.logits(users, items), model.eval().logits(users, items))
        loaded.grow(inter.n_users + 2, inter.n_items)
        assert loaded.user_feats.shape == (inter.n_users + 2, 3)
        assert torch.equal(loaded.logits(users, items), model.logits(users, items))


def test_release_years_go_through_the_registry(registry: IdRegistry) -> None:
    items = {
        "old": Item("old", "Old (1972)", ("A",), 1972),
        "new": Item("new", "", ("A",), 1995),
        "undated": Item("undated", "", ("A",)),
    }
    rows = [Rating("u", "new", 4, 1), Rating("u", "old", 3, 2), Rating("u", "undated", 3, 3)]
    inter = build(InteractionData("hand", rows, items), registry)
    assert inter.item_feature_names == ("decade=1970s", "decade=1990s", "year=1972", "year=1995")
    index = registry.lookup(IdKind.ITEM, ["old", "new", "undated"])
    assert inter.item_features[index["old"]].tolist() == [1, 0, 1, 0]
    assert inter.item_features[index["new"]].tolist() == [0, 1, 0, 1]
    assert inter.item_features[index["undated"]].tolist() == [0, 0, 0, 0]


def _taste_by_era(registry: IdRegistry, with_years: bool) -> Interactions:
    """Everyone likes the 1970s and dislikes the 1990s: an item's year alone predicts the
    label (genres and users carry no signal)."""
    rng = np.random.default_rng(0)
    items = {
        f"i{n}": Item(f"i{n}", "", ("A",), (1975 if n % 2 else 1995) if with_years else None)
        for n in range(60)
    }
    rows = [
        Rating(f"u{u}", f"i{i}", 5.0 if i % 2 else 1.0, t)
        for t, (u, i) in enumerate(
            zip(rng.integers(0, 50, 3000), rng.integers(0, 60, 3000), strict=True)
        )
    ]
    return build(InteractionData("era", rows, items), registry)


def _cold_item_auc(inter: Interactions, registry: IdRegistry) -> float:
    """10 items of the 1970s and 10 of the 1990s: only their release year tells them apart."""
    return _cold_auc(inter, registry, IdKind.ITEM, [f"i{n}" for n in range(20)])


def test_release_years_predict_cold_items(registry: IdRegistry) -> None:
    assert _cold_item_auc(_taste_by_era(registry, with_years=True), registry) > 0.9


def test_without_years_cold_items_are_a_guess(registry: IdRegistry) -> None:
    inter = _taste_by_era(registry, with_years=False)
    assert inter.item_feature_names == ()
    assert not hasattr(build_model("wide_deep", inter, **SMALL), "item_feat_w")
    assert abs(_cold_item_auc(inter, registry) - 0.5) < 0.1


def test_release_years_survive_save_load_growth_and_item_vectors(
    registry: IdRegistry, tmp_path: Path
) -> None:
    inter = _taste_by_era(registry, with_years=True)
    model = build_model("wide_deep", inter, **SMALL)
    fit(model, inter, None, TrainConfig(epochs=2, threads=1))
    model.save_artifacts(tmp_path)
    loaded = WideDeep.load_artifacts(tmp_path)
    assert loaded.config.item_features == ("decade=1970s", "decade=1990s", "year=1975", "year=1995")
    users, items = torch.as_tensor(inter.users[:50]), torch.as_tensor(inter.items[:50])
    with torch.no_grad():
        assert torch.equal(loaded.logits(users, items), model.eval().logits(users, items))
        loaded.grow(inter.n_users, inter.n_items + 3)
        assert loaded.item_feats.shape == (inter.n_items + 3, 4)
        assert torch.equal(loaded.logits(users, items), model.logits(users, items))
        # The retrieval vectors carry the year's wide weight: their dot product still ranks
        # a user's items as the wide part does.
        query = Query(users=users[:1])
        dots = loaded.user_vectors(query) @ loaded.item_vectors().T  # (1, n_items + 3)
        assert dots.shape == (1, inter.n_items + 3)
        year_w = loaded.item_feat_w(loaded.item_feats)[:, 0]
        without = dots[0] - year_w
        loaded.item_feat_w.weight.zero_()
        assert torch.allclose(loaded.user_vectors(query) @ loaded.item_vectors().T, without[None])

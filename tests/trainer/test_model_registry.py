"""The model registry on SQLite (and PostgreSQL when configured), and retrains through the id
registry: same item → same row, new items → new rows, old rows kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import Engine

from core.datasets import InteractionData, Rating
from core.errors import InvalidInput, NotFound
from core.ids import IdKind, IdRegistry
from stores.model_registry import ModelRegistry
from trainer.data import Interactions, build, pad_sequences
from trainer.doc2vec import Doc2VecConfig, Doc2VecModel
from trainer.loop import TrainConfig, fit
from trainer.models import MODELS, Query, build_model

SMALL: dict[str, dict[str, object]] = {
    "mf": {"dim": 8},
    "bpr": {"dim": 8},
    "ncf": {"gmf_dim": 8, "mlp_dim": 8, "hidden": (16, 8)},
    "wide_deep": {"dim": 8, "hidden": (16, 8)},
    "sasrec": {"dim": 16, "max_len": 10, "inner": 32},
}


def _query(model, inter: Interactions) -> Query:  # type: ignore[no-untyped-def]
    users = [0, 1, 2]
    seqs = None
    if model.sequential:
        seqs = pad_sequences([inter.items[inter.users == u] for u in users], model.config.max_len)
    return Query(torch.tensor(users), seqs)


@pytest.fixture
def models(engine: Engine, tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(engine, tmp_path / "models")


@pytest.fixture
def inter(engine: Engine, tiny_raw: InteractionData) -> Interactions:
    return build(tiny_raw, IdRegistry(engine))


def test_versions_list_activate_delete(models: ModelRegistry, inter: Interactions) -> None:
    model = build_model("bpr", inter, dim=4)
    v1 = models.register(
        "bpr", model, {"ndcg@10": 0.1}, inter.n_users, inter.n_items, {"start_ts": 1, "end_ts": 2}
    )
    v2 = models.register("bpr", model, {"ndcg@10": 0.2}, activate=True)
    assert (v1.version, v2.version) == (1, 2)
    assert v1.path == models.root / "bpr" / "v1"
    assert {p.name for p in v1.path.iterdir()} >= {
        "weights.pt",
        "config.json",
        "metrics.json",
        "meta.json",
    }
    meta = json.loads((v1.path / "meta.json").read_text())
    assert meta["n_items"] == inter.n_items and meta["data_window"] == {"start_ts": 1, "end_ts": 2}
    assert [v.version for v in models.list("bpr")] == [1, 2]
    assert models.get("bpr", 1).metrics == {"ndcg@10": 0.1}
    assert models.active("bpr").version == 2  # type: ignore[union-attr]
    models.activate("bpr", 1)
    assert models.active("bpr").version == 1  # type: ignore[union-attr]
    assert [v.active for v in models.list("bpr")] == [True, False]
    with pytest.raises(InvalidInput, match="active"):
        models.delete("bpr", 1)
    models.delete("bpr", 2)
    assert not (models.root / "bpr" / "v2").exists()
    assert models.register("bpr", model).version == 2  # numbers continue from the highest
    with pytest.raises(NotFound):
        models.get("bpr", 9)
    assert models.active("nothing") is None
    with pytest.raises(NotFound):
        models.load("nothing")


@pytest.mark.parametrize("bad", ["../x", "A", "", "a/b", "a b", "x" * 65])
def test_names_cannot_escape_the_root(models: ModelRegistry, bad: str) -> None:
    with pytest.raises(InvalidInput):
        models.version_dir(bad, 1)


@pytest.mark.parametrize("bad", [0, -1, True, "1"])
def test_versions_are_positive_ints(models: ModelRegistry, bad: object) -> None:
    with pytest.raises(InvalidInput):
        models.get("bpr", bad)  # type: ignore[arg-type]


def test_only_trainer_classes_load(models: ModelRegistry, inter: Interactions) -> None:
    version = models.register("mf", build_model("mf", inter, dim=4))
    meta_path = version.path / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["artifact_class"] = "os:system"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InvalidInput):
        models.load("mf", 1)


@pytest.mark.parametrize("name", list(MODELS))
def test_save_load_round_trip(name: str, models: ModelRegistry, inter: Interactions) -> None:
    model = build_model(name, inter, **SMALL[name])
    fit(model, inter, None, TrainConfig(epochs=1, batch_size=1024, threads=1))
    models.register(name, model, activate=True)
    loaded = models.load(name)  # rebuilt from its own files, nothing re-typed
    assert type(loaded) is type(model) and loaded.config == model.config
    query = _query(model, inter)
    with torch.no_grad():
        assert torch.equal(loaded.full_scores(query), model.eval().full_scores(query))
        assert torch.equal(loaded.item_vectors(), model.item_vectors())


def test_doc2vec_round_trip(
    models: ModelRegistry, engine: Engine, tiny_raw: InteractionData
) -> None:
    d2v = Doc2VecModel(Doc2VecConfig(vector_size=8, epochs=5)).fit(
        tiny_raw.items, IdRegistry(engine)
    )
    models.register("doc2vec", d2v, activate=True)
    loaded = models.load("doc2vec")
    assert np.array_equal(loaded.item_vectors(), d2v.item_vectors())
    assert np.array_equal(loaded.infer("an item about drama"), d2v.infer("an item about drama"))


def _ratings(pairs: list[tuple[str, str]], start: int) -> InteractionData:
    rows = [Rating(u, i, 4.0, start + n) for n, (u, i) in enumerate(pairs)]
    return InteractionData("hand", rows)


def test_retrain_with_new_items_grows_and_keeps_indices(
    engine: Engine, models: ModelRegistry
) -> None:
    ids = IdRegistry(engine)
    first = build(_ratings([(f"u{n % 5}", f"i{n % 7}") for n in range(60)], 0), ids)
    before = {name: build_model(name, first, **SMALL[name]) for name in MODELS}
    for name, model in before.items():
        fit(model, first, None, TrainConfig(epochs=1, batch_size=64, threads=1))
        models.register(
            name,
            model,
            n_users=first.n_users,
            n_items=first.n_items,
            data_window={"start_ts": first.window[0], "end_ts": first.window[1]},
            activate=True,
        )
    old_index = ids.lookup(IdKind.ITEM, [f"i{n}" for n in range(7)])

    # A later window: two new items and a new user, old items again.
    second = build(_ratings([("u9", "new1"), ("u1", "i3"), ("u2", "new2"), ("u9", "i0")], 100), ids)
    assert ids.lookup(IdKind.ITEM, list(old_index)) == old_index  # same item, same index
    assert second.n_items == first.n_items + 2
    for name in MODELS:
        model = models.load(name)
        old_rows = model.item_vectors().detach().clone()
        model.adapt(second)  # grow tables for the new ids before retraining
        assert model.item_vectors().shape[0] == second.n_items
        assert torch.equal(model.item_vectors()[: first.n_items].detach(), old_rows)
        fit(model, second, None, TrainConfig(epochs=1, batch_size=64, threads=1))
        version = models.register(name, model, n_users=second.n_users, n_items=second.n_items)
        assert version.version == 2 and version.n_items == first.n_items + 2
        assert models.load(name, 2).n_items == second.n_items

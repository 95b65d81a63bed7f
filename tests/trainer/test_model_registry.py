"""Every trainer artifact through the model registry on SQLite (and PostgreSQL when
configured): saved and rebuilt from its own files, and retrains through the id registry: same
item → same row, new items → new rows, old rows kept. The registry itself (statuses,
activation, promotion records, retention) is tested in tests/stores/test_model_registry.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import Engine

from streamrec.core.datasets import InteractionData, Rating
from streamrec.core.ids import IdKind, IdRegistry
from streamrec.stores.model_registry import ModelRegistry
from streamrec.trainer.data import Interactions, build, pad_sequences
from streamrec.trainer.doc2vec import Doc2VecConfig, Doc2VecModel
from streamrec.trainer.loop import TrainConfig, fit
from streamrec.trainer.models import MODELS, Query, build_model

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

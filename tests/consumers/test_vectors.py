"""The vectors consumer's parts: history merge, query vectors per model kind, hot swap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from consumers.vectors import LoadedModel, ModelCache, merge_history, query_vectors
from core.datasets import synthetic
from core.db import create_db_engine
from core.ids import IdRegistry
from stores.model_registry import ModelRegistry
from stores.schema import create_schema
from stores.vectors import EdgeVectorStore
from trainer.data import Interactions, build
from trainer.models import Query, build_model
from trainer.publish import item_matrix, publish_item_vectors, sql_payloads


@pytest.fixture
def inter(tmp_path: Path) -> Interactions:
    engine = create_db_engine(f"sqlite:///{tmp_path}/t.db")
    create_schema(engine)
    data = synthetic(n_users=10, n_items=12, n_events=80, n_genres=2, seed=4)
    built = build(data, IdRegistry(engine))
    engine.dispose()
    return built


def _loaded(name: str, inter: Interactions, **config: object) -> LoadedModel:
    net = build_model(name, inter, **config).eval()
    return LoadedModel(name, 1, net, item_matrix(net), f"users_{name}__v1")


def test_merge_history_appends_the_batch_and_moves_repeats_to_the_end() -> None:
    assert merge_history(["c", "b", "a"], ["d", "b"]) == ["a", "c", "d", "b"]
    assert merge_history([], ["x", "x"]) == ["x"]


def test_mf_uses_trained_rows_and_folds_in_new_users(inter: Interactions) -> None:
    model = _loaded("mf", inter, dim=4)
    new = inter.n_users + 5  # registered after training
    keep, vecs = query_vectors(model, [0, new, new + 1], [[1], [2, 3], []])
    assert keep == [0, 1]  # the new user without history gets no vector
    with torch.no_grad():
        trained = model.net.user_vectors(Query(torch.tensor([0])))
    np.testing.assert_allclose(vecs[0], trained[0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(vecs[1], model.items[[2, 3]].mean(0), rtol=1e-6)


def test_sasrec_reads_the_sequence_and_skips_empty_histories(inter: Interactions) -> None:
    model = _loaded("sasrec", inter, dim=8, max_len=5, n_heads=2, inner=16)
    keep, vecs = query_vectors(model, [0, 1, 2], [[1, 2, 3], [], [3]])
    assert keep == [0, 2]
    assert vecs.shape == (2, 8) and np.isfinite(vecs).all()
    _, again = query_vectors(model, [7], [[1, 2, 3]])  # the user index plays no part
    np.testing.assert_allclose(again[0], vecs[0], rtol=1e-5)


def test_model_cache_follows_the_published_alias(inter: Interactions, tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path}/t.db")
    ids, models = IdRegistry(engine), ModelRegistry(engine, tmp_path / "models")
    now = [0.0]
    with EdgeVectorStore(tmp_path / "qdrant") as store:
        cache = ModelCache(models, store, refresh_seconds=5.0, clock=lambda: now[0])
        assert cache.current() == ([], set())  # nothing published: nothing to do, no error
        for seed in (0, 1):
            models.register("mf", build_model("mf", inter, dim=4, seed=seed), activate=True)
        publish_item_vectors(models, store, ids, sql_payloads(engine), "mf", version=1)
        now[0] = 5.0
        loaded, changed = cache.current()
        assert changed == {"mf"} and [m.version for m in loaded] == [1]
        assert store.collection_exists("users_mf__v1")
        publish_item_vectors(models, store, ids, sql_payloads(engine), "mf", version=2)
        now[0] = 6.0
        assert [m.version for m in cache.current()[0]] == [1]  # not due for a check yet
        now[0] = 10.0
        loaded, changed = cache.current()
        assert changed == {"mf"} and [m.version for m in loaded] == [2]
        assert store.collection_exists("users_mf__v2")
    engine.dispose()

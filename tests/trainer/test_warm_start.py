"""Warm starts: a new version keeps the rows of known ids exactly, appends rows for new ones
initialised as a fresh model would, copies every other weight, and falls back to a cold start
(recorded) when the config changed."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import Engine

from streamrec.core.datasets import InteractionData
from streamrec.core.errors import InvalidInput
from streamrec.core.ids import IdRegistry
from streamrec.stores.model_registry import ModelRegistry
from streamrec.trainer.data import Interactions, build, pad_sequences, sequences
from streamrec.trainer.models import build_model
from streamrec.trainer.models.base import Query, Recommender
from streamrec.trainer.service import train_model
from streamrec.trainer.warm_start import SIZE_FIELDS, warm_start_model
from tests.trainer.conftest import tiny_data

MODELS = ("mf", "bpr", "ncf", "wide_deep", "sasrec")


def _first_part(raw: InteractionData, share: float) -> InteractionData:
    """The oldest ``share`` of the ratings, without a tenth of the users and with only the
    catalog items they mention: later data then brings both new users and new items."""
    late_users = sorted({r.user_id for r in raw.ratings})[::10]
    ratings = [
        r for r in raw.ratings[: int(len(raw.ratings) * share)] if r.user_id not in late_users
    ]
    mentioned = {r.item_id for r in ratings}
    items = {k: v for k, v in raw.items.items() if k in mentioned}
    users = {k: v for k, v in raw.users.items() if k in {r.user_id for r in ratings}}
    return InteractionData(raw.name, ratings, items, users)


@pytest.fixture
def rounds(registry: IdRegistry) -> tuple[Interactions, Interactions]:
    """Round one on the oldest 60% of the data, round two on all of it, one id registry."""
    raw = tiny_data()
    first = build(_first_part(raw, 0.6), registry)
    second = build(raw, registry)
    assert second.n_users > first.n_users and second.n_items > first.n_items
    return first, second


def _tables(model: Recommender) -> dict[str, torch.Tensor]:
    return {name: getattr(model, name).weight for name in (*model.user_tables, *model.item_tables)}


def _query(model: Recommender, inter: Interactions, n_users: int) -> Query:
    users = np.arange(n_users)
    seqs = None
    if model.sequential:
        history = sequences(inter)
        seqs = pad_sequences([history.get(int(u), np.zeros(0, np.int64)) for u in users], 50)
    return Query(torch.as_tensor(users), seqs)


@pytest.mark.parametrize("name", MODELS)
def test_known_rows_are_kept_exactly_and_new_rows_start_fresh(
    name: str, rounds: tuple[Interactions, Interactions]
) -> None:
    first, second = rounds
    previous = build_model(name, first, seed=7)  # weights no fresh seed-0 model has
    net, began = warm_start_model(name, previous, second, seed=0, from_version=1)
    kept = {k: v for k, v in asdict(previous.config).items() if k not in SIZE_FIELDS}
    fresh = build_model(name, second, seed=0, **kept)
    assert began.warm and began.from_version == 1 and began.skipped == []
    assert (began.carried_users, began.carried_items) == (first.n_users, first.n_items)
    assert began.new_users == second.n_users - first.n_users > 0
    assert began.new_items == second.n_items - first.n_items > 0
    assert (net.n_users, net.n_items) == (second.n_users, second.n_items)
    old_tables, new_tables, fresh_tables = _tables(previous), _tables(net), _tables(fresh)
    assert old_tables
    for table, old in old_tables.items():
        rows = old.shape[0]
        expected_rows = second.n_users if table in net.user_tables else second.n_items
        assert new_tables[table].shape[0] == expected_rows + (name == "sasrec")
        assert torch.equal(new_tables[table][:rows], old), table  # known ids: exactly
        assert torch.equal(new_tables[table][rows:], fresh_tables[table][rows:]), table
    old_params = dict(previous.named_parameters())
    for pname, value in net.named_parameters():
        if pname.removesuffix(".weight") not in old_tables:
            assert torch.equal(value, old_params[pname]), pname
    previous.eval()
    net.eval()
    with torch.no_grad():
        assert torch.equal(net.item_vectors()[: first.n_items], previous.item_vectors())
        query = _query(previous, first, first.n_users)
        assert torch.allclose(net.user_vectors(query), previous.user_vectors(query), atol=1e-6)


def test_a_changed_config_falls_back_to_a_cold_start(
    rounds: tuple[Interactions, Interactions],
) -> None:
    first, second = rounds
    previous = build_model("mf", first, seed=7, dim=16)  # the default is 64
    net, began = warm_start_model("mf", previous, second, seed=0, from_version=3)
    assert not began.warm and began.from_version == 3
    assert began.reason is not None and "dim 16 -> 64" in began.reason
    fresh = build_model("mf", second, seed=0)
    for (name, value), (_, expected) in zip(
        net.state_dict().items(), fresh.state_dict().items(), strict=True
    ):
        assert torch.equal(value, expected), name


def test_bpr_from_an_explicit_mf_is_a_cold_start(rounds: tuple[Interactions, Interactions]) -> None:
    first, second = rounds
    _, began = warm_start_model("bpr", build_model("mf", first), second)
    assert not began.warm and began.reason is not None and "loss 'mse' -> 'bpr'" in began.reason


def test_what_cannot_be_meant_is_refused(rounds: tuple[Interactions, Interactions]) -> None:
    first, second = rounds
    with pytest.raises(InvalidInput, match="needs a previous MF"):
        warm_start_model("mf", build_model("ncf", first), second)
    with pytest.raises(InvalidInput, match="another registry"):
        warm_start_model("mf", build_model("mf", second), first)  # more rows than the registry


def test_wide_deep_keeps_the_previous_vocabularies(
    rounds: tuple[Interactions, Interactions],
) -> None:
    first, second = rounds
    previous = build_model("wide_deep", first, seed=7)
    net, began = warm_start_model("wide_deep", previous, second)
    assert began.warm and net.config.genres == previous.config.genres
    # adapt() filled the genres of the items new since from the new data
    new_rows = net.item_genres[first.n_items :]
    assert new_rows.shape[0] > 0
    assert torch.equal(new_rows, torch.as_tensor(second.item_genres[first.n_items :]))


def test_the_service_warm_starts_from_a_registered_version(
    sqlite_engine: Engine, registry: IdRegistry, tmp_path: Path
) -> None:
    models = ModelRegistry(sqlite_engine, tmp_path / "models")
    raw = tiny_data()
    opts = {"epochs": 1, "batch_size": 512, "lr": 1e-2, "patience": 1, "seed": 0, "threads": 1}
    v1 = train_model("mf", _first_part(raw, 0.6), registry, models, "loo-full", opts)
    v2 = train_model("mf", raw, registry, models, "loo-full", opts, warm_start=v1)
    began = v2.metrics["warm_start"]
    assert began["warm"] and began["from_version"] == 1
    assert (began["carried_users"], began["carried_items"]) == (v1.n_users, v1.n_items)
    assert began["new_items"] == v2.n_items - v1.n_items > 0
    assert set(began["start"]) >= {"ndcg@10", "hr@10"}  # validation before any training
    assert [e["epoch"] for e in v2.metrics["epochs"]] == [0, 1]  # epoch 0 may stay the best
    assert models.load("mf", 2).item_emb.weight.shape[0] == v2.n_items
    cold = train_model("mf", raw, registry, models, "loo-full", opts)
    assert "warm_start" not in cold.metrics


def test_a_warm_start_of_another_model_or_of_doc2vec_is_refused(
    sqlite_engine: Engine, registry: IdRegistry, tmp_path: Path
) -> None:
    models = ModelRegistry(sqlite_engine, tmp_path / "models")
    raw = tiny_data()
    opts = {"epochs": 1, "batch_size": 512, "seed": 0, "threads": 1}
    v1 = train_model("mf", raw, registry, models, "loo-full", opts)
    with pytest.raises(InvalidInput, match="cannot warm-start ncf from mf v1"):
        train_model("ncf", raw, registry, models, "loo-full", opts, warm_start=v1)
    with pytest.raises(InvalidInput, match="doc2vec has no warm start"):
        train_model("doc2vec", raw, registry, models, "loo-full", opts, warm_start=v1)

"""Each model learns the tiny synthetic set, exposes consistent vectors and grows safely."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import InvalidInput
from trainer.data import Interactions, leave_one_out, pad_sequences
from trainer.evaluate import evaluate, evaluate_click, make_validator
from trainer.loop import TrainConfig, fit
from trainer.models import MODELS, Query, build_model

FAST: dict[str, dict[str, object]] = {
    "mf": {"dim": 16},
    "bpr": {"dim": 16},
    "ncf": {"gmf_dim": 16, "mlp_dim": 16, "hidden": (32, 16), "neg": 2},
    "wide_deep": {"dim": 16, "hidden": (32, 16), "neg": 1},
    "sasrec": {"dim": 32, "max_len": 20, "dropout": 0.2, "inner": 64},
}
TRAIN = TrainConfig(epochs=12, batch_size=256, lr=1e-2, patience=6, threads=1)


def _random_baseline(tiny: Interactions, split) -> float:  # type: ignore[no-untyped-def]
    model = build_model("bpr", tiny, dim=4)  # untrained: scores are noise
    return evaluate(model, tiny, split, "loo-full")["ndcg@10"]


# Explicit MF predicts ratings, not what a user picks next: test_explicit_mf_fits_ratings.
@pytest.mark.parametrize("name", ["bpr", "ncf", "sasrec", "wide_deep"])
def test_model_learns_far_above_random(name: str, tiny: Interactions) -> None:
    split = leave_one_out(tiny)
    model = build_model(name, tiny, **FAST[name])
    metric = "auc" if name == "wide_deep" else "ndcg@10"
    config = TrainConfig(**{**TRAIN.__dict__, "metric": metric})
    history = fit(model, tiny.subset(split.train), make_validator(model, tiny, split), config)
    result = evaluate(model, tiny, split, "loo-full")
    baseline = _random_baseline(tiny, split)
    if name == "wide_deep":  # a click model first: judge it by AUC on what it trained on
        train_auc = evaluate_click(model, tiny, split.train)["auc"]
        assert train_auc > 0.75, train_auc  # labels are noisy: rating ~ N(mean, 0.7)
    assert result["ndcg@10"] > 2.5 * baseline, (result, baseline, history.epochs[-1])


def test_explicit_mf_fits_ratings(tiny: Interactions) -> None:
    model = build_model("mf", tiny, dim=16)
    fit(model, tiny, None, TrainConfig(epochs=30, batch_size=256, lr=2e-2, threads=1, patience=30))
    with torch.no_grad():
        pred = model.predict(torch.as_tensor(tiny.users), torch.as_tensor(tiny.items))
    rmse = float(torch.sqrt(((pred - torch.as_tensor(tiny.ratings)) ** 2).mean()))
    # Predicting the mean gives RMSE = std; ratings carry N(0, 0.7) noise on top of genre taste.
    assert rmse < 0.7 * float(np.std(tiny.ratings)), rmse


def _query(model, tiny: Interactions, users: list[int]) -> Query:  # type: ignore[no-untyped-def]
    seqs = None
    if model.sequential:
        seqs = pad_sequences([tiny.items[tiny.users == u] for u in users], model.config.max_len)
    return Query(torch.tensor(users), seqs)


@pytest.mark.parametrize("name", list(MODELS))
def test_scores_are_consistent(name: str, tiny: Interactions) -> None:
    model = build_model(name, tiny, **FAST[name]).eval()
    query = _query(model, tiny, [0, 3, 5])
    with torch.no_grad():
        full = model.full_scores(query)
        cands = torch.tensor([[1, 7, 2], [0, 4, 9], [3, 3, 8]])
        assert full.shape == (3, tiny.n_items)
        assert torch.allclose(model.score(query, cands), full.gather(1, cands), atol=1e-5)
        users, items = model.user_vectors(query), model.item_vectors()
        assert users.shape[1] == items.shape[1] and items.shape[0] == tiny.n_items
        if name in ("mf", "bpr", "sasrec"):  # exact dot-product models
            offset = full - users @ items.T  # per-user constants only (MF: user bias + mean)
            assert torch.allclose(offset, offset[:, :1].expand_as(offset), atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_grow_appends_rows_and_keeps_old_ones(name: str, tiny: Interactions) -> None:
    model = build_model(name, tiny, **FAST[name]).eval()
    before_items = model.item_vectors().detach().clone()
    query = _query(model, tiny, [0, 1])
    with torch.no_grad():
        before = model.full_scores(query)
    model.grow(tiny.n_users + 3, tiny.n_items + 5)
    assert model.n_items == tiny.n_items + 5 and model.config.n_users == tiny.n_users + 3
    after_items = model.item_vectors().detach()
    assert after_items.shape[0] == tiny.n_items + 5
    assert torch.equal(after_items[: tiny.n_items], before_items)
    with torch.no_grad():
        after = model.full_scores(query)
    assert torch.allclose(after[:, : tiny.n_items], before, atol=1e-5)
    with pytest.raises(InvalidInput):
        model.grow(1, 1)


def test_sasrec_is_causal(tiny: Interactions) -> None:
    model = build_model("sasrec", tiny, **FAST["sasrec"]).eval()
    seqs = torch.tensor([[1, 2, 3, 4, 5, 6]])
    changed = seqs.clone()
    changed[0, -1] = 9
    with torch.no_grad():
        a, b = model.hidden(seqs), model.hidden(changed)
    assert torch.allclose(a[:, :-1], b[:, :-1], atol=1e-6)  # the past ignores the future
    assert not torch.allclose(a[:, -1], b[:, -1])


def test_sasrec_user_vector_ignores_padding_width(tiny: Interactions) -> None:
    model = build_model("sasrec", tiny, **FAST["sasrec"]).eval()
    short = torch.tensor([[0, 0, 3, 4, 5]])
    wide = torch.tensor([[0, 0, 0, 0, 3, 4, 5]])
    with torch.no_grad():
        a = model.user_vectors(Query(torch.tensor([0]), short))
        b = model.user_vectors(Query(torch.tensor([0]), wide))
    assert torch.allclose(a, b, atol=1e-6)


def test_sasrec_needs_a_sequence(tiny: Interactions) -> None:
    model = build_model("sasrec", tiny, **FAST["sasrec"])
    with pytest.raises(InvalidInput):
        model.user_vectors(Query(torch.tensor([0])))


def test_unknown_model_is_refused(tiny: Interactions) -> None:
    with pytest.raises(InvalidInput):
        build_model("nope", tiny)


@pytest.mark.movielens
def test_bpr_learns_movielens_100k(ml100k_path, registry) -> None:  # type: ignore[no-untyped-def]
    from core.datasets import load_movielens
    from trainer.data import build, random_split

    inter = build(load_movielens(ml100k_path), registry)
    split = random_split(inter)
    model = build_model("bpr", inter, dim=32)
    fit(model, inter.subset(split.train), None, TrainConfig(epochs=3, lr=5e-3, threads=1))
    result = evaluate(model, inter, split, "random-split")
    assert result["ndcg@10"] > 0.1, result  # random ranking gives about 0.006

"""Each model learns the tiny synthetic set, exposes consistent vectors and grows safely."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from streamrec.core.datasets import InteractionData, Rating
from streamrec.core.errors import InvalidInput
from streamrec.core.ids import IdRegistry
from streamrec.trainer.data import Interactions, build, leave_one_out, pad_sequences
from streamrec.trainer.evaluate import evaluate, evaluate_click, make_validator
from streamrec.trainer.loop import TrainConfig, fit
from streamrec.trainer.models import MODELS, Query, build_model
from streamrec.trainer.models.base import CONFIG_FILE
from streamrec.trainer.models.sasrec import SASRec

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


def _in_recent_items(query: Query, max_len: int, n_items: int) -> torch.Tensor:
    """(B, n_items) 1.0 where the item is among the query's last max_len items."""
    assert query.seqs is not None
    mask = torch.zeros(len(query.seqs), n_items)
    for row, seq in enumerate(query.seqs[:, -max_len:].tolist()):
        for item in seq:
            if item > 0:
                mask[row, item - 1] = 1.0
    return mask


@pytest.mark.parametrize("name", list(MODELS))
def test_scores_are_consistent(name: str, tiny: Interactions) -> None:
    model = build_model(name, tiny, **FAST[name]).eval()
    query = _query(model, tiny, [0, 3, 5])
    repeat = getattr(model, "repeat_w", None)  # SASRec's learned score for items in the input
    with torch.no_grad():
        if repeat is not None:
            repeat.fill_(-2.0)  # starts at 0, which would hide a missing or misplaced offset
        full = model.full_scores(query)
        cands = torch.tensor([[1, 7, 2], [0, 4, 9], [3, 3, 8]])
        assert full.shape == (3, tiny.n_items)
        assert torch.allclose(model.score(query, cands), full.gather(1, cands), atol=1e-5)
        users, items = model.user_vectors(query), model.item_vectors()
        assert users.shape[1] == items.shape[1] and items.shape[0] == tiny.n_items
        if name in ("mf", "bpr", "sasrec"):  # exact dot-product models
            offset = full - users @ items.T  # per-user constants only (MF: user bias + mean)
            if repeat is not None:
                offset -= -2.0 * _in_recent_items(query, model.config.max_len, tiny.n_items)
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


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_sasrec_serving_vectors_equal_the_full_forward(tiny: Interactions, n_layers: int) -> None:
    """Inference computes the top block for the last position only: the same vectors."""
    model = build_model("sasrec", tiny, **(FAST["sasrec"] | {"n_layers": n_layers})).eval()
    generator = torch.Generator().manual_seed(n_layers)
    seqs = torch.randint(1, tiny.n_items + 1, (6, 20), generator=generator)
    for row, width in enumerate([0, 1, 3, 19]):  # left-padded: the newest item comes last
        seqs[row, : 20 - width] = 0
    query = Query(torch.zeros(6, dtype=torch.long), seqs)
    with torch.no_grad():
        served = model.user_vectors(query)
        aligned, lengths = model.right_align(seqs)
        full = model.hidden(aligned)[torch.arange(6), (lengths - 1).clamp(min=0)]
    assert served.shape == (6, model.config.dim)
    assert torch.allclose(served, full, atol=1e-5)
    assert not served[0].any()  # no items: no vector


def _sequences_data(repeat: bool, seed: int = 0) -> InteractionData:
    """60 users x 30 events over 80 items: each user either picks from a personal pool of 4
    items again and again (``repeat``) or never picks the same item twice."""
    rng = np.random.default_rng(seed)
    ratings = []
    for user in range(60):
        pool = rng.choice(80, size=4, replace=False)
        items = rng.choice(pool, size=30) if repeat else rng.choice(80, size=30, replace=False)
        ratings += [
            Rating(f"u{user}", f"i{item}", 4.0, 1000 * user + t) for t, item in enumerate(items)
        ]
    ratings.sort(key=lambda r: r.ts)
    return InteractionData(name="repeat" if repeat else "explore", ratings=ratings)


@pytest.mark.parametrize("repeat", [True, False])
def test_sasrec_learns_whether_users_repeat(repeat: bool, registry: IdRegistry) -> None:
    inter = build(_sequences_data(repeat), registry)
    model = build_model("sasrec", inter, **FAST["sasrec"])
    assert model.config.repeat_score  # on by default
    # 32 Adam steps of 1e-2: the offset moves at most 0.32, every step the same way if the
    # data say so consistently.
    fit(model, inter, None, TrainConfig(epochs=4, batch_size=16, lr=1e-2, threads=1))
    learned = float(model.repeat_w.detach())
    assert (learned > 0.15) if repeat else (learned < -0.15), learned


def test_sasrec_checkpoint_without_repeat_score_loads_plain(
    tiny: Interactions, tmp_path: Path
) -> None:
    model = build_model("sasrec", tiny, **{**FAST["sasrec"], "repeat_score": False}).eval()
    model.save_artifacts(tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    del config["repeat_score"]  # as written before the option existed
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    loaded = SASRec.load_artifacts(tmp_path)
    assert not loaded.config.repeat_score and not hasattr(loaded, "repeat_w")
    query = _query(model, tiny, [0, 1])
    with torch.no_grad():
        assert torch.equal(loaded.full_scores(query), model.full_scores(query))


def test_sasrec_needs_a_sequence(tiny: Interactions) -> None:
    model = build_model("sasrec", tiny, **FAST["sasrec"])
    with pytest.raises(InvalidInput):
        model.user_vectors(Query(torch.tensor([0])))


def test_unknown_model_is_refused(tiny: Interactions) -> None:
    with pytest.raises(InvalidInput):
        build_model("nope", tiny)


@pytest.mark.movielens
def test_bpr_learns_movielens_100k(ml100k_path, registry) -> None:  # type: ignore[no-untyped-def]
    from streamrec.core.datasets import load_movielens
    from streamrec.trainer.data import build, random_split

    inter = build(load_movielens(ml100k_path), registry)
    split = random_split(inter)
    model = build_model("bpr", inter, dim=32)
    fit(model, inter.subset(split.train), None, TrainConfig(epochs=3, lr=5e-3, threads=1))
    result = evaluate(model, inter, split, "random-split")
    assert result["ndcg@10"] > 0.1, result  # random ranking gives about 0.006

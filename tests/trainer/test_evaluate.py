"""Every metric and protocol against values worked out by hand."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import Tensor

from streamrec.core.errors import InvalidInput
from streamrec.trainer.data import Interactions, leave_one_out, random_split
from streamrec.trainer.evaluate import (
    auc,
    evaluate,
    log_loss,
    rank_hits,
    ranking_metrics,
    topk_hits,
)
from streamrec.trainer.models.base import Query, Recommender


def _metrics(hits: list[list[bool]], n_pos: list[int], k: int) -> dict[str, list[float]]:
    out = ranking_metrics(torch.tensor(hits), torch.tensor(n_pos), k)
    return {key: [round(v, 6) for v in value.tolist()] for key, value in out.items()}


def test_single_positive_at_rank_three() -> None:
    m = _metrics([[False, False, True, False]], [1], k=4)
    assert m == {"hr@4": [1.0], "recall@4": [1.0], "ndcg@4": [0.5], "mrr@4": [round(1 / 3, 6)]}


def test_positive_outside_the_cutoff_scores_zero() -> None:
    m = _metrics([[False, False, True]], [1], k=2)
    assert m == {"hr@2": [0.0], "recall@2": [0.0], "ndcg@2": [0.0], "mrr@2": [0.0]}


def test_several_positives() -> None:
    # 3 positives, hits at ranks 1 and 4 of the top 5.
    m = _metrics([[True, False, False, True, False]], [3], k=5)
    dcg = 1 + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["hr@5"] == [1.0]
    assert m["recall@5"] == [round(2 / 3, 6)]
    assert m["ndcg@5"] == [round(dcg / idcg, 6)]
    assert m["mrr@5"] == [1.0]


def test_ideal_dcg_is_capped_at_k() -> None:
    m = _metrics([[True, True]], [5], k=2)  # more positives than slots: perfect top-2
    assert m["ndcg@2"] == [1.0]
    assert m["recall@2"] == [0.4]


def test_topk_hits_and_ranks() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3]])
    positives = torch.tensor([[False, False, True, True]])
    assert topk_hits(scores, positives, 3).tolist() == [[False, True, True]]
    # one target against candidates; ties count against the target
    hits = rank_hits(torch.tensor([0.5, 0.5]), torch.tensor([[0.9, 0.1], [0.5, 0.1]]), 3)
    assert hits.tolist() == [[False, True, False], [False, True, False]]


def test_auc_and_log_loss() -> None:
    labels = np.array([1, 0, 1, 0])
    assert auc(labels, np.array([0.9, 0.1, 0.4, 0.5])) == pytest.approx(0.75)
    assert auc(labels, np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.5)  # ties: half
    assert auc(labels, np.array([1.0, 0.0, 1.0, 0.0])) == pytest.approx(1.0)
    expected = -(math.log(0.8) + math.log(0.8) + math.log(0.5) + math.log(0.5)) / 4
    assert log_loss(labels, np.array([0.8, 0.2, 0.5, 0.5])) == pytest.approx(expected)
    with pytest.raises(InvalidInput):
        auc(np.array([1, 1]), np.array([0.1, 0.2]))


@dataclass(frozen=True)
class _Cfg:
    n_users: int
    n_items: int


class FixedScores(Recommender):
    """Scores from a fixed (n_users, n_items) matrix: the ranking is known in advance."""

    input_kind = "ratings"

    def __init__(self, scores: Tensor) -> None:
        super().__init__(_Cfg(*scores.shape))
        self.register_buffer("table", scores)

    def full_scores(self, query: Query) -> Tensor:
        return self.table[query.users]


def _inter(users: list[int], items: list[int], n_items: int) -> Interactions:
    n = len(users)
    return Interactions(
        users=np.array(users),
        items=np.array(items),
        ratings=np.full(n, 4.0, np.float32),
        ts=np.arange(n),
        n_users=max(users) + 1,
        n_items=n_items,
        genres=(),
        item_genres=np.zeros((n_items, 0), np.float32),
    )


# Items are scored by index descending (item 5 best). User 0: history 5, 4, then valid 1, test 2.
# User 1: history 3, 0, valid 5, test 4.
SCORES = torch.tensor([[0.0, 1, 2, 3, 4, 5], [0.0, 1, 2, 3, 4, 5]])
DATA = _inter([0, 0, 1, 1, 0, 1, 0, 1], [5, 4, 3, 0, 1, 5, 2, 4], n_items=6)


def test_loo_full_ranking_with_seen_items_hidden() -> None:
    split = leave_one_out(DATA)
    m = evaluate(FixedScores(SCORES), DATA, split, "loo-full", k=2)
    # user 0: 5, 4, 1 hidden → ranking 3, 2: target 2 at rank 2. user 1: 3, 0, 5 hidden →
    # ranking 4, 2: target 4 at rank 1.
    assert m["hr@2"] == pytest.approx(1.0)
    assert m["ndcg@2"] == pytest.approx((1 / math.log2(3) + 1) / 2)
    assert m["mrr@2"] == pytest.approx((0.5 + 1) / 2)


def test_loo_full_ranking_without_hiding() -> None:
    split = leave_one_out(DATA)
    m = evaluate(FixedScores(SCORES), DATA, split, "loo-full", k=2, exclude_seen=False)
    # user 0: ranking 5, 4 → miss; user 1: ranking 5, 4 → target 4 at rank 2.
    assert m["hr@2"] == pytest.approx(0.5)
    assert m["mrr@2"] == pytest.approx(0.25)


def test_loo_valid_part() -> None:
    split = leave_one_out(DATA)
    m = evaluate(FixedScores(SCORES), DATA, split, "loo-full", k=3, part="valid")
    # user 0 (5, 4 hidden): ranking 3, 2, 1 → valid 1 at rank 3. user 1 (3, 0 hidden):
    # ranking 5, 4, 2 → valid 5 at rank 1.
    assert m["mrr@3"] == pytest.approx((1 / 3 + 1) / 2)


def test_loo_sampled_ranks_among_unseen_items() -> None:
    split = leave_one_out(DATA)
    m = evaluate(FixedScores(SCORES), DATA, split, "loo-sampled", k=10)
    # user 0 touched 5, 4, 1, 2: negatives come from {0, 3}, target 2 beats 0 but not 3 → rank 2
    # (the pool has fewer than 100 items, so all of it is used).
    # user 1 touched 3, 0, 5, 4: negatives from {1, 2}, target 4 beats both → rank 1.
    assert m["hr@10"] == pytest.approx(1.0)
    assert m["mrr@10"] == pytest.approx((0.5 + 1) / 2)


def test_random_split_protocol_multiple_positives() -> None:
    users = [0] * 10
    items = list(range(10))
    data = _inter(users, items, n_items=10)
    split = random_split(data, seed=3)
    scores = torch.arange(10, dtype=torch.float32)[None, :]
    m = evaluate(FixedScores(scores), data, split, "random-split", k=10)
    test_items = sorted(data.items[split.test].tolist())
    seen = set(data.items[np.concatenate([split.train, split.valid])].tolist())
    ranking = [i for i in range(9, -1, -1) if i not in seen or i in test_items]
    first = ranking.index(max(test_items)) + 1
    assert m["hr@10"] == 1.0 and m["recall@10"] == 1.0
    assert m["mrr@10"] == pytest.approx(1 / first)


def test_unknown_protocol_is_refused() -> None:
    with pytest.raises(InvalidInput):
        evaluate(FixedScores(SCORES), DATA, leave_one_out(DATA), "nope")

"""Offline evaluation with the protocols published results use.

* ``loo-full``: time-ordered leave-one-out (last item → test, second last → valid), ranking
  every item.
* ``loo-sampled``: the same targets ranked against 100 sampled items the user never touched
  (the NCF and SASRec papers' protocol).
* ``random-split``: RecBole's default for general models: each user's interactions shuffled
  and split 80/10/10, full ranking, items seen in earlier parts hidden, every held-out
  interaction a positive.

Metrics follow RecBole's definitions: HR@K (any positive in the top K), Recall@K, NDCG@K
(ideal DCG over min(#positives, K)), MRR@K (reciprocal rank of the first hit). AUC and log
loss judge Wide & Deep as a click model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from streamrec.core.errors import InvalidInput
from streamrec.trainer.data import (
    EvalSet,
    Interactions,
    Split,
    eval_set,
    leave_one_out,
    pad_sequences,
)
from streamrec.trainer.data import random_split as _random_split
from streamrec.trainer.models.base import Query, Recommender

PROTOCOLS = ("loo-full", "loo-sampled", "random-split")
RANKING_METRICS = ("hr", "recall", "ndcg", "mrr")


# --- metrics on hit matrices ------------------------------------------------------------------


def ranking_metrics(hits: Tensor, n_pos: Tensor, k: int = 10) -> dict[str, Tensor]:
    """Per-user metrics from ``hits`` (U, >=k) bool: is the item at rank r a positive;
    ``n_pos`` (U,) positives per user. Returns (U,) tensors keyed ``hr@k`` etc."""
    hits = hits[:, :k].float()  # (U, k)
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float32))  # (k,)
    dcg = (hits * discount).sum(1)
    ideal = torch.cumsum(discount, 0)[(n_pos.clamp(min=1, max=k) - 1).long()]
    first = torch.where(hits.any(1), hits.argmax(1).float() + 1, torch.inf)
    return {
        f"hr@{k}": hits.any(1).float(),
        f"recall@{k}": hits.sum(1) / n_pos.clamp(min=1).float(),
        f"ndcg@{k}": dcg / ideal,
        f"mrr@{k}": 1.0 / first,
    }


def topk_hits(scores: Tensor, positives: Tensor, k: int) -> Tensor:
    """(U, k) bool: whether each of the top-k scored items is a positive."""
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices  # (U, k)
    return positives.gather(1, top)


def rank_hits(target_scores: Tensor, other_scores: Tensor, k: int) -> Tensor:
    """(U, k) hit rows for one target per user ranked against ``other_scores`` (U, C).

    Ties count against the target, so a model that scores everything alike gets no credit.
    """
    rank = (other_scores >= target_scores[:, None]).sum(1)  # (U,) 0-based rank
    return torch.arange(k)[None, :] == rank[:, None]


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties get half credit via average ranks)."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise InvalidInput("AUC needs at least one positive and one negative label")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = np.asarray(scores)[order]
    # Average rank within groups of equal scores.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


# --- protocols --------------------------------------------------------------------------------


def protocol_split(
    inter: Interactions, protocol: str, seed: int = 2020, click: bool = False
) -> Split:
    """The split a protocol uses. ``click``: random-split cuts all interactions 80/10/10
    instead of each user's, as RecBole does for context-aware (click) models."""
    if protocol not in PROTOCOLS:
        raise InvalidInput(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if protocol.startswith("loo"):
        return leave_one_out(inter)
    return _random_split(inter, seed=seed, by_user=not click)


def _query(model: Recommender, users: np.ndarray, history: list[np.ndarray]) -> Query:
    seqs = pad_sequences(history, model.config.max_len) if model.sequential else None
    return Query(torch.as_tensor(users, dtype=torch.long), seqs)


def _rows_mask(rows: list[np.ndarray], n_items: int) -> Tensor:
    mask = torch.zeros((len(rows), n_items), dtype=torch.bool)
    for r, items in enumerate(rows):
        mask[r, torch.as_tensor(items, dtype=torch.long)] = True
    return mask


@torch.no_grad()
def evaluate_full(
    model: Recommender, es: EvalSet, k: int = 10, exclude_seen: bool = True, chunk: int = 256
) -> dict[str, float]:
    """Rank every item; hide ``es.seen`` (never the targets) when ``exclude_seen``."""
    per_user = full_ranking_per_user(model, es, k, exclude_seen, chunk)
    return {
        key: float(values.double().mean()) if len(values) else 0.0
        for key, values in per_user.items()
    }


@torch.no_grad()
def full_ranking_per_user(
    model: Recommender, es: EvalSet, k: int = 10, exclude_seen: bool = True, chunk: int = 256
) -> dict[str, Tensor]:
    """``evaluate_full``'s metrics per user: (U,) tensors in ``es.users`` order (a paired
    comparison of two versions needs them, not only their means)."""
    model.eval()
    parts: dict[str, list[Tensor]] = {}
    for start in range(0, len(es.users), chunk):
        part = slice(start, start + chunk)
        scores = model.full_scores(_query(model, es.users[part], es.history[part]))  # (U, N)
        positives = _rows_mask(es.targets[part], model.n_items)
        if exclude_seen:
            hide = _rows_mask(es.seen[part], model.n_items) & ~positives
            scores = scores.masked_fill(hide, -torch.inf)
        n_pos = positives.sum(1)
        for key, values in ranking_metrics(topk_hits(scores, positives, k), n_pos, k).items():
            parts.setdefault(key, []).append(values)
    names = ranking_metrics(torch.zeros(0, k, dtype=torch.bool), torch.zeros(0), k)
    return {key: torch.cat(parts[key]) if key in parts else torch.zeros(0) for key in names}


@torch.no_grad()
def evaluate_sampled(
    model: Recommender,
    es: EvalSet,
    user_items: dict[int, np.ndarray],
    n_negatives: int = 100,
    k: int = 10,
    seed: int = 0,
    chunk: int = 256,
) -> dict[str, float]:
    """Each user's (first) target against ``n_negatives`` items they never interacted with."""
    model.eval()
    rng = np.random.default_rng(seed)
    negatives = np.stack(
        [
            _sample_unseen(
                rng, model.n_items, user_items.get(int(u), np.zeros(0, np.int64)), n_negatives
            )
            for u in es.users
        ]
    )
    targets = np.array([t[0] for t in es.targets], dtype=np.int64)
    totals: dict[str, float] = {}
    for start in range(0, len(es.users), chunk):
        part = slice(start, start + chunk)
        query = _query(model, es.users[part], es.history[part])
        cands = torch.as_tensor(np.column_stack([targets[part], negatives[part]]))  # (U, 1+n)
        scores = model.score(query, cands.clamp(min=0))
        scores = scores.masked_fill(cands < 0, -torch.inf)  # padding when the pool was small
        hits = rank_hits(scores[:, 0], scores[:, 1:], k)
        _accumulate(totals, ranking_metrics(hits, torch.ones(len(hits)), k))
    return _means(totals, len(es.users))


def _sample_unseen(rng: np.random.Generator, n_items: int, seen: np.ndarray, n: int) -> np.ndarray:
    """``n`` distinct items outside ``seen``; fewer exist → all of them, padded with -1."""
    pool = np.setdiff1d(np.arange(n_items), seen, assume_unique=False)
    if len(pool) == 0:
        raise InvalidInput("a user has interacted with every item; no negatives to sample")
    chosen = rng.choice(pool, size=min(n, len(pool)), replace=False)
    return np.concatenate([chosen, np.full(n - len(chosen), -1, dtype=np.int64)])


@torch.no_grad()
def evaluate_click(
    model: Recommender, inter: Interactions, rows: np.ndarray, threshold: float = 4.0
) -> dict[str, float]:
    """AUC and log loss of P(rating >= threshold) on interaction ``rows``."""
    model.eval()
    users = torch.as_tensor(inter.users[rows])
    items = torch.as_tensor(inter.items[rows])
    logits = torch.cat(
        [
            model.logits(users[s : s + 8192], items[s : s + 8192])  # type: ignore[operator]
            for s in range(0, len(users), 8192)
        ]
    )
    labels = (inter.ratings[rows] >= threshold).astype(np.float32)
    probs = torch.sigmoid(logits).numpy()
    return {"auc": auc(labels, probs), "logloss": log_loss(labels, probs)}


def _accumulate(totals: dict[str, float], per_user: dict[str, Tensor]) -> None:
    for key, values in per_user.items():
        totals[key] = totals.get(key, 0.0) + float(values.sum())


def _means(totals: dict[str, float], n: int) -> dict[str, float]:
    return {key: value / max(n, 1) for key, value in totals.items()}


def user_items(inter: Interactions) -> dict[int, np.ndarray]:
    """Every item each user interacted with anywhere in ``inter`` (sampled negatives avoid them)."""
    order = np.argsort(inter.users, kind="stable")
    bounds = np.flatnonzero(np.diff(inter.users[order])) + 1
    return {int(inter.users[g[0]]): np.unique(inter.items[g]) for g in np.split(order, bounds)}


def is_click_model(model: Recommender) -> bool:
    return hasattr(model, "logits") and hasattr(model.config, "label_threshold")


def make_validator(
    model: Recommender,
    inter: Interactions,
    split: Split,
    protocol: str = "loo-full",
    k: int = 10,
    exclude_seen: bool = True,
) -> Callable[[Recommender], dict[str, float]]:
    """The metric function the training loop calls after each epoch (on the valid part).

    Click models are validated on AUC and log loss only: ranking every item through their MLP
    each epoch would cost more than the epoch itself.
    """
    if is_click_model(model):
        threshold = float(model.config.label_threshold)
        return lambda m: evaluate_click(m, inter, split.valid, threshold)
    return _evaluator(model, inter, split, "valid", protocol, k, exclude_seen)


def evaluate(
    model: Recommender,
    inter: Interactions,
    split: Split,
    protocol: str = "loo-full",
    k: int = 10,
    exclude_seen: bool = True,
    part: str = "test",
) -> dict[str, float]:
    """Metrics of ``model`` on ``part`` of ``split`` under ``protocol``."""
    return _evaluator(model, inter, split, part, protocol, k, exclude_seen)(model)


def _evaluator(
    model: Recommender,
    inter: Interactions,
    split: Split,
    part: str,
    protocol: str,
    k: int,
    exclude_seen: bool,
) -> Callable[[Recommender], dict[str, float]]:
    if protocol not in PROTOCOLS:
        raise InvalidInput(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    rows = split.valid if part == "valid" else split.test
    es = eval_set(inter, split, part)
    if is_click_model(model):
        threshold = float(model.config.label_threshold)
        return lambda m: {
            **evaluate_click(m, inter, rows, threshold),
            **evaluate_full(m, es, k, exclude_seen),
        }
    if protocol == "loo-sampled":
        seen_all = user_items(inter)
        return lambda m: evaluate_sampled(m, es, seen_all, k=k)
    return lambda m: evaluate_full(m, es, k, exclude_seen)

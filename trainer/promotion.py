"""Guarded promotion: a new version goes live only if it is not worse than the live one.

The candidate and the live version are scored on the same held-out slice, the newest events
(``newest_split``; the candidate is trained on the rest), on their model's metric: NDCG@10
over full ranking for retrieval models, AUC of the click label for Wide & Deep
(``promotion_metric``). ``decide`` is the pure rule: the candidate is promoted when no version
is live, or when its score is at least ``live score x (1 - tolerance)``: the tolerance is
relative (``STREAMREC_RETRAIN_PROMOTION_TOLERANCE``, 0.02), because the two metrics differ in
scale. ``promote_or_reject`` records the decision in the registry and applies it: the
candidate goes live, or stays registered as rejected with both scores and the reason while the
live version keeps serving.

The live version was trained on older data. If the held-out slice reaches back before the
candidate's new events, the live version may have trained on part of it: the comparison then
favours the live version, so such a slice errs on the side of keeping it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from streamrec.core.errors import InvalidInput
from streamrec.schemas.api import PromotionDecision
from streamrec.stores.model_registry import ModelRegistry, ModelVersion, Promotion
from streamrec.trainer.data import Interactions, Split, eval_set
from streamrec.trainer.evaluate import evaluate_click, evaluate_full, is_click_model
from streamrec.trainer.models.base import Recommender

K = 10
NDCG = f"ndcg@{K}"
AUC = "auc"
_ADAPT_SEED = 0  # rows for ids a version has not seen start the same way every time


@dataclass(frozen=True)
class HoldoutScores:
    """A candidate's and the live version's scores on the same held-out events."""

    metric: str
    candidate: float
    live: float | None  # None: no version was live
    live_version: int | None
    events: int  # held-out interactions both were scored on


def promotion_metric(model: Recommender) -> str:
    """``auc`` for a click model (Wide & Deep), ``ndcg@10`` for the retrieval models."""
    return AUC if is_click_model(model) else NDCG


def newest_split(inter: Interactions, n_events: int) -> Split:
    """The newest ``n_events`` interactions (by event time) as the held-out slice (``test``),
    every older one as ``train``; ``valid`` is empty."""
    if isinstance(n_events, bool) or not 0 < n_events < len(inter):
        raise InvalidInput(
            f"a held-out slice needs 1 to {len(inter) - 1} of the {len(inter)} interactions, "
            f"not {n_events!r}"
        )
    order = np.argsort(inter.ts, kind="stable")
    return Split(
        train=np.sort(order[:-n_events]),
        valid=np.zeros(0, dtype=np.int64),
        test=np.sort(order[-n_events:]),
    )


@torch.no_grad()
def score_on_holdout(
    model: Recommender, inter: Interactions, split: Split, exclude_seen: bool = True
) -> float:
    """``model``'s promotion metric on ``split.test`` (the held-out events), each user's
    ``split.train`` events being their history (the input of sequential models, and hidden
    from the ranking when ``exclude_seen``, as serving does).

    The model first grows to ``inter``'s id-registry sizes (``adapt``, as ``streamrec eval``
    does): ids registered after it was trained get fresh rows, seeded so that scoring the same
    version twice gives the same number. A model already that size is not changed.
    """
    if len(split.test) == 0:
        raise InvalidInput("the held-out slice is empty: there is nothing to score")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_ADAPT_SEED)
        model.adapt(inter)
    if is_click_model(model):
        threshold = float(model.config.label_threshold)
        return evaluate_click(model, inter, split.test, threshold)[AUC]
    return evaluate_full(model, eval_set(inter, split, "test"), K, exclude_seen)[NDCG]


def compare_on_holdout(
    candidate: Recommender,
    live: Recommender | None,
    live_version: int | None,
    inter: Interactions,
    split: Split,
) -> HoldoutScores:
    """Score ``candidate`` and ``live`` (None: no version is live) on the same events."""
    if (live is None) != (live_version is None):
        raise InvalidInput("give the live model together with its version number, or neither")
    metric = promotion_metric(candidate)
    if live is not None and promotion_metric(live) != metric:
        raise InvalidInput(f"the live model is not judged on {metric}: a different kind of model")
    return HoldoutScores(
        metric=metric,
        candidate=score_on_holdout(candidate, inter, split),
        live=score_on_holdout(live, inter, split) if live is not None else None,
        live_version=live_version,
        events=len(split.test),
    )


def decide(scores: HoldoutScores, tolerance: float) -> Promotion:
    """Promote or reject, with the reason in words. Pure: same scores, same decision.

    Promote when no version is live, when the live score is not a number, or when the
    candidate's score is at least ``live x (1 - tolerance)``; reject a candidate whose score is
    not a number, or that is worse than that.
    """
    if isinstance(tolerance, bool) or not 0 <= tolerance < 1:
        raise InvalidInput(f"the promotion tolerance must be in [0, 1), got {tolerance!r}")
    metric, cand, live, events = scores.metric, scores.candidate, scores.live, scores.events
    on = f"on {events:,} held-out events"
    live_name = f"live v{scores.live_version}"
    if not math.isfinite(cand):
        return _record(scores, tolerance, "reject", f"the candidate's {metric} {on} is {cand}")
    if scores.live_version is None:
        reason = f"no version is live: the candidate goes live ({metric} {cand:.4f} {on})"
        return _record(scores, tolerance, "promote", reason)
    if live is None or not math.isfinite(live):
        reason = f"{live_name}'s {metric} {on} is {live}: the candidate ({cand:.4f}) goes live"
        return _record(scores, tolerance, "promote", reason)
    floor = live * (1 - tolerance)
    change = f"{(cand - live) / live:+.1%}" if live > 0 else f"{cand - live:+.4f}"
    compared = f"{metric} {cand:.4f} against {live:.4f} for {live_name} ({change}) {on}"
    if cand >= floor or math.isclose(cand, floor, rel_tol=1e-9):  # exactly at it: not worse
        reason = f"{compared}: within the {tolerance:.1%} tolerance, the candidate goes live"
        return _record(scores, tolerance, "promote", reason)
    reason = (
        f"{compared}: worse than the {tolerance:.1%} tolerance allows (at least {floor:.4f}); "
        f"{live_name} keeps serving"
    )
    return _record(scores, tolerance, "reject", reason)


def _record(
    scores: HoldoutScores, tolerance: float, decision: PromotionDecision, reason: str
) -> Promotion:
    return Promotion(
        metric=scores.metric,
        candidate_score=scores.candidate,
        live_score=scores.live,
        live_version=scores.live_version,
        tolerance=tolerance,
        decision=decision,
        reason=reason,
        heldout_events=scores.events,
    )


def promote_or_reject(
    registry: ModelRegistry, name: str, version: int, scores: HoldoutScores, tolerance: float
) -> ModelVersion:
    """Decide on candidate ``version`` of ``name`` and record it: it goes live, or it is
    rejected and the live version keeps serving. The registry refuses (``StateConflict``) when
    the live version changed since ``scores`` were taken.

    When going live needs work first (publishing the candidate's vectors before its alias
    swaps), call ``decide``, do that work if it says promote, then
    ``registry.record_promotion`` with its record: the version goes live only then."""
    return registry.record_promotion(name, version, decide(scores, tolerance))

"""Guarded promotion: a new version goes live only if it is not worse than the live one.

The candidate and the live version are scored on the same held-out slice, the newest events
(``newest_split``; the candidate is trained on the rest), on their model's metric: NDCG@10
over full ranking for retrieval models, AUC of the click label for Wide & Deep
(``promotion_metric``). ``decide`` is the pure rule: the candidate is promoted when no version
is live, or when its score is at least ``live score x (1 - tolerance)``: the tolerance is
relative (``STREAMREC_RETRAIN_PROMOTION_TOLERANCE``, 0.02), because the two metrics differ in
scale.

A held-out slice of a few hundred events measures NDCG@10 with a standard error of 10-30% of
its value, far above a 2% tolerance: compared bare, two equally good versions would reject each
other about half the time (measured: 2 of 3 MF rounds rejected in a 4,000-rating replay), and
every rejection costs the stream a round of freshness. So NDCG@10 is compared per user, paired
(both versions rank the same users' held-out items), and the candidate is rejected only when it
is worse than the tolerance allows by more than ``confidence`` standard errors of that paired
difference (``STREAMREC_RETRAIN_PROMOTION_CONFIDENCE``, 1.64: one-sided 95%; 0 is the bare
comparison). A broken candidate is still rejected at once (its deficit is many standard errors);
a candidate within noise of the live version goes live. AUC has no per-user pairing here and is
compared bare. ``promote_or_reject`` records the decision in the registry and applies it: the
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
from streamrec.trainer.evaluate import evaluate_click, full_ranking_per_user, is_click_model
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
    # The standard error of the paired per-user difference (candidate - live) of the metric;
    # None when there is no pairing (no live version, AUC, fewer than two users).
    difference_se: float | None = None


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
    """``model``'s promotion metric on ``split.test``: ``score_per_user``'s mean, or AUC."""
    score = score_per_user(model, inter, split, exclude_seen)
    return score if isinstance(score, float) else float(score.mean()) if len(score) else 0.0


@torch.no_grad()
def score_per_user(
    model: Recommender, inter: Interactions, split: Split, exclude_seen: bool = True
) -> float | np.ndarray:
    """``model``'s promotion metric on ``split.test`` (the held-out events): (U,) NDCG@10 per
    user of the slice (float64, in ``eval_set`` order), or AUC (a float: no per-user value).
    Each user's ``split.train`` events are their history (the input of sequential models, and
    hidden from the ranking when ``exclude_seen``, as serving does).

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
    per_user = full_ranking_per_user(model, eval_set(inter, split, "test"), K, exclude_seen)
    return per_user[NDCG].double().numpy()


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
    cand = score_per_user(candidate, inter, split)
    ours = score_per_user(live, inter, split) if live is not None else None
    return HoldoutScores(
        metric=metric,
        candidate=_mean(cand),
        live=_mean(ours) if ours is not None else None,
        live_version=live_version,
        events=len(split.test),
        difference_se=_paired_se(cand, ours),
    )


def _mean(score: float | np.ndarray) -> float:
    return score if isinstance(score, float) else float(score.mean()) if len(score) else 0.0


def _paired_se(cand: float | np.ndarray, live: float | np.ndarray | None) -> float | None:
    """Standard error of the mean per-user difference, or None without per-user pairs."""
    if isinstance(cand, float) or not isinstance(live, np.ndarray) or len(cand) < 2:
        return None
    return float(np.std(cand - live, ddof=1) / math.sqrt(len(cand)))


def decide(scores: HoldoutScores, tolerance: float, confidence: float = 0.0) -> Promotion:
    """Promote or reject, with the reason in words. Pure: same scores, same decision.

    Promote when no version is live, when the live score is not a number, or when the
    candidate's score is at least ``live x (1 - tolerance)`` less ``confidence`` standard errors
    of the paired difference (``scores.difference_se``; none: the bare comparison); reject a
    candidate whose score is not a number, or that is worse than that.
    """
    if isinstance(tolerance, bool) or not 0 <= tolerance < 1:
        raise InvalidInput(f"the promotion tolerance must be in [0, 1), got {tolerance!r}")
    if isinstance(confidence, bool) or not 0 <= confidence <= 10:
        raise InvalidInput(f"the promotion confidence must be in [0, 10], got {confidence!r}")
    metric, cand, live, events = scores.metric, scores.candidate, scores.live, scores.events
    on = f"on {events:,} held-out events"
    live_name = f"live v{scores.live_version}"
    se = scores.difference_se if scores.difference_se is not None else 0.0
    margin = confidence * se if math.isfinite(se) else 0.0

    def record(decision: PromotionDecision, reason: str) -> Promotion:
        return _record(scores, tolerance, confidence, decision, reason)

    if not math.isfinite(cand):
        return record("reject", f"the candidate's {metric} {on} is {cand}")
    if scores.live_version is None:
        return record(
            "promote", f"no version is live: the candidate goes live ({metric} {cand:.4f} {on})"
        )
    if live is None or not math.isfinite(live):
        return record(
            "promote",
            f"{live_name}'s {metric} {on} is {live}: the candidate ({cand:.4f}) goes live",
        )
    floor = live * (1 - tolerance) - margin
    change = f"{(cand - live) / live:+.1%}" if live > 0 else f"{cand - live:+.4f}"
    noise = f", standard error of the paired difference {se:.4f}" if scores.difference_se else ""
    compared = f"{metric} {cand:.4f} against {live:.4f} for {live_name} ({change}{noise}) {on}"
    allowed = f"the {tolerance:.1%} tolerance" + (
        f" and {confidence:g} standard errors" if margin else ""
    )
    if cand >= floor or math.isclose(cand, floor, rel_tol=1e-9):  # exactly at it: not worse
        return record("promote", f"{compared}: within {allowed}, the candidate goes live")
    verb = "allow" if margin else "allows"
    reason = (
        f"{compared}: worse than {allowed} {verb} (at least {floor:.4f}); {live_name} keeps serving"
    )
    return record("reject", reason)


def _record(
    scores: HoldoutScores,
    tolerance: float,
    confidence: float,
    decision: PromotionDecision,
    reason: str,
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
        difference_se=scores.difference_se,
        confidence=confidence,
    )


def promote_or_reject(
    registry: ModelRegistry,
    name: str,
    version: int,
    scores: HoldoutScores,
    tolerance: float,
    confidence: float = 0.0,
) -> ModelVersion:
    """Decide on candidate ``version`` of ``name`` and record it: it goes live, or it is
    rejected and the live version keeps serving. The registry refuses (``StateConflict``) when
    the live version changed since ``scores`` were taken.

    When going live needs work first (publishing the candidate's vectors before its alias
    swaps), call ``decide``, do that work if it says promote, then
    ``registry.record_promotion`` with its record: the version goes live only then."""
    return registry.record_promotion(name, version, decide(scores, tolerance, confidence))

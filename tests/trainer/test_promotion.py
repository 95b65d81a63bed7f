"""Guarded promotion: the decision rule worked out by hand, the held-out slice, both versions
scored on the same events, and the decision recorded and applied in the registry (a worse
candidate is rejected and the live version keeps serving)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import Engine

from streamrec.core.errors import InvalidInput, StateConflict
from streamrec.core.ids import IdKind, IdRegistry
from streamrec.schemas.api import VersionStatus
from streamrec.stores.model_registry import ModelRegistry
from streamrec.trainer.data import Interactions, build, eval_set
from streamrec.trainer.evaluate import evaluate_click, evaluate_full, full_ranking_per_user
from streamrec.trainer.loop import TrainConfig, fit
from streamrec.trainer.models import build_model
from streamrec.trainer.models.base import Recommender
from streamrec.trainer.promotion import (
    AUC,
    NDCG,
    HoldoutScores,
    compare_on_holdout,
    decide,
    newest_split,
    promote_or_reject,
    promotion_metric,
    score_on_holdout,
)
from tests.trainer.conftest import tiny_data

HELD_OUT = 600


def _scores(candidate: float, live: float | None, live_version: int | None = 3) -> HoldoutScores:
    return HoldoutScores(NDCG, candidate, live, live_version if live is not None else None, 1000)


# -- the rule ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("candidate", "live", "tolerance", "decision"),
    [
        (0.120, 0.100, 0.02, "promote"),  # better
        (0.100, 0.100, 0.0, "promote"),  # equal is not worse
        (0.098, 0.100, 0.02, "promote"),  # exactly at live x (1 - tolerance)
        (0.0979, 0.100, 0.02, "reject"),  # just below it
        (0.090, 0.100, 0.05, "reject"),  # 10% worse than a 5% tolerance allows
        (0.090, 0.100, 0.10, "promote"),  # ... within 10%
        (0.000, 0.000, 0.02, "promote"),  # nothing to lose
        (0.099, 0.100, 0.0, "reject"),  # no tolerance: any loss rejects
    ],
)
def test_not_worse_than_the_tolerance_allows(
    candidate: float, live: float, tolerance: float, decision: str
) -> None:
    record = decide(_scores(candidate, live), tolerance)
    assert record.decision == decision
    assert (record.candidate_score, record.live_score, record.live_version) == (candidate, live, 3)
    assert (record.metric, record.tolerance, record.heldout_events) == (NDCG, tolerance, 1000)


def test_the_reasons_say_what_was_compared() -> None:
    rejected = decide(_scores(0.0650, 0.0700), 0.02)
    assert rejected.reason == (
        "ndcg@10 0.0650 against 0.0700 for live v3 (-7.1%) on 1,000 held-out events: worse "
        "than the 2.0% tolerance allows (at least 0.0686); live v3 keeps serving"
    )
    promoted = decide(_scores(0.0712, 0.0700), 0.02)
    assert promoted.reason == (
        "ndcg@10 0.0712 against 0.0700 for live v3 (+1.7%) on 1,000 held-out events: within "
        "the 2.0% tolerance, the candidate goes live"
    )


@pytest.mark.parametrize(
    ("candidate", "se", "confidence", "decision"),
    [
        (0.090, 0.010, 1.64, "promote"),  # 10% worse, but within 1.64 standard errors of 0.098
        (0.090, 0.010, 0.0, "reject"),  # the bare comparison
        (0.090, None, 1.64, "reject"),  # no pairs (auc, no live): the bare comparison
        (0.0816, 0.010, 1.64, "promote"),  # exactly at 0.098 - 1.64 x 0.010
        (0.081, 0.010, 1.64, "reject"),  # below it
        (0.020, 0.010, 1.64, "reject"),  # a broken candidate: many standard errors short
    ],
)
def test_a_candidate_within_the_noise_of_the_slice_is_not_rejected(
    candidate: float, se: float | None, confidence: float, decision: str
) -> None:
    scores = HoldoutScores(NDCG, candidate, 0.100, 3, 300, difference_se=se)
    record = decide(scores, 0.02, confidence)
    assert record.decision == decision
    assert (record.difference_se, record.confidence) == (se, confidence)


def test_the_reason_names_the_standard_error_and_the_margin() -> None:
    scores = HoldoutScores(NDCG, 0.0650, 0.0700, 3, 300, difference_se=0.0100)
    assert decide(scores, 0.02, 1.64).reason == (
        "ndcg@10 0.0650 against 0.0700 for live v3 (-7.1%, standard error of the paired "
        "difference 0.0100) on 300 held-out events: within the 2.0% tolerance and 1.64 "
        "standard errors, the candidate goes live"
    )
    assert decide(scores, 0.02, 0.2).reason.endswith(
        "worse than the 2.0% tolerance and 0.2 standard errors allow (at least 0.0666); "
        "live v3 keeps serving"
    )


@pytest.mark.parametrize("confidence", [-0.1, 10.5, True])
def test_the_confidence_is_a_number_of_standard_errors(confidence: float) -> None:
    with pytest.raises(InvalidInput, match="confidence"):
        decide(_scores(0.1, 0.1), 0.02, confidence)


def test_without_a_live_version_the_candidate_is_promoted() -> None:
    record = decide(_scores(0.01, None), 0.02)
    assert record.decision == "promote" and record.live_version is None
    assert record.reason.startswith("no version is live")


def test_a_score_that_is_not_a_number() -> None:
    bad_candidate = decide(_scores(math.nan, 0.1), 0.02)
    assert bad_candidate.decision == "reject" and bad_candidate.candidate_score is None
    assert "is nan" in bad_candidate.reason
    bad_live = decide(HoldoutScores(AUC, 0.7, math.nan, 3, 1000), 0.02)
    assert bad_live.decision == "promote" and bad_live.live_score is None
    assert "live v3's auc" in bad_live.reason


@pytest.mark.parametrize("tolerance", [-0.01, 1.0, 2.0, True])
def test_the_tolerance_is_a_fraction(tolerance: float) -> None:
    with pytest.raises(InvalidInput, match="tolerance"):
        decide(_scores(0.1, 0.1), tolerance)


# -- the held-out slice and the scores --------------------------------------------------------
@pytest.fixture
def ids(engine: Engine) -> IdRegistry:
    return IdRegistry(engine)


@pytest.fixture
def inter(ids: IdRegistry) -> Interactions:
    return build(tiny_data(), ids)


def _trained(name: str, inter: Interactions, rows: np.ndarray, epochs: int = 3) -> Recommender:
    model = build_model(name, inter, seed=0, dim=16)
    fit(model, inter.subset(rows), None, TrainConfig(epochs=epochs, batch_size=256, threads=1))
    return model


def test_the_newest_events_are_held_out(inter: Interactions) -> None:
    split = newest_split(inter, HELD_OUT)
    assert len(split.test) == HELD_OUT and len(split.valid) == 0
    assert len(split.train) + HELD_OUT == len(inter)
    assert inter.ts[split.train].max() <= inter.ts[split.test].min()
    for bad in (0, len(inter), -1, True):
        with pytest.raises(InvalidInput, match="held-out slice"):
            newest_split(inter, bad)


def test_a_trained_model_scores_above_an_untrained_one_on_the_same_events(
    inter: Interactions,
) -> None:
    split = newest_split(inter, HELD_OUT)
    trained = _trained("bpr", inter, split.train)
    untrained = build_model("bpr", inter, seed=0, dim=16)
    scores = compare_on_holdout(trained, untrained, 4, inter, split)
    assert (scores.metric, scores.live_version, scores.events) == (NDCG, 4, HELD_OUT)
    assert scores.live is not None and scores.candidate > 2 * scores.live
    # The number is the evaluation module's NDCG@10 over the held-out users, each user's
    # older events as history, and the same again when asked twice.
    expected = evaluate_full(trained, eval_set(inter, split, "test"), 10, True)[NDCG]
    assert scores.candidate == pytest.approx(expected, rel=1e-12)
    assert scores.candidate == score_on_holdout(trained, inter, split)
    # The paired difference's standard error: per user, candidate minus live, over sqrt(U).
    per_user = full_ranking_per_user(trained, eval_set(inter, split, "test"), 10)[NDCG]
    other = full_ranking_per_user(untrained, eval_set(inter, split, "test"), 10)[NDCG]
    difference = (per_user - other).double().numpy()
    expected_se = np.std(difference, ddof=1) / np.sqrt(len(difference))
    assert scores.difference_se == pytest.approx(expected_se, rel=1e-9) and expected_se > 0
    alone = compare_on_holdout(trained, None, None, inter, split)
    assert alone.difference_se is None and alone.candidate == scores.candidate


def test_wide_and_deep_is_judged_on_auc(inter: Interactions) -> None:
    split = newest_split(inter, HELD_OUT)
    model = build_model("wide_deep", inter, seed=0, dim=8, hidden=(16, 8))
    assert promotion_metric(model) == AUC
    score = score_on_holdout(model, inter, split)
    assert 0.0 <= score <= 1.0
    assert score == evaluate_click(model, inter, split.test, 4.0)[AUC]
    with pytest.raises(InvalidInput, match="not judged on auc"):
        compare_on_holdout(model, build_model("bpr", inter, dim=8), 1, inter, split)
    versus = build_model("wide_deep", inter, seed=1, dim=8, hidden=(16, 8))
    assert compare_on_holdout(model, versus, 1, inter, split).difference_se is None  # no pairs


def test_a_live_version_trained_before_new_ids_is_scored_on_them(
    engine: Engine, ids: IdRegistry, inter: Interactions
) -> None:
    """The live version has fewer rows than the newest data has ids: it grows (seeded) like
    ``streamrec eval`` grows it, and scoring it twice gives the same number."""
    old = _trained("mf", inter, np.arange(len(inter)), epochs=1)
    ids.assign(IdKind.ITEM, ["brand-new-item"])
    ids.assign(IdKind.USER, ["brand-new-user"])
    grown = build(tiny_data(seed=2), ids)
    assert grown.n_items == inter.n_items + 1
    split = newest_split(grown, HELD_OUT)
    first = score_on_holdout(old, grown, split)
    assert old.n_items == grown.n_items and old.n_users == grown.n_users
    assert score_on_holdout(old, grown, split) == first


def test_an_empty_holdout_has_nothing_to_score(inter: Interactions) -> None:
    split = newest_split(inter, HELD_OUT)
    split.test = np.zeros(0, dtype=np.int64)
    with pytest.raises(InvalidInput, match="empty"):
        score_on_holdout(build_model("bpr", inter, dim=8), inter, split)


def test_live_model_and_version_come_together(inter: Interactions) -> None:
    split = newest_split(inter, HELD_OUT)
    model = build_model("bpr", inter, dim=8)
    with pytest.raises(InvalidInput, match="together"):
        compare_on_holdout(model, None, 2, inter, split)


# -- recorded and applied ---------------------------------------------------------------------
@pytest.fixture
def models(engine: Engine, tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(engine, tmp_path / "models")


def test_a_worse_candidate_is_rejected_and_the_live_one_keeps_serving(
    models: ModelRegistry, inter: Interactions
) -> None:
    split = newest_split(inter, HELD_OUT)
    live = models.register("bpr", _trained("bpr", inter, split.train), activate=True)
    worse = build_model("bpr", inter, seed=1, dim=16)  # untrained
    candidate = models.register("bpr", worse)
    scores = compare_on_holdout(worse, models.load("bpr"), live.version, inter, split)

    decided = promote_or_reject(models, "bpr", candidate.version, scores, tolerance=0.02)

    assert decided.status == VersionStatus.REJECTED
    assert models.active("bpr").version == live.version  # type: ignore[union-attr]
    record = models.get("bpr", candidate.version).promotion
    assert record is not None and record.decision == "reject"
    assert (record.candidate_score, record.live_score) == (scores.candidate, scores.live)
    assert "keeps serving" in record.reason
    served = models.load("bpr")  # what a reload serves: still the live version's weights
    with torch.no_grad():
        assert torch.equal(served.item_vectors(), models.load("bpr", live.version).item_vectors())


def test_a_better_candidate_goes_live_and_the_old_one_retires(
    models: ModelRegistry, inter: Interactions
) -> None:
    split = newest_split(inter, HELD_OUT)
    first = models.register("bpr", build_model("bpr", inter, seed=1, dim=16), activate=True)
    better = _trained("bpr", inter, split.train)
    candidate = models.register("bpr", better)
    scores = compare_on_holdout(better, models.load("bpr"), first.version, inter, split)

    decided = promote_or_reject(models, "bpr", candidate.version, scores, tolerance=0.02)

    assert (decided.status, decided.active) == (VersionStatus.LIVE, True)
    assert models.get("bpr", first.version).status == VersionStatus.RETIRED
    assert decided.promotion is not None and decided.promotion.decision == "promote"


def test_the_first_version_goes_live_and_a_stale_comparison_is_refused(
    models: ModelRegistry, inter: Interactions
) -> None:
    split = newest_split(inter, HELD_OUT)
    model = build_model("bpr", inter, seed=1, dim=8)
    first = models.register("bpr", model)
    scores = compare_on_holdout(model, None, None, inter, split)
    assert promote_or_reject(models, "bpr", first.version, scores, 0.02).status == "live"

    second = models.register("bpr", model)
    stale = compare_on_holdout(model, None, None, inter, split)  # as if nothing were live
    with pytest.raises(StateConflict, match="score it again"):
        promote_or_reject(models, "bpr", second.version, stale, 0.02)
    assert models.get("bpr", second.version).status == VersionStatus.CANDIDATE

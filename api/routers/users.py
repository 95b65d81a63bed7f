"""Per-user reads: recommendations and history.

A vector model's recommendations come from the user's precomputed candidates when there are
some (``api.serving.CandidateServer``: Redis only): the top-C unseen items of the version
computed with the user's vector, filtered with the seen set as it is now (an item made seen by
an applied click is never served, however old the candidates) and with the genres asked for,
then the first k. When filtering leaves fewer than k, the list is filled with the popular
items (same genre filter, seen items excluded) AFTER the model's items, carrying their
popularity scores; a response says ``model`` = the vector model all the same. Without
candidates (the user's not computed yet, a pinned version without them, or
``exclude_seen=false``: the candidates left out what was seen when they were computed), the
vector query serves, as it did before candidates existed.

``state_age_ms`` is the age of the user vector the candidates came from, or, when that vector
is fixed (a trained row, ``Ranked.vector_fixed``: the list is what a recomputation would give),
the age of the user state, as for every other answer.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import StringConstraints

from streamrec.api.deps import FeaturesDep, RuntimeDep
from streamrec.api.responses import error_responses
from streamrec.api.runtime import Runtime
from streamrec.api.serving import (
    ItemMeta,
    ItemMetaCache,
    NoVector,
    Precomputed,
    Scored,
    hits_scored,
)
from streamrec.core.errors import ConfigurationError, NotFound
from streamrec.schemas.api import (
    FallbackReason,
    HistoryItem,
    RecommendationModel,
    Recommendations,
    RerankedBy,
    RerankPolicy,
    UserHistory,
)
from streamrec.schemas.events import ImpressionEvent, PolicyLog
from streamrec.schemas.models import MODELS, ModelName
from streamrec.stores.features import FeatureStore
from streamrec.trainer.rl import STATE_RECENT_ITEMS

router = APIRouter(prefix="/v1/users", tags=["users"])
log = logging.getLogger(__name__)
RERANK_MIN_CANDIDATES = 50
RERANK_MAX_CANDIDATES = 200
UserId = Annotated[str, "external user id"]
# A genres value (one genre, or several comma-separated) is printable text: no control
# characters, which no genre name has.
GenreFilter = Annotated[
    str, StringConstraints(max_length=1000, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$")
]


def _state_age_ms(stats: Mapping[str, str]) -> int | None:
    updated = stats.get("updated_ms")
    return (int(time.time() * 1000) - int(updated)) if updated else None


def genre_list(raw: list[str] | None) -> list[str] | None:
    """``genres=a&genres=b`` or ``genres=a,b`` (or ``a|b``) → ["a", "b"]; None when empty."""
    found = [g.strip() for value in raw or [] for g in re.split(r"[,|]", value) if g.strip()]
    return found or None


async def _popular(
    features: FeatureStore,
    item_meta: ItemMetaCache,
    user_id: str | None,
    k: int,
    genres: list[str] | None,
) -> list[Scored]:
    # A genre filter on popularity: read a deeper slice and keep the matching items.
    depth = k if not genres else 8 * k
    ranked = await features.popular(depth, exclude_seen_of=user_id)
    if genres:
        ranked = await item_meta.in_genres(ranked, genres)
    return ranked[:k]


async def _from_candidates(
    runtime: Runtime,
    features: FeatureStore,
    user_id: str,
    found: Precomputed,
    n: int,
    wanted: list[str] | None,
) -> list[Scored]:
    """The first ``n`` candidates neither seen now nor outside ``wanted``, then popular items
    (same filters) when fewer are left (see the module doc)."""
    unseen = [
        (item, score)
        for item, score in zip(found.ranked.items, found.ranked.scores, strict=True)
        if item not in found.seen
    ]
    if wanted:
        unseen = await runtime.item_meta.in_genres(unseen, wanted)
    chosen = unseen[:n]
    if len(chosen) < n:
        taken = {item for item, _ in chosen}
        popular = await _popular(features, runtime.item_meta, user_id, n + len(taken), wanted)
        chosen += [entry for entry in popular if entry[0] not in taken][: n - len(chosen)]
    return chosen


@dataclass(frozen=True)
class _Served:
    model: RecommendationModel
    version: int | None
    ranked: list[Scored]
    age_ms: int | None
    fallback_reason: FallbackReason | None = None
    meta: Mapping[str, ItemMeta] = field(default_factory=dict)  # a vector query's payloads


@dataclass(frozen=True)
class _Reranked:
    ranked: list[Scored]
    q_values: Mapping[str, float] = field(default_factory=dict)
    by: RerankedBy | None = None
    note: str | None = None  # why the base order stands
    log: PolicyLog | None = None  # what the policy saw and did, for the impression


def rerank_depth(k: int) -> int:
    """How many base candidates a re-ranker chooses k from: enough for the policy to change
    the list, bounded to keep the latency it adds small (k <= 200, so always >= k)."""
    return min(max(3 * k, RERANK_MIN_CANDIDATES), RERANK_MAX_CANDIDATES)


def _has_history(stats: Mapping[str, str]) -> bool:
    return int(stats.get("ratings", 0)) + int(stats.get("clicks", 0)) > 0


async def _base(
    runtime: Runtime,
    features: FeatureStore,
    user_id: str,
    model: RecommendationModel,
    n: int,
    *,
    exclude_seen: bool,
    wanted: list[str] | None,
    stats: Mapping[str, str],
    version: int | None,
    found: Precomputed | None,
) -> _Served:
    """The base model's top ``n`` (from ``version`` when pinned): from its precomputed
    candidates when ``found``, else by a vector query; popular items, with the reason, when it
    cannot serve the user."""
    age = _state_age_ms(stats)
    reason = None
    if model != ModelName.POPULAR:
        collection = MODELS[model].collection  # the model's name; content for doc2vec
        if found is not None:
            ranked = await _from_candidates(runtime, features, user_id, found, n, wanted)
            # The user vector's age, as below; a fixed vector (a trained row) is as current as
            # the seen set the list was filtered with, whose age is the user state's.
            if found.ranked.updated_ms is not None and not found.ranked.vector_fixed:
                age = max(0, int(time.time() * 1000) - found.ranked.updated_ms)
            return _Served(model, found.version, ranked, age)
        seen = await features.seen_items(user_id) if exclude_seen else set()
        answer = await runtime.serving.arecommend(collection, user_id, n, seen, wanted, version)
        if not isinstance(answer, NoVector):
            if answer.updated_ms is not None:
                age = max(0, int(time.time() * 1000) - answer.updated_ms)
            ranked, meta = hits_scored(answer.hits)
            return _Served(model, answer.version, ranked, age, meta=meta)
        reason = answer.reason
        if reason == FallbackReason.NO_USER_VECTOR and not _has_history(stats):
            reason = FallbackReason.NO_HISTORY
    ranked = await _popular(
        features, runtime.item_meta, user_id if exclude_seen else None, n, wanted
    )
    return _Served(ModelName.POPULAR, None, ranked, age, reason)


async def _rerank_dqn(
    runtime: Runtime,
    stats: Mapping[str, str],
    recent: list[str],
    ranked: list[Scored],
    k: int,
) -> _Reranked:
    """A slate of ``k`` drawn from ``ranked`` by the active DQN's Q-values (with the configured
    exploration) for the user whose counters and ``recent`` items are given; the base order
    when no policy can serve, since recommendations must not depend on the policy being
    deployed. Whenever Doc2Vec is active the slate carries a policy log (the state, the
    exploration and its propensities) for the online learner."""
    if not ranked:  # e.g. no events yet: a slate (and its policy log) needs at least one item
        return _Reranked(ranked, note="the base model returned no candidates to re-rank")
    candidates = [item for item, _ in ranked]
    try:
        # On the loop from the versions held (no I/O); in a thread when a check is due.
        drawn = runtime.rl.rerank_held(candidates, recent, stats, k)
        if drawn is None:
            drawn = await asyncio.to_thread(runtime.rl.rerank, candidates, recent, stats, k)
    except NotFound as exc:
        return _Reranked(ranked[:k], note=str(exc))
    except ConfigurationError as exc:  # a mismatched dqn/doc2vec pair: an operator must act
        log.warning("rerank=dqn skipped: %s", exc)
        return _Reranked(ranked[:k], note=str(exc))
    score = dict(ranked)
    reordered = [(item, score[item]) for item, _ in drawn.items]
    q_values = {item: q for item, q in drawn.items if q is not None}
    policy_log = drawn.policy_log()
    if drawn.dqn_version is None:
        note = "no dqn version is active yet: the base order is served (and logged for learning)"
        return _Reranked(reordered, q_values, note=note, log=policy_log)
    by = RerankedBy(version=drawn.dqn_version, exploration=drawn.exploration.method)
    return _Reranked(reordered, q_values, by, log=policy_log)


@router.get(
    "/{user_id}/recommendations",
    responses=error_responses(
        503,
        described={
            404: "The pinned version has no published vectors (popular has none)",
            422: "Unknown model or rerank, or bad k or version",
        },
    ),
)
async def recommend(
    user_id: str,
    features: FeaturesDep,
    runtime: RuntimeDep,
    k: Annotated[int, Query(ge=1, le=200, description="How many items")] = 10,
    model: Annotated[
        RecommendationModel,
        Query(description="Which model serves ('content': doc2vec's former name, accepted)"),
    ] = ModelName.POPULAR,
    exclude_seen: Annotated[bool, Query(description="Leave out items the user has had")] = True,
    genres: Annotated[
        list[GenreFilter] | None,
        Query(description="Only these genres (repeat or comma-separate)"),
    ] = None,
    variant: Annotated[str, Query(max_length=64, description="A/B variant label")] = "default",
    rerank: Annotated[
        RerankPolicy | None,
        Query(description="Re-order the base model's candidates by this policy's Q-values"),
    ] = None,
    version: Annotated[
        int | None,
        Query(
            ge=1,
            le=2**31 - 1,
            description="Serve this published version of the model instead of the live one",
        ),
    ] = None,
) -> Recommendations:
    """Top-k items for a user from ``model`` (its live version, or the published ``version``
    pinned). Users without a vector for that model (and models with nothing published) get
    the popular items, marked ``fallback: true`` with a ``fallback_reason``. With
    ``rerank=dqn`` the base model's top ``rerank_depth(k)`` are re-ordered by Q-value."""
    if version is not None and model == ModelName.POPULAR:
        # A 404 like any version without published vectors: the request is well-formed.
        raise NotFound(
            "popular has no versions: version= pins a published version of a vector model"
        )
    # Candidates hold unseen items only: exclude_seen=false takes the vector query.
    precomputed = MODELS[model].collection if model != ModelName.POPULAR and exclude_seen else None
    recent = STATE_RECENT_ITEMS if rerank else 0  # the re-ranker's user state, same round trip
    state, found = await runtime.candidates.request_state(user_id, precomputed, version, recent)
    stats = state.stats
    depth = rerank_depth(k) if rerank else k
    base = await _base(
        runtime,
        features,
        user_id,
        model,
        depth,
        exclude_seen=exclude_seen,
        wanted=genre_list(genres),
        stats=stats,
        version=version,
        found=found,
    )
    reranked = (
        await _rerank_dqn(runtime, stats, state.recent, base.ranked, k)
        if rerank
        else _Reranked(base.ranked)
    )
    items = await runtime.item_meta.response_items(
        reranked.ranked[:k], base.meta, reranked.q_values
    )
    request_id = uuid.uuid4().hex
    if items:
        # The re-ranker goes into the model name, so logged impressions (archive, per-variant
        # counters) tell re-ranked lists apart without a new event field old readers reject.
        served = f"{base.model.value}+dqn" if reranked.by else base.model.value
        impression = ImpressionEvent(
            user_id=user_id,
            request_id=request_id,
            item_ids=[i.item_id for i in items],
            model=served,
            model_version=base.version,
            variant=variant,
            policy=reranked.log,
        )
        runtime.publisher.publish_later(impression)  # buffered: the request never waits for Kafka
    return Recommendations(
        request_id=request_id,
        user_id=user_id,
        model=base.model,
        version=base.version,
        requested_model=model,
        requested_version=version,
        fallback=base.model != model,
        fallback_reason=base.fallback_reason,
        variant=variant,
        known_user=bool(stats),
        state_age_ms=base.age_ms,
        reranked_by=reranked.by,
        rerank_fallback=reranked.note is not None,
        rerank_note=reranked.note,
        items=items,
    )


@router.get(
    "/{user_id}/history",
    responses=error_responses(503, described={404: "The user has no events", 422: "Bad n"}),
)
async def history(
    user_id: str,
    features: FeaturesDep,
    n: Annotated[int, Query(ge=1, le=1000, description="How many recent items")] = 50,
) -> UserHistory:
    """The user's recent items (newest first) and counters, from Redis."""
    stats = await features.user_stats(user_id)
    if not stats:
        raise NotFound(f"user {user_id!r} has no events yet")
    recent = await features.recent_items(user_id, n)
    meta = await features.item_meta(recent)
    ratings = int(stats.get("ratings", 0))
    return UserHistory(
        user_id=user_id,
        items=[HistoryItem(item_id=i, title=meta[i]["title"]) for i in recent],
        ratings=ratings,
        clicks=int(stats.get("clicks", 0)),
        impressions=int(stats.get("impressions", 0)),
        mean_rating=float(stats["rating_sum"]) / ratings if ratings else None,
        genre_affinity=await features.genre_affinity(user_id),
    )

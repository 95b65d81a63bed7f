"""Per-user reads: recommendations and history."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import FeaturesDep, RuntimeDep
from core.errors import NotFound
from schemas.api import (
    ErrorBody,
    HistoryItem,
    RecommendationModel,
    Recommendations,
    RecommendedItem,
    UserHistory,
)
from schemas.events import ImpressionEvent
from stores.features import FeatureStore
from stores.vectors import Hit

router = APIRouter(prefix="/v1/users", tags=["users"])
UserId = Annotated[str, "external user id"]


def _genres(raw: str) -> list[str]:
    return [g for g in raw.split("|") if g]


async def _state_age_ms(features: FeatureStore, user_id: str) -> tuple[bool, int | None]:
    stats = await features.user_stats(user_id)
    if not stats:
        return False, None
    updated = stats.get("updated_ms")
    return True, (int(time.time() * 1000) - int(updated)) if updated else None


def genre_list(raw: list[str] | None) -> list[str] | None:
    """``genres=a&genres=b`` or ``genres=a,b`` (or ``a|b``) → ["a", "b"]; None when empty."""
    found = [g.strip() for value in raw or [] for g in re.split(r"[,|]", value) if g.strip()]
    return found or None


async def _popular(
    features: FeatureStore, user_id: str | None, k: int, genres: list[str] | None
) -> list[RecommendedItem]:
    # A genre filter on popularity: read a deeper slice and keep the matching items.
    depth = k if not genres else 8 * k
    ranked = await features.popular(depth, exclude_seen_of=user_id)
    meta = await features.item_meta([item for item, _ in ranked])
    items = [
        RecommendedItem(item_id=item, score=score, title=meta[item]["title"],
                        genres=_genres(meta[item]["genres"]))
        for item, score in ranked
    ]  # fmt: skip
    if genres:
        items = [i for i in items if set(i.genres) & set(genres)]
    return items[:k]


def _from_hits(hits: list[Hit]) -> list[RecommendedItem]:
    return [
        RecommendedItem(item_id=str(h.payload.get("item_id", h.id)), score=h.score,
                        title=h.payload.get("title") or "", genres=h.payload.get("genres") or [])
        for h in hits
    ]  # fmt: skip


@router.get(
    "/{user_id}/recommendations",
    responses={422: {"model": ErrorBody, "description": "Unknown model or bad k"}},
)
async def recommend(
    user_id: str,
    features: FeaturesDep,
    runtime: RuntimeDep,
    k: Annotated[int, Query(ge=1, le=200, description="How many items")] = 10,
    model: Annotated[RecommendationModel, Query(description="Which model serves")] = (
        RecommendationModel.POPULAR
    ),
    exclude_seen: Annotated[bool, Query(description="Leave out items the user has had")] = True,
    genres: Annotated[
        list[str] | None, Query(description="Only these genres (repeat or comma-separate)")
    ] = None,
    variant: Annotated[str, Query(max_length=64, description="A/B variant label")] = "default",
) -> Recommendations:
    """Top-k items for a user from ``model``. Users without a vector for that model (and
    models with nothing published) get the popular items, marked ``fallback: true``."""
    wanted = genre_list(genres)
    known, age = await _state_age_ms(features, user_id)
    served, version, items = RecommendationModel.POPULAR, None, None
    if model != RecommendationModel.POPULAR:
        seen = await features.seen_items(user_id) if exclude_seen else set()
        answer = await asyncio.to_thread(
            runtime.serving.recommend,
            model.value,
            user_id,
            k,
            seen,
            wanted,  # type: ignore[union-attr]
        )
        if answer is not None:
            served, version, items = model, answer.version, _from_hits(answer.hits)
            if answer.updated_ms is not None:
                age = max(0, int(time.time() * 1000) - answer.updated_ms)
    if items is None:
        items = await _popular(features, user_id if exclude_seen else None, k, wanted)
    request_id = uuid.uuid4().hex
    if items:
        impression = ImpressionEvent(
            user_id=user_id,
            request_id=request_id,
            item_ids=[i.item_id for i in items],
            model=served.value,
            model_version=version,
            variant=variant,
        )
        runtime.spawn(runtime.publisher.publish(impression), name=f"impression-{request_id}")
    return Recommendations(
        request_id=request_id,
        user_id=user_id,
        model=served,
        version=version,
        requested_model=model,
        fallback=served != model,
        variant=variant,
        known_user=known,
        state_age_ms=age,
        items=items,
    )


@router.get(
    "/{user_id}/history",
    responses={404: {"model": ErrorBody, "description": "The user has no events"}},
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

"""Per-item reads: similar items from a model's item vectors."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import RuntimeDep
from api.routers.users import _from_hits
from core.errors import InvalidInput
from schemas.api import ErrorBody, RecommendationModel, SimilarItems

router = APIRouter(prefix="/v1/items", tags=["items"])


@router.get(
    "/{item_id}/similar",
    responses={
        404: {"model": ErrorBody, "description": "Unknown item, or no vector for it"},
        422: {"model": ErrorBody, "description": "Unknown model or bad k"},
    },
)
async def similar(
    item_id: str,
    runtime: RuntimeDep,
    model: Annotated[RecommendationModel, Query(description="Whose item vectors")] = (
        RecommendationModel.CONTENT
    ),
    k: Annotated[int, Query(ge=1, le=200, description="How many items")] = 10,
) -> SimilarItems:
    """The items nearest to ``item_id`` in ``model``'s published item vectors."""
    if model == RecommendationModel.POPULAR:
        raise InvalidInput("popular has no item vectors: choose a vector model for similar items")
    answer = await asyncio.to_thread(runtime.serving.similar, model.value, item_id, k)  # type: ignore[union-attr]
    return SimilarItems(
        request_id=uuid.uuid4().hex,
        item_id=item_id,
        model=model,
        version=answer.version,
        items=_from_hits(answer.hits),
    )

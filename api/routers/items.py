"""Per-item reads: similar items from a model's item vectors: the precomputed neighbours of
the live version (Redis only) when stored and deep enough, else the vector query."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from streamrec.api.deps import RuntimeDep
from streamrec.api.responses import error_responses
from streamrec.api.serving import hits_scored
from streamrec.schemas.api import SimilarItems, VectorModel
from streamrec.schemas.models import MODELS, ModelName

router = APIRouter(prefix="/v1/items", tags=["items"])


@router.get(
    "/{item_id}/similar",
    responses=error_responses(
        503,
        described={
            404: "Unknown item, no vector for it, or nothing published for the model",
            422: "Unknown model (popular has no item vectors) or bad k",
        },
    ),
)
async def similar(
    item_id: str,
    runtime: RuntimeDep,
    model: Annotated[
        VectorModel,
        Query(
            description="Whose item vectors (popular has none; 'content': doc2vec's former "
            "name, accepted)"
        ),
    ] = ModelName.DOC2VEC,
    k: Annotated[int, Query(ge=1, le=200, description="How many items")] = 10,
) -> SimilarItems:
    """The items nearest to ``item_id`` in ``model``'s published item vectors. A new item
    with text is in ``doc2vec`` as soon as the vectors group has consumed its item event."""
    collection = MODELS[model].collection  # the model's name; content for doc2vec
    found = await runtime.candidates.similar(collection, item_id, k)
    if found is not None:
        version, ranked = found
        nearest = list(zip(ranked.items, ranked.scores, strict=True))[:k]
        items = await runtime.item_meta.response_items(nearest)
    else:
        answer = await asyncio.to_thread(runtime.serving.similar, collection, item_id, k)
        nearest, meta = hits_scored(answer.hits)
        version, items = answer.version, await runtime.item_meta.response_items(nearest, meta)
    return SimilarItems(
        request_id=uuid.uuid4().hex,
        item_id=item_id,
        model=model,
        version=version,
        items=items,
    )

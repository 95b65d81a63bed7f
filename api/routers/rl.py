"""The DQN edge (the original model server's endpoints): bulk Q-values, ranking candidates by
Q-value, and Doc2Vec text embeddings, each from the active registry version (hot-swapped, see
``trainer.policy``). Read-only inference: no API key, like the other reads."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from streamrec.api.deps import FeaturesDep, RuntimeDep
from streamrec.api.responses import BODY_ERRORS, error_responses
from streamrec.api.runtime import Runtime
from streamrec.schemas.api import (
    EmbedBulkRequest,
    Embedding,
    Embeddings,
    EmbedRequest,
    QValues,
    QValuesRequest,
    RankedItem,
    RankedItems,
    RankRequest,
)
from streamrec.trainer.policy import RLServer
from streamrec.trainer.rl import STATE_RECENT_ITEMS

router = APIRouter(prefix="/v1")  # tags per route: the DQN and Doc2Vec apart

_NO_MODEL = "No active version of the model"
# 503: the active version is looked up in the registry (SQL); rank also reads Redis.
_ERRORS = error_responses(
    *BODY_ERRORS,
    described={404: _NO_MODEL, 422: "Empty or oversized list, wrong vector sizes, or not JSON"},
)


def _rl(runtime: Runtime) -> RLServer:
    return runtime.rl


@router.post("/predict/q-values", tags=["dqn"], responses=_ERRORS)
async def q_values(body: QValuesRequest, runtime: RuntimeDep) -> QValues:
    """Q-values of raw item vectors for a raw user state vector (the bulk predict)."""
    version, q = await asyncio.to_thread(
        _rl(runtime).q_values, body.user_embedding, body.item_embeddings
    )
    return QValues(version=version, q_values=q.tolist())


@router.post(
    "/rank",
    tags=["dqn"],
    responses=error_responses(
        *BODY_ERRORS,
        described={404: _NO_MODEL, 422: "Bad lists, candidates without a vector, or not JSON"},
    ),
)
async def rank(body: RankRequest, runtime: RuntimeDep, features: FeaturesDep) -> RankedItems:
    """The candidates ordered by Q-value for the user's current state (recent items' Doc2Vec
    vectors and counters; a user without events has the all-zero state)."""
    recent = await features.recent_items(body.user_id, STATE_RECENT_ITEMS)
    stats = await features.user_stats(body.user_id)
    ranked = await asyncio.to_thread(_rl(runtime).rank, body.item_ids, recent, stats)
    return RankedItems(
        user_id=body.user_id,
        version=ranked.dqn_version,
        doc2vec_version=ranked.doc2vec_version,
        items=[RankedItem(item_id=i, q_value=q) for i, q in ranked.items],
    )


@router.post("/embeddings/doc2vec", tags=["doc2vec"], responses=_ERRORS)
async def embed(body: EmbedRequest, runtime: RuntimeDep) -> Embedding:
    """The Doc2Vec vector of one text (the same text always gives the same vector)."""
    version, vectors = await asyncio.to_thread(_rl(runtime).embed, [body.text])
    return Embedding(version=version, vector=vectors[0].tolist())


@router.post("/embeddings/doc2vec/bulk", tags=["doc2vec"], responses=_ERRORS)
async def embed_bulk(body: EmbedBulkRequest, runtime: RuntimeDep) -> Embeddings:
    """Doc2Vec vectors of up to 1,000 texts; row i equals the single call on ``texts[i]``."""
    version, vectors = await asyncio.to_thread(_rl(runtime).embed, body.texts)
    return Embeddings(version=version, vectors=vectors.tolist())

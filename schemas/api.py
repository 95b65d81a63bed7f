"""Request and response models of the HTTP API."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, Field, FiniteFloat


class EventsAccepted(BaseModel):
    accepted: int = Field(description="Events written to Kafka")
    by_topic: dict[str, int] = Field(description="Accepted events per topic")


class RecommendationModel(StrEnum):
    """Models that can serve recommendations; every one but popular answers from vectors."""

    POPULAR = "popular"
    MF = "mf"
    NCF = "ncf"
    WIDE_DEEP = "wide_deep"
    SASREC = "sasrec"
    CONTENT = "content"


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    title: str = ""
    genres: list[str] = Field(default_factory=list)
    q_value: float | None = Field(
        None, description="DQN Q-value with rerank=dqn; null otherwise or without a content vector"
    )


RerankPolicy = Literal["dqn"]  # policies that can re-order a base model's list


class RerankedBy(BaseModel):
    model: RerankPolicy = "dqn"
    version: int = Field(description="The dqn version whose Q-values ordered the list")


class Recommendations(BaseModel):
    request_id: str
    user_id: str
    model: RecommendationModel = Field(description="The model that really served the list")
    version: int | None = Field(None, description="Model version; null for popularity")
    requested_model: RecommendationModel | None = Field(None, description="The model asked for")
    fallback: bool = Field(
        False, description="True when the requested model could not serve (no user vector or "
        "nothing published) and popular items were served instead"
    )  # fmt: skip
    variant: str = "default"
    known_user: bool = Field(description="Whether the user has any events yet")
    state_age_ms: int | None = Field(
        None, description="Age in ms of the user state used: the user vector for vector models, "
        "the feature state for popular"
    )  # fmt: skip
    reranked_by: RerankedBy | None = Field(
        None, description="Set when rerank=dqn re-ordered the base model's candidates"
    )
    rerank_fallback: bool = Field(
        False, description="True when rerank was asked but no policy could serve: base order"
    )
    rerank_note: str | None = Field(None, description="Why the re-ranking was skipped")
    items: list[RecommendedItem]


class SimilarItems(BaseModel):
    request_id: str
    item_id: str
    model: RecommendationModel
    version: int
    items: list[RecommendedItem]


class HistoryItem(BaseModel):
    item_id: str
    title: str = ""


class UserHistory(BaseModel):
    user_id: str
    items: list[HistoryItem] = Field(description="Most recent first")
    ratings: int = 0
    clicks: int = 0
    impressions: int = 0
    mean_rating: float | None = None
    genre_affinity: dict[str, float] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    error: str = Field(description="A stable error code, e.g. invalid_input")
    message: str = Field(description="What went wrong and how to fix it")


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


# -- the DQN edge (api/routers/rl.py) ---------------------------------------------------------
MAX_BATCH = 1000  # items, vectors or texts per request
MAX_TEXT_CHARS = 10_000
Vector = Annotated[list[FiniteFloat], Field(min_length=1)]


class QValuesRequest(BaseModel):
    user_embedding: Vector = Field(description="The user state vector (the dqn state size)")
    item_embeddings: list[Vector] = Field(
        min_length=1, max_length=MAX_BATCH,
        description=f"1..{MAX_BATCH} item content vectors (the dqn item size)",
    )  # fmt: skip


class QValues(BaseModel):
    model: str = "dqn"
    version: int
    q_values: list[float] = Field(description="One per item embedding, in request order")


class RankRequest(BaseModel):
    user_id: str = Field(min_length=1, max_length=256)
    item_ids: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        min_length=1, max_length=MAX_BATCH,
        description=f"1..{MAX_BATCH} candidate item ids; duplicates are ranked once",
    )  # fmt: skip


class RankedItem(BaseModel):
    item_id: str
    q_value: float


class RankedItems(BaseModel):
    user_id: str
    model: str = "dqn"
    version: int = Field(description="The dqn version that scored the items")
    doc2vec_version: int = Field(description="The doc2vec version of the item vectors")
    items: list[RankedItem] = Field(description="Highest Q-value first")


Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]


class EmbedRequest(BaseModel):
    text: Text


class EmbedBulkRequest(BaseModel):
    texts: list[Text] = Field(min_length=1, max_length=MAX_BATCH)


class Embedding(BaseModel):
    model: str = "doc2vec"
    version: int
    vector: list[float]


class Embeddings(BaseModel):
    model: str = "doc2vec"
    version: int
    vectors: list[list[float]] = Field(description="One per text, in request order")

"""Request and response models of the HTTP API."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class EventsAccepted(BaseModel):
    accepted: int = Field(description="Events written to Kafka")
    by_topic: dict[str, int] = Field(description="Accepted events per topic")


class RecommendationModel(StrEnum):
    """Models that can serve recommendations (more arrive with the vector serving work)."""

    POPULAR = "popular"


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    title: str = ""
    genres: list[str] = Field(default_factory=list)


class Recommendations(BaseModel):
    request_id: str
    user_id: str
    model: RecommendationModel
    version: int | None = Field(None, description="Model version; null for popularity")
    variant: str = "default"
    known_user: bool = Field(description="Whether the user has any events yet")
    state_age_ms: int | None = Field(None, description="Age of the user state used, in ms")
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

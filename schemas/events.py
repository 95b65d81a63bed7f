"""Event models (pydantic v2): what apps publish and consumers read.

Every event has ``event_id`` (the idempotency key), ``user_id``, ``ts`` (event time, UTC) and a
schema ``version``. The ``type`` field discriminates the union, so one parser reads any topic.
External ids are strings; integers (MovieLens) are accepted and stringified.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from schemas.topics import Topic

SCHEMA_VERSION = 1
MAX_ID_LENGTH = 128


def _stringify_id(value: object) -> object:
    # MovieLens and most apps number users and items; ids are strings everywhere inside.
    if isinstance(value, bool):
        return value  # let str validation reject it with a clear message
    if isinstance(value, int):
        return str(value)
    return value


def _aware(value: datetime) -> datetime:
    # Naive times are taken as UTC. Aware ones keep their offset: everything downstream uses
    # .timestamp(), and converting every event (utcoffset() included) costs microseconds each.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


ExternalId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=r"^[^\s]+$"),
    BeforeValidator(_stringify_id),
]
EventTime = Annotated[datetime, AfterValidator(_aware)]


def _now() -> datetime:
    return datetime.now(UTC)


class EventBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    user_id: ExternalId
    ts: EventTime = Field(default_factory=_now)
    version: Literal[1] = SCHEMA_VERSION

    @property
    def topic(self) -> Topic:
        raise NotImplementedError

    @property
    def key(self) -> str:
        """Partition key: the user, so each user's events stay in order."""
        return self.user_id


class RatingEvent(EventBase):
    type: Literal["rating"] = "rating"
    item_id: ExternalId
    rating: Annotated[float, Field(ge=0.5, le=5.0)]

    @property
    def topic(self) -> Topic:
        return Topic.RATINGS


class ClickEvent(EventBase):
    type: Literal["click"] = "click"
    item_id: ExternalId
    request_id: str | None = Field(None, max_length=64)
    position: Annotated[int, Field(ge=0, le=10_000)] | None = None
    model: str | None = Field(None, max_length=64)
    variant: str | None = Field(None, max_length=64)

    @property
    def topic(self) -> Topic:
        return Topic.CLICKS


ExplorationMethod = Literal["greedy", "epsilon_greedy", "softmax"]
MAX_STATE_DIM = 4096


class PolicyLog(BaseModel):
    """What a re-ranking policy saw and did when it served a slate, logged with the slate.

    The online learner trains on exactly the state the policy acted on (no re-reading of
    features that have moved on since), and ``propensities`` let logged slates be evaluated
    off-policy later (inverse propensity scoring).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: str = Field("dqn", min_length=1, max_length=64)
    policy_version: int | None = Field(
        None, ge=1, description="The policy version that ordered the slate; None: no policy "
        "was active and the base order was served"
    )  # fmt: skip
    content_version: int = Field(ge=1, description="The doc2vec version behind `state`")
    state: Annotated[list[float], Field(min_length=1, max_length=MAX_STATE_DIM)]
    exploration: ExplorationMethod = "greedy"
    epsilon: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    temperature: Annotated[float, Field(gt=0.0)] | None = None
    propensities: Annotated[
        list[Annotated[float, Field(ge=0.0, le=1.0)]], Field(min_length=1, max_length=1000)
    ] = Field(description="Per shown item: the probability the policy put it at its position")


class ImpressionEvent(EventBase):
    type: Literal["impression"] = "impression"
    request_id: str = Field(min_length=1, max_length=64)
    item_ids: Annotated[list[ExternalId], Field(min_length=1, max_length=1000)]
    model: str = Field(min_length=1, max_length=64)
    model_version: int | None = Field(None, ge=1, description="Version of a vector model")
    variant: str = Field("default", min_length=1, max_length=64)
    policy: PolicyLog | None = Field(None, description="Set when a policy re-ranked the slate")

    @model_validator(mode="after")
    def _one_propensity_per_item(self) -> ImpressionEvent:
        if self.policy is not None and len(self.policy.propensities) != len(self.item_ids):
            raise ValueError(
                f"policy.propensities has {len(self.policy.propensities)} values for "
                f"{len(self.item_ids)} item_ids: give one per shown item"
            )
        return self

    @property
    def topic(self) -> Topic:
        return Topic.IMPRESSIONS


class ItemEvent(EventBase):
    """A catalog upsert. ``user_id`` is the publisher (an app or 'catalog'), not a viewer."""

    type: Literal["item"] = "item"
    user_id: ExternalId = "catalog"
    item_id: ExternalId
    title: str = Field("", max_length=500)
    genres: Annotated[list[str], Field(max_length=50)] = Field(default_factory=list)
    year: Annotated[int, Field(ge=1800, le=2200)] | None = None
    text: str = Field("", max_length=20_000)

    @property
    def topic(self) -> Topic:
        return Topic.ITEMS

    @property
    def key(self) -> str:
        return self.item_id


Event = Annotated[
    RatingEvent | ClickEvent | ImpressionEvent | ItemEvent, Field(discriminator="type")
]
EventAdapter: TypeAdapter[Event] = TypeAdapter(Event)
EventListAdapter: TypeAdapter[list[Event]] = TypeAdapter(list[Event])

INTERACTION_TYPES = ("rating", "click")


class DeadLetter(BaseModel):
    """What the DLQ topic carries: the original bytes and why they were rejected."""

    model_config = ConfigDict(extra="forbid")

    source_topic: str
    source_partition: int
    source_offset: int
    source_key: str | None
    consumer_group: str
    error: str
    payload: str  # the original bytes, decoded as UTF-8 with replacement
    failed_at: datetime = Field(default_factory=_now)


def describe_validation_error(exc: ValidationError) -> str:
    """One line per broken rule: ``rating: Input should be less than or equal to 5``."""
    parts = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{location}: {error['msg']} ({error['type']})")
    return "; ".join(parts)


class SourcedEvent(NamedTuple):
    """A valid event with the log coordinates it was read from."""

    event: Event
    topic: str
    partition: int
    offset: int
    published_ms: int = 0  # the Kafka record timestamp (producer time), for freshness

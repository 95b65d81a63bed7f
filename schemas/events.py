"""Event models (pydantic v2): what apps publish and consumers read.

Every event has ``event_id`` (the idempotency key), ``user_id``, ``ts`` (event time, UTC) and a
schema ``version``. The ``type`` field discriminates the union, so one parser reads any topic.
External ids are strings; integers (MovieLens) are accepted and stringified.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
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
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import JsonDict

from streamrec.schemas.numbers import ListedNumber, NotBool
from streamrec.schemas.topics import Topic

SCHEMA_VERSION: Literal[1] = 1
MAX_ID_LENGTH = 128
# What an id may not contain: whitespace and control characters (C0, DEL, C1). Redis keys are
# built so that no id can name another key (stores/features.py), so ':' and '{' are fine.
_FORBIDDEN_IN_ID = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
ID_PATTERN = r"^[^\s\x00-\x1f\x7f-\x9f]+$"  # the same rule, for the JSON schema


@dataclass
class EventTimeBounds:
    """Which event times are accepted: from ``floor`` to ``max_future_seconds`` past now.

    Far-future times would move the popularity decay's landmark past every real event (and
    freeze popularity); times before the floor are clock or parsing errors. Configured once per
    process from Settings (``configure_event_time_bounds``); the defaults hold otherwise.
    """

    floor: datetime = datetime(1970, 1, 1, tzinfo=UTC)
    max_future_seconds: float = 3600.0
    clock: Callable[[], float] = time.time


EVENT_TIME_BOUNDS = EventTimeBounds()


def configure_event_time_bounds(floor: datetime, max_future_seconds: float) -> None:
    """Set the accepted event-time range for this process (called by the service factory)."""
    EVENT_TIME_BOUNDS.floor = _aware(floor)
    EVENT_TIME_BOUNDS.max_future_seconds = max_future_seconds


# Integer ids are JSON's safe integers: every JSON parser (JavaScript's too) reads them
# exactly, and so does every tool that checks the published bounds as doubles.
MAX_INTEGER_ID = 2**53 - 1


def _stringify_id(value: object) -> object:
    # MovieLens and most apps number users and items; ids are strings everywhere inside.
    if isinstance(value, bool):
        return value  # let str validation reject it with a clear message
    if isinstance(value, float) and value.is_integer():
        # JSON does not tell 396 from 396.0 (the schema's "integer" accepts both), and some
        # encoders write one for the other: the same id.
        value = int(value)
    if isinstance(value, int):
        if abs(value) > MAX_INTEGER_ID:
            raise ValueError(
                f"integer ids are at most {MAX_INTEGER_ID} in magnitude (2^53 - 1): send a "
                "larger one as a string"
            )
        return str(value)
    return value


def _printable_id(value: str) -> str:
    found = _FORBIDDEN_IN_ID.search(value)
    if found is not None:
        raise ValueError(
            f"ids may not contain whitespace or control characters: found "
            f"U+{ord(found.group()):04X} at position {found.start()}"
        )
    return value


def _aware(value: datetime) -> datetime:
    # Naive times are taken as UTC. Aware ones keep their offset: everything downstream uses
    # .timestamp(), and converting every event (utcoffset() included) costs microseconds each.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _bounded_time(value: datetime) -> datetime:
    value = _aware(value)
    bounds = EVENT_TIME_BOUNDS
    if value < bounds.floor:
        raise ValueError(
            f"{value.isoformat()} is before the earliest accepted event time "
            f"{bounds.floor.isoformat()} (STREAMREC_EVENT_TIME_FLOOR)"
        )
    ahead = value.timestamp() - bounds.clock()
    if ahead > bounds.max_future_seconds:
        raise ValueError(
            f"{value.isoformat()} is {ahead:.0f} s in the future; at most "
            f"{bounds.max_future_seconds:.0f} s are accepted (STREAMREC_EVENT_MAX_FUTURE_SECONDS)"
        )
    return value


ExternalId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH),
    BeforeValidator(_stringify_id),
    AfterValidator(_printable_id),
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_ID_LENGTH,
                    "pattern": ID_PATTERN,
                },
                # Integers (MovieLens numbers its users and items) are taken as their decimal
                # string.
                {"type": "integer", "minimum": -MAX_INTEGER_ID, "maximum": MAX_INTEGER_ID},
            ]
        }
    ),
]


def _iso_time(value: object) -> object:
    # Pydantic would read a number as Unix seconds, or milliseconds past 2e10: ambiguous, and
    # not what the schema says (an RFC 3339 date-time string).
    if isinstance(value, int | float):
        raise ValueError(
            "give an RFC 3339 date-time string (e.g. 2026-01-01T00:00:00Z), not a number"
        )
    return value


EventTime = Annotated[datetime, BeforeValidator(_iso_time), AfterValidator(_bounded_time)]


def _now() -> datetime:
    return datetime.now(UTC)


def _type_required(schema: JsonDict) -> None:
    # `type` has a default for Python callers, but a JSON event must carry it: it is the tag
    # that picks the event class, so the schema says it is required.
    required = schema.setdefault("required", [])
    if isinstance(required, list) and "type" not in required:
        required.append("type")


class EventBase(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        str_strip_whitespace=True,
        json_schema_extra=_type_required,
    )

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    user_id: ExternalId
    ts: EventTime = Field(default_factory=_now)
    version: Annotated[Literal[1], NotBool] = SCHEMA_VERSION

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
    rating: Annotated[float, Field(ge=0.5, le=5.0), NotBool]

    @property
    def topic(self) -> Topic:
        return Topic.RATINGS


class ClickEvent(EventBase):
    type: Literal["click"] = "click"
    item_id: ExternalId
    request_id: str | None = Field(None, max_length=64)
    position: Annotated[int, Field(ge=0, le=10_000), NotBool] | None = None
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
    # NotBool after the bounds, so that the schema still states them (minimum, maximum).
    policy_version: Annotated[int, Field(ge=1), NotBool] | None = Field(
        None,
        description="The policy version that ordered the slate; None: no policy "
        "was active and the base order was served",
    )
    content_version: Annotated[int, NotBool] = Field(
        ge=1, description="The doc2vec version behind `state`"
    )
    state: Annotated[list[ListedNumber], Field(min_length=1, max_length=MAX_STATE_DIM)]
    exploration: ExplorationMethod = "greedy"
    epsilon: Annotated[float, Field(ge=0.0, le=1.0), NotBool] | None = None
    temperature: Annotated[float, Field(gt=0.0), NotBool] | None = None
    propensities: Annotated[
        list[Annotated[ListedNumber, Field(ge=0.0, le=1.0)]], Field(min_length=1, max_length=1000)
    ] = Field(description="Per shown item: the probability the policy put it at its position")


class ImpressionEvent(EventBase):
    type: Literal["impression"] = "impression"
    request_id: str = Field(min_length=1, max_length=64)
    item_ids: Annotated[list[ExternalId], Field(min_length=1, max_length=1000)]
    model: str = Field(min_length=1, max_length=64)
    model_version: Annotated[int, Field(ge=1), NotBool] | None = Field(
        None, description="Version of a vector model"
    )
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
    year: Annotated[int, Field(ge=1800, le=2200), NotBool] | None = None
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
    """A record a consumer could not use: its exact bytes, where it came from and why.

    ``payload`` and ``source_key`` are the original value and key byte for byte (``None`` for a
    null one), never decoded: a dead letter is evidence, and ``streamrec dlq replay`` publishes
    it again unchanged. On the DLQ topic (``consumers.dlq``) the record *is* those bytes and the
    rest travels in headers; in JSON (``streamrec dlq list --json``) bytes are base64.
    """

    model_config = ConfigDict(extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    source_topic: str
    source_partition: int
    source_offset: int
    source_timestamp_ms: int = -1  # the source record's timestamp (-1: unknown)
    source_key: bytes | None
    consumer_group: str
    error: str
    payload: bytes | None
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

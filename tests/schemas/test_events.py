"""Event models: what is accepted, and errors that name the field and the rule."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from schemas.events import (
    EventAdapter,
    ImpressionEvent,
    ItemEvent,
    RatingEvent,
    describe_validation_error,
)
from schemas.topics import Topic


def test_integer_ids_are_stringified_and_defaults_filled() -> None:
    event = EventAdapter.validate_python(
        {"type": "rating", "user_id": 7, "item_id": 42, "rating": 4}
    )
    assert isinstance(event, RatingEvent)
    assert (event.user_id, event.item_id, event.rating) == ("7", "42", 4.0)
    assert isinstance(event.event_id, uuid.UUID)
    assert event.ts.tzinfo is not None and event.version == 1
    assert event.topic is Topic.RATINGS and event.key == "7"


def test_naive_times_are_utc_and_aware_times_keep_their_instant() -> None:
    naive = RatingEvent(user_id="u", item_id="i", rating=3, ts=datetime(2024, 1, 1, 12))
    assert naive.ts == datetime(2024, 1, 1, 12, tzinfo=UTC)
    paris = timezone(timedelta(hours=1))
    aware = RatingEvent(
        user_id="u", item_id="i", rating=3, ts=datetime(2024, 1, 1, 13, tzinfo=paris)
    )
    assert aware.ts.timestamp() == naive.ts.timestamp()


@pytest.mark.parametrize(
    ("payload", "field", "rule"),
    [
        ({"rating": 9}, "rating", "less than or equal to 5"),
        ({"rating": 0.1}, "rating", "greater than or equal to 0.5"),
        ({"rating": "lots"}, "rating", "valid number"),
        ({"user_id": ""}, "user_id", "at least 1 character"),
        ({"user_id": "has space"}, "user_id", "match pattern"),
        ({"user_id": True}, "user_id", "valid string"),
        ({"color": "red"}, "color", "Extra inputs are not permitted"),
        ({"version": 2}, "version", "Input should be 1"),
    ],
)
def test_rating_errors_name_field_and_rule(payload: dict, field: str, rule: str) -> None:
    base = {"type": "rating", "user_id": "u1", "item_id": "i1", "rating": 4}
    with pytest.raises(ValidationError) as info:
        EventAdapter.validate_python({**base, **payload})
    message = describe_validation_error(info.value)
    assert field in message and rule in message, message


def test_unknown_event_type_is_named() -> None:
    with pytest.raises(ValidationError) as info:
        EventAdapter.validate_json(b'{"type": "purchase", "user_id": "u"}')
    assert "purchase" in describe_validation_error(info.value)


def test_impression_needs_items_and_keys_by_user() -> None:
    with pytest.raises(ValidationError) as info:
        ImpressionEvent(user_id="u", request_id="r", item_ids=[], model="popular")
    assert "item_ids" in describe_validation_error(info.value)
    ok = ImpressionEvent(user_id="u", request_id="r", item_ids=[1, 2], model="popular")
    assert ok.item_ids == ["1", "2"] and ok.variant == "default" and ok.key == "u"


def test_item_events_are_keyed_by_item() -> None:
    item = ItemEvent(item_id="m1", title="Heat (1995)", genres=["Crime"])
    assert item.topic is Topic.ITEMS and item.key == "m1" and item.user_id == "catalog"


def test_json_round_trip_is_lossless() -> None:
    event = RatingEvent(user_id="u", item_id="i", rating=3.5)
    assert EventAdapter.validate_json(event.model_dump_json()) == event

"""Event models: what is accepted, and errors that name the field and the rule."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from streamrec.schemas.events import (
    EVENT_TIME_BOUNDS,
    EventAdapter,
    ImpressionEvent,
    ItemEvent,
    RatingEvent,
    describe_validation_error,
)
from streamrec.schemas.topics import Topic


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
        ({"user_id": "has space"}, "user_id", "whitespace or control characters: found U+0020"),
        ({"item_id": "a\x00b"}, "item_id", "found U+0000 at position 1"),
        ({"item_id": "tab\tin"}, "item_id", "found U+0009"),
        ({"user_id": "x" * 129}, "user_id", "at most 128 characters"),
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


def test_ids_may_hold_key_separators() -> None:
    """Any printable id is an id: Redis keys are built so that ':' and braces are safe."""
    for user in ("196:seen", "196:seq", "{196}", "a}b{c", "ü:∞"):
        event = RatingEvent(user_id=user, item_id="i1", rating=3)
        assert event.user_id == user


@pytest.fixture
def frozen_clock() -> Iterator[float]:
    """The bounds read a clock: fix it so that "the future" does not move under the test."""
    now = datetime(2026, 6, 1, tzinfo=UTC).timestamp()
    saved = EVENT_TIME_BOUNDS.clock
    EVENT_TIME_BOUNDS.clock = lambda: now
    yield now
    EVENT_TIME_BOUNDS.clock = saved


@pytest.mark.parametrize(
    ("ts", "rule"),
    [
        ("9999-12-31T23:59:59Z", "in the future; at most 3600 s are accepted"),
        ("2026-06-01T01:00:01Z", "3601 s in the future"),
        ("0001-01-01T00:00:00Z", "before the earliest accepted event time 1970-01-01"),
        ("1969-12-31T23:59:59Z", "STREAMREC_EVENT_TIME_FLOOR"),
    ],
)
def test_event_times_out_of_bounds_are_rejected_with_the_bound(
    frozen_clock: float, ts: str, rule: str
) -> None:
    raw = f'{{"type": "rating", "user_id": "x", "item_id": "y", "rating": 5, "ts": "{ts}"}}'
    with pytest.raises(ValidationError) as info:
        EventAdapter.validate_json(raw)
    message = describe_validation_error(info.value)
    assert "ts" in message and rule in message, message


def test_event_times_within_bounds_are_accepted(frozen_clock: float) -> None:
    for ts in ("1970-01-01T00:00:00Z", "1997-09-20T03:05:10Z", "2026-06-01T01:00:00Z"):
        raw = f'{{"type": "click", "user_id": "x", "item_id": "y", "ts": "{ts}"}}'
        assert EventAdapter.validate_json(raw).ts.year in (1970, 1997, 2026)


@pytest.mark.parametrize("value", ["true", '"0.5"'])
def test_a_policy_log_takes_numbers_only(value: str) -> None:
    """A logged state and its propensities are JSON numbers: booleans and numeric strings are
    refused (pydantic's lax mode would read them as 1 and 0.5), integers are numbers."""
    base = (
        '{"type": "impression", "user_id": "u", "request_id": "r", "item_ids": ["a"], '
        '"model": "mf", "policy": {"content_version": 1, "state": [0, %s], "propensities": [%s]}}'
    )
    with pytest.raises(ValidationError) as state_error:
        EventAdapter.validate_json(base % (value, "1"))
    assert "policy.state.1" in describe_validation_error(state_error.value)
    with pytest.raises(ValidationError) as propensity_error:
        EventAdapter.validate_json(base % ("1", value))
    assert "policy.propensities.0" in describe_validation_error(propensity_error.value)
    event = EventAdapter.validate_json(base % ("1", "1"))
    assert isinstance(event, ImpressionEvent) and event.policy is not None
    assert event.policy.state == [0.0, 1.0] and event.policy.propensities == [1.0]

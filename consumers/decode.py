"""Turn a batch of raw Kafka records into valid events and dead letters.

A consumer never dies on bad input: every record is either a valid event for its topic or a
``DeadLetter`` carrying the original bytes, its coordinates and the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from streamrec.schemas.events import (
    DeadLetter,
    Event,
    EventAdapter,
    SourcedEvent,
    describe_validation_error,
)
from streamrec.schemas.topics import Topic
from streamrec.stores.features import STATE_CONFLICT

# Which event type each topic carries; anything else on a topic is misrouted.
TOPIC_EVENT_TYPE = {
    Topic.RATINGS.value: "rating",
    Topic.CLICKS.value: "click",
    Topic.IMPRESSIONS.value: "impression",
    Topic.ITEMS.value: "item",
}


@dataclass
class DecodedBatch:
    events: list[SourcedEvent] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    # Highest offset seen per (topic, partition), valid or not: all of it is handled.
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    # The record each event was read from (by the event's identity), to dead-letter its exact
    # bytes if the event later turns out to be unappliable.
    records: dict[int, Any] = field(default_factory=dict)

    def dead_letters_of(
        self, group: str, rejected: Sequence[tuple[SourcedEvent, str]]
    ) -> list[DeadLetter]:
        """Dead letters for events of this batch that could not be applied."""
        return [dead_letter(self.records[id(s)], group, reason) for s, reason in rejected]


def _validate(record: Any) -> Event | str:
    """The record's event, or the reason it cannot be an event of its topic."""
    expected = TOPIC_EVENT_TYPE.get(record.topic)
    if expected is None:
        return f"topic {record.topic} carries no streamrec events"
    if record.value is None:
        return "empty message (null value)"
    try:
        event = EventAdapter.validate_json(record.value)
    except ValidationError as exc:
        return describe_validation_error(exc)
    if event.type != expected:
        return (
            f"event type '{event.type}' does not belong on topic {record.topic} "
            f"(expects '{expected}')"
        )
    return event


def decode_batch(records: Sequence[Any], group: str) -> DecodedBatch:
    """Validate each aiokafka ``ConsumerRecord``; keep order within each partition."""
    batch = DecodedBatch()
    for record in records:
        key = (record.topic, record.partition)
        batch.positions[key] = max(batch.positions.get(key, -1), record.offset)
        outcome = _validate(record)
        if not isinstance(outcome, str):
            sourced = SourcedEvent(
                outcome, record.topic, record.partition, record.offset, record.timestamp
            )
            batch.events.append(sourced)
            batch.records[id(sourced)] = record
            continue
        batch.dead.append(dead_letter(record, group, outcome))
    return batch


def dead_letter(record: Any, group: str, error: str) -> DeadLetter:
    """The dead letter of one aiokafka ``ConsumerRecord``: its exact bytes and the reason."""
    return DeadLetter(
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        source_timestamp_ms=record.timestamp,
        source_key=record.key,  # the exact bytes: never decoded (binary-safe)
        consumer_group=group,
        error=error,
        payload=record.value,
    )


def dead_letter_kind(letter: DeadLetter) -> str:
    """A short, bounded label for metrics (the full reason stays in the DLQ message)."""
    error = letter.error
    if error.startswith("empty message"):
        return "empty"
    if "json_invalid" in error:
        return "malformed_json"
    if "union_tag_invalid" in error or "union_tag_not_found" in error:
        return "unknown_type"
    if "does not belong on topic" in error:
        return "wrong_topic"
    if error.startswith(STATE_CONFLICT):
        return "state_conflict"
    return "invalid"

"""Decoding a batch: valid events keep their coordinates; bad ones become dead letters."""

from __future__ import annotations

import json
from dataclasses import dataclass

from streamrec.consumers.decode import dead_letter_kind, decode_batch
from streamrec.schemas.events import RatingEvent


@dataclass
class Record:  # the fields of aiokafka's ConsumerRecord that decoding reads
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 1_700_000_000_000


def _rating(**overrides: object) -> bytes:
    return json.dumps(
        {"type": "rating", "user_id": "u", "item_id": "i", "rating": 4, **overrides}
    ).encode()


def test_each_kind_of_bad_input_gets_a_reason() -> None:
    records = [
        Record("streamrec.ratings", 0, 0, b"u", _rating()),
        Record("streamrec.ratings", 0, 1, b"u", b'{"type": "rat'),
        Record("streamrec.ratings", 0, 2, b"u", _rating(rating="x")),
        Record("streamrec.ratings", 0, 3, b"u", _rating(rating=9)),
        Record("streamrec.ratings", 0, 4, b"u", _rating(type="purchase")),
        Record("streamrec.clicks", 1, 7, b"u", _rating()),
        Record("streamrec.ratings", 0, 5, None, None),
        Record("streamrec.ratings", 2, 9, b"v", _rating(user_id="v")),
    ]
    batch = decode_batch(records, "g")
    assert [(s.topic, s.partition, s.offset) for s in batch.events] == [
        ("streamrec.ratings", 0, 0),
        ("streamrec.ratings", 2, 9),
    ]
    assert isinstance(batch.events[0].event, RatingEvent)
    assert batch.events[0].published_ms == 1_700_000_000_000
    kinds = [dead_letter_kind(d) for d in batch.dead]
    assert kinds == ["malformed_json", "invalid", "invalid", "unknown_type", "wrong_topic", "empty"]
    assert "rating" in batch.dead[2].error and "less than or equal to 5" in batch.dead[2].error
    assert "does not belong on topic streamrec.clicks" in batch.dead[4].error
    assert batch.dead[0].payload == b'{"type": "rat' and batch.dead[0].source_offset == 1
    assert batch.positions == {
        ("streamrec.ratings", 0): 5,
        ("streamrec.clicks", 1): 7,
        ("streamrec.ratings", 2): 9,
    }


def test_undecodable_bytes_are_kept_exactly() -> None:
    batch = decode_batch([Record("streamrec.ratings", 0, 0, b"\xff", b"\xff\xfe\x00")], "g")
    assert batch.dead[0].payload == b"\xff\xfe\x00" and batch.dead[0].source_key == b"\xff"

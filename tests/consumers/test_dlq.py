"""The DLQ on the embedded broker: dead letters keep the original bytes exactly, and
``streamrec dlq replay`` gives chosen ones back to their source topic at most once."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer

from streamrec.consumers import decode
from streamrec.consumers.app import build_consumer_broker
from streamrec.consumers.dlq import Selection, read_dead_letters, replay_dead_letters
from streamrec.core.metrics import Metrics
from streamrec.schemas.events import RatingEvent
from streamrec.schemas.topics import ConsumerGroup, Topic
from streamrec.stores.dlq_replays import DlqReplayLog
from streamrec.stores.features import user_key
from tests.conftest import consume_until_drained, wait_until

pytestmark = pytest.mark.kafka
FEATURES = ConsumerGroup.FEATURES.value


async def _produce(services, records: list[tuple[bytes | None, bytes | None]]) -> None:  # type: ignore[no-untyped-def]
    producer = AIOKafkaProducer(bootstrap_servers=services.kafka_bootstrap)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(Topic.RATINGS.value, value, key=key)
    finally:
        await producer.stop()


async def _dead_letters(services, expected: int):  # type: ignore[no-untyped-def]
    found = []

    async def arrived() -> bool:
        found[:] = await read_dead_letters(services.kafka_bootstrap)
        return len(found) >= expected

    await wait_until(arrived)
    return found


async def test_dead_letters_keep_the_original_bytes_exactly(services, stores) -> None:  # type: ignore[no-untyped-def]
    # Not UTF-8 (\xff, a lone continuation byte), a null byte, and a JSON-looking prefix.
    value = b'{"type": "rating", "user_id": "\xff\xfe\x00", "rating": \x80}'
    key = b"\xc3\x28k\x00ey"  # an invalid UTF-8 sequence in the key too
    tombstone_key = b"\xfftomb"
    await _produce(services, [(key, value), (tombstone_key, None)])

    await consume_until_drained(stores, [ConsumerGroup.FEATURES])

    letters = await _dead_letters(services, expected=2)
    by_key = {stored.letter.source_key: stored for stored in letters}
    binary = by_key[key].letter
    assert binary.payload == value  # byte for byte: no U+FFFD anywhere
    assert binary.source_key == key
    assert binary.source_topic == Topic.RATINGS.value
    assert binary.consumer_group == FEATURES
    assert "Invalid JSON" in binary.error  # the reason stays readable
    assert by_key[key].kind == "malformed_json"
    empty = by_key[tombstone_key].letter
    assert empty.payload is None  # a null value stays null, not b""
    assert by_key[tombstone_key].kind == "empty"
    # In JSON (`streamrec dlq list --json`) the bytes travel as base64 and come back exact.
    again = type(binary).model_validate_json(binary.model_dump_json())
    assert again.payload == value and again.source_key == key


async def test_replay_after_a_fix_applies_the_event_once(
    services, stores, engine, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    event = RatingEvent(user_id="replayed", item_id="i1", rating=4)
    validate = decode._validate

    def buggy(record):  # type: ignore[no-untyped-def]
        # The defect being fixed: a rule that wrongly rejected this user's ratings.
        outcome = validate(record)
        if isinstance(outcome, RatingEvent) and outcome.user_id == "replayed":
            return "user_id: rejected by a rule that turned out wrong"
        return outcome

    monkeypatch.setattr(decode, "_validate", buggy)
    await _produce(services, [(b"replayed", event.model_dump_json().encode())])
    await consume_until_drained(stores, [ConsumerGroup.FEATURES])
    [stored] = await _dead_letters(services, expected=1)
    assert await services.redis.hget(user_key("replayed"), "ratings") is None

    monkeypatch.setattr(decode, "_validate", validate)  # the fix is deployed
    seen: list[tuple[str, int, int]] = []
    summary = await replay_dead_letters(
        services.kafka_bootstrap,
        DlqReplayLog(engine),
        Selection(topics=frozenset({Topic.RATINGS.value})),
        on_progress=lambda phase, done, total: seen.append((phase, done, total)),
    )
    assert (summary.letters, summary.records, summary.published) == (1, 1, 1), summary
    assert summary.already == [] and summary.unconfirmed == []
    assert ("publishing", 1, 1) in seen  # progress carries the true total
    await consume_until_drained(stores, [ConsumerGroup.FEATURES])
    assert await services.redis.hget(user_key("replayed"), "ratings") == "1"

    again = await replay_dead_letters(
        services.kafka_bootstrap,
        DlqReplayLog(engine),
        Selection(at=frozenset({(stored.dlq_partition, stored.dlq_offset)})),
    )
    assert again.published == 0
    assert again.already == [stored.source]  # skipped, and said so
    dry = await replay_dead_letters(
        services.kafka_bootstrap, DlqReplayLog(engine), Selection(), dry_run=True
    )
    assert dry.published == 0 and dry.already == [stored.source]


async def test_replay_publishes_a_record_rejected_by_several_groups_once(
    services, stores, engine
) -> None:  # type: ignore[no-untyped-def]
    # Both groups dead-letter the same malformed record: one source record, one replay.
    await _produce(services, [(b"k", b"not json")])
    broker = build_consumer_broker(
        stores, Metrics(), [ConsumerGroup.FEATURES, ConsumerGroup.ARCHIVE]
    )
    groups = {FEATURES, ConsumerGroup.ARCHIVE.value}
    letters: list = []

    async def both_groups_dead_lettered() -> bool:
        # The DLQ is at-least-once (a redelivered batch is dead-lettered again): wait for both
        # groups' letters rather than for a count.
        letters[:] = await read_dead_letters(services.kafka_bootstrap)
        return {s.letter.consumer_group for s in letters} == groups

    await broker.start()
    try:
        await wait_until(both_groups_dead_lettered)
    finally:
        await broker.stop()
    letters[:] = await read_dead_letters(services.kafka_bootstrap)

    summary = await replay_dead_letters(services.kafka_bootstrap, DlqReplayLog(engine), Selection())
    assert summary.letters == len(letters) >= 2, summary
    assert (summary.records, summary.published) == (1, 1), summary
    # What went back is exactly what came: same key, same bytes.
    assert {s.letter.payload for s in letters} == {b"not json"}

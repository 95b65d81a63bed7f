"""Publishing dead letters to ``streamrec.dlq``."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from faststream.kafka import KafkaBroker

from consumers.decode import dead_letter_kind
from core.metrics import Metrics
from schemas.events import DeadLetter
from schemas.topics import Topic

log = logging.getLogger(__name__)


class DeadLetterSink:
    def __init__(self, broker: KafkaBroker, metrics: Metrics) -> None:
        self._broker = broker
        self._metrics = metrics

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        for letter in letters:
            await self._broker.publish(
                letter.model_dump_json().encode(),
                topic=Topic.DLQ.value,
                key=letter.source_key.encode() if letter.source_key else None,
                headers={"content-type": "application/json"},
            )
            kind = dead_letter_kind(letter)
            self._metrics.dead_letters.labels(
                letter.consumer_group, letter.source_topic, kind
            ).inc()
            log.warning(
                "dead letter from %s[%d]@%d (%s): %s",
                letter.source_topic,
                letter.source_partition,
                letter.source_offset,
                letter.consumer_group,
                letter.error,
            )

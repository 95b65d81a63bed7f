"""The Python SDK for publishing events: ``EventPublisher`` (async) and ``SyncEventPublisher``.

    async with EventPublisher(["localhost:9092"]) as publisher:
        await publisher.publish(RatingEvent(user_id="42", item_id="7", rating=4.5))
        await publisher.publish_many(events)   # batched: one flush for the lot

    with SyncEventPublisher(["localhost:9092"]) as publisher:
        publisher.publish(ClickEvent(user_id="42", item_id="7"))

Each event goes to its topic (``event.topic``), keyed by user (items by item id) so a user's
events stay in order. The producer is idempotent (no duplicates from its own retries) with
``acks=all``; sends that still fail are retried with exponential backoff, and what fails after
the last retry raises ``PublishError`` saying how many events were lost.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine, Iterable, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Self, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from core.errors import PublishError, ServiceUnavailable
from core.metrics import Metrics
from schemas.events import Event

log = logging.getLogger(__name__)
T = TypeVar("T")


def encode(event: Event) -> tuple[str, bytes, bytes]:
    """(topic, key, value) of an event as it is written to Kafka."""
    return event.topic.value, event.key.encode(), event.model_dump_json().encode()


class EventPublisher:
    """Asynchronous, batching, retrying publisher. Start it (or ``async with``) before use."""

    def __init__(
        self,
        bootstrap_servers: Sequence[str],
        *,
        retries: int = 5,
        backoff_seconds: float = 0.1,
        linger_ms: int = 5,
        metrics: Metrics | None = None,
        client_id: str = "streamrec-publisher",
    ) -> None:
        self._bootstrap = list(bootstrap_servers)
        self._retries = retries
        self._backoff = backoff_seconds
        self._metrics = metrics
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=linger_ms,
            max_batch_size=256 * 1024,
            request_timeout_ms=15_000,
        )
        self._started = False

    @property
    def started(self) -> bool:
        return self._started

    async def start(self) -> None:
        try:
            await self._producer.start()
        except KafkaError as exc:
            await self._producer.stop()
            raise ServiceUnavailable(
                f"Kafka at {','.join(self._bootstrap)} did not answer: {exc}"
            ) from exc
        self._started = True

    async def stop(self) -> None:
        if self._started:
            await self._producer.stop()
            self._started = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def publish(self, event: Event) -> None:
        await self.publish_many([event])

    async def publish_many(self, events: Iterable[Event]) -> int:
        """Publish events and wait until Kafka has them all; returns how many were written."""
        pending = [encode(e) for e in events]
        written = 0
        delay = self._backoff
        for attempt in range(self._retries + 1):
            failed = await self._send_all(pending)
            written += len(pending) - len(failed)
            if not failed:
                return written
            if attempt == self._retries:
                break
            log.warning(
                "%d events not acknowledged, retry %d/%d in %.2fs",
                len(failed),
                attempt + 1,
                self._retries,
                delay,
            )
            await asyncio.sleep(delay)
            delay *= 2
            pending = failed
        raise PublishError(
            f"{len(failed)} of {written + len(failed)} events were not written to Kafka "
            f"after {self._retries} retries",
            failed=len(failed),
        )

    async def _send_all(self, pending: list[tuple[str, bytes, bytes]]) -> list:
        """Send everything, then wait once: aiokafka batches sends per partition meanwhile."""
        sends = []
        for topic, key, value in pending:
            try:
                sends.append(await self._producer.send(topic, value=value, key=key))
            except KafkaError as exc:
                sends.append(exc)
        outcomes = await asyncio.gather(
            *(s for s in sends if not isinstance(s, BaseException)), return_exceptions=True
        )
        results = iter(outcomes)
        failed = []
        for message, send in zip(pending, sends, strict=True):
            outcome = send if isinstance(send, BaseException) else next(results)
            if isinstance(outcome, BaseException):
                failed.append(message)
            elif self._metrics is not None:
                self._metrics.events_published.labels(message[0]).inc()
        return failed


class SyncEventPublisher:
    """A blocking facade over ``EventPublisher``: its event loop runs in a daemon thread."""

    def __init__(self, bootstrap_servers: Sequence[str], **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="streamrec-publisher"
        )
        self._thread.start()
        self._publisher = self._run(self._create(bootstrap_servers, options))

    @staticmethod
    async def _create(bootstrap_servers: Sequence[str], options: dict) -> EventPublisher:
        publisher = EventPublisher(bootstrap_servers, **options)
        await publisher.start()
        return publisher

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result()

    def publish(self, event: Event) -> None:
        self._run(self._publisher.publish(event))

    def publish_many(self, events: Iterable[Event]) -> int:
        return self._run(self._publisher.publish_many(list(events)))

    def close(self) -> None:
        if self._loop.is_running():
            self._run(self._publisher.stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

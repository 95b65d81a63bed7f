"""The Python SDK for publishing events: ``EventPublisher`` (async) and ``SyncEventPublisher``.

    async with EventPublisher(["localhost:9092"]) as publisher:
        await publisher.publish(RatingEvent(user_id="42", item_id="7", rating=4.5))
        await publisher.publish_many(events)   # batched: one flush for the lot

    with SyncEventPublisher(["localhost:9092"]) as publisher:
        publisher.publish(ClickEvent(user_id="42", item_id="7"))

    publisher.publish_later(impression)        # buffered, never waits (the API's impressions)

Each event goes to its topic (``event.topic``), keyed by user (items by item id) so a user's
events stay in order. The producer is idempotent (no duplicates from its own retries) with
``acks=all``; sends that still fail are retried with exponential backoff. What is not
acknowledged after the last retry, or by the optional timeout, raises ``PublishError`` saying
how many Kafka acknowledged and carrying every event id, so the batch can be re-sent safely.

``publish_later`` is for telemetry a request must not wait for (the impression of a served
list): it appends to a bounded in-memory buffer and returns; one background task sends what
has accumulated as one ``publish_many`` batch. Such events are at most once: those still
buffered when the process dies are lost, and when the buffer is full (Kafka slow or down) the
newest are dropped; both are logged and counted (``streamrec_events_dropped``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Coroutine, Iterable, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Self, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streamrec.core.errors import PublishError, ServiceUnavailable
from streamrec.core.metrics import Metrics
from streamrec.schemas.events import Event

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
        timeout_seconds: float | None = None,
        buffer_size: int = 10_000,
    ) -> None:
        """``timeout_seconds`` bounds each ``publish_many`` call, retries included, and how long
        ``stop`` waits for events still in flight. None: nothing does, and with Kafka gone they
        wait until it is back (the idempotent producer never gives up on a send it began).
        ``buffer_size``: how many ``publish_later`` events may wait to be sent."""
        self._bootstrap = list(bootstrap_servers)
        self._retries = retries
        self._timeout = timeout_seconds
        self._backoff = backoff_seconds
        self._metrics = metrics
        self._producer_options: dict[str, Any] = {
            "bootstrap_servers": self._bootstrap,
            "client_id": client_id,
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": linger_ms,
            "max_batch_size": 256 * 1024,
            "request_timeout_ms": 15_000,
        }
        self._producer = AIOKafkaProducer(**self._producer_options)
        self._started = False
        self._spent = False  # the producer has been started or stopped once
        self._later: deque[Event] = deque()
        self._later_limit = buffer_size
        self._later_ready = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._closing = False
        self._drop_logged = -math.inf

    @property
    def started(self) -> bool:
        return self._started

    async def start(self) -> None:
        if self._started:
            return
        if self._spent:
            # A stopped aiokafka producer (one whose start failed too) cannot start again:
            # its sends would all fail with ProducerClosed.
            self._producer = AIOKafkaProducer(**self._producer_options)
        self._spent = True
        try:
            await self._producer.start()
        except KafkaError as exc:
            await self._producer.stop()
            raise ServiceUnavailable(
                f"Kafka at {','.join(self._bootstrap)} did not answer: {exc}"
            ) from exc
        except BaseException:
            # Cancelled (a signal during start-up): close what started, then let it through.
            await asyncio.shield(self._producer.stop())
            raise
        self._started = True
        self._later_ready = asyncio.Event()  # bound to the loop this publisher runs on
        self._closing = False
        self._sender = asyncio.create_task(self._send_later(), name="streamrec-publish-later")

    async def stop(self) -> None:
        """Flush what is in flight and close; with Kafka gone, give up on it after
        ``timeout_seconds`` (logged) rather than wait for Kafka to come back."""
        if not self._started:
            return
        deadline = asyncio.timeout(self._timeout)
        try:
            async with deadline:
                await self._stop_sender()
                self._started = False
                await self._producer.stop()
        except TimeoutError:
            if not deadline.expired():
                raise
            self._started = False
            log.warning(
                "Kafka at %s did not acknowledge the events in flight within %gs of stopping; "
                "they may be lost",
                ",".join(self._bootstrap),
                self._timeout,
            )
        finally:
            if self._sender is not None and not self._sender.done():
                self._sender.cancel()
            self._drop_buffered("stopped")

    async def _stop_sender(self) -> None:
        """Let the background sender send what is buffered, then end."""
        if self._sender is None:
            return
        self._closing = True
        self._later_ready.set()
        await self._sender  # cancelled with it when stop's budget runs out
        self._sender = None

    def publish_later(self, event: Event) -> None:
        """Buffer ``event`` and return at once; a background task sends it (see the module
        docstring: at most once, drops logged and counted). Call on the publisher's loop."""
        if not self._started or len(self._later) >= self._later_limit:
            self._count_dropped([event], "not_started" if not self._started else "buffer_full")
            return
        self._later.append(event)
        self._later_ready.set()

    async def _send_later(self) -> None:
        """Send what accumulated while the previous batch was in flight, as one batch."""
        while True:
            await self._later_ready.wait()
            self._later_ready.clear()
            if self._later:
                await self._send_buffered()
            if self._closing:
                return

    async def _send_buffered(self) -> None:
        batch = list(self._later)
        self._later.clear()
        try:
            await self.publish_many(batch)
        except (PublishError, ServiceUnavailable) as exc:
            self._count_dropped(batch, "not_acknowledged")
            log.warning("%d buffered events were not sent: %s", len(batch), exc)
        except asyncio.CancelledError:
            self._count_dropped(batch, "stopped")  # stop's budget ran out mid-send
            raise

    def _drop_buffered(self, reason: str) -> None:
        if self._later:
            self._count_dropped(list(self._later), reason)
            self._later.clear()

    def _count_dropped(self, events: list[Event], reason: str) -> None:
        if self._metrics is not None:
            for event in events:
                self._metrics.events_dropped.labels(event.topic.value, reason).inc()
        now = time.monotonic()
        # Logged by the caller with Kafka's answer; the others at most every 10 s (a full
        # buffer drops on every request while Kafka is away: the counter has them all).
        if reason != "not_acknowledged" and now - self._drop_logged >= 10.0:
            self._drop_logged = now
            log.warning("buffered events dropped (%s): see streamrec_events_dropped", reason)

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

    async def check(self, timeout_seconds: float) -> None:
        """Ask a broker for the cluster metadata now (a readiness probe: it proves a broker
        answers, unlike ``started``); ``ServiceUnavailable`` when none does in time."""
        where = ",".join(self._bootstrap)
        if not self._started:
            raise ServiceUnavailable(f"Kafka at {where}: the publisher is not started")
        try:
            async with asyncio.timeout(timeout_seconds):
                await self._producer.client.fetch_all_metadata()
        except TimeoutError as exc:
            raise ServiceUnavailable(
                f"Kafka at {where} did not answer within {timeout_seconds:g}s"
            ) from exc
        except KafkaError as exc:
            raise ServiceUnavailable(f"Kafka at {where} did not answer: {exc}") from exc

    async def publish_many(self, events: Iterable[Event]) -> int:
        """Publish events and wait until Kafka has them all; returns how many were written.

        Raises ``PublishError`` when some were not acknowledged after the retries or within
        the timeout. Those may still reach Kafka (they are in flight): the error carries every
        event id of the batch, so re-sending it is safe (consumers drop ids they applied).
        """
        if not self._started:
            # aiokafka would wait for a connection that is never made.
            raise ServiceUnavailable(
                f"Kafka at {','.join(self._bootstrap)}: the publisher is not started"
            )
        batch = list(events)
        progress = _Progress()
        deadline = asyncio.timeout(self._timeout)
        try:
            async with deadline:
                return await self._publish_with_retries(batch, progress)
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            unconfirmed = len(batch) - progress.acknowledged
            raise PublishError(
                f"Kafka did not acknowledge {unconfirmed} of {len(batch)} events within "
                f"{self._timeout:g}s; they may be partially published: re-send them with the "
                "same event_ids (safe: consumers drop an event_id they already applied)",
                failed=unconfirmed,
                published=progress.acknowledged,
                event_ids=[str(e.event_id) for e in batch],
            ) from exc

    async def _publish_with_retries(self, batch: list[Event], progress: _Progress) -> int:
        pending = [encode(e) for e in batch]
        written = 0
        delay = self._backoff
        for attempt in range(self._retries + 1):
            failed = await self._send_all(pending, progress)
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
            f"{len(failed)} of {len(batch)} events were not acknowledged by Kafka after "
            f"{self._retries} retries; they may be partially published: re-send them with the "
            "same event_ids (safe: consumers drop an event_id they already applied)",
            failed=len(failed),
            published=written,
            event_ids=[str(e.event_id) for e in batch],
        )

    async def _send_all(
        self, pending: list[tuple[str, bytes, bytes]], progress: _Progress
    ) -> list[tuple[str, bytes, bytes]]:
        """Send everything, then wait once: aiokafka batches sends per partition meanwhile."""
        sends: list[asyncio.Future | BaseException] = []
        for topic, key, value in pending:
            try:
                sent = await self._producer.send(topic, value=value, key=key)
            except KafkaError as exc:
                sends.append(exc)
                continue
            # Counted as each acknowledgement lands, so a timeout can say how many made it.
            sent.add_done_callback(progress.note)
            sends.append(sent)
        waiting = [s for s in sends if not isinstance(s, BaseException)]
        if waiting:
            # asyncio.wait, not gather: a timeout cancelling this wait must not cancel the
            # sends themselves (aiokafka still delivers them, and counts them).
            await asyncio.wait(waiting)
        failed = []
        for message, send in zip(pending, sends, strict=True):
            if isinstance(send, BaseException) or send.cancelled() or send.exception() is not None:
                failed.append(message)
            elif self._metrics is not None:
                self._metrics.events_published.labels(message[0]).inc()
        return failed


class _Progress:
    """Acknowledgements of one ``publish_many`` call so far, retries included."""

    def __init__(self) -> None:
        self.acknowledged = 0

    def note(self, sent: asyncio.Future) -> None:
        if not sent.cancelled() and sent.exception() is None:
            self.acknowledged += 1


class SyncEventPublisher:
    """A blocking facade over ``EventPublisher``: its event loop runs in a daemon thread."""

    def __init__(self, bootstrap_servers: Sequence[str], **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="streamrec-publisher"
        )
        self._thread.start()
        try:
            self._publisher = self._run(self._create(bootstrap_servers, options))
        except BaseException:
            self._close_loop()  # a publisher that failed to start leaves no thread behind
            raise

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
        self._close_loop()

    def _close_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

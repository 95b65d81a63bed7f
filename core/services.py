"""Connections to the backing services, opened once in a lifespan and passed down.

``open_services(settings)`` starts whatever is configured as ``embedded`` (or reaches the
embedded services of a running ``streamrec up`` when ``attach=True``), connects to the rest,
creates the embedded Kafka topics (the caller creates the SQL schema: its tables live in
``stores``, above ``core``), and closes everything in reverse order.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sqlalchemy import Engine

from streamrec.core.addresses import EmbeddedAddresses, attached_addresses, bootstrap_list
from streamrec.core.db import create_db_engine
from streamrec.core.embedded import EmbeddedKafka, EmbeddedRedis
from streamrec.core.errors import ServiceUnavailable
from streamrec.core.ids import IdRegistry
from streamrec.core.kafka_log import read_log_id
from streamrec.core.settings import Settings
from streamrec.core.unavailable import REDIS_ERRORS
from streamrec.schemas.events import configure_event_time_bounds
from streamrec.schemas.topics import Topic

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Live connections. Created by ``open_services``; never at import time."""

    settings: Settings
    kafka_bootstrap: list[str]
    redis_url: str
    redis: aioredis.Redis
    engine: Engine
    ids: IdRegistry
    embedded: list[str] = field(default_factory=list)  # names of services running in-process
    # The Kafka log's identity (its cluster id, core.kafka_log): offsets are only meaningful
    # within one log, and the embedded broker starts a new one on every `up`. None when Kafka
    # did not answer at start-up (consumers read it again before they start).
    kafka_log_id: str | None = None

    def embedded_addresses(self) -> EmbeddedAddresses:
        """Where this process's services listen, for ``var/embedded.json`` (attach)."""
        return EmbeddedAddresses(
            kafka_bootstrap=self.kafka_bootstrap[0],
            redis_url=self.redis_url,
            pid=os.getpid(),
            kafka_log_id=self.kafka_log_id or "",
        )


_PING_ERRORS: tuple[type[Exception], ...] = (*REDIS_ERRORS, OSError)


async def _ping_redis(client: aioredis.Redis, where: str) -> None:
    try:
        await client.ping()
    except _PING_ERRORS as exc:
        raise ServiceUnavailable(f"Redis at {where} did not answer: {exc}") from exc


def redis_client(url: str, settings: Settings) -> aioredis.Redis:
    """A Redis client whose every connect and read is bounded (``Settings.redis_*``), so a
    down or paused server fails a call within the timeout instead of hanging it. It does not
    retry: the API answers 503 at once and the consumers retry with their own backoff."""
    return aioredis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=settings.redis_connect_timeout_seconds,
        socket_timeout=settings.redis_timeout_seconds,
        retry=Retry(NoBackoff(), 0),
    )


async def _log_id(
    bootstrap: list[str], kafka: EmbeddedKafka | None, attached: EmbeddedAddresses | None
) -> str | None:
    """The Kafka log's identity: the embedded broker's own, or the cluster id of a real one."""
    if kafka is not None:
        return kafka.log_id
    if attached is not None and attached.kafka_log_id:
        return attached.kafka_log_id
    try:
        return await read_log_id(bootstrap)
    except ServiceUnavailable as exc:
        # The API still starts (and says 503 for events) with Kafka down; consumers cannot.
        log.warning("Kafka log id not read at start-up: %s", exc)
        return None


@asynccontextmanager
async def open_services(
    settings: Settings, *, attach: bool = False, create_topics: bool = True
) -> AsyncIterator[Services]:
    """Open every connection for the lifetime of the block.

    ``attach=False`` starts embedded services in this process (``streamrec up``, tests);
    ``attach=True`` connects to those of a running ``streamrec up`` instead.
    """
    # Events are validated in every process (API and consumers) against the same time range.
    configure_event_time_bounds(settings.event_time_floor, settings.event_max_future_seconds)
    async with AsyncExitStack() as stack:
        embedded: list[str] = []
        attached = (
            attached_addresses(settings)
            if attach and (settings.embedded_kafka or settings.embedded_redis)
            else None
        )

        kafka: EmbeddedKafka | None = None
        if settings.embedded_kafka and attached is None:
            kafka = await asyncio.to_thread(EmbeddedKafka, settings.topic_partitions)
            stack.callback(kafka.close)
            embedded.append("kafka")
            bootstrap = [kafka.bootstrap]
        elif settings.embedded_kafka:
            bootstrap = [attached.kafka_bootstrap]  # type: ignore[union-attr]
        else:
            bootstrap = bootstrap_list(settings.kafka_bootstrap)
        if kafka is not None and create_topics:
            await asyncio.to_thread(kafka.ensure_topics, [str(t) for t in Topic])

        if settings.embedded_redis and attached is None:
            # Under var/ like the archive: the feature state survives a restart of `up`.
            server = await asyncio.to_thread(EmbeddedRedis, settings.var_dir / "redis")
            stack.callback(server.close)
            embedded.append("redis")
            redis_url = server.url
        elif settings.embedded_redis:
            redis_url = attached.redis_url  # type: ignore[union-attr]
        else:
            redis_url = settings.redis_url
        client = redis_client(redis_url, settings)
        stack.push_async_callback(client.aclose)
        await _ping_redis(client, redis_url)

        kafka_log_id = await _log_id(bootstrap, kafka, attached)

        engine = create_db_engine(
            settings.database_url,
            connect_timeout_seconds=settings.sql_connect_timeout_seconds,
            pool_timeout_seconds=settings.sql_pool_timeout_seconds,
        )
        stack.callback(engine.dispose)

        yield Services(
            settings=settings,
            kafka_bootstrap=bootstrap,
            redis_url=redis_url,
            redis=client,
            engine=engine,
            ids=IdRegistry(engine),
            kafka_log_id=kafka_log_id,
            embedded=embedded,
        )

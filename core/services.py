"""Connections to the backing services, opened once in a lifespan and passed down.

``open_services(settings)`` starts whatever is configured as ``embedded`` (or reaches the
embedded services of a running ``streamrec up`` when ``attach=True``), connects to the rest,
creates the embedded Kafka topics (the caller creates the SQL schema: its tables live in
``stores``, above ``core``), and closes everything in reverse order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from sqlalchemy import Engine

from core.db import create_db_engine
from core.embedded import EmbeddedAddresses, EmbeddedKafka, EmbeddedRedis
from core.errors import ConfigurationError, ServiceUnavailable
from core.ids import IdRegistry
from core.settings import Settings
from schemas.topics import Topic

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


def _bootstrap_list(value: str) -> list[str]:
    servers = [s.strip() for s in value.split(",") if s.strip()]
    if not servers:
        raise ConfigurationError("STREAMREC_KAFKA_BOOTSTRAP is empty: give host:port[,host:port]")
    return servers


async def _ping_redis(client: aioredis.Redis, where: str) -> None:
    try:
        await client.ping()
    except (aioredis.ConnectionError, OSError) as exc:
        raise ServiceUnavailable(f"Redis at {where} did not answer: {exc}") from exc


def _attached_addresses(settings: Settings) -> EmbeddedAddresses:
    found = EmbeddedAddresses.read(settings.var_dir)
    if found is None:
        raise ServiceUnavailable(
            "no embedded streamrec is running (no live "
            f"{settings.var_dir}/embedded.json): start `streamrec up` first, or point "
            "STREAMREC_KAFKA_BOOTSTRAP / STREAMREC_REDIS_URL at real services"
        )
    return found


def kafka_bootstrap_for(settings: Settings) -> list[str]:
    """Kafka servers for a client-only process (replay, lag): the configured ones, or those of
    the running ``streamrec up`` when Kafka is embedded."""
    if settings.embedded_kafka:
        return [_attached_addresses(settings).kafka_bootstrap]
    return _bootstrap_list(settings.kafka_bootstrap)


@asynccontextmanager
async def open_services(
    settings: Settings, *, attach: bool = False, create_topics: bool = True
) -> AsyncIterator[Services]:
    """Open every connection for the lifetime of the block.

    ``attach=False`` starts embedded services in this process (``streamrec up``, tests);
    ``attach=True`` connects to those of a running ``streamrec up`` instead.
    """
    async with AsyncExitStack() as stack:
        embedded: list[str] = []
        attached = (
            _attached_addresses(settings)
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
            bootstrap = _bootstrap_list(settings.kafka_bootstrap)
        if kafka is not None and create_topics:
            await asyncio.to_thread(kafka.ensure_topics, [str(t) for t in Topic])

        if settings.embedded_redis and attached is None:
            server = await asyncio.to_thread(EmbeddedRedis)
            stack.callback(server.close)
            embedded.append("redis")
            redis_url = server.url
        elif settings.embedded_redis:
            redis_url = attached.redis_url  # type: ignore[union-attr]
        else:
            redis_url = settings.redis_url
        client = aioredis.from_url(redis_url, decode_responses=True)
        stack.push_async_callback(client.aclose)
        await _ping_redis(client, redis_url)

        engine = create_db_engine(settings.database_url)
        stack.callback(engine.dispose)

        yield Services(
            settings=settings,
            kafka_bootstrap=bootstrap,
            redis_url=redis_url,
            redis=client,
            engine=engine,
            ids=IdRegistry(engine),
            embedded=embedded,
        )

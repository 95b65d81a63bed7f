"""A backing service that is down gives a prompt 503 naming it, never a 500 or a hang
(issue 11, item 5). Each test takes down a service it owns (a private redis-server, a proxy
in front of PostgreSQL, a private mock Kafka cluster), never the shared ones."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from streamrec.api.app import create_app
from streamrec.core.db import normalise_database_url
from streamrec.core.embedded import EmbeddedKafka
from streamrec.core.settings import Settings
from streamrec.schemas.topics import Topic
from tests.api.test_errors import RATING, assert_error
from tests.conftest import INGEST_KEY
from tests.outages import PrivateRedis, TcpProxy

pytestmark = pytest.mark.kafka

# Before the fix these requests hung (a paused Redis, Kafka down: 20 s to 125 s); a test
# fails on this bound instead of hanging the suite.
HANG = 30.0


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://streamrec") as client:
            yield app, client


@pytest.fixture
def private_redis(tmp_path: Path):  # type: ignore[no-untyped-def]
    server = PrivateRedis(tmp_path / "redis")
    yield server
    server.close()


async def test_redis_gone_is_503_naming_redis(settings: Settings, private_redis) -> None:  # type: ignore[no-untyped-def]
    async with serving(settings.model_copy(update={"redis_url": private_redis.url})) as (_, c):
        private_redis.close()
        async with asyncio.timeout(HANG):
            response = await c.get("/v1/users/u1/history")
        assert_error(response, 503, "service_unavailable", "Redis is unavailable")
        response = await c.get("/v1/users/u1/recommendations")
        assert_error(response, 503, "service_unavailable", "Redis is unavailable")
        ready = await c.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"].startswith("down: ")
        assert ready.json()["checks"]["kafka"] == "ok"


async def test_paused_redis_is_503_within_the_socket_timeout(
    settings: Settings, private_redis
) -> None:  # type: ignore[no-untyped-def]
    paused = settings.model_copy(
        update={"redis_url": private_redis.url, "redis_timeout_seconds": 0.2}
    )
    async with serving(paused) as (app, client):
        pool = app.state.runtime.services.redis.connection_pool
        assert pool.connection_kwargs["socket_timeout"] == 0.2
        assert pool.connection_kwargs["socket_connect_timeout"] == 0.5
        private_redis.pause()
        try:
            started = time.monotonic()
            async with asyncio.timeout(HANG):
                response = await client.get("/v1/users/u1/history")
            elapsed = time.monotonic() - started
        finally:
            private_redis.resume()
    body = assert_error(response, 503, "service_unavailable", "Redis is unavailable")
    assert "Timeout" in body["message"]
    # One read timeout (0.2 s) and no retries; 2 s is 10x that, for a loaded machine.
    assert elapsed < 2.0, elapsed


async def test_sql_gone_is_503_naming_sql(settings: Settings) -> None:
    url = make_url(normalise_database_url(settings.database_url))
    if not url.drivername.startswith("postgresql"):
        pytest.skip("needs STREAMREC_TEST_DATABASE_URL (PostgreSQL) to put a proxy in front")
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        async with serving(settings.model_copy(update={"database_url": proxied})) as (_, c):
            assert (await c.get("/v1/models")).status_code == 200
            await proxy.close()
            async with asyncio.timeout(HANG):
                response = await c.get("/v1/models")
            body = assert_error(response, 503, "service_unavailable", "SQL database")
            assert "SELECT" not in body["message"]  # the driver's reason, not the statement
            ready = await c.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["sql"].startswith("down: ")
            assert ready.json()["checks"]["redis"] == "ok"
    finally:
        await proxy.close()


async def test_hung_sql_is_503_within_the_sql_timeout(settings: Settings) -> None:
    """A PostgreSQL that accepted the connections and answers nothing (a paused server, a black
    hole): before the SQL timeout, the request's thread waited on its socket for ever."""
    url = make_url(normalise_database_url(settings.database_url))
    if not url.drivername.startswith("postgresql"):
        pytest.skip("needs STREAMREC_TEST_DATABASE_URL (PostgreSQL) to put a proxy in front")
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    hung = settings.model_copy(update={"database_url": proxied, "sql_timeout_seconds": 0.5})
    try:
        async with serving(hung) as (_, client):
            assert (await client.get("/v1/models")).status_code == 200
            proxy.pause()
            async with asyncio.timeout(HANG):
                response = await client.get("/v1/models")
            # The pooled connection's ping got no answer in time; no reconnect was waited for.
            assert_error(response, 503, "service_unavailable", "SQL database", "within 0.5s")
            async with asyncio.timeout(HANG):  # no pooled connection left: a new one times out
                response = await client.get("/v1/models")
            assert_error(response, 503, "service_unavailable", "SQL database")
            async with asyncio.timeout(HANG):
                ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["sql"].startswith("down: ")
            assert ready.json()["checks"]["redis"] == "ok"
            proxy.resume()
            async with asyncio.timeout(HANG):  # the server answers again: so does the API
                assert (await client.get("/v1/models")).status_code == 200
    finally:
        await proxy.close()


@pytest.fixture
def private_kafka(settings: Settings):  # type: ignore[no-untyped-def]
    kafka = EmbeddedKafka(settings.topic_partitions)
    kafka.ensure_topics([str(t) for t in Topic])
    yield kafka
    kafka.close()


async def test_kafka_gone_is_503_within_the_publish_timeout(
    settings: Settings, private_kafka
) -> None:  # type: ignore[no-untyped-def]
    down = settings.model_copy(
        update={
            "kafka_bootstrap": private_kafka.bootstrap,
            "publish_timeout_seconds": 1.0,
            "shutdown_timeout_seconds": 1.0,  # stopping the publisher waits for Kafka in vain
        }
    )
    headers = {"X-API-Key": INGEST_KEY}
    # Stopping the publisher also hung with Kafka down (it is bounded now): fail, not hang.
    async with asyncio.timeout(2 * HANG), serving(down) as (_, client):
        assert (await client.get("/readyz")).json()["checks"]["kafka"] == "ok"
        assert (await client.post("/v1/events", json=RATING, headers=headers)).status_code == 202
        private_kafka.close()  # the mock cluster goes away with its client
        batch = [RATING, {**RATING, "user_id": "u2"}, {**RATING, "user_id": "u3"}]
        started = time.monotonic()
        async with asyncio.timeout(HANG):
            response = await client.post("/v1/events", json=batch, headers=headers)
        elapsed = time.monotonic() - started
        body = assert_error(
            response, 503, "publish_failed", "within 1s", "partially published", "re-send"
        )
        # The client is told what Kafka may hold, and gets the ids that make re-sending safe.
        assert body["published"] + body["unconfirmed"] == 3
        assert body["unconfirmed"] > 0
        assert len(body["event_ids"]) == 3 and len(set(body["event_ids"])) == 3
        # The configured 1 s bounds it ("within 1s" above); 10 s only catches the old hang.
        assert elapsed < 10, elapsed

        ready = await client.get("/readyz")
        assert ready.status_code == 503, ready.text
        checks = ready.json()["checks"]
        assert checks["kafka"].startswith("down: "), checks
        assert checks["redis"] == checks["sql"] == "ok"

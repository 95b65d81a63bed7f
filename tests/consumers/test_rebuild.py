"""`streamrec rebuild`: refuses while a features consumer may write the state, refuses a
non-empty state without --wipe, and rebuilds the features from the archive."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner

from streamrec.core.addresses import EmbeddedAddresses
from streamrec.core.cli import _register_plugins, app
from streamrec.core.db import create_db_engine
from streamrec.core.embedded import EmbeddedRedis
from streamrec.schemas.events import ClickEvent, ItemEvent, RatingEvent, SourcedEvent
from streamrec.schemas.topics import Topic
from streamrec.stores.catalog import Archive
from streamrec.stores.features import FeatureStore

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def commands() -> None:
    _register_plugins()


@pytest.fixture
def var_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str, database_url: str
) -> Iterator[Path]:
    var = tmp_path / "var"
    monkeypatch.setenv("STREAMREC_VAR_DIR", str(var))
    monkeypatch.setenv("STREAMREC_KAFKA_BOOTSTRAP", "embedded")
    monkeypatch.setenv("STREAMREC_REDIS_URL", redis_url)
    monkeypatch.setenv("STREAMREC_DATABASE_URL", database_url)
    yield var


@asynccontextmanager
async def _redis(redis_url: str, var: Path) -> AsyncIterator[aioredis.Redis]:
    """The Redis the command rebuilds: the test server, or embedded Redis under var/redis."""
    server = EmbeddedRedis(var / "redis") if redis_url == "embedded" else None
    client = aioredis.from_url(server.url if server else redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()
        if server is not None:
            server.close()


def test_refuses_while_up_runs_on_the_var_dir(var_dir: Path) -> None:
    EmbeddedAddresses(kafka_bootstrap="127.0.0.1:9", redis_url="unix:///x", pid=os.getpid()).write(
        var_dir
    )
    result = runner.invoke(app, ["rebuild"])
    assert result.exit_code == 2, result.output
    assert "streamrec up" in result.output and "Traceback" not in result.output


def test_rebuilds_an_emptied_state_and_refuses_a_filled_one_without_wipe(
    var_dir: Path, redis_url: str, database_url: str
) -> None:
    ts = datetime(2024, 1, 1, tzinfo=UTC)
    engine = create_db_engine(database_url)
    Archive(engine, log_id="gone").write_batch(
        [
            SourcedEvent(ItemEvent(item_id="m1", title="Heat", genres=["Crime"]), "i", 0, 0),
            SourcedEvent(RatingEvent(user_id="u", item_id="m1", rating=4, ts=ts), "r", 0, 0),
            SourcedEvent(ClickEvent(user_id="u", item_id="m1", ts=ts), Topic.CLICKS, 0, 0),
        ]
    )
    engine.dispose()

    async def fill() -> None:
        async with _redis(redis_url, var_dir) as client:
            await client.set("left-over", "1")

    asyncio.run(fill())
    refused = runner.invoke(app, ["rebuild"])
    assert refused.exit_code == 2 and "--wipe" in refused.output, refused.output

    result = runner.invoke(app, ["rebuild", "--wipe"])
    assert result.exit_code == 0, result.output
    assert "1 items, 2 interactions" in result.output

    async def read() -> tuple[dict[str, str], dict[str, float], bool]:
        async with _redis(redis_url, var_dir) as client:
            store = FeatureStore(client)
            return (
                await store.user_stats("u"),
                await store.genre_affinity("u"),
                bool(await client.exists("left-over")),
            )

    stats, affinity, left_over = asyncio.run(read())
    assert (stats["ratings"], stats["clicks"], float(stats["rating_sum"])) == ("1", "1", 4.0)
    assert affinity == {"Crime": pytest.approx(0.6 + 1.0)}
    assert not left_over

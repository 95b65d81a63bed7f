"""Each process's ops counters in Redis (``stores/ops_stats.py``): written under a key of its
own with a TTL and read back whole, several processes apart, expired ones forgotten, removed on
a clean stop, and a Redis outage logged, not raised. Times come from an injected clock."""

from __future__ import annotations

import asyncio
import logging

import pytest

from streamrec.core.metrics import Metrics
from streamrec.core.services import redis_client
from streamrec.core.settings import Settings
from streamrec.stores.factory import Stores
from streamrec.stores.ops_stats import (
    INDEX,
    TTL_SECONDS,
    OpsStatsWriter,
    ProcessCounters,
    process_key,
    process_name,
    publishing_ops_stats,
    read_process_counters,
)
from tests.conftest import FakeClock, wait_until

FEATURES = "streamrec-features"
RATINGS = "streamrec.ratings"


def _counted(metrics: Metrics, events: int, seconds: float = 0.02) -> Metrics:
    metrics.events_consumed.labels(FEATURES, RATINGS).inc(events)
    for _ in range(events):
        metrics.event_to_state_seconds.labels(FEATURES).observe(seconds)
    metrics.events_published.labels(RATINGS).inc(events + 1)
    return metrics


async def test_a_process_counters_are_written_with_a_ttl_and_read_back_whole(
    stores: Stores, clock: FakeClock
) -> None:
    redis = stores.services.redis
    writer = OpsStatsWriter(redis, _counted(Metrics(), 3), process="h:1:a", clock=clock)
    clock.advance(7.5)
    await writer.write()

    (read,) = await read_process_counters(redis)
    assert read == writer.counters()
    assert (read.process, read.started_at, read.at) == ("h:1:a", 1000.0, 1007.5)
    assert read.consumed == {FEATURES: 3} and read.published == {RATINGS: 4}
    buckets = read.freshness[FEATURES]
    assert buckets[-1] == (float("inf"), 3.0)  # the +Inf bound survives the JSON
    assert dict(buckets)[0.025] == 3.0 and dict(buckets)[0.01] == 0.0
    assert 0 < await redis.pttl(writer.key) <= TTL_SECONDS * 1000
    assert await redis.smembers(INDEX) == {process_key("h:1:a")}


async def test_every_live_process_is_read_and_expired_ones_are_forgotten(
    stores: Stores, clock: FakeClock
) -> None:
    redis = stores.services.redis
    api = OpsStatsWriter(redis, _counted(Metrics(), 1), process="h:1:a", clock=clock)
    consumers = OpsStatsWriter(redis, _counted(Metrics(), 9), process="h:2:b", clock=clock)
    await api.write()
    await consumers.write()
    read = await read_process_counters(redis)
    assert [(c.process, c.consumed[FEATURES]) for c in read] == [("h:1:a", 1), ("h:2:b", 9)]

    await redis.delete(consumers.key)  # what its TTL does once the process stops writing
    assert [c.process for c in await read_process_counters(redis)] == ["h:1:a"]
    assert await redis.smembers(INDEX) == {api.key}  # the index forgot it too

    await api.remove()  # a clean stop
    assert await read_process_counters(redis) == []
    assert await redis.exists(INDEX) == 0


async def test_publishing_writes_at_once_and_removes_its_counters_on_exit(stores: Stores) -> None:
    redis = stores.services.redis
    metrics = _counted(Metrics(), 2)
    async with publishing_ops_stats(redis, metrics) as writer:

        async def written() -> bool:
            return bool(await read_process_counters(redis))

        await wait_until(written)  # the first write does not wait for an interval
        (read,) = await read_process_counters(redis)
        assert read.process == writer.process and read.consumed == {FEATURES: 2}
    assert await read_process_counters(redis) == []
    assert await redis.exists(writer.key) == 0


async def test_leaving_while_a_write_is_in_flight_stops_the_writer(stores: Stores) -> None:
    """The block is left at every point of the first write (a loop turn more each time): the
    writer stops and its counters go. A cancelled task would run on where redis-py swallows
    the cancellation inside a call, and leaving would wait for it forever."""
    redis = stores.services.redis
    for turns in range(12):
        async with asyncio.timeout(10) as guard:  # a failure, not a hung suite
            # An hour between writes: a writer that ran on would not come back in time.
            async with publishing_ops_stats(redis, Metrics(), interval=3600):
                for _ in range(turns):
                    await asyncio.sleep(0)
        assert not guard.expired(), turns  # left at once, not after a wait for the writer
        writers = [t for t in asyncio.all_tasks() if t.get_name() == "streamrec-ops-counters"]
        assert writers == [], turns
        assert await read_process_counters(redis) == []


def test_process_names_differ_for_every_writer_even_in_one_process() -> None:
    first, second = process_name(), process_name()
    assert first != second
    assert first.rsplit(":", 1)[0] == second.rsplit(":", 1)[0]  # same host:pid


def test_counters_that_went_back_mean_a_new_series() -> None:
    earlier = ProcessCounters(
        at=10.0,
        consumed={FEATURES: 5},
        freshness={FEATURES: [(0.1, 5.0), (float("inf"), 5.0)]},
        published={RATINGS: 5},
        process="h:1:a",
        started_at=1.0,
    )
    assert not earlier.went_back_from(earlier)
    assert not earlier.went_back_from(earlier.at_start())
    grown = ProcessCounters(
        at=15.0,
        consumed={FEATURES: 6},
        freshness={FEATURES: [(0.1, 6.0), (float("inf"), 6.0)]},
        published={RATINGS: 7},
        process="h:1:a",
        started_at=1.0,
    )
    assert not grown.went_back_from(earlier)
    restarted = ProcessCounters(at=3.0, consumed={FEATURES: 1}, process="h:1:a", started_at=2.0)
    assert restarted.went_back_from(earlier)  # another start
    lower = ProcessCounters(at=20.0, consumed={FEATURES: 4}, process="h:1:a", started_at=1.0)
    assert lower.went_back_from(earlier)  # same start, fewer events: cannot follow it
    assert grown.went_back_from(ProcessCounters(at=16.0, process="h:1:a", started_at=1.0))


async def test_redis_down_is_logged_once_per_outage_not_raised(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    down = settings.model_copy(
        update={"redis_connect_timeout_seconds": 0.5, "redis_timeout_seconds": 0.5}
    )
    redis = redis_client("redis://127.0.0.1:1/0", down)  # nothing listens on port 1
    try:
        writer = OpsStatsWriter(redis, Metrics(), process="h:1:a")
        with caplog.at_level(logging.WARNING, logger="streamrec.stores.ops_stats"):
            await writer.write_logged()
            await writer.write_logged()
        warnings = [r for r in caplog.records if r.name == "streamrec.stores.ops_stats"]
        assert len(warnings) == 1 and "not written to Redis" in warnings[0].getMessage()
    finally:
        await redis.aclose()

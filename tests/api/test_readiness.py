"""/readyz checks each dependency for real, each within a bound, and reuses a round for a
moment; the clock is injected, so nothing here sleeps to expire the cache."""

from __future__ import annotations

import asyncio

import pytest

from streamrec.api.readiness import Readiness
from streamrec.core.errors import ServiceUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Dependency:
    """A check that counts its calls and fails while ``down`` is set."""

    def __init__(self) -> None:
        self.calls = 0
        self.down = False

    async def __call__(self) -> None:
        self.calls += 1
        if self.down:
            raise ServiceUnavailable("connection refused")


async def test_a_round_is_reused_until_the_cache_expires() -> None:
    clock, redis = Clock(), Dependency()
    readiness = Readiness({"redis": redis}, timeout=1.0, cache_seconds=1.5, clock=clock)
    assert await readiness.report() == {"redis": "ok"}
    redis.down = True
    clock.now += 1.4
    assert await readiness.report() == {"redis": "ok"}  # cached: not asked again
    assert redis.calls == 1
    clock.now += 0.2
    assert await readiness.report() == {"redis": "down: connection refused"}
    assert redis.calls == 2


async def test_each_dependency_is_reported_apart() -> None:
    sql, kafka = Dependency(), Dependency()
    kafka.down = True
    readiness = Readiness({"sql": sql, "kafka": kafka}, timeout=1.0, cache_seconds=0)
    assert await readiness.report() == {"sql": "ok", "kafka": "down: connection refused"}


async def test_a_check_that_hangs_is_down_after_the_timeout() -> None:
    async def hangs() -> None:
        await asyncio.Event().wait()

    readiness = Readiness({"kafka": hangs}, timeout=0.05, cache_seconds=0)
    async with asyncio.timeout(10):  # fails instead of hanging if the bound is not applied
        assert await readiness.report() == {"kafka": "down: no answer within 0.05s"}


async def test_concurrent_probes_share_one_round() -> None:
    redis = Dependency()
    readiness = Readiness({"redis": redis}, timeout=1.0, cache_seconds=5, clock=Clock())
    await asyncio.gather(*(readiness.report() for _ in range(10)))
    assert redis.calls == 1


async def test_a_bug_in_a_check_is_not_reported_as_down() -> None:
    async def broken() -> None:
        raise KeyError("a bug")

    readiness = Readiness({"redis": broken}, timeout=1.0, cache_seconds=0)
    with pytest.raises(KeyError):
        await readiness.report()


@pytest.mark.kafka
async def test_readyz_with_everything_up_checks_everything(api_client) -> None:  # type: ignore[no-untyped-def]
    response = await api_client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "ready",
        "checks": {"redis": "ok", "sql": "ok", "kafka": "ok", "qdrant": "ok"},
    }

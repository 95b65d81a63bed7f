"""Every process's ops counters in Redis, so whichever API worker answers ``/v1/ops/stats``
reports the whole system.

Each process that has a ``core.metrics.Metrics`` (an API worker, a ``streamrec consume``, the
consumers process of ``streamrec up``) runs ``publishing_ops_stats`` for its lifetime: every
``SAMPLE_SECONDS`` it writes a ``ProcessCounters`` (events applied and the event-to-state
histogram per consumer group, events published per topic) under its own key, with a TTL of
``TTL_SECONDS``, and removes it on a clean stop. A process that dies stops writing and its key
expires. ``read_process_counters`` reads every live process's counters.

============================  ======  ===========================================================
``sr:{ops}:proc:{process}``   string  one process's ``ProcessCounters`` as JSON; TTL TTL_SECONDS
``sr:{ops}:procs``            set     the keys above (readers walk it, never SCAN the keyspace);
                                      a reader removes members whose key has expired
============================  ======  ===========================================================

(``{ops}``: one Redis Cluster hash slot for all of them, so one MULTI or MGET reaches them.)

``{process}`` is ``host:pid:token``: the token is new for every writer, so a restarted process
(its counters start from zero again) never continues the series of the one before, even where
pids repeat (pid 1 in a container), and several ``Metrics`` in one process (tests) stay apart.
Times in a ``ProcessCounters`` come from its writer's monotonic clock: compare them only with
the same process's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import Counter, Histogram

from streamrec.core.metrics import Metrics
from streamrec.core.unavailable import REDIS_ERRORS
from streamrec.stores.features import PREFIX

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 5.0
TTL_SECONDS = 3 * SAMPLE_SECONDS  # three missed writes: the process is gone
INDEX = f"{PREFIX}:{{ops}}:procs"

Buckets = list[tuple[float, float]]  # (upper bound, cumulative count), ascending
Clock = Callable[[], float]


def process_key(process: str) -> str:
    return f"{PREFIX}:{{ops}}:proc:{process}"


def process_name() -> str:
    """``host:pid:token``, new for every call (see the module docstring)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _sum_by(counter: Counter, label: str) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                totals[sample.labels[label]] += int(sample.value)
    return dict(totals)


def _buckets_by_group(histogram: Histogram) -> dict[str, Buckets]:
    found: dict[str, Buckets] = defaultdict(list)
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name.endswith("_bucket"):
                found[sample.labels["group"]].append((float(sample.labels["le"]), sample.value))
    return {group: sorted(buckets) for group, buckets in found.items()}


@dataclass(frozen=True)
class ProcessCounters:
    """One process's counters at one time (``at``, its writer's clock); all cumulative since
    ``started_at``, when they were zero."""

    at: float
    consumed: dict[str, int] = field(default_factory=dict)  # events applied per group
    freshness: dict[str, Buckets] = field(default_factory=dict)  # event-to-state per group
    published: dict[str, int] = field(default_factory=dict)  # events written per topic
    process: str = ""
    started_at: float = 0.0

    @classmethod
    def of(
        cls, metrics: Metrics, at: float, process: str = "", started_at: float = 0.0
    ) -> ProcessCounters:
        return cls(
            at=at,
            consumed=_sum_by(metrics.events_consumed, "group"),
            freshness=_buckets_by_group(metrics.event_to_state_seconds),
            published=_sum_by(metrics.events_published, "topic"),
            process=process,
            started_at=started_at,
        )

    def at_start(self) -> ProcessCounters:
        """The same process when it started: every counter zero."""
        return replace(self, at=self.started_at, consumed={}, freshness={}, published={})

    def went_back_from(self, earlier: ProcessCounters) -> bool:
        """True when ``earlier`` cannot precede these counters: another start, or a counter
        lower than it was (cumulative counters only grow within one process)."""
        if earlier.started_at != self.started_at or earlier.at > self.at:
            return True
        for now, then in ((self.consumed, earlier.consumed), (self.published, earlier.published)):
            if any(now.get(name, 0) < count for name, count in then.items()):
                return True
        for group, buckets in earlier.freshness.items():
            total = self.freshness.get(group)
            if total is None or (buckets and total[-1][1] < buckets[-1][1]):
                return True
        return False

    def to_json(self) -> str:
        # Python's json writes the +Inf bucket bound as Infinity and reads it back.
        return json.dumps(
            {
                "process": self.process,
                "started_at": self.started_at,
                "at": self.at,
                "consumed": self.consumed,
                "freshness": self.freshness,
                "published": self.published,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ProcessCounters:
        data: dict[str, Any] = json.loads(text)
        return cls(
            at=float(data["at"]),
            consumed={k: int(v) for k, v in data["consumed"].items()},
            freshness={
                group: [(float(upper), float(count)) for upper, count in buckets]
                for group, buckets in data["freshness"].items()
            },
            published={k: int(v) for k, v in data["published"].items()},
            process=str(data["process"]),
            started_at=float(data["started_at"]),
        )


class OpsStatsWriter:
    """Writes one process's counters (``metrics``) under its own key."""

    def __init__(
        self,
        redis: aioredis.Redis,
        metrics: Metrics,
        *,
        process: str | None = None,
        ttl_seconds: float = TTL_SECONDS,
        clock: Clock = time.monotonic,
    ) -> None:
        self._redis = redis
        self._metrics = metrics
        self._ttl_ms = int(ttl_seconds * 1000)
        self._clock = clock
        self.process = process or process_name()
        self.key = process_key(self.process)
        self.started_at = clock()  # built beside its Metrics: the counters are zero now
        self._failing = False

    def counters(self) -> ProcessCounters:
        """The live counters, now."""
        return ProcessCounters.of(self._metrics, self._clock(), self.process, self.started_at)

    async def write(self) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self.key, self.counters().to_json(), px=self._ttl_ms)
            pipe.sadd(INDEX, self.key)
            await pipe.execute()

    async def remove(self) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.key)
            pipe.srem(INDEX, self.key)
            await pipe.execute()

    async def write_logged(self) -> None:
        """``write``; Redis down is logged once per outage (and its end), not raised: the
        process goes on, and its key expires until Redis is back."""
        try:
            await self.write()
        except REDIS_ERRORS as exc:
            if not self._failing:
                log.warning("ops counters not written to Redis (retried every write): %s", exc)
            self._failing = True
            return
        if self._failing:
            log.info("ops counters written to Redis again")
        self._failing = False

    async def run(self, stop: asyncio.Event, interval: float = SAMPLE_SECONDS) -> None:
        """Write every ``interval`` until ``stop`` is set. Stopped by the event, never by
        cancelling the task: redis-py (8.1) can swallow a cancellation that lands inside a
        call, and the task then runs on (measured: a cancel 0.5 ms into a MULTI returned
        normally). A write in flight ends within the client's timeouts."""
        while not stop.is_set():
            await self.write_logged()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


@asynccontextmanager
async def publishing_ops_stats(
    redis: aioredis.Redis, metrics: Metrics, *, interval: float = SAMPLE_SECONDS
) -> AsyncIterator[OpsStatsWriter]:
    """Write this process's counters every ``interval`` for the block (the first write at
    once); remove them on exit. Enter it right after building the process's ``Metrics``."""
    writer = OpsStatsWriter(redis, metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop, interval), name="streamrec-ops-counters")
    try:
        yield writer
    finally:
        stop.set()
        await task
        try:
            await writer.remove()
        except REDIS_ERRORS as exc:  # Redis down at shutdown: the key expires by itself
            log.warning("ops counters not removed from Redis (they expire): %s", exc)


async def read_process_counters(redis: aioredis.Redis) -> list[ProcessCounters]:
    """The counters of every live process (sorted by process); forgets expired ones."""
    keys = sorted(await redis.smembers(INDEX))
    if not keys:
        return []
    values = await redis.mget(keys)
    expired = [key for key, value in zip(keys, values, strict=True) if value is None]
    if expired:
        await redis.srem(INDEX, *expired)
    return [ProcessCounters.from_json(value) for value in values if value is not None]

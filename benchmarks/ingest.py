"""Ingest benchmark: events/s end to end and event-to-Redis freshness, beside the raw limit.

    python benchmarks/ingest.py [--events 100000] [--fresh-rate 1000] [--fresh-seconds 10]
                                [--redis-url redis://127.0.0.1:6379/14]

Three measurements in one run, on the same Redis:

1. raw limit: the Redis writes the features consumer makes for each rating, issued directly
   from this process through a plain pipeline (1,000 events per round trip), no Kafka, no
   validation, no aggregation;
2. end to end: the SDK (``EventPublisher``) publishes N synthetic ratings to the embedded
   Kafka broker; a separate ``streamrec consume --group features`` process applies them to
   Redis; the clock stops when Redis holds the applied offsets of all N events;
3. freshness: a steady stream at --fresh-rate events/s, one new user per event, so each
   event's publish time (its ``ts``) and the time its state was written (``updated_ms``) can
   be read back from Redis afterwards: no polling during the run.

Prints a table and, on the last line, one JSON object with every figure, its target and
whether it was met. Needs a Redis server (default: the local one, db 14, flushed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamrec.core.datasets import synthetic  # noqa: E402
from streamrec.core.embedded import EmbeddedKafka  # noqa: E402
from streamrec.producers.publisher import EventPublisher  # noqa: E402
from streamrec.schemas.events import RatingEvent  # noqa: E402
from streamrec.schemas.topics import ConsumerGroup, Topic  # noqa: E402
from streamrec.stores.features import user_key  # noqa: E402

TARGETS = {"end_to_end_events_per_s": 30_000, "ratio_to_raw": 0.5, "freshness_p99_ms": 100}
GROUP = ConsumerGroup.FEATURES.value


def rating_events(n: int, seed: int = 7) -> list[RatingEvent]:
    data = synthetic(n_users=5000, n_items=2000, n_events=n, seed=seed)
    now = time.time()
    return [
        RatingEvent(
            user_id=r.user_id,
            item_id=r.item_id,
            rating=r.rating,
            ts=datetime.fromtimestamp(now - n + i, UTC),
        )
        for i, r in enumerate(data.ratings)
    ]


async def raw_redis_rate(url: str, events: list[RatingEvent], chunk: int = 1000) -> float:
    """The per-event writes of the features consumer, pipelined directly: the limit."""
    client = aioredis.from_url(url, decode_responses=True)
    await client.flushdb()
    started = time.perf_counter()
    for start in range(0, len(events), chunk):
        async with client.pipeline(transaction=False) as pipe:
            for e in events[start : start + chunk]:
                ts = e.ts.timestamp()
                pipe.hincrby(f"raw:u:{e.user_id}", "ratings", 1)
                pipe.hincrbyfloat(f"raw:u:{e.user_id}", "rating_sum", e.rating)
                pipe.hset(f"raw:u:{e.user_id}", mapping={"last_ts": ts, "updated_ms": 0})
                pipe.zadd(f"raw:u:{e.user_id}:seq", {e.item_id: ts}, gt=True)
                pipe.sadd(f"raw:u:{e.user_id}:seen", e.item_id)
                pipe.hincrby(f"raw:i:{e.item_id}", "ratings", 1)
                pipe.hincrbyfloat(f"raw:i:{e.item_id}", "rating_sum", e.rating)
                pipe.zincrby("raw:popularity", 1.0, e.item_id)
                pipe.hincrbyfloat(f"raw:u:{e.user_id}", "g:Drama", 0.5)
            await pipe.execute()
    elapsed = time.perf_counter() - started
    await client.flushdb()
    await client.aclose()
    return len(events) / elapsed


async def applied_count(client: aioredis.Redis) -> int:
    """Messages the features group has applied to Redis, from its per-partition offsets."""
    total = 0
    async for key in client.scan_iter(match=f"sr:offset:{GROUP}:{Topic.RATINGS.value}:*"):
        total += int(await client.get(key)) + 1
    return total


async def wait_applied(client: aioredis.Redis, expected: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await applied_count(client) >= expected:
            return time.perf_counter()
        await asyncio.sleep(0.01)
    raise TimeoutError(f"features consumer applied {await applied_count(client)} of {expected}")


def start_consumer(bootstrap: str, redis_url: str, workdir: Path) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "STREAMREC_KAFKA_BOOTSTRAP": bootstrap,
        "STREAMREC_REDIS_URL": redis_url,
        "STREAMREC_DATABASE_URL": f"sqlite:///{workdir}/bench.db",
        "STREAMREC_VAR_DIR": str(workdir),
        "STREAMREC_LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen(
        [sys.executable, "-c", "from core.cli import main; main()", "consume", "-g", "features"],
        env=env,
        cwd=ROOT,
    )


async def end_to_end(
    bootstrap: str, client: aioredis.Redis, events: list[RatingEvent], consumers: int
) -> dict:
    async with EventPublisher([bootstrap]) as publisher:
        warm = [RatingEvent(user_id=f"warmup{n}", item_id="warmup", rating=3) for n in range(16)]
        await publisher.publish_many(warm)
        await wait_applied(client, len(warm), timeout=60)  # consumers joined and applying
        if consumers > 1:
            # Each process joining rebalances the group; the mock cluster serves no
            # DescribeGroups to watch it settle, so wait out its rebalance delay (3 s).
            await asyncio.sleep(6)
        started = time.perf_counter()
        chunk = 5000
        for i in range(0, len(events), chunk):
            await publisher.publish_many(events[i : i + chunk])
        published = time.perf_counter()
        done = await wait_applied(client, len(events) + len(warm), timeout=600)
    return {
        "events": len(events),
        "publish_seconds": published - started,
        "total_seconds": done - started,
        "events_per_s": len(events) / (done - started),
        "publish_events_per_s": len(events) / (published - started),
    }


async def freshness(
    bootstrap: str, client: aioredis.Redis, rate: float, seconds: float, already: int
) -> dict:
    n = int(rate * seconds)
    tick = 0.01  # publish every 10 ms: rate/100 events per tick
    per_tick = max(1, round(rate * tick))
    sent = 0
    async with EventPublisher([bootstrap], linger_ms=0) as publisher:
        started = time.perf_counter()
        while sent < n:
            batch = [
                RatingEvent(user_id=f"fresh{sent + j}", item_id="f", rating=4)
                for j in range(min(per_tick, n - sent))
            ]
            await publisher.publish_many(batch)
            sent += len(batch)
            ahead = started + sent / rate - time.perf_counter()
            if ahead > 0:
                await asyncio.sleep(ahead)
        achieved = sent / (time.perf_counter() - started)
    await wait_applied(client, already + n, timeout=120)
    async with client.pipeline(transaction=False) as pipe:
        for i in range(n):
            pipe.hmget(user_key(f"fresh{i}"), ["last_ts", "updated_ms"])
        rows = await pipe.execute()
    lags_ms = np.array([int(updated) - float(ts) * 1000 for ts, updated in rows])
    return {
        "events": n,
        "achieved_rate": achieved,
        "p50_ms": float(np.percentile(lags_ms, 50)),
        "p99_ms": float(np.percentile(lags_ms, 99)),
        "max_ms": float(lags_ms.max()),
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--fresh-rate", type=float, default=1000.0)
    parser.add_argument("--fresh-seconds", type=float, default=10.0)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument(
        "--consumers", type=int, default=1, help="features consumer processes in the group"
    )
    args = parser.parse_args()

    events = rating_events(args.events)
    raw = await raw_redis_rate(args.redis_url, events)

    kafka = EmbeddedKafka()
    kafka.ensure_topics([t.value for t in Topic])
    client = aioredis.from_url(args.redis_url, decode_responses=True)
    await client.flushdb()
    with tempfile.TemporaryDirectory() as workdir:
        consumers = [
            start_consumer(kafka.bootstrap, args.redis_url, Path(workdir) / str(n))
            for n in range(args.consumers)
        ]
        try:
            e2e = await end_to_end(kafka.bootstrap, client, events, args.consumers)
            fresh = await freshness(
                kafka.bootstrap, client, args.fresh_rate, args.fresh_seconds, args.events + 16
            )
        finally:
            for consumer in consumers:
                consumer.terminate()
            for consumer in consumers:
                consumer.wait(timeout=30)
    await client.flushdb()
    await client.aclose()
    kafka.close()

    ratio = e2e["events_per_s"] / raw
    rows = [
        ("raw Redis writes, pipelined (limit)", f"{raw:,.0f} events/s", ""),
        ("SDK publish into Kafka", f"{e2e['publish_events_per_s']:,.0f} events/s", ""),
        (
            "end to end (SDK→Kafka→consumer→Redis)",
            f"{e2e['events_per_s']:,.0f} events/s",
            f">= {TARGETS['end_to_end_events_per_s']:,}",
        ),
        ("end to end / raw", f"{ratio:.2f}", f">= {TARGETS['ratio_to_raw']}"),
        (f"freshness p50 at {fresh['achieved_rate']:,.0f} ev/s", f"{fresh['p50_ms']:.1f} ms", ""),
        ("freshness p99", f"{fresh['p99_ms']:.1f} ms", f"<= {TARGETS['freshness_p99_ms']}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure'.ljust(width)}  {'value':>18}  target")
    for name, value, target in rows:
        print(f"{name.ljust(width)}  {value:>18}  {target}")
    met = {
        "end_to_end_events_per_s": e2e["events_per_s"] >= TARGETS["end_to_end_events_per_s"],
        "ratio_to_raw": ratio >= TARGETS["ratio_to_raw"],
        "freshness_p99_ms": fresh["p99_ms"] <= TARGETS["freshness_p99_ms"],
    }
    figures = {
        "raw_redis_events_per_s": raw,
        "end_to_end_events_per_s": e2e["events_per_s"],
        "publish_events_per_s": e2e["publish_events_per_s"],
        "ratio_to_raw": ratio,
        "freshness_p50_ms": fresh["p50_ms"],
        "freshness_p99_ms": fresh["p99_ms"],
        "freshness_rate": fresh["achieved_rate"],
        "events": args.events,
        "consumer_processes": args.consumers,
    }
    print(
        json.dumps(
            {"figures": figures, "targets": TARGETS, "met_each": met, "met": all(met.values())}
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))

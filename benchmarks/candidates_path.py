"""The in-process cost of one recommendation: precomputed candidates (Redis only) against the
vector query (seen set + user-vector retrieve + filtered query on Qdrant Edge), same run.

    STREAMREC_REDIS_URL=redis://127.0.0.1:6379/<db> python benchmarks/candidates_path.py \
        [--calls 3000] [--dim 32]

A synthetic catalog of ml-100k's size (943 users, 1,682 items, 100,000 ratings; untrained MF,
which costs the same to serve as a trained one) is archived, applied to the feature store and
published with candidates; then ``api.routers.users._base`` (what the route runs for the base
model, k=10) is timed per call for random users, alternating the two paths in rounds, with
the candidates path forced off (``CandidateServer`` answering None) for the vector query.
The request path's floor is its Redis round trips (the candidates path makes one: user
stats, candidates and seen set in a pipeline, the live pointer remembered; titles come from
the process's cache): one PING's cost is printed for scale. Prints per-call µs per path: the
median, worst and mean of ten rounds' means, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from streamrec.api.routers.users import _base
from streamrec.api.runtime import Runtime
from streamrec.core.datasets import synthetic
from streamrec.core.metrics import Metrics
from streamrec.core.settings import Settings
from streamrec.schemas.events import ItemEvent, RatingEvent, SourcedEvent
from streamrec.schemas.models import ModelName
from streamrec.stores.candidates import RequestState
from streamrec.stores.factory import open_stores
from streamrec.trainer.data import build
from streamrec.trainer.models import build_model
from streamrec.trainer.publish import publish_version


class NoCandidates:
    """The candidates path switched off: the counters alone (one round trip), as without lists."""

    def __init__(self, runtime: Runtime) -> None:
        self._features = runtime.features

    async def request_state(self, user_id: str, *args: Any) -> tuple[RequestState, None]:
        return RequestState(await self._features.user_stats(user_id)), None


async def _setup(runtime: Runtime, dim: int) -> list[str]:
    data = synthetic(n_users=943, n_items=1682, n_events=100_000, n_genres=18, seed=1)
    stores = runtime.stores
    inter = await asyncio.to_thread(build, data, stores.ids)
    events = [
        SourcedEvent(ItemEvent(item_id=i.item_id, title=i.title, genres=list(i.genres)), "i", 0, n)
        for n, i in enumerate(data.items.values())
    ]
    events += [
        SourcedEvent(RatingEvent(user_id=r.user_id, item_id=r.item_id, rating=r.rating), "r", 0, n)
        for n, r in enumerate(data.ratings)
    ]
    await asyncio.to_thread(stores.archive.write_batch, events)
    for lo in range(0, len(events), 5000):
        await stores.features.apply_batch("bench", events[lo : lo + 5000])
    stores.models.register("mf", build_model("mf", inter, dim=dim, seed=0), activate=True)
    started = time.perf_counter()
    await asyncio.to_thread(
        publish_version,
        stores.models,
        stores.vectors,
        stores.ids,
        stores.engine,
        "mf",
        candidates=stores.candidates,
    )
    print(f"published mf with candidates in {time.perf_counter() - started:.1f}s")
    return sorted({r.user_id for r in data.ratings})


async def _round(runtime: Runtime, users: list[str], calls: int) -> float:
    """Mean µs per ``_base`` call over ``calls`` random users."""
    features = runtime.features
    picked = random.choices(users, k=calls)
    started = time.perf_counter()
    for user in picked:
        state, found = await runtime.candidates.request_state(user, "mf")
        served = await _base(
            runtime,
            features,
            user,
            ModelName.MF,
            10,
            exclude_seen=True,
            wanted=None,
            stats=state.stats,
            version=None,
            found=found,
        )
        assert served.model == ModelName.MF and len(served.ranked) == 10
    return (time.perf_counter() - started) / calls * 1e6


async def main(calls: int, dim: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(var_dir=Path(tmp), kafka_bootstrap="embedded", qdrant_url="embedded")
        async with open_stores(settings) as stores:
            runtime = Runtime.build(stores, Metrics(), publisher=None)  # type: ignore[arg-type]
            users = await _setup(runtime, dim)
            precomputed, direct = runtime.candidates, NoCandidates(runtime)
            rounds = 10
            figures: dict[str, list[float]] = {"candidates": [], "vector_query": []}
            for n in range(rounds + 1):
                for name, server in (("candidates", precomputed), ("vector_query", direct)):
                    runtime.candidates = server  # type: ignore[assignment]
                    mean = await _round(runtime, users, calls // rounds)
                    if n:  # the first round warms caches (item titles, Edge segments)
                        figures[name].append(mean)
            redis = stores.services.redis
            started = time.perf_counter()
            for _ in range(calls):
                await redis.ping()
            ping = (time.perf_counter() - started) / calls * 1e6
            print(f"one Redis round trip (PING): {ping:.0f} µs")
            medians = {}
            for name, means in figures.items():
                ordered = sorted(means)
                medians[f"{name}_us"] = round(statistics.median(ordered), 1)
                print(
                    f"{name:13s} per call: median {statistics.median(ordered):7.0f} µs, "
                    f"worst round {ordered[-1]:7.0f} µs, mean {statistics.fmean(ordered):7.0f} µs"
                )
            # The peer is the vector query it replaces: the candidates path must not cost more.
            met = medians["candidates_us"] <= medians["vector_query_us"]
            result = {"figures": {**medians, "ping_us": round(ping, 1)}, "met": met}
            result["targets"] = {"candidates_us": "<= vector_query_us"}
            print(json.dumps(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--dim", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.dim))

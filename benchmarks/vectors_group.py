"""The vectors group's throughput: how many rating and click events per second it turns into
fresh user vectors and candidate lists, for the models ``benchmarks/serving.py`` serves.

    .venv/bin/python benchmarks/vectors_group.py [--batches 20] [--sizes 50,200,1000]
        [--models doc2vec,mf,sasrec] [--epochs 1] [--redis-url redis://127.0.0.1:6379/12]
        [--profile] [--history-events 0]

In one process, on the stores ``streamrec.stores.factory.open_stores`` opens (embedded Kafka
and Qdrant Edge in a temporary directory, a SQLite archive there, Redis at ``--redis-url``,
whose db is flushed): ml-100k is archived and applied to the feature store, each model is
trained (``--epochs``: the cost of a user vector does not depend on how well it is trained)
and published with candidates (``trainer.live.publish_version``), and the group's updater
(``consumers.app.vectors_updater``, the code `up` runs) follows the aliases. Then batches of
``--sizes`` events like the serving benchmark's background ingest (random ml-100k users and
items, half ratings, half clicks) are applied to the feature store (untimed, as the features
group would) and handed to ``VectorsUpdater.handle`` (timed): per batch size, events/s,
distinct users per batch, batch milliseconds p50/p99.

The limit beside it, on the same batches: the compute floor, the same users' query vectors
and top-C lists of every model with no Redis, no Edge and no encoding (``query_vectors`` and
``CandidateIndex.top``), per model. ``--profile`` adds where the time goes: wall milliseconds per
batch in each of the updater's stages (timers wrapped around them, in whichever thread they
run).

``--history-events N`` first applies N more ingest events to the feature store (untimed, before
any batch is measured): the state after a long run of the serving benchmark, whose random
ingest grows every user's seen set and history toward the 1,682 items of the catalog (the mean
seen-set size is reported: 106 with none, 532 after 500,000).

Target: at 1,000 events/s of ingest a batch of 200 events (200 ms of it) must be handled in
well under 200 ms, or the group falls behind and freshness grows without bound: events/s at
size 200 ≥ 1,000 (the serving benchmark's ingest rate).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamrec.consumers import vectors as user_vectors_module  # noqa: E402
from streamrec.consumers.app import vectors_updater  # noqa: E402
from streamrec.consumers.archive import archive_events  # noqa: E402
from streamrec.consumers.vectors import VectorsUpdater  # noqa: E402
from streamrec.core.datasets import InteractionData, load_movielens  # noqa: E402
from streamrec.core.ids import IdKind  # noqa: E402
from streamrec.core.settings import Settings  # noqa: E402
from streamrec.producers.replay import replay_events  # noqa: E402
from streamrec.schemas.events import ClickEvent, Event, RatingEvent, SourcedEvent  # noqa: E402
from streamrec.schemas.topics import ConsumerGroup  # noqa: E402
from streamrec.stores.candidates import CandidateStore  # noqa: E402
from streamrec.stores.factory import Stores, open_stores  # noqa: E402
from streamrec.stores.features import FeatureStore  # noqa: E402
from streamrec.stores.vectors import EdgeVectorStore  # noqa: E402
from streamrec.trainer.candidates import CandidateIndex, SeenRows  # noqa: E402
from streamrec.trainer.live import publish_version  # noqa: E402
from streamrec.trainer.service import ARCHIVE, load_data, train_model  # noqa: E402
from streamrec.trainer.user_vectors import (  # noqa: E402
    merge_history,
    model_histories,
    query_vectors,
)

ML100K = ROOT.parent / "shared" / "data" / "ml-100k"
FEATURES = ConsumerGroup.FEATURES.value
TARGETS = {"events_per_s_at_200": 1000.0}
STAGES = {  # what is timed: (owner, attribute) -> stage
    (user_vectors_module, "query_vectors"): "user vectors (models)",
    (EdgeVectorStore, "upsert"): "user vectors into Edge",
    (CandidateIndex, "top"): "top-C over the catalog",
    (CandidateStore, "write_candidates"): "encode + HSET candidates",
    (SeenRows, "rows_many"): "seen items (log tails, indices)",
    (FeatureStore, "recent_items_many"): "recent items (Redis)",
}


class StageTimers:
    """Wall seconds spent in each of ``STAGES``, summed over threads, while installed."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def _add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @contextlib.contextmanager
    def installed(self) -> Iterator[StageTimers]:
        saved = {key: getattr(*key) for key in STAGES}
        for (owner, name), stage in STAGES.items():
            setattr(owner, name, self._timed(saved[(owner, name)], stage))
        try:
            yield self
        finally:
            for (owner, name), original in saved.items():
                setattr(owner, name, original)

    def _timed(self, function: Any, stage: str) -> Any:
        if asyncio.iscoroutinefunction(function):

            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await function(*args, **kwargs)
                finally:
                    self._add(stage, time.perf_counter() - started)

            return timed_async

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self._add(stage, time.perf_counter() - started)

        return timed

    def per_batch_ms(self, batches: int) -> dict[str, float]:
        return {k: round(1000 * v / batches, 1) for k, v in sorted(self.seconds.items())}


class Log:
    """Events with log coordinates, as a consumer reads them: one partition, offsets in order."""

    def __init__(self) -> None:
        self.offset = 0

    def source(self, events: list[Event]) -> list[SourcedEvent]:
        out = []
        for event in events:
            out.append(SourcedEvent(event, event.topic.value, 0, self.offset))
            self.offset += 1
        return out


async def apply_features(stores: Stores, events: list[SourcedEvent]) -> None:
    for lo in range(0, len(events), 2000):
        chunk = events[lo : lo + 2000]
        positions: dict[tuple[str, int], int] = {}
        for sourced in chunk:
            positions[(sourced.topic, sourced.partition)] = sourced.offset
        await stores.features.apply_batch(FEATURES, chunk, positions)


async def setup(stores: Stores, data: InteractionData, log: Log, args: argparse.Namespace) -> None:
    replayed = log.source(list(replay_events(data)))
    started = time.perf_counter()
    for lo in range(0, len(replayed), 5000):
        await asyncio.to_thread(
            archive_events, stores.archive, stores.ids, replayed[lo : lo + 5000]
        )
    await apply_features(stores, replayed)
    print(f"ml-100k archived and applied in {time.perf_counter() - started:.0f} s", flush=True)
    for name in args.models.split(","):
        started = time.perf_counter()
        await asyncio.to_thread(train_and_publish, stores, name, args.epochs)
        print(f"  {name} published ({time.perf_counter() - started:.0f} s)", flush=True)


def train_and_publish(stores: Stores, name: str, epochs: int) -> None:
    watermark = stores.archive.watermark(["rating"])
    data = load_data(ARCHIVE, stores.engine, seed=0, until=watermark)
    opts = {"seed": 0, "epochs": epochs}
    found = train_model(name, data, stores.ids, stores.models, "loo-full", opts, activate=True)
    publish_version(
        stores.models,
        stores.vectors,
        stores.ids,
        stores.engine,
        name,
        found.version,
        candidates=stores.candidates,
    )


def ingest_batch(rng: random.Random, users: list[str], items: list[str], n: int) -> list[Event]:
    """What the serving benchmark's background ingest sends."""
    batch: list[Event] = []
    for _ in range(n):
        user, item = rng.choice(users), rng.choice(items)
        if rng.random() < 0.5:
            batch.append(RatingEvent(user_id=user, item_id=item, rating=rng.randint(1, 5)))
        else:
            batch.append(ClickEvent(user_id=user, item_id=item))
    return batch


async def grow_history(
    stores: Stores, log: Log, rng: random.Random, users: list[str], items: list[str], n: int
) -> float:
    """Apply ``n`` ingest events to the feature store (untimed); the users' mean seen-set size."""
    for lo in range(0, n, 10_000):
        await apply_features(
            stores, log.source(ingest_batch(rng, users, items, min(10_000, n - lo)))
        )
    seen = await asyncio.to_thread(stores.candidates.seen_after, users, [0] * len(users))
    return round(float(np.mean([len(tail.items) for tail in seen])), 1)


async def measure(
    stores: Stores, updater: VectorsUpdater, batches: list[list[SourcedEvent]]
) -> dict[str, Any]:
    seconds: list[float] = []
    users: list[int] = []
    for batch in batches:
        await apply_features(stores, batch)  # the features group's part: not timed
        started = time.perf_counter()
        await updater.handle(batch)
        seconds.append(time.perf_counter() - started)
        users.append(len({s.event.user_id for s in batch}))
    events = sum(len(b) for b in batches)
    return {
        "events_per_s": round(events / sum(seconds)),
        "users_per_batch": round(float(np.mean(users))),
        "batch_ms_p50": round(1000 * float(np.percentile(seconds, 50)), 1),
        "batch_ms_p99": round(1000 * float(np.percentile(seconds, 99)), 1),
    }


def compute_floor(
    stores: Stores, updater: VectorsUpdater, batches: list[list[SourcedEvent]]
) -> dict[str, int]:
    """Per model, events/s of the same batches' query vectors and top-C lists alone (no I/O,
    histories from the batch only), and ``all``: every model in turn."""
    loaded = list(updater._cache.loaded.values())  # the models the updater follows
    spent = dict.fromkeys([m.serving for m in loaded], 0.0)
    for batch in batches:
        by_user: dict[str, list[str]] = {}
        for sourced in batch:
            event = sourced.event
            if isinstance(event, RatingEvent | ClickEvent):
                by_user.setdefault(event.user_id, []).append(event.item_id)
        users = sorted(by_user)
        histories = [merge_history([], by_user[u]) for u in users]
        user_idx = stores.ids.lookup(IdKind.USER, users)
        item_idx = stores.ids.lookup(IdKind.ITEM, {i for h in histories for i in h})
        for model in loaded:
            index = updater._index(model)
            started = time.perf_counter()
            mapped = model_histories(model, histories, item_idx, model.history_length(50))
            keep, vectors = query_vectors(model, [user_idx[u] for u in users], mapped)
            if keep:
                index.top(vectors, stores.candidates.per_user)
            spent[model.serving] += time.perf_counter() - started
    events = sum(len(b) for b in batches)
    floor = {name: round(events / seconds) for name, seconds in spent.items()}
    return {**floor, "all": round(events / sum(spent.values()))}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    redis.Redis.from_url(args.redis_url).flushdb()
    data = load_movielens(ML100K)
    users = sorted({r.user_id for r in data.ratings})
    items = sorted(data.items)
    rng = random.Random(11)
    log = Log()
    figures: dict[str, Any] = {"models": args.models}
    with tempfile.TemporaryDirectory(prefix="streamrec-vectors-") as tmp:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            var_dir=Path(tmp),
            redis_url=args.redis_url,
            database_url=f"sqlite:///{tmp}/archive.db",
            kafka_bootstrap="embedded",
            qdrant_url="embedded",
        )
        async with open_stores(settings) as stores:
            await setup(stores, data, log, args)
            updater = vectors_updater(stores)
            await updater.follow_aliases()
            figures["history_events"] = args.history_events
            figures["mean_seen_items"] = await grow_history(
                stores, log, rng, users, items, args.history_events
            )
            print(f"  users have seen {figures['mean_seen_items']} items on average", flush=True)
            for size in (int(s) for s in args.sizes.split(",")):
                batches = [
                    log.source(ingest_batch(rng, users, items, size)) for _ in range(args.batches)
                ]
                timers = StageTimers()
                with timers.installed() if args.profile else contextlib.nullcontext():
                    row = await measure(stores, updater, batches)
                if args.profile:
                    row["stage_ms_per_batch"] = timers.per_batch_ms(len(batches))
                row["compute_floor_events_per_s"] = compute_floor(stores, updater, batches)
                figures[f"size_{size}"] = row
                print(f"  batches of {size}: {row}", flush=True)
    return figures


def report(figures: dict[str, Any]) -> None:
    print(f"{'batch':>6}{'users':>7}{'events/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'floor ev/s':>12}")
    for key, row in figures.items():
        if key.startswith("size_"):
            print(
                f"{key.removeprefix('size_'):>6}{row['users_per_batch']:>7}"
                f"{row['events_per_s']:>10}{row['batch_ms_p50']:>9}{row['batch_ms_p99']:>9}"
                f"{row['compute_floor_events_per_s']['all']:>12}"
            )
    at_200 = figures.get("size_200", {}).get("events_per_s")
    met = {"events_per_s_at_200": at_200 is not None and at_200 >= TARGETS["events_per_s_at_200"]}
    print(json.dumps({"figures": figures, "targets": TARGETS, "met": met}))


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--sizes", default="50,200,1000")
    parser.add_argument("--models", default="doc2vec,mf,sasrec")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="Where the time goes: wall ms per batch in each stage",
    )
    parser.add_argument(
        "--history-events",
        type=int,
        default=0,
        help="Ingest events applied to the feature store before measuring (bigger seen sets)",
    )
    args = parser.parse_args()
    if not (ML100K / "u.data").is_file() and not (ML100K / "ratings.csv").is_file():
        sys.exit(f"MovieLens 100K not found at {ML100K}")
    report(asyncio.run(main(args)))


if __name__ == "__main__":
    cli()

"""Crash exactness: SIGKILL the consumers during an ml-100k replay, then count for count.

    .venv/bin/python benchmarks/crash_exactness.py [--seed 7] [--kills 6] [--rate 600]
        [--redis-url redis://127.0.0.1:6379/10] [--database-url URL] [--data PATH]

The harness process owns an embedded Kafka (librdkafka mock cluster), so the log outlives
every kill, and replays ml-100k into it (``producers.replay.replay``: the catalog, then every
rating in event-time order) at ``--rate`` events/s. A child process runs the features and
archive consumer groups (``streamrec consume -g features -g archive``); the harness kills it
with SIGKILL ``--kills`` times at seeded random moments and starts it again at once. Per kill
it measures restart-to-resume: from the new process's start to the first newly applied offset
in Redis (features) and the first newly committed Kafka offset (archive).

When everything is consumed, the state is compared with the file, count for count:

* features: per user ``ratings`` and ``rating_sum`` (``FeatureStore.user_stats``), per item
  ``ratings`` and ``rating_sum`` and its catalog title;
* archive: rows per user and in total (``stores.catalog.InteractionRow``), catalog items;
* dead letters (nothing in the replay is invalid).

Lost events are counts below the file's, doubled ones counts above it. Then Redis is flushed
(FLUSHDB) and rebuilt from the archive (``stores.rebuild.rebuild_features``, the code behind
``streamrec rebuild``); ``snapshot_features(...).differences`` must be empty against the
state before the flush, and the rebuild is timed.

Redis db 10 is flushed (never db 15, the tests'); the archive is a SQLite file in a temporary
directory unless ``--database-url`` names another database, whose streamrec tables are
dropped first (never the tests' ``test``). Prints a table and, on the last line, one JSON
object with every figure, its target and whether all were met.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import Engine, func, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamrec.consumers.policy import EMBEDDED_SESSION_TIMEOUT_MS  # noqa: E402
from streamrec.core.datasets import InteractionData, load_movielens  # noqa: E402
from streamrec.core.db import create_db_engine  # noqa: E402
from streamrec.core.embedded import EmbeddedKafka  # noqa: E402
from streamrec.core.kafka_log import read_log_id  # noqa: E402
from streamrec.core.settings import Settings  # noqa: E402
from streamrec.producers.publisher import EventPublisher  # noqa: E402
from streamrec.producers.replay import replay  # noqa: E402
from streamrec.schemas.topics import EVENT_TOPICS, ConsumerGroup, Topic  # noqa: E402
from streamrec.stores.catalog import Archive, InteractionRow  # noqa: E402
from streamrec.stores.features import FeatureStore, item_key, offset_key  # noqa: E402
from streamrec.stores.rebuild import FeatureSnapshot, rebuild_features, snapshot_features  # noqa: E402
from streamrec.stores.schema import drop_schema  # noqa: E402

FEATURES = ConsumerGroup.FEATURES.value
ARCHIVE = ConsumerGroup.ARCHIVE.value
PARTITIONS = 4  # the embedded broker's auto-created topics
POLL_S = 0.02
# The child's output (start-up, group joins, warnings) is kept for reading after the run.
LOG_DIR = ROOT / "var" / "benchmarks"
TARGETS: dict[str, Any] = {
    "lost_events": 0,
    "doubled_events": 0,
    "rating_sum_mismatches": 0,
    "dead_letters": 0,
    "resume_max_s": 5.0,
    "rebuild_differences": 0,
}
FORBIDDEN_REDIS_DB = "/15"
FORBIDDEN_DATABASE = "/test"


# ---------------------------------------------------------------- the file's truth


@dataclass
class Truth:
    """What the file says every count must be."""

    user_counts: Counter[str]
    user_sums: Counter[str]
    item_counts: Counter[str]
    item_sums: Counter[str]
    titles: dict[str, str]
    ratings: int
    max_ts: float


def file_truth(data: InteractionData, limit: int | None) -> Truth:
    """Per user and item counts and sums of the ratings the replay publishes."""
    ratings = data.ratings[:limit] if limit is not None else data.ratings
    truth = Truth(Counter(), Counter(), Counter(), Counter(), {}, len(ratings), 0.0)
    for r in ratings:
        truth.user_counts[r.user_id] += 1
        truth.user_sums[r.user_id] += r.rating
        truth.item_counts[r.item_id] += 1
        truth.item_sums[r.item_id] += r.rating
        truth.max_ts = max(truth.max_ts, float(r.ts))
    truth.titles = {item.item_id: item.title for item in data.items.values()}
    return truth


# ---------------------------------------------------------------- services and the child


def check_targets(redis_url: str, database_url: str) -> None:
    # Db 15 and database `test` belong to the test suite, which flushes them per test.
    if redis_url.rstrip("/").endswith(FORBIDDEN_REDIS_DB):
        raise SystemExit("refusing Redis db 15: the test suite's database")
    if database_url.rstrip("/").endswith(FORBIDDEN_DATABASE):
        raise SystemExit("refusing database `test`: the test suite's database")


def child_env(bootstrap: str, args: argparse.Namespace, workdir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "STREAMREC_KAFKA_BOOTSTRAP": bootstrap,
        "STREAMREC_REDIS_URL": args.redis_url,
        "STREAMREC_DATABASE_URL": args.database_url,
        "STREAMREC_VAR_DIR": str(workdir),
        "STREAMREC_INGEST_API_KEY": "crash-exactness-ingest",
        "STREAMREC_ADMIN_API_KEY": "crash-exactness-admin",
        "STREAMREC_LOG_LEVEL": "INFO",
        # The child reaches the harness's mock broker by address, so it cannot tell it from a
        # real Kafka; give it the session `up` uses on the embedded broker (consumers/policy.py).
        "STREAMREC_CONSUMER_SESSION_TIMEOUT_MS": str(EMBEDDED_SESSION_TIMEOUT_MS),
    }


def start_child(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    command = ["-c", "from core.cli import main; main()", "consume", "-g", "features"]
    with log.open("ab") as out:
        out.write(f"---- start {time.strftime('%H:%M:%S')}\n".encode())
        out.flush()
        return subprocess.Popen(
            [sys.executable, *command, "-g", "archive"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def stop_child(child: subprocess.Popen[bytes], sig: int) -> None:
    child.send_signal(sig)
    await asyncio.to_thread(child.wait, 60)


# ---------------------------------------------------------------- progress


class Progress:
    """Messages each group has handled: the features group's applied offsets in Redis, the
    archive group's committed offsets in Kafka, and the log's end offsets."""

    def __init__(self, redis: aioredis.Redis, bootstrap: str) -> None:
        self.redis = redis
        self.partitions = [
            TopicPartition(t.value, p) for t in EVENT_TOPICS for p in range(PARTITIONS)
        ]
        self.kafka = AIOKafkaConsumer(
            bootstrap_servers=[bootstrap], group_id=ARCHIVE, enable_auto_commit=False
        )

    async def features(self) -> int:
        keys = [offset_key(FEATURES, tp.topic, tp.partition) for tp in self.partitions]
        values = await self.redis.mget(keys)
        return sum(int(v) + 1 for v in values if v is not None)

    async def archive(self) -> int:
        committed = [await self.kafka.committed(tp) for tp in self.partitions]
        return sum(c for c in committed if c is not None)

    async def end(self) -> int:
        ends = await self.kafka.end_offsets(self.partitions)
        return sum(ends.values())

    async def dead_letters(self) -> int:
        dlq = [TopicPartition(Topic.DLQ.value, p) for p in range(PARTITIONS)]
        return sum((await self.kafka.end_offsets(dlq)).values())


async def wait_until(check: Any, timeout: float) -> float | None:
    """Seconds until the async predicate holds (polled every 20 ms), None on timeout."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if await check():
            return time.perf_counter() - started
        await asyncio.sleep(POLL_S)
    return None


# ---------------------------------------------------------------- kills and restarts


@dataclass
class Kill:
    at_s: float  # since the replay started
    uptime_s: float  # how long the killed process had been consuming
    lag_at_kill: int  # messages in the log the features group had not applied
    joined_s: float | None  # restart to "consuming as" (imports, connections, group joins)
    features_resume_s: float | None  # restart to the first newly applied offset in Redis
    archive_resume_s: float | None  # restart to the first newly committed archive offset


@dataclass
class Run:
    first_start_s: float | None = None
    kills: list[Kill] = field(default_factory=list)
    replay_s: float = 0.0
    drained_s: float = 0.0


class Child:
    """The consumer process; its output goes to one log, read for its "consuming as" line."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self._log_from = 0

    def start(self) -> None:
        self._log_from = self.log.stat().st_size if self.log.exists() else 0
        self.started = time.perf_counter()
        self.process = start_child(self.env, self.log)

    async def stop(self, sig: int) -> None:
        if self.process is not None:
            await stop_child(self.process, sig)

    async def joined(self, timeout: float) -> float | None:
        """Seconds from start to the line the consume command logs once its groups joined."""

        async def logged() -> bool:
            with self.log.open("rb") as f:
                f.seek(self._log_from)
                return b"consuming as" in f.read()

        waited = await wait_until(logged, timeout)
        return None if waited is None else time.perf_counter() - self.started


async def resume_times(progress: Progress, child_start: float, timeout: float) -> tuple:
    """From ``child_start`` to the first progress of each group past where it stood."""
    features0, archive0 = await progress.features(), await progress.archive()

    async def features_moved() -> bool:
        return await progress.features() > features0

    async def archive_moved() -> bool:
        return await progress.archive() > archive0

    features = await wait_until(features_moved, timeout)
    f_s = None if features is None else time.perf_counter() - child_start
    archive = await wait_until(archive_moved, timeout)
    a_s = None if archive is None else time.perf_counter() - child_start
    return f_s, a_s


async def kill_loop(
    child: Child,
    progress: Progress,
    replaying: asyncio.Task[Any],
    args: argparse.Namespace,
    run: Run,
) -> None:
    """Kill the consuming child and start it again, ``--kills`` times, while the replay runs."""
    rng = random.Random(args.seed)
    consuming_since = time.perf_counter()
    for _ in range(args.kills):
        await asyncio.sleep(rng.uniform(args.min_uptime, args.max_uptime))
        if replaying.done():
            break  # no new events would show the restarted process resuming
        await child.stop(signal.SIGKILL)
        killed = time.perf_counter()
        lag = await progress.end() - await progress.features()
        child.start()
        resumed = asyncio.create_task(resume_times(progress, child.started, args.resume_timeout))
        joined = await child.joined(args.resume_timeout)
        f_s, a_s = await resumed
        run.kills.append(Kill(killed - args.t0, killed - consuming_since, lag, joined, f_s, a_s))
        consuming_since = time.perf_counter()


async def replay_file(
    data: InteractionData, bootstrap: str, rate: float, limit: int | None
) -> float:
    started = time.perf_counter()
    async with EventPublisher([bootstrap]) as publisher:
        await replay(data, publisher, rate=rate, limit=limit)
    return time.perf_counter() - started


async def drain(progress: Progress, expected: int, timeout: float) -> float | None:
    async def done() -> bool:
        return await progress.features() >= expected and await progress.archive() >= expected

    return await wait_until(done, timeout)


# ---------------------------------------------------------------- comparisons


def lost_doubled(truth: Counter[str], found: Counter[str]) -> tuple[int, int]:
    lost = sum(max(0, n - found.get(k, 0)) for k, n in truth.items())
    doubled = sum(max(0, n - truth.get(k, 0)) for k, n in found.items())
    return lost, doubled


def sum_mismatches(truth: Counter[str], found: dict[str, float]) -> int:
    keys = set(truth) | set(found)
    return sum(1 for k in keys if abs(truth.get(k, 0) - found.get(k, 0.0)) > 1e-6)


async def feature_counts(store: FeatureStore, redis: aioredis.Redis, truth: Truth) -> dict:
    users, items = Counter[str](), Counter[str]()
    user_sums: dict[str, float] = {}
    item_sums: dict[str, float] = {}
    titles_wrong = 0
    # Every user and item present in Redis, not only the file's: extras are doubled events.
    user_ids = set(truth.user_counts) | {
        k[len("sr:u:{") : -1] async for k in redis.scan_iter(match="sr:u:{*}", count=1000)
    }
    for user in user_ids:
        stats = await store.user_stats(user)
        users[user] = int(stats.get("ratings", 0))
        user_sums[user] = float(stats.get("rating_sum", 0.0))
    item_ids = set(truth.titles) | {
        k[len("sr:i:{") : -1] async for k in redis.scan_iter(match="sr:i:{*}", count=1000)
    }
    for item in item_ids:
        stats = await redis.hgetall(item_key(item))
        items[item] = int(stats.get("ratings", 0))
        item_sums[item] = float(stats.get("rating_sum", 0.0))
        titles_wrong += stats.get("title") != truth.titles.get(item)
    u_lost, u_doubled = lost_doubled(truth.user_counts, users)
    i_lost, i_doubled = lost_doubled(truth.item_counts, items)
    return {
        "user_lost": u_lost,
        "user_doubled": u_doubled,
        "item_lost": i_lost,
        "item_doubled": i_doubled,
        "sum_mismatches": sum_mismatches(truth.user_sums, user_sums)
        + sum_mismatches(truth.item_sums, item_sums),
        "titles_wrong": titles_wrong,
    }


def archive_counts(engine: Engine, truth: Truth) -> dict:
    t = InteractionRow.__table__.c
    query = select(t.user_id, func.count(), func.sum(t.rating)).group_by(t.user_id)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    users = Counter({user: n for user, n, _ in rows})
    sums = {user: float(s or 0.0) for user, _, s in rows}
    lost, doubled = lost_doubled(truth.user_counts, users)
    archive = Archive(engine)
    return {
        "lost": lost,
        "doubled": doubled,
        "rows": archive.count_interactions(),
        "items": archive.count_items(),
        "sum_mismatches": sum_mismatches(truth.user_sums, sums),
    }


async def snapshot(
    redis: aioredis.Redis, store: FeatureStore, truth: Truth, settings: Settings
) -> FeatureSnapshot:
    return await snapshot_features(
        redis,
        store,
        sorted(truth.user_counts),
        sorted(truth.titles),
        settings.popularity_half_life_days,
        truth.max_ts,
    )


async def flush_and_rebuild(
    redis: aioredis.Redis, store: FeatureStore, engine: Engine, bootstrap: str
) -> float:
    """FLUSHDB, then the rebuild `streamrec rebuild` runs; its seconds."""
    await redis.flushdb()
    log_id = await read_log_id([bootstrap])
    report = await rebuild_features(store, Archive(engine), FEATURES, log_id)
    return report.seconds


# ---------------------------------------------------------------- report


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_kills(run: Run) -> None:
    print("\nrestart after SIGKILL: seconds from the new process's start to")
    head = f"{'kill':>4}  {'at s':>7}  {'uptime s':>8}  {'lag':>7}  {'joined':>7}"
    print(f"{head}  {'features applied':>16}  archive committed")
    for n, k in enumerate(run.kills, 1):
        line = f"{n:>4}  {k.at_s:>7.1f}  {k.uptime_s:>8.1f}  {k.lag_at_kill:>7,}"
        line += f"  {seconds(k.joined_s):>7}  {seconds(k.features_resume_s):>16}"
        print(f"{line}  {seconds(k.archive_resume_s):>17}")


def print_table(figures: dict[str, Any], met: dict[str, bool]) -> None:
    width = max(len(k) for k in figures)
    print(f"\n{'figure'.ljust(width)}  {'value':>14}  {'target':>8}  met")
    for name, value in figures.items():
        shown = f"{value:,.2f}" if isinstance(value, float) else f"{value}"
        target = TARGETS.get(name)
        mark = "" if name not in met else ("yes" if met[name] else "NO")
        print(f"{name.ljust(width)}  {shown:>14}  {'' if target is None else target!s:>8}  {mark}")


def judge(figures: dict[str, Any]) -> dict[str, bool]:
    met = {
        name: figures[name] is not None and figures[name] <= target
        for name, target in TARGETS.items()
        if name != "kills"
    }
    met["kills"] = figures["kills"] >= TARGETS["kills"]
    return met


# ---------------------------------------------------------------- main


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module doc as written, and every option's default."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--seed", type=int, default=7, help="seeds the kill moments")
    parser.add_argument("--kills", type=int, default=6, help="SIGKILLs of the consumer process")
    parser.add_argument(
        "--rate", type=float, default=600.0, help="replay events/s (the kills happen meanwhile)"
    )
    parser.add_argument("--min-uptime", type=float, default=0.5, help="s consuming before a kill")
    parser.add_argument("--max-uptime", type=float, default=4.0, help="s consuming before a kill")
    parser.add_argument(
        "--resume-timeout", type=float, default=120.0, help="s to wait for a restart to resume"
    )
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/10", help="flushed first and last"
    )
    parser.add_argument(
        "--database-url",
        default="",
        help="archive database, its tables dropped first (empty: SQLite in a temp dir)",
    )
    parser.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared/data/ml-100k", help="MovieLens folder"
    )
    parser.add_argument("--limit", type=int, help="replay only the first N ratings (smoke runs)")
    return parser.parse_args()


async def consume_with_kills(
    data: InteractionData, kafka: EmbeddedKafka, progress: Progress, args: argparse.Namespace
) -> Run:
    """The consumers start first, as in a running system; the replay once they consume."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / "crash_exactness_consumer.log"
    log.write_bytes(b"")
    child = Child(child_env(kafka.bootstrap, args, args.workdir), log)
    run = Run()
    child.start()
    try:
        run.first_start_s = await child.joined(args.resume_timeout)
        args.t0 = time.perf_counter()
        replaying = asyncio.create_task(replay_file(data, kafka.bootstrap, args.rate, args.limit))
        await kill_loop(child, progress, replaying, args, run)
        run.replay_s = await replaying
        expected = await progress.end()
        drained = await drain(progress, expected, timeout=600)
        run.drained_s = -1.0 if drained is None else drained
    finally:
        await child.stop(signal.SIGTERM)
    return run


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    data = load_movielens(args.data)
    truth = file_truth(data, args.limit)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    redis = aioredis.from_url(args.redis_url, decode_responses=True)
    await redis.flushdb()
    engine = create_db_engine(args.database_url)
    drop_schema(engine)  # a fresh archive: the child creates the schema
    kafka = EmbeddedKafka(PARTITIONS)
    kafka.ensure_topics([t.value for t in Topic])
    progress = Progress(redis, kafka.bootstrap)
    await progress.kafka.start()
    try:
        run = await consume_with_kills(data, kafka, progress, args)
        dead = await progress.dead_letters()
    finally:
        await progress.kafka.stop()
    store = FeatureStore(
        redis,
        recent_cap=settings.recent_items_cap,
        half_life_days=settings.popularity_half_life_days,
        dedup_window_hours=settings.dedup_window_hours,
    )
    features = await feature_counts(store, redis, truth)
    archived = archive_counts(engine, truth)
    before = await snapshot(redis, store, truth, settings)
    rebuild_s = await flush_and_rebuild(redis, store, engine, kafka.bootstrap)
    differences = before.differences(await snapshot(redis, store, truth, settings))
    for line in differences[:20]:
        print("rebuild difference:", line)
    await redis.flushdb()
    await redis.aclose()
    engine.dispose()
    kafka.close()
    return figures_of(truth, run, features, archived, dead, rebuild_s, differences, args)


def figures_of(
    truth: Truth,
    run: Run,
    features: dict,
    archived: dict,
    dead: int,
    rebuild_s: float,
    differences: list[str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    print_kills(run)
    resumes = [k.features_resume_s for k in run.kills if k.features_resume_s is not None]
    archive_resumes = [k.archive_resume_s for k in run.kills if k.archive_resume_s is not None]
    unmeasured = sum(k.features_resume_s is None for k in run.kills)
    return {
        "kills": len(run.kills),
        "ratings_in_file": truth.ratings,
        "archive_rows": archived["rows"],
        "archive_items": archived["items"],
        "lost_events": features["user_lost"] + features["item_lost"] + archived["lost"],
        "doubled_events": features["user_doubled"] + features["item_doubled"] + archived["doubled"],
        "features_user_lost": features["user_lost"],
        "features_user_doubled": features["user_doubled"],
        "features_item_lost": features["item_lost"],
        "features_item_doubled": features["item_doubled"],
        "archive_lost": archived["lost"],
        "archive_doubled": archived["doubled"],
        "rating_sum_mismatches": features["sum_mismatches"] + archived["sum_mismatches"],
        "catalog_titles_wrong": features["titles_wrong"],
        "dead_letters": dead,
        "first_start_s": run.first_start_s,
        "joined_p50_s": percentile([k.joined_s for k in run.kills if k.joined_s], 0.5),
        "resume_p50_s": percentile(resumes, 0.5),
        "resume_max_s": max(resumes) if len(resumes) == len(run.kills) and resumes else None,
        "resume_unmeasured": unmeasured,
        "archive_resume_p50_s": percentile(archive_resumes, 0.5),
        "archive_resume_max_s": max(archive_resumes, default=None),
        "replay_s": run.replay_s,
        "drain_after_replay_s": run.drained_s,
        "rebuild_s": rebuild_s,
        "rebuild_events_per_s": (truth.ratings + len(truth.titles)) / rebuild_s,
        "rebuild_differences": len(differences),
        # user genre affinities: see stores/rebuild.py on ratings applied before their item
        "rebuild_differences_genre": sum(" g:" in line for line in differences),
        "seed": args.seed,
        "rate": args.rate,
    }


def main() -> int:
    args = parse_args()
    TARGETS["kills"] = max(5, args.kills)
    with tempfile.TemporaryDirectory(prefix="streamrec-crash-") as workdir:
        args.workdir = Path(workdir)
        args.database_url = args.database_url or f"sqlite:///{workdir}/archive.db"
        check_targets(args.redis_url, args.database_url)
        figures = asyncio.run(measure(args))
    met = judge(figures)
    print_table(figures, met)
    print(json.dumps({"figures": figures, "targets": TARGETS, "met": all(met.values())}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

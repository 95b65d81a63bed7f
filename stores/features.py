"""Feature state in Redis, applied with an exactly-once effect on at-least-once delivery.

Per batch, ``FeatureStore.apply_batch``:

1. WATCHes the last-applied-offset keys of the partitions in the batch;
2. reads (one pipeline) those offsets, the recent event-id sets, and the genres of the items
   the batch touches;
3. drops events at or below their partition's applied offset (re-delivery after a crash) and
   events whose ``event_id`` was seen in the de-duplication window (an app sending twice);
4. aggregates what is left (one HINCRBY per user and field, not per event) and writes it in
   ONE MULTI/EXEC together with the new offsets and event ids.

If another consumer touched the same partitions in between (a rebalance zombie), EXEC fails
on the WATCH and the batch is re-read and re-applied from scratch.

Key layout (all under ``sr:``):

=========================  ======  ===================================================
``sr:u:{user}``            hash    ratings, rating_sum, clicks, impressions, last_ts,
                                   updated_ms (when the state last changed)
``sr:u:{user}:seq``        zset    recent distinct items scored by event time, capped
                                   (event time, not arrival: topics are fetched apart)
``sr:u:{user}:seen``       set     every item the user rated or clicked
``sr:u:{user}:genres``     hash    genre -> affinity (ratings centred at 2.5, clicks +1)
``sr:i:{item}``            hash    title, genres ("|"-joined), year, ratings, rating_sum,
                                   clicks, impressions
``sr:popularity``          zset    item -> forward-decayed popularity
``sr:popularity:landmark`` string  the landmark time (s) of the forward decay
``sr:variants``            hash    "{model}|{variant}|impressions|clicks" -> count
``sr:offset:{g}:{t}:{p}``  string  last offset of topic t, partition p applied by group g
``sr:dedup:{g}:{bucket}``  set     event ids applied by group g in a time bucket
=========================  ======  ===================================================

Popularity uses forward decay (Cormode et al. 2009): an event at time t adds
``2 ** ((t - landmark) / half_life)``, so ranking by score equals ranking by exponentially
decayed counts without ever rewriting old scores; when exponents grow large the whole set is
rescaled once with ZUNIONSTORE and the landmark moves.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from schemas.events import (
    ClickEvent,
    ImpressionEvent,
    ItemEvent,
    RatingEvent,
    SourcedEvent,
)

PREFIX = "sr"
POPULARITY = f"{PREFIX}:popularity"
LANDMARK = f"{PREFIX}:popularity:landmark"
VARIANTS = f"{PREFIX}:variants"
_REBASE_AFTER_HALF_LIVES = 64.0  # 2**64 is far from float overflow and keeps precision
_MAX_WATCH_RETRIES = 5


def user_key(user_id: str) -> str:
    return f"{PREFIX}:u:{user_id}"


def user_seq_key(user_id: str) -> str:
    return f"{PREFIX}:u:{user_id}:seq"


def user_seen_key(user_id: str) -> str:
    return f"{PREFIX}:u:{user_id}:seen"


def user_genres_key(user_id: str) -> str:
    return f"{PREFIX}:u:{user_id}:genres"


def item_key(item_id: str) -> str:
    return f"{PREFIX}:i:{item_id}"


def offset_key(group: str, topic: str, partition: int) -> str:
    return f"{PREFIX}:offset:{group}:{topic}:{partition}"


def dedup_key(group: str, bucket: int) -> str:
    return f"{PREFIX}:dedup:{group}:{bucket}"


@dataclass(frozen=True)
class ApplyResult:
    applied: int
    redelivered: int  # at or below the partition's applied offset
    duplicates: int  # event_id already applied within the window
    lag_seconds: list[float] = field(default_factory=list)  # published -> committed


@dataclass
class _Aggregate:
    """A batch folded into per-key increments: one command per key and field, not per event."""

    user_counts: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    user_sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    user_last_ts: dict[str, float] = field(default_factory=dict)
    user_seq: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    user_genres: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    item_counts: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    item_sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    item_meta: dict[str, dict[str, str]] = field(default_factory=dict)
    popularity: Counter[str] = field(default_factory=Counter)
    variants: Counter[str] = field(default_factory=Counter)


class FeatureStore:
    """Typed reads and batched, idempotent writes of the Redis feature state."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        recent_cap: int = 200,
        half_life_days: float = 7.0,
        dedup_window_hours: int = 24,
    ) -> None:
        self._redis = redis
        self._recent_cap = recent_cap
        self._half_life = half_life_days * 86_400.0
        self._dedup_bucket = dedup_window_hours * 3600

    # ------------------------------------------------------------------ writes

    async def apply_batch(
        self,
        group: str,
        events: Sequence[SourcedEvent],
        positions: dict[tuple[str, int], int] | None = None,
    ) -> ApplyResult:
        """Apply a batch once. ``positions`` holds the highest offset per (topic, partition)
        the batch covers, including messages that were dead-lettered, so they count as done.
        """
        high = dict(positions or {})
        for sourced in events:
            key = (sourced.topic, sourced.partition)
            high[key] = max(high.get(key, -1), sourced.offset)
        if not high:
            return ApplyResult(0, 0, 0)
        for _ in range(_MAX_WATCH_RETRIES):
            try:
                return await self._apply_once(group, events, high)
            except WatchError:
                continue  # another consumer moved one of our partitions: re-read, re-apply
        raise WatchError(
            f"offsets of group {group} kept changing during {_MAX_WATCH_RETRIES} tries"
        )

    async def _apply_once(
        self,
        group: str,
        events: Sequence[SourcedEvent],
        high: dict[tuple[str, int], int],
    ) -> ApplyResult:
        partitions = sorted(high)
        offset_keys = [offset_key(group, t, p) for t, p in partitions]
        now = time.time()
        bucket = int(now // self._dedup_bucket)
        async with self._redis.pipeline(transaction=True) as tx:
            await tx.watch(*offset_keys)
            applied_offsets, seen_ids, genres, landmark = await self._read_state(
                group, bucket, offset_keys, events
            )
            done = dict(zip(partitions, applied_offsets, strict=True))
            fresh, redelivered, duplicates = _select_fresh(events, done, seen_ids)
            agg, landmark_now, rebase = self._aggregate(fresh, genres, landmark)

            tx.multi()
            if rebase:
                tx.zunionstore(POPULARITY, {POPULARITY: rebase})
            if landmark_now != landmark:
                tx.set(LANDMARK, repr(landmark_now))
            self._queue_writes(tx, agg, now)
            if fresh:
                ids_key = dedup_key(group, bucket)
                tx.sadd(ids_key, *[str(s.event.event_id) for s in fresh])
                tx.expire(ids_key, 2 * self._dedup_bucket)
            for (topic, partition), key in zip(partitions, offset_keys, strict=True):
                tx.set(key, high[(topic, partition)])
            await tx.execute()
        committed = time.time()
        lags = [committed - s.published_ms / 1000.0 for s in fresh if s.published_ms]
        return ApplyResult(len(fresh), redelivered, duplicates, lags)

    async def _read_state(
        self,
        group: str,
        bucket: int,
        offset_keys: list[str],
        events: Sequence[SourcedEvent],
    ) -> tuple[list[int], set[str], dict[str, list[str]], float | None]:
        ids = [str(s.event.event_id) for s in events]
        item_ids = sorted(
            {s.event.item_id for s in events if isinstance(s.event, RatingEvent | ClickEvent)}
        )
        # A separate, non-transactional pipeline: reads in one round trip while WATCH holds.
        async with self._redis.pipeline(transaction=False) as reads:
            reads.mget(offset_keys)
            if ids:
                reads.smismember(dedup_key(group, bucket), ids)
                reads.smismember(dedup_key(group, bucket - 1), ids)
            for item in item_ids:
                reads.hget(item_key(item), "genres")
            reads.get(LANDMARK)
            replies = await reads.execute()
        offsets = [int(v) if v is not None else -1 for v in replies[0]]
        position = 1
        seen: set[str] = set()
        if ids:
            now_hits, before_hits = replies[1], replies[2]
            seen = {i for i, a, b in zip(ids, now_hits, before_hits, strict=True) if a or b}
            position = 3
        genres = {
            item: raw.split("|") if raw else []
            for item, raw in zip(
                item_ids, replies[position : position + len(item_ids)], strict=True
            )
        }
        landmark_raw = replies[-1]
        return offsets, seen, genres, float(landmark_raw) if landmark_raw else None

    def _aggregate(
        self,
        fresh: Iterable[SourcedEvent],
        genres: dict[str, list[str]],
        landmark: float | None,
    ) -> tuple[_Aggregate, float | None, float]:
        agg = _Aggregate()
        events = [s.event for s in fresh]
        times = [e.ts.timestamp() for e in events if not isinstance(e, ItemEvent)]
        rebase = 0.0
        if times and landmark is None:
            landmark = min(times)
        if times and landmark is not None:
            half_lives = (max(times) - landmark) / self._half_life
            if half_lives > _REBASE_AFTER_HALF_LIVES:
                shift = math.floor(half_lives) - 1
                rebase = 2.0**-shift
                landmark += shift * self._half_life
        for event in events:
            if isinstance(event, ItemEvent):
                meta = {"title": event.title, "genres": "|".join(event.genres)}
                if event.year is not None:
                    meta["year"] = str(event.year)
                agg.item_meta[event.item_id] = meta
                genres[event.item_id] = list(event.genres)
        for event in events:
            self._fold(agg, event, genres, landmark)
        return agg, landmark, rebase

    def _fold(
        self,
        agg: _Aggregate,
        event: object,
        genres: dict[str, list[str]],
        landmark: float | None,
    ) -> None:
        if isinstance(event, ItemEvent):
            return
        assert isinstance(event, RatingEvent | ClickEvent | ImpressionEvent)
        ts = event.ts.timestamp()
        user = event.user_id
        agg.user_last_ts[user] = max(agg.user_last_ts.get(user, ts), ts)
        if isinstance(event, ImpressionEvent):
            agg.user_counts[user]["impressions"] += 1
            for item in event.item_ids:
                agg.item_counts[item]["impressions"] += 1
            agg.variants[f"{event.model}|{event.variant}|impressions"] += 1
            return
        item = event.item_id
        seq = agg.user_seq[user]
        seq[item] = max(seq.get(item, ts), ts)
        weight = 2.0 ** ((ts - landmark) / self._half_life) if landmark is not None else 1.0
        agg.popularity[item] += weight
        if isinstance(event, RatingEvent):
            agg.user_counts[user]["ratings"] += 1
            agg.user_sums[user] += event.rating
            agg.item_counts[item]["ratings"] += 1
            agg.item_sums[item] += event.rating
            affinity = (event.rating - 2.5) / 2.5
        else:
            agg.user_counts[user]["clicks"] += 1
            agg.item_counts[item]["clicks"] += 1
            if event.model:
                agg.variants[f"{event.model}|{event.variant or 'default'}|clicks"] += 1
            affinity = 1.0
        for genre in genres.get(item, ()):
            agg.user_genres[user][genre] += affinity

    def _queue_writes(self, tx: aioredis.client.Pipeline, agg: _Aggregate, now: float) -> None:
        updated_ms = int(now * 1000)
        for user, counts in agg.user_counts.items():
            key = user_key(user)
            for name, value in counts.items():
                tx.hincrby(key, name, value)
            if user in agg.user_sums:
                tx.hincrbyfloat(key, "rating_sum", agg.user_sums[user])
        for user, last_ts in agg.user_last_ts.items():
            tx.hset(user_key(user), mapping={"last_ts": last_ts, "updated_ms": updated_ms})
        for user, items in agg.user_seq.items():
            # GT: an item seen again moves to its latest time; an older event never moves it back.
            tx.zadd(user_seq_key(user), items, gt=True)
            tx.zremrangebyrank(user_seq_key(user), 0, -self._recent_cap - 1)
            tx.sadd(user_seen_key(user), *items)
        for user, affinities in agg.user_genres.items():
            for genre, value in affinities.items():
                tx.hincrbyfloat(user_genres_key(user), genre, value)
        for item, meta in agg.item_meta.items():
            tx.hset(item_key(item), mapping=meta)
        for item, counts in agg.item_counts.items():
            for name, value in counts.items():
                tx.hincrby(item_key(item), name, value)
            if item in agg.item_sums:
                tx.hincrbyfloat(item_key(item), "rating_sum", agg.item_sums[item])
        for item, score in agg.popularity.items():
            tx.zincrby(POPULARITY, score, item)
        for name, value in agg.variants.items():
            tx.hincrby(VARIANTS, name, value)

    # ------------------------------------------------------------------ reads

    async def recent_items(self, user_id: str, n: int = 50) -> list[str]:
        """The user's most recent distinct items, newest first (by event time)."""
        return await self._redis.zrevrange(user_seq_key(user_id), 0, max(n, 1) - 1)

    async def user_stats(self, user_id: str) -> dict[str, str]:
        return await self._redis.hgetall(user_key(user_id))

    async def genre_affinity(self, user_id: str) -> dict[str, float]:
        raw = await self._redis.hgetall(user_genres_key(user_id))
        return {genre: float(value) for genre, value in raw.items()}

    async def popular(self, k: int, exclude_seen_of: str | None = None) -> list[tuple[str, float]]:
        """Top-k items by decayed popularity, without the items a user has already seen."""
        results: list[tuple[str, float]] = []
        start, page = 0, max(4 * k, 50)
        while len(results) < k:
            chunk = await self._redis.zrevrange(
                POPULARITY, start, start + page - 1, withscores=True
            )
            if not chunk:
                break
            items = [item for item, _ in chunk]
            if exclude_seen_of is not None:
                seen = await self._redis.smismember(user_seen_key(exclude_seen_of), items)
            else:
                seen = [False] * len(items)
            results.extend(
                (item, score) for (item, score), hit in zip(chunk, seen, strict=True) if not hit
            )
            start += page
        return results[:k]

    async def item_meta(self, item_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for item in item_ids:
                pipe.hmget(item_key(item), ["title", "genres", "year"])
            replies = await pipe.execute()
        return {
            item: {"title": title or "", "genres": genres or "", "year": year or ""}
            for item, (title, genres, year) in zip(item_ids, replies, strict=True)
        }

    async def applied_offset(self, group: str, topic: str, partition: int) -> int:
        value = await self._redis.get(offset_key(group, topic, partition))
        return int(value) if value is not None else -1


def _select_fresh(
    events: Sequence[SourcedEvent],
    done: dict[tuple[str, int], int],
    seen_ids: set[str],
) -> tuple[list[SourcedEvent], int, int]:
    fresh: list[SourcedEvent] = []
    redelivered = duplicates = 0
    batch_ids: set[str] = set()
    for sourced in events:
        if sourced.offset <= done.get((sourced.topic, sourced.partition), -1):
            redelivered += 1
            continue
        event_id = str(sourced.event.event_id)
        if event_id in seen_ids or event_id in batch_ids:
            duplicates += 1
            continue
        batch_ids.add(event_id)
        fresh.append(sourced)
    return fresh, redelivered, duplicates

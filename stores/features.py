"""Feature state in Redis, applied with an exactly-once effect on at-least-once delivery.

Per batch, ``FeatureStore.apply_batch``:

1. WATCHes the last-applied-offset keys of the partitions in the batch;
2. reads (one pipeline) those offsets, the recent event-id sets and the decay landmark;
3. drops events at or below their partition's applied offset (re-delivery after a crash) and
   events whose ``event_id`` was seen in the de-duplication window (an app sending twice);
4. aggregates what is left (one increment per user and field, not per event) and hands it to
   ONE Lua script (``apply_features.lua``) inside MULTI/EXEC, with the new offsets and event
   ids: one payload instead of a Python-side command per key, which is where a plain pipeline
   spends its time.

Redis rolls back neither scripts nor transactions, so the script first checks every key it will
touch and writes nothing if one has the wrong type; the events behind such keys go to the
dead-letter callback and the rest of the batch is applied. Offsets are written last, inside the
same script, and only ever move forward.

If another consumer touched the same partitions in between (a rebalance zombie), EXEC fails
on the WATCH and the batch is re-read and re-applied from scratch.

Key layout (all under ``sr:``). Every per-id key is a type marker followed by the id in braces,
so no id, whatever its characters, can name another key (``196:seen`` is ``sr:u:{196:seen}``,
never ``sr:u:{196}``'s seen set), and a user's four keys share a Redis Cluster hash slot:

=========================  ======  ===================================================
``sr:u:{user}``            hash    ratings, rating_sum, clicks, impressions, last_ts,
                                   updated_ms (when the state last changed), and
                                   g:{genre} -> affinity (ratings centred at 2.5, clicks +1)
``sr:seq:{user}``          zset    recent distinct items scored by event time, capped
                                   (event time, not arrival: topics are fetched apart)
``sr:seen:{user}``         set     every item the user rated or clicked
``sr:seenlog:{user}``      list    the same items in the order they joined the set, so a
                                   reader holding the first n reads only the rest
``sr:i:{item}``            hash    title, genres ("|"-joined), year, ratings, rating_sum,
                                   clicks, impressions
``sr:pend:{item}``         hash    user -> genre-affinity weight of ratings and clicks of an
                                   item the catalog has not named yet, credited to the
                                   user's genres when it does (so affinity does not depend on
                                   which topic was fetched first), then deleted
``sr:popularity``          zset    item -> forward-decayed popularity
``sr:popularity:landmark`` string  the landmark time (s) of the forward decay
``sr:variants``            hash    "{model}|{variant}|impressions|clicks" -> count
``sr:offset:{g}:{t}:{p}``  string  last offset of topic t, partition p applied by group g
``sr:dedup:{g}:{bucket}``  set     event ids applied by group g in a time bucket
``sr:log:{g}``             string  the Kafka log (cluster id) group g's offsets count in
=========================  ======  ===================================================

Popularity uses forward decay (Cormode et al. 2009): a rating or click at time t adds
``2 ** ((t - landmark) / half_life)``, so ranking by score equals ranking by exponentially
decayed counts without ever rewriting old scores; when exponents grow large the whole set is
rescaled once with ZUNIONSTORE and the landmark moves. Only ratings and clicks move it:
impressions and catalog events add no popularity, and their times (an impression is stamped
with the wall clock when a list is served, also while historical data is replayed) must not
decay the replayed events' scores to 0.0.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from streamrec.core.errors import StateConflict
from streamrec.core.settings import Settings
from streamrec.schemas.events import (
    ClickEvent,
    Event,
    ImpressionEvent,
    ItemEvent,
    RatingEvent,
    SourcedEvent,
)

PREFIX = "sr"
POPULARITY = f"{PREFIX}:popularity"
LANDMARK = f"{PREFIX}:popularity:landmark"
VARIANTS = f"{PREFIX}:variants"
# The events that add popularity, and so the only ones whose times move its landmark.
POPULARITY_EVENTS = (RatingEvent, ClickEvent)
_REBASE_AFTER_HALF_LIVES = 64.0  # 2**64 is far from float overflow and keeps precision
_MAX_WATCH_RETRIES = 5
_GENRE = "g:"  # prefix of genre-affinity fields in the user hash
_APPLY_SCRIPT = (Path(__file__).parent / "apply_features.lua").read_text()
_READ_SCRIPT = (Path(__file__).parent / "read_state.lua").read_text()


def user_key(user_id: str) -> str:
    return f"{PREFIX}:u:{{{user_id}}}"


def user_seq_key(user_id: str) -> str:
    return f"{PREFIX}:seq:{{{user_id}}}"


def read_recent_items(
    client: aioredis.Redis | aioredis.client.Pipeline, user_id: str, n: int
) -> Any:
    """The read of the user's ``n`` newest distinct items, newest first (by event time): the
    result on a client, queued on a pipeline (the one way every reader asks for them)."""
    return client.zrevrange(user_seq_key(user_id), 0, max(n, 1) - 1)


def stats_of(user_hash: Mapping[str, str]) -> dict[str, str]:
    """A user's counters and times from the user hash (genre affinities left out)."""
    return {name: value for name, value in user_hash.items() if not name.startswith(_GENRE)}


def user_seen_key(user_id: str) -> str:
    return f"{PREFIX}:seen:{{{user_id}}}"


def user_seen_log_key(user_id: str) -> str:
    return f"{PREFIX}:seenlog:{{{user_id}}}"


def item_key(item_id: str) -> str:
    return f"{PREFIX}:i:{{{item_id}}}"


def item_pending_key(item_id: str) -> str:
    return f"{PREFIX}:pend:{{{item_id}}}"


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
    rejected: int = 0  # handed to the dead-letter callback: their keys hold foreign types


# The reason given for events whose keys hold a foreign type (a dead letter's kind keys on it).
STATE_CONFLICT = "feature state cannot be updated"
# Events that cannot be applied, each with the reason; the consumer dead-letters them.
RejectedEvents = list[tuple[SourcedEvent, str]]
OnRejected = Callable[[RejectedEvents], Awaitable[None]]


@dataclass
class _UserUpdate:
    counts: Counter[str] = field(default_factory=Counter)
    rating_sum: float = 0.0
    last_ts: float = 0.0
    recent: dict[str, float] = field(default_factory=dict)  # item -> latest event time
    affinity: list[tuple[str, float]] = field(default_factory=list)  # (item, weight)


@dataclass
class _ItemUpdate:
    counts: Counter[str] = field(default_factory=Counter)
    rating_sum: float = 0.0


@dataclass
class _Aggregate:
    """A batch folded into per-key increments: one update per key and field, not per event."""

    users: dict[str, _UserUpdate] = field(default_factory=lambda: defaultdict(_UserUpdate))
    items: dict[str, _ItemUpdate] = field(default_factory=lambda: defaultdict(_ItemUpdate))
    meta: dict[str, dict[str, str]] = field(default_factory=dict)
    popularity: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    variants: Counter[str] = field(default_factory=Counter)
    event_ids: list[str] = field(default_factory=list)
    offsets: list[tuple[str, str]] = field(default_factory=list)  # (key, offset)
    rebase: float | None = None  # factor for every popularity score, when the landmark moves
    landmark: float | None = None  # the new landmark, when it changes

    def payload(self) -> str:
        """The JSON the apply script reads (see apply_features.lua for the layout)."""
        return json.dumps(
            {
                "meta": self.meta,
                "users": [
                    [user, u.counts, u.rating_sum, u.last_ts, list(u.recent.items()), u.affinity]
                    for user, u in self.users.items()
                ],
                "items": [[item, i.counts, i.rating_sum] for item, i in self.items.items()],
                "pop": self.popularity,
                "variants": self.variants,
                "ids": self.event_ids,
                "offsets": self.offsets,
                # JSON null would be truthy in Lua (cjson.null): send false for "none".
                "rebase": False if self.rebase is None else self.rebase,
                "landmark": False if self.landmark is None else repr(self.landmark),
            },
            separators=(",", ":"),
        )


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
        self._apply_script = redis.register_script(_APPLY_SCRIPT)
        self._read_script = redis.register_script(_READ_SCRIPT)

    @classmethod
    def for_settings(cls, redis: aioredis.Redis, settings: Settings) -> FeatureStore:
        """The store as every process configures it (``STREAMREC_RECENT_ITEMS_CAP`` ...)."""
        return cls(
            redis,
            recent_cap=settings.recent_items_cap,
            half_life_days=settings.popularity_half_life_days,
            dedup_window_hours=settings.dedup_window_hours,
        )

    # ------------------------------------------------------------------ writes

    async def apply_batch(
        self,
        group: str,
        events: Sequence[SourcedEvent],
        positions: dict[tuple[str, int], int] | None = None,
        on_rejected: OnRejected | None = None,
    ) -> ApplyResult:
        """Apply a batch once. ``positions`` holds the highest offset per (topic, partition)
        the batch covers, including messages that were dead-lettered, so they count as done.

        An event whose keys hold a type the update cannot apply to (state written by someone
        else) is handed to ``on_rejected`` (the consumer dead-letters it) BEFORE the rest of the
        batch and the offsets are written; without a callback, ``StateConflict`` is raised and
        nothing is written.
        """
        high = dict(positions or {})
        for sourced in events:
            key = (sourced.topic, sourced.partition)
            high[key] = max(high.get(key, -1), sourced.offset)
        if not high:
            return ApplyResult(0, 0, 0)
        pending, rejected = list(events), 0
        for _ in range(_MAX_WATCH_RETRIES):
            try:
                outcome = await self._apply_once(group, pending, high)
            except WatchError:
                continue  # another consumer moved one of our partitions: re-read, re-apply
            if isinstance(outcome, ApplyResult):
                return replace(outcome, rejected=rejected)
            refused, pending = _split_by_keys(pending, outcome)
            if not refused or on_rejected is None:
                found = ", ".join(f"{key} is a {kind}" for key, kind in outcome.items())
                raise StateConflict(f"Redis holds keys the feature update cannot apply to: {found}")
            await on_rejected(refused)
            rejected += len(refused)
        raise WatchError(f"offsets of {group} kept changing during {_MAX_WATCH_RETRIES} tries")

    async def _apply_once(
        self,
        group: str,
        events: Sequence[SourcedEvent],
        high: dict[tuple[str, int], int],
    ) -> ApplyResult | dict[str, str]:
        """The batch's result, or the keys (key -> found type) that stopped it unwritten."""
        partitions = sorted(high)
        offset_keys = [offset_key(group, t, p) for t, p in partitions]
        bucket = int(time.time() // self._dedup_bucket)
        ids = [str(s.event.event_id) for s in events]
        async with self._redis.pipeline(transaction=True) as tx:
            await tx.watch(*offset_keys)
            applied_offsets, seen, landmark = await self._read_state(
                group, bucket, offset_keys, ids
            )
            done = dict(zip(partitions, applied_offsets, strict=True))
            fresh, redelivered, duplicates = _select_fresh(events, ids, done, seen)
            agg = self._aggregate([events[i] for i in fresh], landmark)
            agg.event_ids = [ids[i] for i in fresh]
            agg.offsets = [
                (key, str(high[partition]))
                for partition, key in zip(partitions, offset_keys, strict=True)
            ]
            now_ms = int(time.time() * 1000)  # just before EXEC: when the state changes
            args = [
                agg.payload(),
                self._recent_cap,
                now_ms,
                PREFIX,
                dedup_key(group, bucket),
                2 * self._dedup_bucket,
            ]
            tx.multi()
            await self._apply_script(args=args, client=tx)  # queued, runs at EXEC
            [reply] = await tx.execute()
        if reply[0] == "wrong":
            return dict(zip(reply[1::2], reply[2::2], strict=True))
        committed = time.time()
        lags = [
            committed - events[i].published_ms / 1000.0 for i in fresh if events[i].published_ms
        ]
        return ApplyResult(len(fresh), redelivered, duplicates, lags)

    async def _read_state(
        self, group: str, bucket: int, offset_keys: list[str], ids: list[str]
    ) -> tuple[list[int], str, float | None]:
        """Applied offsets, which ids were applied already ("0"/"1" per id), the landmark."""
        keys = [LANDMARK, dedup_key(group, bucket), dedup_key(group, bucket - 1), *offset_keys]
        reply = await self._read_script(keys=keys, args=[",".join(ids)])
        landmark, seen, offsets = reply[0], reply[1] or "", reply[2:]
        # Redis drops trailing nils from a Lua table: missing offsets are "never applied".
        offsets = [int(v) if v is not None else -1 for v in offsets]
        offsets += [-1] * (len(offset_keys) - len(offsets))
        return offsets, seen, float(landmark) if landmark else None

    def _aggregate(self, fresh: list[SourcedEvent], landmark: float | None) -> _Aggregate:
        events = [s.event for s in fresh]
        # Only the events that add popularity move its landmark: an impression (the API stamps
        # it with the wall clock) next to replayed ratings of 1997 would otherwise move it
        # ~1,500 half-lives past them, and every later rating would add 2 ** -1500 = 0.0.
        times = [e.ts.timestamp() for e in events if isinstance(e, POPULARITY_EVENTS)]
        moved, rebase = move_landmark(times, landmark, self._half_life)
        agg = _Aggregate(rebase=rebase, landmark=moved if moved != landmark else None)
        landmark = moved
        for event in events:
            if isinstance(event, ItemEvent):
                meta = {"title": event.title, "genres": "|".join(event.genres)}
                if event.year is not None:
                    meta["year"] = str(event.year)
                agg.meta[event.item_id] = meta
            elif isinstance(event, POPULARITY_EVENTS):
                self._fold_interaction(agg, event, landmark)
            else:
                self._fold_impression(agg, event)
        return agg

    @staticmethod
    def _fold_impression(agg: _Aggregate, event: ImpressionEvent) -> None:
        user = agg.users[event.user_id]
        user.counts["impressions"] += 1
        user.last_ts = max(user.last_ts, event.ts.timestamp())
        for item in event.item_ids:
            agg.items[item].counts["impressions"] += 1
        agg.variants[f"{event.model}|{event.variant}|impressions"] += 1

    def _fold_interaction(
        self, agg: _Aggregate, event: RatingEvent | ClickEvent, landmark: float | None
    ) -> None:
        ts = event.ts.timestamp()
        user, item = agg.users[event.user_id], agg.items[event.item_id]
        user.last_ts = max(user.last_ts, ts)
        user.recent[event.item_id] = max(user.recent.get(event.item_id, ts), ts)
        agg.popularity[event.item_id] += decay_weight(ts, landmark, self._half_life)
        if isinstance(event, RatingEvent):
            user.counts["ratings"] += 1
            user.rating_sum += event.rating
            item.counts["ratings"] += 1
            item.rating_sum += event.rating
            user.affinity.append((event.item_id, (event.rating - 2.5) / 2.5))
        else:
            user.counts["clicks"] += 1
            item.counts["clicks"] += 1
            if event.model:
                agg.variants[f"{event.model}|{event.variant or 'default'}|clicks"] += 1
            user.affinity.append((event.item_id, 1.0))

    # ------------------------------------------------------------------ reads

    async def recent_items(self, user_id: str, n: int = 50) -> list[str]:
        """The user's most recent distinct items, newest first (by event time)."""
        return await read_recent_items(self._redis, user_id, n)

    async def recent_items_many(self, user_ids: Sequence[str], n: int = 50) -> list[list[str]]:
        """``recent_items`` of several users in one round trip (the vectors consumer's read)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for user in user_ids:
                read_recent_items(pipe, user, n)
            return await pipe.execute()

    async def seen_items(self, user_id: str) -> set[str]:
        """Every item the user rated or clicked."""
        return await self._redis.smembers(user_seen_key(user_id))

    async def user_stats(self, user_id: str) -> dict[str, str]:
        """Counters and times of a user (genre affinities left out: see genre_affinity)."""
        return stats_of(await self._redis.hgetall(user_key(user_id)))

    async def genre_affinity(self, user_id: str) -> dict[str, float]:
        raw = await self._redis.hgetall(user_key(user_id))
        return {
            name.removeprefix(_GENRE): float(value)
            for name, value in raw.items()
            if name.startswith(_GENRE)
        }

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

    # ------------------------------------------------------------------ the log's identity

    async def log_of(self, group: str) -> str | None:
        """The Kafka log (cluster id, core.kafka_log) ``group``'s stored offsets refer to."""
        return await self._redis.get(f"{PREFIX}:log:{{{group}}}")

    async def adopt_log(
        self, group: str, log_id: str, partitions: Sequence[tuple[str, int]]
    ) -> str | None:
        """Make ``log_id`` the log that ``group``'s stored offsets refer to.

        When another log (or none) is recorded, the group's offsets of ``partitions`` are
        deleted in the transaction that records the new id: they count positions in a log that
        is gone (the embedded broker starts a new, empty one on every `up`), and as the guard
        only moves forward they would skip the new log's events as "redelivered". Event-id
        de-duplication is kept, which also covers a first start after an upgrade (no id
        recorded yet). Returns the previously recorded id when it changed ("" when none was),
        None when ``log_id`` was already recorded.
        """
        key = f"{PREFIX}:log:{{{group}}}"
        async with self._redis.pipeline(transaction=True) as tx:
            await tx.watch(key)  # two starts racing: one EXEC fails (WatchError), none half-done
            previous = await tx.get(key)
            if previous == log_id:
                return None
            tx.multi()
            stale = [offset_key(group, topic, partition) for topic, partition in partitions]
            if stale:
                tx.delete(*stale)
            tx.set(key, log_id)
            await tx.execute()
        return previous or ""


def move_landmark(
    times: Sequence[float], landmark: float | None, half_life: float
) -> tuple[float | None, float | None]:
    """The forward-decay landmark after a batch whose popularity-adding events (ratings,
    clicks) have these times, and the factor every stored score must be multiplied by when it
    moves (None: it did not move).

    Set on first use one half-life before the newest time (not at the oldest: a batch can span
    thousands of half-lives, and 2 ** that overflows); moved forward when the newest time is more
    than 64 half-lives past it, so that no weight exceeds 2 ** 64. The factor can underflow to
    0.0 when the jump is over ~1,074 half-lives: scores that old have decayed to nothing
    relative to the new events, and 0.0 is then the right answer.
    """
    if not times:
        return landmark, None
    if landmark is None:
        return max(times) - half_life, None
    half_lives = (max(times) - landmark) / half_life
    if half_lives <= _REBASE_AFTER_HALF_LIVES:
        return landmark, None
    shift = math.floor(half_lives) - 1
    return landmark + shift * half_life, 2.0**-shift


def decay_weight(ts: float, landmark: float | None, half_life: float) -> float:
    """An event's forward-decayed weight: 2 ** ((ts - landmark) / half_life). Never overflows
    for a landmark set by ``move_landmark`` over the same times; events over ~1,074
    half-lives older than the landmark weigh 0.0 (they no longer move a ranking)."""
    if landmark is None:
        return 1.0
    exponent = (ts - landmark) / half_life
    return 2.0**exponent if exponent > -1100.0 else 0.0


def _event_keys(event: Event) -> list[str]:
    """The per-id keys the apply script checks for this event (see apply_features.lua)."""
    if isinstance(event, ItemEvent):
        return [item_key(event.item_id), item_pending_key(event.item_id)]
    user = [
        user_key(event.user_id),
        user_seq_key(event.user_id),
        user_seen_key(event.user_id),
        user_seen_log_key(event.user_id),
    ]
    if isinstance(event, ImpressionEvent):
        return user + [item_key(item) for item in event.item_ids]
    return [*user, item_key(event.item_id), item_pending_key(event.item_id)]


def _split_by_keys(
    events: Sequence[SourcedEvent], wrong: dict[str, str]
) -> tuple[RejectedEvents, list[SourcedEvent]]:
    """Events touching a wrong-typed key (with the reason), and the others."""
    refused: RejectedEvents = []
    keep: list[SourcedEvent] = []
    for sourced in events:
        bad = [key for key in _event_keys(sourced.event) if key in wrong]
        if bad:
            reason = "; ".join(f"Redis key {key} holds a {wrong[key]}" for key in bad)
            refused.append((sourced, f"{STATE_CONFLICT}: {reason}"))
        else:
            keep.append(sourced)
    return refused, keep


def _select_fresh(
    events: Sequence[SourcedEvent],
    ids: list[str],
    done: dict[tuple[str, int], int],
    seen: str,
) -> tuple[list[int], int, int]:
    """Indices of the events to apply: not redelivered, not already applied, not repeated."""
    fresh: list[int] = []
    redelivered = duplicates = 0
    batch_ids: set[str] = set()
    for i, sourced in enumerate(events):
        if sourced.offset <= done.get((sourced.topic, sourced.partition), -1):
            redelivered += 1
        elif seen[i] == "1" or ids[i] in batch_ids:
            duplicates += 1
        else:
            batch_ids.add(ids[i])
            fresh.append(i)
    return fresh, redelivered, duplicates

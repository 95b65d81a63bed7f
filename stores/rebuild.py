"""The Redis feature state rebuilt from the durable record, the SQL archive.

The archive is a consumer of the log that keeps every valid rating, click and impression (with
its ``event_id``, event time and Kafka coordinates) and the latest version of every catalog
item, so the feature state is a function of it. ``rebuild_features`` replays it through
``FeatureStore.apply_batch`` (the one apply path): the catalog first, so every rating finds its
item's genres, then the interactions in event-time order.

What cannot come back from the archive, and why it does not matter for the counts:

* ``updated_ms`` of a user (when the state last changed: the rebuild's time);
* the popularity landmark: it is set from the first applied batch with a rating or click
  (only those move it), so rebuilt scores differ from the original ones by one common factor
  ``2 ** ((landmark - landmark') / half_life)``; ``FeatureSnapshot`` compares them at one
  reference time;
* genre affinities credited from an older version of an item's genres (the archive keeps the
  latest). Ratings applied before their item was catalogued at all are no difference: the live
  state credits them when the item arrives (``sr:pend:{item}``, stores/features.py);
* the event-id de-duplication window: the archive holds each event_id once already.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from streamrec.schemas.events import Event, SourcedEvent
from streamrec.stores.catalog import Archive
from streamrec.stores.features import LANDMARK, VARIANTS, FeatureStore, item_key

# The group name the replay applies under: its offsets and de-duplication set are the
# rebuild's own (the archive holds each event once), never the features group's.
REBUILD_GROUP = "streamrec-rebuild"
_REBUILD_TOPIC = "streamrec.archive"  # a position in the replay, not a Kafka topic
_USER_TIME_FIELDS = ("updated_ms",)  # wall-clock times, not counts


@dataclass(frozen=True)
class RebuildReport:
    items: int
    interactions: int
    seconds: float
    positions: dict[tuple[str, int], int] = field(default_factory=dict)  # set for the group


async def rebuild_features(
    store: FeatureStore,
    archive: Archive,
    group: str,
    log_id: str | None,
    *,
    chunk: int = 5000,
    on_progress: Callable[[int], None] | None = None,
) -> RebuildReport:
    """Apply the whole archive to an EMPTY feature state, then point ``group``'s offsets of the
    log ``log_id`` at the newest archived positions, so that a features consumer started
    afterwards resumes after what the archive holds (the guard skips the rest) and applies
    everything newer. ``on_progress(n)`` is called with the events applied by each chunk.
    """
    started = time.perf_counter()
    offset = 0

    async def apply(events: Sequence[Event]) -> None:
        nonlocal offset
        batch = [
            SourcedEvent(event, _REBUILD_TOPIC, 0, offset + n) for n, event in enumerate(events)
        ]
        offset += len(batch)
        await store.apply_batch(REBUILD_GROUP, batch)
        if on_progress is not None:
            on_progress(len(batch))

    items = await asyncio.to_thread(archive.catalog_events)
    for start in range(0, len(items), chunk):
        await apply(items[start : start + chunk])
    interactions, cursor = 0, None
    while True:
        events, cursor = await asyncio.to_thread(archive.interaction_page, cursor, chunk)
        if events:
            await apply(events)
            interactions += len(events)
        if cursor is None:
            break

    positions: dict[tuple[str, int], int] = {}
    if log_id is not None:
        # First record the log (nothing to drop: the state was empty), then the positions:
        # apply_batch with no events only moves the group's offsets forward.
        await store.adopt_log(group, log_id, [])
        positions = await asyncio.to_thread(archive.positions, log_id)
        if positions:
            await store.apply_batch(group, [], positions=positions)
    return RebuildReport(len(items), interactions, time.perf_counter() - started, positions)


async def state_behind_archive(
    store: FeatureStore, archive: Archive, group: str, log_id: str
) -> str | None:
    """Why the feature state is older than the archive, or None when it is not.

    Checked when ``group`` starts on a new log (``log_id`` not the one its offsets refer to):
    whatever the archive holds of the previous log beyond the group's applied offsets can no
    longer be consumed, as that log is gone; and an empty state beside a filled archive was
    lost. Both are repaired by ``streamrec rebuild``.
    """
    previous = await store.log_of(group)
    if previous == log_id:
        return None  # the same log: the group catches up by consuming it
    if previous is None:
        archived = await asyncio.to_thread(archive.count_interactions)
        if archived:
            return f"the feature state is empty, the archive holds {archived:,} interactions"
        return None
    positions = await asyncio.to_thread(archive.positions, previous)
    missing = 0
    for (topic, partition), high in positions.items():
        applied = await store.applied_offset(group, topic, partition)
        missing += max(0, high - applied)
    if missing:
        return (
            f"up to {missing:,} events archived from the previous Kafka log {previous} were "
            "never applied to the feature state"
        )
    return None


@dataclass
class FeatureSnapshot:
    """The feature state of some users and items, read through ``FeatureStore``, in a form
    two states can be compared by (tests, ``benchmarks/crash_exactness.py``)."""

    users: dict[str, dict[str, object]]
    items: dict[str, dict[str, object]]
    popularity: dict[str, float]  # decayed value at the reference time (see the module doc)
    variants: dict[str, str]

    def differences(self, other: FeatureSnapshot, rel_tol: float = 1e-9) -> list[str]:
        """What differs, one line per user/item/field (empty: equal). Counters must be equal;
        float sums and popularity within ``rel_tol``."""
        found: list[str] = []
        for name, mine, theirs in (
            ("user", self.users, other.users),
            ("item", self.items, other.items),
        ):
            for key in sorted(set(mine) | set(theirs)):
                a, b = mine.get(key, {}), theirs.get(key, {})
                for f in sorted(set(a) | set(b)):
                    if not _same(a.get(f), b.get(f), rel_tol):
                        found.append(f"{name} {key} {f}: {a.get(f)!r} != {b.get(f)!r}")
        for item in sorted(set(self.popularity) | set(other.popularity)):
            mine_score, their_score = self.popularity.get(item), other.popularity.get(item)
            if (
                mine_score is None
                or their_score is None
                or not math.isclose(mine_score, their_score, rel_tol=rel_tol)
            ):
                found.append(f"popularity {item}: {mine_score!r} != {their_score!r}")
        if self.variants != other.variants:
            found.append(f"variants: {self.variants!r} != {other.variants!r}")
        return found


def _same(a: object, b: object, rel_tol: float) -> bool:
    numbers = (int, float)
    if (
        isinstance(a, numbers)
        and isinstance(b, numbers)
        and not (isinstance(a, int) and isinstance(b, int))
    ):
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-9)
    return a == b


async def snapshot_features(
    redis: aioredis.Redis,
    store: FeatureStore,
    users: Sequence[str],
    items: Sequence[str],
    half_life_days: float,
    reference_ts: float,
) -> FeatureSnapshot:
    """Read the state of ``users`` and ``items``; popularity as its decayed value at
    ``reference_ts`` (a score s under landmark L is worth ``s * 2**((L - t) / half_life)`` at
    time t), so states built with different landmarks compare."""
    snap_users: dict[str, dict[str, object]] = {}
    for user in users:
        stats = await store.user_stats(user)
        entry: dict[str, object] = {
            name: _number(value) for name, value in stats.items() if name not in _USER_TIME_FIELDS
        }
        entry.update({f"g:{g}": v for g, v in (await store.genre_affinity(user)).items()})
        entry["recent"] = await store.recent_items(user, 10_000)
        entry["seen"] = sorted(await store.seen_items(user))
        snap_users[user] = entry
    snap_items: dict[str, dict[str, object]] = {}
    metas = await store.item_meta(list(items)) if items else {}
    for item in items:
        counters = await redis.hgetall(item_key(item))
        entry = {name: _number(value) for name, value in counters.items()}
        entry.update(metas.get(item, {}))
        snap_items[item] = entry
    landmark = await redis.get(LANDMARK)
    scale = 1.0
    if landmark is not None:
        scale = 2.0 ** ((float(landmark) - reference_ts) / (half_life_days * 86_400.0))
    popular = await store.popular(1_000_000_000)
    return FeatureSnapshot(
        users=snap_users,
        items=snap_items,
        popularity={item: score * scale for item, score in popular},
        variants=await redis.hgetall(VARIANTS),
    )


def _number(value: str) -> object:
    """Counters compare as ints, sums as floats, text as text."""
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value

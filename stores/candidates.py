"""Precomputed recommendations in Redis: what the request path reads instead of the vector store.

Per model (its collections' key: the model's name, ``content`` for doc2vec) and published
version N, written before the version goes live (``trainer.live.publish_version``) and kept
fresh by the vectors group (``consumers.vectors``):

===========================  ======  ===============================================================
``sr:cand:{model}:v{N}``     hash    user id -> the user's top-C unseen items of version N, best
                                     first, with their scores, the ``updated_ms`` of the user
                                     vector they came from and whether that vector is fixed
                                     (``Ranked.encode``)
``sr:nbr:{model}:v{N}``      hash    item id -> its top-K neighbour items of version N (itself
                                     left out), best first, with their scores
``sr:live:{model}``          string  the version the ``items_<model>`` alias points at, set right
                                     after the alias swaps (for a swap made without Redis at
                                     hand, by the vectors group once it has backfilled both
                                     hashes of the version): it only names complete lists
===========================  ======  ===============================================================

One hash per version, so retiring a version is one UNLINK per hash; the entries hold external
ids, so the request path needs no id-registry lookup. Scores are those of the vector engine
(the collection's distance: dot product, or cosine for doc2vec), rounded to 6 decimals.

Reads are coroutines on the process's async client (the API); writes are blocking, on a sync
client of the same server, because both writers run them from threads (a publish is one long
blocking job; the vectors group computes in a worker thread). A writer without an event loop
(``streamrec vectors publish``) opens a store with the sync client alone (``writer``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson
import redis
import redis.asyncio as aioredis

from streamrec.core.errors import ConfigurationError
from streamrec.core.settings import Settings
from streamrec.stores.features import (
    PREFIX,
    read_recent_items,
    stats_of,
    user_key,
    user_seen_key,
    user_seen_log_key,
)

WRITE_CHUNK = 500  # hash fields per HSET: bounded request size whatever the user count
# Writes are bulk (a publish writes every user's entry): more than the request path's bound.
WRITE_TIMEOUT_SECONDS = 10.0
_SCORE_DECIMALS = 6


def candidates_key(model: str, version: int) -> str:
    return f"{PREFIX}:cand:{model}:v{version}"


def neighbours_key(model: str, version: int) -> str:
    return f"{PREFIX}:nbr:{model}:v{version}"


def live_key(model: str) -> str:
    return f"{PREFIX}:live:{model}"


@dataclass(frozen=True)
class Ranked:
    """Items best first with their scores; ``updated_ms``: when the user vector they were
    ranked for was computed (None for an item's neighbours); ``vector_fixed``: that vector is a
    trained row (``trainer.user_vectors.fixed_vector``), which no event changes until the next
    version, so the list filtered with the seen set as it is now is what a recomputation would
    give: its state is the seen set's, not ``updated_ms``'s."""

    items: list[str]
    scores: list[float]
    updated_ms: int | None = None
    vector_fixed: bool = False

    def encode(self) -> bytes:
        # orjson and a vectorised rounding: a tenth of the stdlib's cost, and the vectors group
        # encodes a list per user and model of every batch (the edge decodes one per request).
        body: dict[str, object] = {
            "i": self.items,
            "s": np.round(np.asarray(self.scores, dtype=np.float64), _SCORE_DECIMALS).tolist(),
        }
        if self.updated_ms is not None:
            body["u"] = self.updated_ms
        if self.vector_fixed:
            body["f"] = 1
        return orjson.dumps(body)

    @classmethod
    def decode(cls, raw: str | bytes) -> Ranked:
        body = orjson.loads(raw)
        return cls(body["i"], body["s"], body.get("u"), bool(body.get("f")))


@dataclass(frozen=True)
class RequestState:
    """What a recommendation request reads of one user (``CandidateStore.request_state``)."""

    stats: dict[str, str]  # counters and times (``FeatureStore.user_stats``); {}: unknown user
    ranked: Ranked | None = None  # candidates in the version asked for; None: not computed
    seen: set[str] = field(default_factory=set)  # the seen set now (read with candidates)
    recent: list[str] = field(default_factory=list)  # newest distinct items first, if asked


@dataclass(frozen=True)
class SeenTail:
    """A user's seen items from position ``start`` of the seen log on (0: the whole log)."""

    items: list[str]
    start: int

    @property
    def end(self) -> int:
        """Where the next read starts (the log may have grown between two reads of a pipeline:
        what was read counts, not a length read beside it)."""
        return self.start + len(self.items)


def sync_client(url: str, settings: Settings) -> redis.Redis:
    """The blocking client the writers use: the same server as the async one, bounded
    connects, a longer read bound for bulk writes, no retries (the callers retry)."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=settings.redis_connect_timeout_seconds,
        socket_timeout=max(settings.redis_timeout_seconds, WRITE_TIMEOUT_SECONDS),
    )


class CandidateStore:
    """Candidates per user, neighbours per item and the live pointer of each model (see the
    module doc). ``per_user`` (C) and ``neighbours`` (K): how many the writers keep."""

    def __init__(
        self,
        client: aioredis.Redis | None,
        sync: redis.Redis,
        per_user: int = 100,
        neighbours: int = 50,
    ) -> None:
        self._async = client
        self._sync = sync
        self.per_user = per_user
        self.neighbours = neighbours

    @classmethod
    def for_settings(
        cls, client: aioredis.Redis, sync: redis.Redis, settings: Settings
    ) -> CandidateStore:
        return cls(client, sync, settings.candidates_per_user, settings.candidate_neighbours)

    @classmethod
    def writer(cls, sync: redis.Redis, settings: Settings) -> CandidateStore:
        """A store for blocking writes only (no async client: its reads are refused)."""
        return cls(None, sync, settings.candidates_per_user, settings.candidate_neighbours)

    @property
    def _redis(self) -> aioredis.Redis:
        if self._async is None:
            raise ConfigurationError("this candidate store writes only: it has no async client")
        return self._async

    # -- reads (the request path) ---------------------------------------------------------------

    async def live_version(self, model: str) -> int | None:
        value = await self._redis.get(live_key(model))
        return int(value) if value is not None else None

    async def user_candidates(
        self, model: str, version: int, user_id: str
    ) -> tuple[Ranked | None, set[str]]:
        """The user's candidates in ``version`` (None when not computed) and the user's seen
        set as it is now (the feature store's): ``request_state`` without the counters."""
        state = await self.request_state(user_id, model, version)
        return state.ranked, state.seen

    async def request_state(
        self, user_id: str, model: str | None = None, version: int | None = None, recent: int = 0
    ) -> RequestState:
        """What a recommendation request reads, in one round trip: the user's counters and
        times (``FeatureStore.user_stats``); with ``model`` and ``version`` the user's
        candidates in that version (None when not computed) and seen set as it is now; with
        ``recent`` the user's ``recent`` newest distinct items (``FeatureStore.recent_items``,
        the state a re-ranker scores with)."""
        with_candidates = False
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(user_key(user_id))
            if model is not None and version is not None:
                with_candidates = True
                pipe.hget(candidates_key(model, version), user_id)
                pipe.smembers(user_seen_key(user_id))
            if recent > 0:
                read_recent_items(pipe, user_id, recent)
            found = await pipe.execute()
        stats = stats_of(found[0])
        newest = found[-1] if recent > 0 else []
        if not with_candidates:
            return RequestState(stats, recent=newest)
        raw, seen = found[1], found[2]
        ranked = Ranked.decode(raw) if raw is not None else None
        return RequestState(stats, ranked, set(seen), newest)

    async def item_neighbours(self, model: str, version: int, item_id: str) -> Ranked | None:
        raw = await self._redis.hget(neighbours_key(model, version), item_id)
        return Ranked.decode(raw) if raw is not None else None

    # -- writes (blocking: publish and the vectors group call them from threads) ---------------

    def seen_after(self, user_ids: Sequence[str], starts: Sequence[int]) -> list[SeenTail]:
        """Per user, the seen items after the first ``starts[u]`` of the seen log (the order
        they joined the seen set): a reader holding the first n items reads only the rest. A
        log shorter than its start (the state was rebuilt meanwhile) is read whole."""
        with self._sync.pipeline(transaction=False) as pipe:
            for user, start in zip(user_ids, starts, strict=True):
                pipe.llen(user_seen_log_key(user))
                pipe.lrange(user_seen_log_key(user), start, -1)
            found = pipe.execute()
        tails = [SeenTail(found[2 * u + 1], start) for u, start in enumerate(starts)]
        short = [u for u, start in enumerate(starts) if found[2 * u] < start]
        if short:
            whole = self.seen_after([user_ids[u] for u in short], [0] * len(short))
            for u, tail in zip(short, whole, strict=True):
                tails[u] = tail
        return tails

    def write_candidates(
        self,
        model: str,
        version: int,
        entries: Mapping[str, Ranked],
        *,
        keep_existing: bool = False,
    ) -> None:
        """``keep_existing``: leave the entries already there (HSETNX), for a backfill from
        stored vectors that must not overwrite a fresher entry written meanwhile."""
        if keep_existing:
            self._write_missing(candidates_key(model, version), entries)
        else:
            self._write(candidates_key(model, version), entries)

    def write_neighbours(self, model: str, version: int, entries: Mapping[str, Ranked]) -> None:
        self._write(neighbours_key(model, version), entries)

    def _write(self, key: str, entries: Mapping[str, Ranked]) -> None:
        pairs = list(entries.items())
        for lo in range(0, len(pairs), WRITE_CHUNK):
            chunk = {name: ranked.encode() for name, ranked in pairs[lo : lo + WRITE_CHUNK]}
            self._sync.hset(key, mapping=chunk)

    def _write_missing(self, key: str, entries: Mapping[str, Ranked]) -> None:
        pairs = list(entries.items())
        for lo in range(0, len(pairs), WRITE_CHUNK):
            with self._sync.pipeline(transaction=False) as pipe:
                for name, ranked in pairs[lo : lo + WRITE_CHUNK]:
                    pipe.hsetnx(key, name, ranked.encode())
                pipe.execute()

    def set_live(self, model: str, version: int) -> None:
        self._sync.set(live_key(model), version)

    def live_version_sync(self, model: str) -> int | None:
        value = self._sync.get(live_key(model))
        return int(value) if value is not None else None

    def drop_version(self, model: str, version: int) -> bool:
        """UNLINK the candidate and neighbour hashes of a retired ``version``; never those of
        the version the live pointer names (False then)."""
        if self.live_version_sync(model) == version:
            return False
        self._sync.unlink(candidates_key(model, version), neighbours_key(model, version))
        return True

    def has_version(self, model: str, version: int) -> bool:
        keys: Iterable[str] = (candidates_key(model, version), neighbours_key(model, version))
        return bool(self._sync.exists(*keys))

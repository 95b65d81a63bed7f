"""What the edge reads per request: precomputed lists in Redis (``CandidateServer``: a user's
candidates, an item's neighbours), the vector query when there are none (``VectorServer``: a
user's vector → nearest items, an item's vector → similar items) and item metadata (titles and
genres, cached).

``CandidateServer`` is the light path: the live pointer, then the user's candidates of that
version with the user's seen set (two Redis round trips; one with a pinned ``?version=N``), no
vector engine and no id registry (the lists hold external ids). It answers None when there is
nothing precomputed (no live pointer, no entry for the user or item in that version, or
similar items asked deeper than the K kept), and the route then takes the vector query below,
which stays correct in one process and is what a remote vector store serves across many.

The ``VectorServer`` methods are blocking (the id registry may hit SQL on a cache miss, the
server backend is HTTP). Routes call the ``a*`` coroutines: with the Qdrant server they run the
blocking call in a thread; with Qdrant Edge they run it on the event loop, because Edge holds
the GIL while it searches (a thread runs no search in parallel) and the hop costs CPU (measured
in-process on ml-100k, 32 concurrent callers, six alternating runs: ~1.0 ms of process CPU per
call through a thread, ~0.7 ms on the loop). In
the embedded deployment the id registry is the one the archive consumer fills in the same
process, so lookups of known ids never reach SQL.

The version served is the one the ``items_<model>`` alias points at, resolved once per request,
or the version a request pins (``?version=N``: a kept version, for comparisons); the user
vector is read from ``users_<model>__v<N>`` of that same version and the query goes to the
versioned collection itself, so an alias swap mid-request cannot pair a vector of one version
with items of another. When no vector can serve, ``recommend`` says why (``NoVector``) and the
route falls back to popular items with that reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from streamrec.core.errors import NotFound
from streamrec.core.ids import IdKind, IdRegistry
from streamrec.schemas.api import FallbackReason, RecommendedItem
from streamrec.stores.candidates import CandidateStore, Ranked, RequestState
from streamrec.stores.features import FeatureStore
from streamrec.stores.vectors import (
    Hit,
    VectorStore,
    item_version_name,
    items_alias,
    parse_version,
    user_version_name,
)


@dataclass(frozen=True)
class VectorAnswer:
    version: int
    hits: list[Hit]
    updated_ms: int | None = None  # when the user vector was computed


@dataclass(frozen=True)
class NoVector:
    """The model cannot serve this user: why (the route serves popular items instead)."""

    reason: FallbackReason  # no_version_published or no_user_vector (the route tells no_history)


class VectorServer:
    def __init__(self, vectors: VectorStore, ids: IdRegistry) -> None:
        self._vectors = vectors
        self._ids = ids
        self._on_loop = vectors.call_on_event_loop

    async def arecommend(
        self,
        model: str,
        user_id: str,
        k: int,
        seen: Iterable[str] = (),
        genres: Sequence[str] | None = None,
        version: int | None = None,
    ) -> VectorAnswer | NoVector:
        """``recommend`` from a coroutine (on the loop for Edge, else in a thread)."""
        if self._on_loop:
            return self.recommend(model, user_id, k, seen, genres, version)
        return await asyncio.to_thread(self.recommend, model, user_id, k, seen, genres, version)

    async def asimilar(self, model: str, item_id: str, k: int) -> VectorAnswer:
        """``similar`` from a coroutine (on the loop for Edge, else in a thread)."""
        if self._on_loop:
            return self.similar(model, item_id, k)
        return await asyncio.to_thread(self.similar, model, item_id, k)

    def live_version(self, model: str) -> int | None:
        """The published version behind ``items_<model>``, or None when nothing is."""
        target = self._vectors.resolve_alias(items_alias(model))
        parsed = parse_version(target) if target else None
        return parsed[1] if parsed else None

    def check_published(self, model: str, version: int) -> None:
        """NotFound unless ``version`` of ``model`` has its item and user collections."""
        missing = [
            name
            for name in (item_version_name(model, version), user_version_name(model, version))
            if not self._vectors.collection_exists(name)
        ]
        if missing:
            raise NotFound(
                f"{model} v{version} has no published vectors ({', '.join(missing)} missing): "
                f"publish it with `streamrec vectors publish --model {model} --version "
                f"{version}`, or leave out version= to be served by the live one"
            )

    def recommend(
        self,
        model: str,
        user_id: str,
        k: int,
        seen: Iterable[str] = (),
        genres: Sequence[str] | None = None,
        version: int | None = None,
    ) -> VectorAnswer | NoVector:
        """Top-k items for the user's vector in the live version, or in ``version`` when one
        is pinned (NotFound when that version is not published); ``NoVector`` when the user
        has no vector to query with (the caller falls back to popular items)."""
        if version is not None:
            self.check_published(model, version)
            return self._recommend(model, version, user_id, k, seen, genres)
        for _ in range(2):  # the version resolved may be swapped out and deleted mid-request
            live = self.live_version(model)
            if live is None:
                return NoVector(FallbackReason.NO_VERSION_PUBLISHED)
            try:
                return self._recommend(model, live, user_id, k, seen, genres)
            except NotFound:
                continue
        return NoVector(FallbackReason.NO_VERSION_PUBLISHED)

    def _recommend(
        self,
        model: str,
        version: int,
        user_id: str,
        k: int,
        seen: Iterable[str],
        genres: Sequence[str] | None,
    ) -> VectorAnswer | NoVector:
        user = self._ids.lookup(IdKind.USER, [user_id]).get(user_id)
        if user is None:
            return NoVector(FallbackReason.NO_USER_VECTOR)
        found = self._vectors.retrieve(user_version_name(model, version), [user])
        if not found:
            return NoVector(FallbackReason.NO_USER_VECTOR)
        exclude = sorted(self._ids.lookup(IdKind.ITEM, seen).values())
        hits = self._vectors.query(
            item_version_name(model, version), found[0].vector, k, genres, exclude
        )
        updated = found[0].payload.get("updated_ms")
        return VectorAnswer(version, hits, int(updated) if updated is not None else None)

    def similar(self, model: str, item_id: str, k: int) -> VectorAnswer:
        """The k nearest items to ``item_id`` under ``model`` (itself excluded)."""
        version = self.live_version(model)
        if version is None:
            raise NotFound(
                f"model {model!r} has no published item vectors: run "
                f"`streamrec vectors publish --model {model}`"
            )
        index = self._ids.lookup(IdKind.ITEM, [item_id]).get(item_id)
        if index is None:
            raise NotFound(f"item {item_id!r} is unknown")
        collection = item_version_name(model, version)
        found = self._vectors.retrieve(collection, [index])
        if not found:
            when = (
                "when an item event with its text is consumed"
                if model == "content"
                else "at the model's next retrain"
            )
            raise NotFound(
                f"item {item_id!r} has no vector in {model} v{version}: it arrived after that "
                f"version was trained (or has no text, for content); it gets one {when}"
            )
        hits = self._vectors.query(collection, found[0].vector, k, exclude_ids=[index])
        return VectorAnswer(version, hits)


@dataclass(frozen=True)
class Precomputed:
    """A user's candidates in ``version`` and the user's seen set as it is now (the
    candidates may predate the newest clicks: the route filters them with it)."""

    version: int
    ranked: Ranked
    seen: set[str]


class CandidateServer:
    """The request path's Redis-only reads (``stores.candidates``); None: nothing precomputed,
    take the vector query.

    The live pointer of each model is remembered for ``pointer_ttl_s`` (one second), so a
    request reads everything else in one round trip (``request_state``). After a swap, a worker
    may serve the previous version's lists for up to that long: they stay complete until that
    version is retired, which happens rounds later (and a list gone meanwhile means the vector
    query, as for any missing list).
    """

    def __init__(
        self,
        store: CandidateStore,
        pointer_ttl_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._ttl_s = pointer_ttl_s
        self._clock = clock
        self._pointers: dict[str, tuple[float, int | None]] = {}

    async def live_version(self, model: str) -> int | None:
        """The version the model's live pointer names (remembered for ``pointer_ttl_s``)."""
        now = self._clock()
        remembered = self._pointers.get(model)
        if remembered is not None and remembered[0] > now:
            return remembered[1]
        version = await self._store.live_version(model)
        self._pointers[model] = (now + self._ttl_s, version)
        return version

    async def request_state(
        self, user_id: str, model: str | None, version: int | None = None, recent: int = 0
    ) -> tuple[RequestState, Precomputed | None]:
        """The user's counters and times (and ``recent`` newest items), and for a vector
        ``model`` the user's candidates in the live version (or the pinned one) with the seen
        set: one Redis round trip."""
        served = None
        if model is not None:
            served = version if version is not None else await self.live_version(model)
        state = await self._store.request_state(user_id, model, served, recent)
        if served is None or state.ranked is None:
            return state, None
        return state, Precomputed(served, state.ranked, state.seen)

    async def similar(self, model: str, item_id: str, k: int) -> tuple[int, Ranked] | None:
        """(live version, the item's neighbours), or None when none are stored or ``k`` is
        deeper than the K kept (a full list may have more behind it)."""
        live = await self.live_version(model)
        if live is None:
            return None
        ranked = await self._store.item_neighbours(model, live, item_id)
        if ranked is None or (
            len(ranked.items) < k and len(ranked.items) >= self._store.neighbours
        ):
            return None
        return live, ranked


ItemMeta = dict[str, str]  # title, genres ("|"-joined), year, as stored in Redis
Scored = tuple[str, float]  # (item id, score) of a ranked list, best first


def genres_of(meta: Mapping[str, str]) -> list[str]:
    return [g for g in meta["genres"].split("|") if g]


def hits_scored(hits: Sequence[Hit]) -> tuple[list[Scored], dict[str, ItemMeta]]:
    """A vector query's hits as (item, score) pairs, and the titles and genres their payloads
    carry (the response shows those, not the cache's)."""
    scored: list[Scored] = []
    meta: dict[str, ItemMeta] = {}
    for hit in hits:
        item = str(hit.payload.get("item_id", hit.id))
        scored.append((item, hit.score))
        genres = hit.payload.get("genres") or []
        meta[item] = {"title": hit.payload.get("title") or "", "genres": "|".join(genres)}
    return scored, meta


class ItemMetaCache:
    """Item titles and genres for responses, read from Redis at most once per ``ttl_s`` per item.

    Saves the popular path one Redis pipeline of k HMGETs per request. A renamed item shows its
    old title for up to ``ttl_s``; an item not in the catalog yet (no title, no genres) is not
    cached, so it appears as soon as its item event is consumed. Bounded: past ``max_items``
    entries the cache starts again from empty.
    """

    def __init__(
        self, features: FeatureStore, ttl_s: float = 30.0, max_items: int = 200_000
    ) -> None:
        self._features = features
        self._ttl_s = ttl_s
        self._max_items = max_items
        self._entries: dict[str, tuple[float, ItemMeta]] = {}

    async def get(self, item_ids: Sequence[str]) -> dict[str, ItemMeta]:
        now = time.monotonic()
        found: dict[str, ItemMeta] = {}
        missing: list[str] = []
        for item in item_ids:
            entry = self._entries.get(item)
            if entry is not None and entry[0] > now:
                found[item] = entry[1]
            else:
                missing.append(item)
        if missing:
            fetched = await self._features.item_meta(missing)
            if len(self._entries) + len(fetched) > self._max_items:
                self._entries.clear()
            expires = now + self._ttl_s
            for item, meta in fetched.items():
                found[item] = meta
                if meta["title"] or meta["genres"]:
                    self._entries[item] = (expires, meta)
        return found

    async def in_genres(self, ranked: Sequence[Scored], wanted: Sequence[str]) -> list[Scored]:
        """The entries of ``ranked`` with at least one of the ``wanted`` genres, in order."""
        meta = await self.get([item for item, _ in ranked])
        wanted_set = set(wanted)
        return [entry for entry in ranked if wanted_set.intersection(genres_of(meta[entry[0]]))]

    async def response_items(
        self,
        ranked: Sequence[Scored],
        known: Mapping[str, ItemMeta] | None = None,
        q_values: Mapping[str, float] | None = None,
    ) -> list[RecommendedItem]:
        """``ranked`` as response items: titles and genres from ``known`` (a vector query's
        payloads) or else from the cache, a Q-value where ``q_values`` has one. Built for the
        listed items only: a re-ranker chooses k from many more candidates."""
        known = known or {}
        missing = [item for item, _ in ranked if item not in known]
        meta = {**known, **await self.get(missing)} if missing else known
        q_values = q_values or {}
        return [
            RecommendedItem(
                item_id=item,
                score=score,
                title=meta[item]["title"],
                genres=genres_of(meta[item]),
                q_value=q_values.get(item),
            )
            for item, score in ranked
        ]

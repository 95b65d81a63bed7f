"""Consumer group ``streamrec-vectors``: after each batch, fresh query vectors for the users it
touched, for every model whose item vectors are published; and content vectors for new items.

* Which version serves is what the ``items_<model>`` alias points at (not merely the
  registry's active version): user vectors must live in the same space as the item vectors
  the edge queries. The alias is checked every ``refresh_seconds`` and the version reloaded
  when it moves (hot swap, no restart).
* User vectors go to ``users_<model>__v<N>`` (point id = user registry index, payload
  ``updated_ms`` and ``version``), one collection per item version, so the edge always pairs
  a user vector with item vectors of the same version. How each model kind computes them is
  ``trainer.user_vectors`` (shared with the bulk pass of ``trainer.live.publish_version``,
  which writes every user's vector before an alias swaps).
* SASRec: from the live sequence (Redis recent items plus this batch, since the features group
  may not have applied the batch yet). MF / NCF / Wide & Deep: the trained user row when the
  user is known to the model, else a fold-in (mean of the recent items' vectors). Content
  (Doc2Vec): always the fold-in.
* A trained row is fixed: no event changes it until the next version, and the edge filters
  what is seen at request time, so such a user is written once per version and process and
  again only once their seen set has grown by a quarter of the list (``FixedVectorLists``),
  not at every event; the entry says so (``Ranked.vector_fixed``) and the edge then reports
  the user state's age.
* Every model with vectors is followed (``schemas.models.VECTOR_MODELS``), by the key of its
  collections (the model's name; ``content`` for doc2vec).
* Kept versions named in ``STREAMREC_VECTORS_KEPT_VERSIONS`` ("mf=1") are served the same
  way beside the live ones (user vectors and candidates of the batch's users), so that a pinned
  request (``?version=1``) serves users that version never saw; one whose collections are gone
  is dropped with a warning.
* Item events (``streamrec.items``): an item new to the live ``items_content`` version gets
  its vector inferred from its text (title, genres, text) by that version's Doc2Vec model and
  is upserted with its payload (title, genres, year, popularity 0) at once, so it can be
  recommended and be a neighbour; an item already there keeps its vector and gets the new
  title, genres and year. Items the id registry does not know yet are registered (the point id
  is the registry index). Collaborative models gain new items at their next retrain.
* With a ``CandidateStore`` (``stores.candidates``, the request path): after a batch's user
  vectors are written, those users' top-C candidates of the live version are rewritten from
  the same vectors against the version's items held here (``trainer.candidates``: batched
  matrix products, no engine query per user), their seen items (the feature store's, plus the
  batch's) left out: held here as registry indices (``SeenRows``), of which each batch reads
  only what the seen log gained since; a new content item gets its top-K neighbours written.
* The Redis live pointer ``sr:live:<model>`` follows the alias, and only over complete lists:
  when the group loads a live version (at start, and whenever it sees the alias move) whose
  version the pointer does not name yet (a swap made without Redis at hand: ``streamrec
  vectors publish`` with embedded Redis, ``VectorStore.rollback_alias``), it first backfills that
  version's lists from what is stored (``_backfill``): every user's top-C candidates from the
  user vectors of ``users_<model>__v<N>`` (read in chunks of ``BACKFILL_CHUNK`` registry
  indices, the point ids), written with HSETNX so an entry written meanwhile from a fresher
  vector stays, and every item's top-K neighbours; then it sets the pointer. A publish that
  writes the lists itself sets the pointer right after its swap, so nothing is redone. The
  pointer is the completion mark: a backfill that fails is retried (the pointer does not
  move), a restart mid-way starts it again. Vector reads go where the store says
  (``VectorStore.call_on_event_loop``: inline for Edge, in a thread otherwise); the ranking
  and Redis writes run in a worker thread.
* The aliases are checked every ``refresh_seconds`` by a watcher task (``watch_aliases``),
  events or not, and by each batch; the two are serialised, so a batch waits for a backfill.
* With nothing published the handler only checks the aliases: a fresh system runs it safely.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from streamrec.consumers.decode import DecodedBatch
from streamrec.consumers.dlq import DeadLetterSink
from streamrec.consumers.subscriber import subscribe_batches
from streamrec.core.datasets import Item
from streamrec.core.errors import ConfigurationError, NotFound, StreamrecError
from streamrec.core.ids import IdKind, IdRegistry
from streamrec.core.metrics import Metrics
from streamrec.core.settings import Settings
from streamrec.core.unavailable import SERVICE_ERRORS
from streamrec.schemas.events import ClickEvent, ItemEvent, RatingEvent, SourcedEvent
from streamrec.schemas.models import MODELS, VECTOR_MODELS, ModelName, resolve_numbers
from streamrec.schemas.topics import ConsumerGroup
from streamrec.stores.candidates import CandidateStore, Ranked
from streamrec.stores.features import FeatureStore
from streamrec.stores.model_registry import ModelRegistry
from streamrec.stores.vectors import (
    Record,
    VectorStore,
    item_version_name,
    items_alias,
    parse_version,
)
from streamrec.trainer.candidates import SEEN_USERS, CandidateIndex, SeenRows
from streamrec.trainer.doc2vec import item_text, tokenize
from streamrec.trainer.user_vectors import (
    DEFAULT_HISTORY,
    LoadedModel,
    fixed_vector,
    load_model,
    merge_history,
    model_histories,
    query_vectors,
)

if TYPE_CHECKING:
    from streamrec.consumers.app import ConsumerBroker

log = logging.getLogger(__name__)
BACKFILL_USERS = 2000  # recently active users recomputed when a new version goes live
BACKFILL_CHUNK = 1000  # user vectors read, ranked and written per step of a backfill
# What a round of the alias watcher may fail with and the watcher survives (it tries again).
WATCH_ERRORS: tuple[type[Exception], ...] = (StreamrecError, OSError, *SERVICE_ERRORS)
# Collection key (items_<key>) -> registry name, of every model with vectors.
FOLLOWED = {MODELS[n].collection: n.value for n in VECTOR_MODELS}
DISTANCE = {MODELS[n].collection: MODELS[n].distance for n in VECTOR_MODELS}
CONTENT = MODELS[ModelName.DOC2VEC].collection  # Doc2Vec's collections: new items' vectors


def parse_kept_versions(value: str) -> dict[str, int]:
    """``STREAMREC_VECTORS_KEPT_VERSIONS`` ("mf=1,sasrec=1") as {collection key: version}."""
    try:
        found = resolve_numbers(value, VECTOR_MODELS, "STREAMREC_VECTORS_KEPT_VERSIONS")
    except ValueError as error:
        raise ConfigurationError(str(error)) from None
    return {MODELS[model].collection: version for model, version in found.items()}


class ModelCache:
    """The live version of each model with vectors, loaded once and reloaded when its alias
    moves; keyed by collection key (``FOLLOWED``). And ``kept`` versions (collection key →
    version, ``STREAMREC_VECTORS_KEPT_VERSIONS``) whose users are kept fresh beside the live
    ones', so that a pinned version (``?version=N``) serves every user as the live one does."""

    def __init__(
        self,
        models: ModelRegistry,
        vectors: VectorStore,
        refresh_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        kept: Mapping[str, int] | None = None,
    ) -> None:
        self._models = models
        self._vectors = vectors
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._next_check = 0.0
        self._unreported: set[str] = set()  # reloaded by ``follow``, not yet told by current()
        self.loaded: dict[str, LoadedModel] = {}
        self._kept_wanted = dict(kept or {})  # not loaded yet
        self._kept: dict[tuple[str, int], LoadedModel] = {}

    def current(self) -> tuple[list[LoadedModel], set[str]]:
        """The loaded models and the names that changed since the last call (blocking: run it
        in a thread)."""
        changed, self._unreported = self._unreported, set()
        if self._clock() >= self._next_check:
            changed |= self.refresh()
            self._next_check = self._clock() + self.refresh_seconds
        return list(self.loaded.values()), changed

    def refresh(self) -> set[str]:
        return {serving for serving in FOLLOWED if self._check(serving)}

    def kept(self) -> list[LoadedModel]:
        """The kept versions that are not live now (blocking: loads each once, in a thread)."""
        for serving, version in list(self._kept_wanted.items()):
            del self._kept_wanted[serving]
            loaded = self._load(serving, version, kept=True)
            if loaded is not None:
                self._kept[(serving, version)] = loaded
        live = {(m.serving, m.version) for m in self.loaded.values()}
        return [m for key, m in self._kept.items() if key not in live]

    def in_use(self) -> set[tuple[str, int]]:
        """(collection key, version) of the live and the kept versions held."""
        return {(m.serving, m.version) for m in self.loaded.values()} | set(self._kept)

    def drop_kept(self, model: LoadedModel) -> None:
        """A kept version whose collections are gone (retention, a delete) is followed no more."""
        if self._kept.pop((model.serving, model.version), None) is not None:
            log.warning(
                "kept %s v%d is gone: its user vectors are no longer kept fresh",
                model.serving,
                model.version,
            )

    def follow(self, serving: str) -> LoadedModel | None:
        """The version behind ``serving``'s alias right now (reloaded if it moved), for writes
        that must land in the live collection whatever the refresh period."""
        if self._check(serving):
            self._unreported.add(serving)
        return self.loaded.get(serving)

    def _check(self, serving: str) -> bool:
        """Follow ``serving``'s alias; True when the loaded version changed."""
        target = self._vectors.resolve_alias(items_alias(serving))
        parsed = parse_version(target) if target else None
        held = self.loaded.get(serving)
        if parsed is None:
            return self.loaded.pop(serving, None) is not None
        if held is not None and held.version == parsed[1]:
            return False
        loaded = self._load(serving, parsed[1])
        if loaded is None:
            return False
        self.loaded[serving] = loaded
        return True

    def _load(self, serving: str, version: int, kept: bool = False) -> LoadedModel | None:
        try:
            loaded = load_model(self._models, FOLLOWED[serving], serving, version)
        except (StreamrecError, OSError) as exc:  # published but gone from the registry
            log.warning("cannot load %s v%d for user vectors: %s", serving, version, exc)
            return None
        # Published versions have it already; kept for collections published before it was.
        self._vectors.create_collection(loaded.collection, loaded.dim, "dot", {}, exist_ok=True)
        log.info(
            "user vectors of %s %s v%d", serving, "also for kept" if kept else "now follow", version
        )
        return loaded


class FixedVectorLists:
    """Which users with a fixed vector (``trainer.user_vectors.fixed_vector``: MF, NCF and Wide &
    Deep rows of the users a version was trained on, which no event changes) need their vector
    and list written again.

    Such a user's list changes only by what becomes seen, and the edge leaves out what is seen
    at request time: so the group writes the user the first time this process meets them in a
    version, and again once their seen set has grown by ``refresh_after`` items since (a
    quarter of the list: at least three quarters are left for the edge's filter), not at every
    event. Bounded like ``SeenRows``, in entries of a model version and a user (three fixed
    models share the capacity): the least recently written are forgotten, and are due again
    when next met.
    """

    def __init__(self, refresh_after: int, capacity: int = SEEN_USERS) -> None:
        self._refresh_after = max(1, refresh_after)
        self._capacity = capacity
        # (collection key, version, user index) -> seen items when last written
        self._written: OrderedDict[tuple[str, int, int], int] = OrderedDict()

    def due(self, model: LoadedModel, user: int, seen: int) -> bool:
        """Whether ``user`` (registry index), who has seen ``seen`` items, is to be written."""
        if not fixed_vector(model, user):
            return True
        held = self._written.get((model.serving, model.version, user))
        return held is None or seen - held >= self._refresh_after

    def wrote(self, model: LoadedModel, user: int, seen: int) -> None:
        if not fixed_vector(model, user):
            return
        key = (model.serving, model.version, user)
        self._written[key] = seen
        self._written.move_to_end(key)
        while len(self._written) > self._capacity:
            self._written.popitem(last=False)


class VectorsUpdater:
    """The group's work, apart from Kafka: testable with plain lists of events."""

    def __init__(
        self,
        features: FeatureStore,
        ids: IdRegistry,
        cache: ModelCache,
        vectors: VectorStore,
        history: int = DEFAULT_HISTORY,
        candidates: CandidateStore | None = None,
    ) -> None:
        self._features = features
        self._ids = ids
        self._cache = cache
        self._vectors = vectors
        self._history = history
        self._candidates = candidates
        self._seen_rows = SeenRows(candidates, ids) if candidates is not None else None
        self._fixed = FixedVectorLists(candidates.per_user // 4 if candidates is not None else 1)
        self._active_users: OrderedDict[str, None] = OrderedDict()
        # (collection key, version) -> that version's items for candidates (built on first
        # need; the live and kept versions of one model each have theirs).
        self._indexes: dict[tuple[str, int], CandidateIndex] = {}
        # The batch handler and the alias watcher share the cache and the indexes: one at a time.
        self._lock = asyncio.Lock()
        self._unpointed: set[str] = set()  # loaded versions the live pointer may not name yet
        self._refresh_recent = False  # a version went live: recompute the recent users
        self._watcher: asyncio.Task[None] | None = None

    async def handle(self, events: Sequence[SourcedEvent]) -> int:
        """Content vectors for the batch's new items, then the touched users' vectors; returns
        the vectors written."""
        async with self._lock:
            return await self._handle(events)

    async def follow_aliases(self) -> int:
        """Follow the aliases now if due (``refresh_seconds``): load a version that went live,
        backfill its lists, point the request path at it (see the module doc) and refresh the
        recently active users' vectors in it; returns the vectors written."""
        async with self._lock:
            return await self._write_users(await self._live_models(), {})

    async def watch_aliases(self) -> None:
        """``follow_aliases`` at once and then every ``refresh_seconds``, until cancelled."""
        while True:
            try:
                await self.follow_aliases()
            except WATCH_ERRORS as exc:  # a service down: the next round tries again
                log.warning("following the published aliases failed: %s", exc)
            await asyncio.sleep(self._cache.refresh_seconds)

    async def start_watching(self) -> None:
        self._watcher = asyncio.create_task(self.watch_aliases(), name="vectors-alias-watcher")
        self._watcher.add_done_callback(_report_watcher_end)

    async def stop_watching(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _live_models(self) -> list[LoadedModel]:
        """The loaded live versions, after pointing the request path at any that went live."""
        models, changed = await asyncio.to_thread(self._cache.current)
        if changed:
            self._refresh_recent = True
            self._unpointed |= changed
        if self._candidates is not None and self._unpointed:
            await self._point_live(models)
        return models

    async def _handle(self, events: Sequence[SourcedEvent]) -> int:
        batch: dict[str, list[tuple[float, str]]] = defaultdict(list)
        items: dict[str, ItemEvent] = {}
        for sourced in events:
            event = sourced.event
            if isinstance(event, RatingEvent | ClickEvent):
                batch[event.user_id].append((event.ts.timestamp(), event.item_id))
            elif isinstance(event, ItemEvent):
                items[event.item_id] = event  # log order per item: the last one wins
        self._remember(batch)
        written = await asyncio.to_thread(self._write_items, list(items.values())) if items else 0
        models = await self._live_models()
        if models:  # kept versions change nothing until something is live
            models += await asyncio.to_thread(self._cache.kept)
        return written + await self._write_users(models, batch)

    async def _write_users(
        self, models: list[LoadedModel], batch: dict[str, list[tuple[float, str]]]
    ) -> int:
        """The vectors (and candidates) of the batch's users in every live version, and once a
        version went live those of the recently active users too, from their Redis state."""
        if not models:
            return 0
        users = list(batch)
        if self._refresh_recent:
            self._refresh_recent = False
            users += [u for u in self._active_users if u not in batch]
        if not users:
            return 0
        depth = max(m.history_length(self._history) for m in models)  # SASRec: its max_len
        recent = await self._features.recent_items_many(users, depth)
        histories = [
            merge_history(r, [item for _, item in sorted(batch.get(u, []))])
            for u, r in zip(users, recent, strict=True)
        ]
        return await asyncio.to_thread(self._write, models, users, histories)

    def _remember(self, batch: dict[str, list[tuple[float, str]]]) -> None:
        for user in batch:
            self._active_users.pop(user, None)
            self._active_users[user] = None
        while len(self._active_users) > BACKFILL_USERS:
            self._active_users.popitem(last=False)

    async def _point_live(self, models: list[LoadedModel]) -> None:
        """The Redis live pointer follows the alias, over complete lists: a version the
        pointer does not name yet is backfilled first (see the module doc)."""
        candidates = self._candidates
        assert candidates is not None
        for model in models:
            if model.serving not in self._unpointed:
                continue
            pointer = await asyncio.to_thread(candidates.live_version_sync, model.serving)
            if pointer != model.version:
                try:
                    await self._backfill(model)
                except NotFound as exc:  # the version was deleted meanwhile: the next refresh
                    log.warning("cannot backfill %s v%d: %s", model.serving, model.version, exc)
                    continue
                await asyncio.to_thread(candidates.set_live, model.serving, model.version)
            self._unpointed.discard(model.serving)
        self._unpointed &= {model.serving for model in models}  # unpublished: nothing to point

    async def _backfill(self, model: LoadedModel) -> None:
        """Every user's candidates and every item's neighbours of ``model``'s version, from its
        stored user vectors and the items held here (what a publish with Redis writes)."""
        started = time.perf_counter()
        index = await asyncio.to_thread(self._index, model)
        users = await asyncio.to_thread(self._ids.external_ids, IdKind.USER)
        written = 0
        for lo in range(0, len(users), BACKFILL_CHUNK):
            wanted = list(range(lo, min(lo + BACKFILL_CHUNK, len(users))))
            records = await self._retrieve(model.collection, wanted)
            if records:
                await asyncio.to_thread(self._backfill_users, model, index, users, records)
                written += len(records)
        items = await asyncio.to_thread(self._backfill_neighbours, model, index)
        log.info(
            "backfilled %s v%d for the request path: candidates of %d users, neighbours of %d "
            "items in %.1fs",
            model.serving,
            model.version,
            written,
            items,
            time.perf_counter() - started,
        )

    async def _retrieve(self, collection: str, ids: list[int]) -> list[Record]:
        """``retrieve`` where the store says calls belong (inline for Edge: no I/O to wait on,
        the GIL held throughout; a thread for a store that waits on the network)."""
        if self._vectors.call_on_event_loop:
            return self._vectors.retrieve(collection, ids)
        return await asyncio.to_thread(self._vectors.retrieve, collection, ids)

    def _backfill_users(
        self, model: LoadedModel, index: CandidateIndex, users: list[str], records: list[Record]
    ) -> None:
        assert self._candidates is not None and self._seen_rows is not None
        names = [users[r.id] for r in records]
        vectors = np.asarray([r.vector for r in records], np.float32)
        ranked = index.top(vectors, self._candidates.per_user, self._seen_rows.rows_many(names))
        self._candidates.write_candidates(
            model.serving,
            model.version,
            {
                name: Ranked(
                    found.items, found.scores, _updated_ms(record), fixed_vector(model, record.id)
                )
                for name, found, record in zip(names, ranked, records, strict=True)
            },
            keep_existing=True,  # an entry written meanwhile came from a fresher vector
        )

    def _backfill_neighbours(self, model: LoadedModel, index: CandidateIndex) -> int:
        assert self._candidates is not None
        found = index.neighbours(None, self._candidates.neighbours)
        self._candidates.write_neighbours(model.serving, model.version, found)
        return len(found)

    def _index(self, model: LoadedModel) -> CandidateIndex:
        """The items of ``model``'s live collection: its non-zero rows of registered items
        (what the publish wrote), and for content also the points written since (new items)
        or inferred at publish, read back from the collection once per version."""
        held = self._indexes.get((model.serving, model.version))
        if held is not None:
            return held
        # One index per version in use (live and kept); those of versions gone are dropped.
        for key in set(self._indexes) - self._cache.in_use():
            del self._indexes[key]
        external = self._ids.external_ids(IdKind.ITEM)
        rows = np.arange(min(len(model.items), len(external)))
        rows = rows[np.any(model.items[rows] != 0.0, axis=1)]
        index = CandidateIndex(
            rows, model.items[rows], [external[i] for i in rows], DISTANCE[model.serving]
        )
        if model.serving == CONTENT:
            others = sorted(set(range(len(external))) - set(rows.tolist()))
            found = self._vectors.retrieve(item_version_name(CONTENT, model.version), others)
            if found:
                index.add(
                    [r.id for r in found],
                    np.asarray([r.vector for r in found], np.float32),
                    [external[r.id] for r in found],
                )
        self._indexes[(model.serving, model.version)] = index
        return index

    def _write_candidates(
        self,
        model: LoadedModel,
        users: list[str],
        indices: list[int],
        user_vectors: np.ndarray,
        seen: list[np.ndarray],
        updated_ms: int,
    ) -> None:
        """The users' top-C items of the live version, their ``seen`` items left out."""
        assert self._candidates is not None
        ranked = self._index(model).top(user_vectors, self._candidates.per_user, seen)
        self._candidates.write_candidates(
            model.serving,
            model.version,
            {
                user: Ranked(found.items, found.scores, updated_ms, fixed_vector(model, index))
                for user, index, found in zip(users, indices, ranked, strict=True)
            },
        )

    def _seen(
        self, users: list[str], histories: list[list[str]], item_idx: Mapping[str, int]
    ) -> tuple[list[np.ndarray], list[int]]:
        """What to leave out of each user's candidates, as registry indices: the feature
        store's seen set, plus the batch's items (the features group may not have applied them
        yet); and the size of each feature-store seen set. Read once per batch for every
        model."""
        if self._seen_rows is None:  # no candidates to write: nothing to leave out
            return [], [0] * len(users)
        held = self._seen_rows.rows_many(users)
        seen = [
            np.concatenate([rows, np.asarray([item_idx[i] for i in h if i in item_idx], np.int64)])
            for rows, h in zip(held, histories, strict=True)
        ]
        return seen, [len(rows) for rows in held]

    def _write_items(self, events: list[ItemEvent]) -> int:
        """Upsert the items into the live content collection (see the module doc)."""
        model = self._cache.follow(CONTENT)
        if model is None:  # no content version published: nothing to add to
            return 0
        # Register unknown items here: the archive group may not have seen them yet, and the
        # point id is the item's registry index.
        index = self._ids.assign(IdKind.ITEM, [e.item_id for e in events])
        collection = item_version_name(CONTENT, model.version)
        try:
            held = {r.id: r for r in self._vectors.retrieve(collection, list(index.values()))}
            points = self._item_points(model, events, index, held)
            if points[0]:
                self._vectors.upsert(collection, *points)
        except NotFound:  # the version was deleted meanwhile; the next refresh drops it
            log.warning("items collection %s is gone; skipping", collection)
            return 0
        fresh = [p for p, point in enumerate(points[0]) if point not in held]
        if fresh and self._candidates is not None:
            self._write_new_neighbours(model, points, fresh)
        return len(points[0])

    def _write_new_neighbours(
        self,
        model: LoadedModel,
        points: tuple[list[int], list[list[float]], list[dict[str, Any]]],
        fresh: list[int],
    ) -> None:
        """New content items join the live version's items (for users' candidates from now
        on) and get their top-K neighbours written. Other items' neighbour lists gain them at
        the next publish."""
        assert self._candidates is not None
        ids, vectors, payloads = points
        rows = [ids[p] for p in fresh]
        index = self._index(model)
        index.add(
            rows,
            np.asarray([vectors[p] for p in fresh], np.float32),
            [str(payloads[p]["item_id"]) for p in fresh],
        )
        found = index.neighbours(rows, self._candidates.neighbours)
        self._candidates.write_neighbours(model.serving, model.version, found)

    @staticmethod
    def _item_points(
        model: LoadedModel,
        events: list[ItemEvent],
        index: dict[str, int],
        held: dict[int, Any],
    ) -> tuple[list[int], list[list[float]], list[dict[str, Any]]]:
        ids: list[int] = []
        vectors: list[list[float]] = []
        payloads: list[dict[str, Any]] = []
        new = [e for e in events if index[e.item_id] not in held]
        texts = {e.item_id: item_text(_catalog_item(e)) for e in new}
        new = [e for e in new if tokenize(texts[e.item_id])]  # nothing to infer from
        inferred = model.net.infer_many([texts[e.item_id] for e in new]) if new else []
        for event, vector in zip(new, inferred, strict=True):
            ids.append(index[event.item_id])
            vectors.append(vector.tolist())
            payloads.append({**_item_payload(event), "popularity": 0.0})
        for event in events:
            record = held.get(index[event.item_id])
            if record is not None:  # keeps its vector (and popularity), takes the new details
                ids.append(record.id)
                vectors.append(record.vector)
                payloads.append({**record.payload, **_item_payload(event)})
        return ids, vectors, payloads

    def _write(
        self, models: list[LoadedModel], users: list[str], histories: list[list[str]]
    ) -> int:
        # Register unknown users here too: the archive group may not have seen them yet, and
        # the point id of a user vector is its registry index.
        user_idx = self._ids.assign(IdKind.USER, users)
        item_idx = self._ids.lookup(IdKind.ITEM, {i for h in histories for i in h})
        indices = [user_idx[u] for u in users]
        now_ms = int(time.time() * 1000)
        seen, seen_sizes = self._seen(users, histories, item_idx)
        written = 0
        # A sequence model's forward is the batch's costliest step (SASRec: most of it): the
        # other models' users get their fresh lists without waiting for it.
        for model in sorted(models, key=lambda m: m.sequential):
            due = [p for p, u in enumerate(indices) if self._fixed.due(model, u, seen_sizes[p])]
            limit = model.history_length(self._history)
            mapped = model_histories(model, [histories[p] for p in due], item_idx, limit)
            kept, vecs = query_vectors(model, [indices[p] for p in due], mapped)
            keep = [due[k] for k in kept]
            if not keep:
                continue
            payload = {"updated_ms": now_ms, "version": model.version}
            try:
                self._vectors.upsert(
                    model.collection, [indices[p] for p in keep], vecs, [payload] * len(keep)
                )
            except NotFound:  # the version was deleted meanwhile; the next refresh drops it
                log.warning("users collection %s is gone; skipping", model.collection)
                self._cache.drop_kept(model)
                continue
            if self._candidates is not None:
                self._write_candidates(
                    model,
                    [users[p] for p in keep],
                    [indices[p] for p in keep],
                    vecs,
                    [seen[p] for p in keep],
                    now_ms,
                )
            for p in keep:
                self._fixed.wrote(model, indices[p], seen_sizes[p])
            written += len(keep)
        return written


def _report_watcher_end(task: asyncio.Task[None]) -> None:
    """A watcher that ended on an unexpected error (a bug) says so; cancelling is its stop."""
    if not task.cancelled() and task.exception() is not None:
        log.error("the alias watcher stopped", exc_info=task.exception())


def _updated_ms(record: Record) -> int | None:
    value = record.payload.get("updated_ms")
    return int(value) if isinstance(value, int | float) else None


def _catalog_item(event: ItemEvent) -> Item:
    return Item(event.item_id, event.title, tuple(event.genres), event.year, event.text)


def _item_payload(event: ItemEvent) -> dict[str, Any]:
    return {
        "item_id": event.item_id,
        "title": event.title,
        "genres": list(event.genres),
        "year": event.year,
    }


def register(
    broker: ConsumerBroker,
    updater: VectorsUpdater,
    dead_letters: DeadLetterSink,
    metrics: Metrics,
    settings: Settings,
) -> None:
    """Subscribe the vectors group to ratings and clicks (what changes a user's vector) and
    item events (new items' content vectors); the alias watcher runs while the broker does."""
    broker.before_start.append(updater.start_watching)
    broker.after_stop.append(updater.stop_watching)

    async def apply(batch: DecodedBatch) -> int:
        return await updater.handle(batch.events)

    subscribe_batches(
        broker,
        ConsumerGroup.VECTORS,
        apply,
        dead_letters,
        metrics,
        settings,
        retry="refreshing user vectors",
    )

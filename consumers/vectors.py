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
* Every model with vectors is followed (``schemas.models.VECTOR_MODELS``), by the key of its
  collections (the model's name; ``content`` for doc2vec).
* Item events (``streamrec.items``): an item new to the live ``items_content`` version gets
  its vector inferred from its text (title, genres, text) by that version's Doc2Vec model and
  is upserted with its payload (title, genres, year, popularity 0) at once, so it can be
  recommended and be a neighbour; an item already there keeps its vector and gets the new
  title, genres and year. Items the id registry does not know yet are registered (the point id
  is the registry index). Collaborative models gain new items at their next retrain.
* With nothing published the handler only checks the aliases: a fresh system runs it safely.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from faststream.kafka import KafkaBroker

from consumers.decode import DecodedBatch
from consumers.dlq import DeadLetterSink
from consumers.subscriber import subscribe_batches
from core.datasets import Item
from core.errors import NotFound, StreamrecError
from core.ids import IdKind, IdRegistry
from core.metrics import Metrics
from core.settings import Settings
from schemas.events import ClickEvent, ItemEvent, RatingEvent, SourcedEvent
from schemas.models import MODELS, VECTOR_MODELS, ModelName
from schemas.topics import ConsumerGroup
from stores.features import FeatureStore
from stores.model_registry import ModelRegistry
from stores.vectors import VectorStore, item_version_name, items_alias, parse_version
from trainer.doc2vec import item_text, tokenize
from trainer.user_vectors import (
    DEFAULT_HISTORY,
    LoadedModel,
    load_model,
    merge_history,
    model_histories,
    query_vectors,
)

log = logging.getLogger(__name__)
BACKFILL_USERS = 2000  # recently active users recomputed when a new version goes live
# Collection key (items_<key>) -> registry name, of every model with vectors.
FOLLOWED = {MODELS[n].collection: n.value for n in VECTOR_MODELS}
CONTENT = MODELS[ModelName.DOC2VEC].collection  # Doc2Vec's collections: new items' vectors


class ModelCache:
    """The live version of each model with vectors, loaded once and reloaded when its alias
    moves; keyed by collection key (``FOLLOWED``)."""

    def __init__(
        self,
        models: ModelRegistry,
        vectors: VectorStore,
        refresh_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._models = models
        self._vectors = vectors
        self._refresh = refresh_seconds
        self._clock = clock
        self._next_check = 0.0
        self._unreported: set[str] = set()  # reloaded by ``follow``, not yet told by current()
        self.loaded: dict[str, LoadedModel] = {}

    def current(self) -> tuple[list[LoadedModel], set[str]]:
        """The loaded models and the names that changed since the last call (blocking: run it
        in a thread)."""
        changed, self._unreported = self._unreported, set()
        if self._clock() >= self._next_check:
            changed |= self.refresh()
            self._next_check = self._clock() + self._refresh
        return list(self.loaded.values()), changed

    def refresh(self) -> set[str]:
        return {serving for serving in FOLLOWED if self._check(serving)}

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

    def _load(self, serving: str, version: int) -> LoadedModel | None:
        try:
            loaded = load_model(self._models, FOLLOWED[serving], serving, version)
        except (StreamrecError, OSError) as exc:  # published but gone from the registry
            log.warning("cannot load %s v%d for user vectors: %s", serving, version, exc)
            return None
        # Published versions have it already; kept for collections published before it was.
        self._vectors.create_collection(loaded.collection, loaded.dim, "dot", {}, exist_ok=True)
        log.info("user vectors of %s now follow v%d", serving, version)
        return loaded


class VectorsUpdater:
    """The group's work, apart from Kafka: testable with plain lists of events."""

    def __init__(
        self,
        features: FeatureStore,
        ids: IdRegistry,
        cache: ModelCache,
        vectors: VectorStore,
        history: int = DEFAULT_HISTORY,
    ) -> None:
        self._features = features
        self._ids = ids
        self._cache = cache
        self._vectors = vectors
        self._history = history
        self._active_users: OrderedDict[str, None] = OrderedDict()

    async def handle(self, events: Sequence[SourcedEvent]) -> int:
        """Content vectors for the batch's new items, then the touched users' vectors; returns
        the vectors written."""
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
        models, changed = await asyncio.to_thread(self._cache.current)
        if not models:
            return written
        users = list(batch)
        if changed:  # a new version went live: refresh recent users with their Redis state
            users += [u for u in self._active_users if u not in batch]
        if not users:
            return written
        depth = max(m.history_length(self._history) for m in models)  # SASRec: its max_len
        recent = await self._features.recent_items_many(users, depth)
        histories = [
            merge_history(r, [item for _, item in sorted(batch.get(u, []))])
            for u, r in zip(users, recent, strict=True)
        ]
        return written + await asyncio.to_thread(self._write, models, users, histories)

    def _remember(self, batch: dict[str, list[tuple[float, str]]]) -> None:
        for user in batch:
            self._active_users.pop(user, None)
            self._active_users[user] = None
        while len(self._active_users) > BACKFILL_USERS:
            self._active_users.popitem(last=False)

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
        return len(points[0])

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
        written = 0
        for model in models:
            limit = model.history_length(self._history)
            mapped = model_histories(model, histories, item_idx, limit)
            keep, vecs = query_vectors(model, indices, mapped)
            if not keep:
                continue
            payload = {"updated_ms": now_ms, "version": model.version}
            try:
                self._vectors.upsert(
                    model.collection, [indices[p] for p in keep], vecs, [payload] * len(keep)
                )
            except NotFound:  # the version was deleted meanwhile; the next refresh drops it
                log.warning("users collection %s is gone; skipping", model.collection)
                continue
            written += len(keep)
        return written


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
    broker: KafkaBroker,
    updater: VectorsUpdater,
    dead_letters: DeadLetterSink,
    metrics: Metrics,
    settings: Settings,
) -> None:
    """Subscribe the vectors group to ratings and clicks (what changes a user's vector) and
    item events (new items' content vectors)."""

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

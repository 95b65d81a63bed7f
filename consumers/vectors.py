"""Consumer group ``streamrec-vectors``: after each batch, fresh query vectors for the users it
touched, for every model whose item vectors are published.

* Which version serves is what the ``items_<model>`` alias points at (not merely the
  registry's active version): user vectors must live in the same space as the item vectors
  the edge queries. The alias is checked every ``refresh_seconds`` and the version reloaded
  when it moves (hot swap, no restart).
* User vectors go to ``users_<model>__v<N>`` (point id = user registry index, payload
  ``updated_ms`` and ``version``), one collection per item version, so the edge always pairs
  a user vector with item vectors of the same version.
* SASRec: from the live sequence (Redis recent items plus this batch, since the features group
  may not have applied the batch yet). MF / NCF / Wide & Deep: the trained user row when the
  user is known to the model, else a fold-in (mean of the recent items' vectors). Content
  (Doc2Vec): always the fold-in.
* With nothing published the handler only checks the aliases: a fresh system runs it safely.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from consumers.decode import decode_batch
from consumers.dlq import DeadLetterSink
from consumers.policy import batch_subscriber_options, event_topics, settle, with_backoff
from core.errors import NotFound, StreamrecError
from core.ids import IdKind, IdRegistry
from core.metrics import Metrics
from core.settings import Settings
from schemas.events import ClickEvent, RatingEvent, SourcedEvent
from schemas.topics import ConsumerGroup
from stores.features import FeatureStore
from stores.model_registry import ModelRegistry
from stores.vectors import VectorStore, items_alias, parse_version, user_version_name
from trainer.data import pad_sequences
from trainer.models.base import Query, Recommender
from trainer.publish import SERVING_MODELS, item_matrix

GROUP = ConsumerGroup.VECTORS.value
log = logging.getLogger(__name__)
BACKFILL_USERS = 2000  # recently active users recomputed when a new version goes live


@dataclass
class LoadedModel:
    serving: str  # mf, ncf, wide_deep, sasrec, content
    version: int
    net: Any  # a Recommender, or the Doc2Vec model for content
    items: np.ndarray  # (n_items, d) item vectors, for fold-in
    collection: str  # users_<model>__v<N>

    @property
    def sequential(self) -> bool:
        return bool(getattr(self.net, "sequential", False))

    @property
    def n_users(self) -> int:
        return int(self.net.n_users) if isinstance(self.net, Recommender) else 0


class ModelCache:
    """The live version of each serving model, loaded once and reloaded when its alias moves."""

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
        self.loaded: dict[str, LoadedModel] = {}

    def current(self) -> tuple[list[LoadedModel], set[str]]:
        """The loaded models and the names that changed in this call (blocking: run it in a
        thread)."""
        changed: set[str] = set()
        if self._clock() >= self._next_check:
            changed = self.refresh()
            self._next_check = self._clock() + self._refresh
        return list(self.loaded.values()), changed

    def refresh(self) -> set[str]:
        changed: set[str] = set()
        for serving in SERVING_MODELS:
            target = self._vectors.resolve_alias(items_alias(serving))
            parsed = parse_version(target) if target else None
            held = self.loaded.get(serving)
            if parsed is None:
                if self.loaded.pop(serving, None) is not None:
                    changed.add(serving)
                continue
            if held is not None and held.version == parsed[1]:
                continue
            loaded = self._load(serving, parsed[1])
            if loaded is not None:
                self.loaded[serving] = loaded
                changed.add(serving)
        return changed

    def _load(self, serving: str, version: int) -> LoadedModel | None:
        try:
            net = self._models.load(SERVING_MODELS[serving], version)
        except (StreamrecError, OSError) as exc:  # published but gone from the registry
            log.warning("cannot load %s v%d for user vectors: %s", serving, version, exc)
            return None
        if isinstance(net, torch.nn.Module):
            net.eval()
        items = item_matrix(net)
        collection = user_version_name(serving, version)
        self._vectors.create_collection(collection, items.shape[1], "dot", {}, exist_ok=True)
        log.info("user vectors of %s now follow v%d", serving, version)
        return LoadedModel(serving, version, net, items, collection)


def merge_history(recent_newest_first: Sequence[str], batch: Sequence[str]) -> list[str]:
    """Oldest-first distinct items: Redis history, then this batch's items (in event order);
    an item seen again moves to the end."""
    order: dict[str, None] = {}
    for item in [*reversed(recent_newest_first), *batch]:
        order.pop(item, None)
        order[item] = None
    return list(order)


def query_vectors(
    model: LoadedModel, users: Sequence[int], histories: Sequence[Sequence[int]]
) -> tuple[list[int], np.ndarray]:
    """Positions (into ``users``) that get a vector, and their (n, d) vectors.

    ``histories`` hold item indices oldest first, already limited to the model's items.
    """
    with torch.no_grad():
        if model.sequential:
            keep = [p for p, h in enumerate(histories) if h]
            if not keep:
                return [], np.zeros((0, model.items.shape[1]), np.float32)
            seqs = pad_sequences([np.asarray(histories[p]) for p in keep], model.net.config.max_len)
            out = model.net.user_vectors(Query(torch.zeros(len(keep), dtype=torch.long), seqs))
            return keep, out.numpy().astype(np.float32)
        trained = [p for p, u in enumerate(users) if u < model.n_users]
        folded = [p for p, h in enumerate(histories) if h and users[p] >= model.n_users]
        rows: list[np.ndarray] = []
        if trained:
            query = Query(torch.as_tensor([users[p] for p in trained], dtype=torch.long))
            rows.append(model.net.user_vectors(query).numpy())
        if folded:
            # A user new to the model: the mean of its recent items' vectors, whose dot product
            # with an item is the mean similarity of that item to what the user just had.
            rows.append(np.stack([model.items[list(histories[p])].mean(0) for p in folded]))
        keep = trained + folded
        if not keep:
            return [], np.zeros((0, model.items.shape[1]), np.float32)
        return keep, np.concatenate(rows).astype(np.float32)


class VectorsUpdater:
    """The group's work, apart from Kafka: testable with plain lists of events."""

    def __init__(
        self,
        features: FeatureStore,
        ids: IdRegistry,
        cache: ModelCache,
        vectors: VectorStore,
        history: int = 50,
    ) -> None:
        self._features = features
        self._ids = ids
        self._cache = cache
        self._vectors = vectors
        self._history = history
        self._active_users: OrderedDict[str, None] = OrderedDict()

    async def handle(self, events: Sequence[SourcedEvent]) -> int:
        """Recompute the touched users' vectors; returns the vectors written."""
        batch: dict[str, list[tuple[float, str]]] = defaultdict(list)
        for sourced in events:
            event = sourced.event
            if isinstance(event, RatingEvent | ClickEvent):
                batch[event.user_id].append((event.ts.timestamp(), event.item_id))
        self._remember(batch)
        models, changed = await asyncio.to_thread(self._cache.current)
        if not models:
            return 0
        users = list(batch)
        if changed:  # a new version went live: its users collection starts empty
            users += [u for u in self._active_users if u not in batch]
        if not users:
            return 0
        recent = await self._features.recent_items_many(users, self._history)
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
            n_items = len(model.items)
            mapped = [
                [item_idx[i] for i in h if i in item_idx and item_idx[i] < n_items][
                    -self._history :
                ]
                for h in histories
            ]
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


def register(
    broker: KafkaBroker,
    updater: VectorsUpdater,
    dead_letters: DeadLetterSink,
    metrics: Metrics,
    settings: Settings,
) -> None:
    """Subscribe the vectors group to ratings and clicks (what changes a user's vector)."""
    topics = event_topics(settings, ConsumerGroup.VECTORS)

    @broker.subscriber(*topics, **batch_subscriber_options(settings, GROUP))
    async def refresh_user_vectors(body: list[bytes | None], msg: KafkaMessage) -> None:
        async with settle(msg, GROUP):
            batch = decode_batch(msg.raw_message, GROUP)
            await dead_letters.send(batch.dead)
            if not batch.events:
                return
            with metrics.batch_seconds.labels(GROUP).time():
                await with_backoff(
                    lambda: updater.handle(batch.events), what="refreshing user vectors"
                )
            for topic, n in Counter(s.topic for s in batch.events).items():
                metrics.events_consumed.labels(GROUP, topic).inc(n)

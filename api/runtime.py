"""What the API process holds while it runs: created in the lifespan, passed down via deps."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import torch
from faststream.kafka import KafkaBroker

from streamrec.api.serving import CandidateServer, ItemMetaCache, VectorServer
from streamrec.core.metrics import Metrics
from streamrec.core.services import Services
from streamrec.core.settings import Settings
from streamrec.core.threads import single_threaded_blas
from streamrec.producers.publisher import EventPublisher
from streamrec.stores.catalog import Archive
from streamrec.stores.factory import Stores
from streamrec.stores.features import FeatureStore
from streamrec.stores.model_registry import ModelRegistry
from streamrec.stores.vectors import VectorStore
from streamrec.trainer.policy import ActiveModels, RLServer
from streamrec.trainer.rl import Exploration

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """The API's stores (from ``stores.factory``) and what it serves with; built by ``build``."""

    stores: Stores
    metrics: Metrics
    publisher: EventPublisher
    serving: VectorServer  # vector reads (when nothing is precomputed)
    rl: RLServer  # dqn/doc2vec inference over the registry's active versions
    item_meta: ItemMetaCache  # titles/genres for responses
    candidates: CandidateServer  # precomputed candidates and neighbours (Redis only)
    consumers: KafkaBroker | None = None  # set when apps.up runs the groups in this process
    background: set[asyncio.Task] = field(default_factory=set)

    @classmethod
    def build(cls, stores: Stores, metrics: Metrics, publisher: EventPublisher) -> Runtime:
        settings = stores.settings
        # The API's networks are tiny (a DQN over ~100 candidates): one thread each is
        # fastest, and N API workers with a thread pool per core each would fight for cores.
        torch.set_num_threads(1)
        single_threaded_blas()
        active = ActiveModels(stores.models, settings.model_reload_seconds)
        exploration = Exploration(
            settings.rl_exploration, settings.rl_epsilon, settings.rl_temperature
        )
        return cls(
            stores=stores,
            metrics=metrics,
            publisher=publisher,
            serving=VectorServer(stores.vectors, stores.ids),
            rl=RLServer(active, stores.ids, exploration),
            item_meta=ItemMetaCache(stores.features),
            candidates=CandidateServer(stores.candidates, settings.candidate_pointer_ttl_seconds),
        )

    @property
    def settings(self) -> Settings:
        return self.stores.settings

    @property
    def services(self) -> Services:
        return self.stores.services

    @property
    def features(self) -> FeatureStore:
        return self.stores.features

    @property
    def archive(self) -> Archive:
        return self.stores.archive

    @property
    def vectors(self) -> VectorStore:
        return self.stores.vectors

    @property
    def models(self) -> ModelRegistry:
        return self.stores.models

    def spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run work after the response; keep a reference and log failures, never lose them."""
        task = asyncio.create_task(coroutine, name=name)
        self.background.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed: %s", task.get_name(), task.exception())

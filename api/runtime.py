"""What the API process holds while it runs: created in the lifespan, passed down via deps."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from faststream.kafka import KafkaBroker

from api.serving import ItemMetaCache, VectorServer
from core.metrics import Metrics
from core.services import Services
from core.settings import Settings
from producers.publisher import EventPublisher
from stores.catalog import Archive
from stores.features import FeatureStore
from stores.model_registry import ModelRegistry
from stores.vectors import VectorStore
from trainer.policy import ActiveModels, RLServer
from trainer.rl import Exploration

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    services: Services
    metrics: Metrics
    publisher: EventPublisher
    features: FeatureStore
    archive: Archive
    vectors: VectorStore
    consumers: KafkaBroker | None = None
    serving: VectorServer | None = None  # vector reads; built from vectors + ids if unset
    rl: RLServer | None = None  # dqn/doc2vec inference; built from the registry if unset
    item_meta: ItemMetaCache | None = None  # titles/genres for responses; built if unset
    background: set[asyncio.Task] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.serving is None:
            self.serving = VectorServer(self.vectors, self.services.ids)
        if self.item_meta is None:
            self.item_meta = ItemMetaCache(self.features)
        if self.rl is None:
            active = ActiveModels(self.model_registry(), self.settings.model_reload_seconds)
            exploration = Exploration(
                self.settings.rl_exploration,
                self.settings.rl_epsilon,
                self.settings.rl_temperature,
            )
            self.rl = RLServer(active, self.services.ids, exploration)

    def model_registry(self) -> ModelRegistry:
        """The registry the trainer and the DQN edge use: ``<var_dir>/models`` indexed in SQL."""
        return ModelRegistry(self.services.engine, self.settings.var_dir / "models")

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

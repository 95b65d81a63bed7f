"""Build the FastStream broker that runs the chosen consumer groups.

The vectors and online-RL groups need PyTorch, gensim and the vector engine; their modules are
imported only when a process runs them (``_group_module``), so a process with the features and
archive groups starts in about a second less (a restarted consumer resumes sooner, issue 11).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING, Any

from faststream.kafka import KafkaBroker

from consumers import archive, features
from consumers.dlq import DeadLetterSink
from core.errors import ServiceUnavailable
from core.metrics import Metrics
from core.services import Services
from schemas.topics import DEFAULT_GROUPS, ConsumerGroup
from stores.catalog import Archive
from stores.features import FeatureStore
from stores.model_registry import ModelRegistry

if TYPE_CHECKING:
    from consumers.online_rl import OnlineLearner
    from consumers.vectors import VectorsUpdater
    from stores.vectors import VectorStore

# FastStream logs partition assignments at INFO; core.logs quiets this logger to WARNING.
broker_log = logging.getLogger("streamrec.consumers.broker")


class ConsumerBroker(KafkaBroker):
    """A ``KafkaBroker`` whose ``start()`` starts its subscribers together.

    FastStream 0.7's ``start()`` awaits each subscriber in turn, and each one's start (aiokafka
    ``AIOKafkaConsumer.start()`` after ``subscribe()``) waits until its group has joined and
    been assigned partitions: ~3 s per group on the embedded cluster and on a Kafka with the
    default ``group.initial.rebalance.delay.ms``, so 3 groups took 9 s. The groups are
    independent, so their joins can overlap: subscribers are started concurrently through their
    own ``start()`` (the documented way to start a subscriber on a connected broker, see
    FastStream's "Dynamic Subscribers"); stopping is already concurrent in FastStream.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Run after connect() and before any subscriber starts (the features group's log check).
        self.before_start: list[Callable[[], Awaitable[object]]] = []

    async def start(self) -> None:
        await self.connect()
        try:
            for prepare in self.before_start:
                await prepare()
            try:
                # A failure cancels the other starts before it propagates.
                async with asyncio.TaskGroup() as starting:
                    for subscriber in self.subscribers:
                        starting.create_task(subscriber.start())
            except BaseExceptionGroup as failed:
                # Raise the error itself, as KafkaBroker.start() would, not a group of one.
                raise failed.exceptions[0] from failed
            for publisher in self.publishers:
                await publisher.start()
        except BaseException:
            # Leave no consumer of a half-started broker in its group; then report the failure.
            await self.stop()
            raise
        self.running = True


def feature_store(services: Services) -> FeatureStore:
    return FeatureStore.for_settings(services.redis, services.settings)


def build_consumer_broker(
    services: Services,
    metrics: Metrics,
    groups: Sequence[ConsumerGroup] = DEFAULT_GROUPS,
    vector_store: VectorStore | None = None,
    learner: OnlineLearner | None = None,
) -> KafkaBroker:
    """A broker with one batch subscriber per consumer group; start it to consume.

    ``vector_store``: the process's store, needed by the vectors group (Edge opens a shard
    once per process, so the API passes its own); the caller opens and closes it.
    ``learner``: the online-RL group's learner, when the caller wants to watch it (the
    simulator); one is built from the settings otherwise.
    """
    broker = ConsumerBroker(
        services.kafka_bootstrap,
        client_id="streamrec-consumers",
        logger=broker_log,
        log_level=logging.DEBUG,  # per-message "Received/Processed" lines only at DEBUG
    )
    dead_letters = DeadLetterSink(broker, metrics)
    settings = services.settings
    unknown = set(groups) - set(DEFAULT_GROUPS)
    if unknown:
        names = ", ".join(sorted(g.value for g in unknown))
        raise ValueError(f"consumer groups not available yet: {names}")
    log_id = services.kafka_log_id
    if log_id is None:
        # Offsets (Redis guard, archive coordinates) must name their log: no id, no consuming.
        raise ServiceUnavailable(
            f"Kafka at {', '.join(services.kafka_bootstrap)} did not answer at start-up: "
            "consumers need it; start them again once it is up"
        )
    if ConsumerGroup.FEATURES in groups:
        store = feature_store(services)
        features.register(broker, store, dead_letters, metrics, settings)
        broker.before_start.append(
            lambda: features.follow_log(
                store,
                Archive(services.engine),
                services.kafka_bootstrap,
                log_id,
                settings,
            )
        )
    if ConsumerGroup.ARCHIVE in groups:
        archive.register(
            broker,
            Archive(services.engine, log_id=log_id),
            services.ids,
            dead_letters,
            metrics,
            settings,
        )
    if ConsumerGroup.VECTORS in groups:
        if vector_store is None:
            raise ValueError("the vectors consumer group needs the process's vector store")
        updater = vectors_updater(services, vector_store)
        _group_module(ConsumerGroup.VECTORS).register(
            broker, updater, dead_letters, metrics, settings
        )
    if ConsumerGroup.ONLINE_RL in groups:
        learner = learner or online_learner(services)
        _group_module(ConsumerGroup.ONLINE_RL).register(
            broker, learner, dead_letters, metrics, settings
        )
    return broker


_TORCH_GROUP_MODULES = {
    ConsumerGroup.VECTORS: "consumers.vectors",
    ConsumerGroup.ONLINE_RL: "consumers.online_rl",
}


def _group_module(group: ConsumerGroup) -> ModuleType:
    """The subscriber module of a group that needs PyTorch (imported on first use: cost only)."""
    return import_module(_TORCH_GROUP_MODULES[group])


def online_learner(services: Services) -> OnlineLearner:
    online_rl = _group_module(ConsumerGroup.ONLINE_RL)
    settings = services.settings
    registry = ModelRegistry(services.engine, settings.var_dir / "models")
    active = online_rl.ActiveModels(registry, settings.model_reload_seconds)
    config = online_rl.LearnerConfig.from_settings(settings)
    learner: OnlineLearner = online_rl.OnlineLearner(active, registry, services.ids, config)
    return learner


def vectors_updater(services: Services, store: VectorStore) -> VectorsUpdater:
    vectors = _group_module(ConsumerGroup.VECTORS)
    models = ModelRegistry(services.engine, services.settings.var_dir / "models")
    cache = vectors.ModelCache(models, store)
    updater: VectorsUpdater = vectors.VectorsUpdater(
        feature_store(services), services.ids, cache, store
    )
    return updater

"""Build the FastStream broker that runs the chosen consumer groups.

The vectors and online-RL groups need PyTorch, gensim and the vector engine; their modules are
imported only when a process runs them (``_group_module``), so a process with the features and
archive groups starts in about a second less (a restarted consumer resumes sooner, issue 11).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from importlib import import_module
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

from faststream.kafka import KafkaBroker

from streamrec.consumers import archive, features
from streamrec.consumers.dlq import DeadLetterSink
from streamrec.core.errors import ServiceUnavailable
from streamrec.core.metrics import Metrics
from streamrec.core.threads import single_threaded_blas
from streamrec.schemas.topics import DEFAULT_GROUPS, ConsumerGroup
from streamrec.stores.factory import Stores

if TYPE_CHECKING:
    from streamrec.consumers.vectors import VectorsUpdater
    from streamrec.trainer.online import OnlineLearner

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
        # Run after the subscribers stopped (the retrain loop's background work).
        self.after_stop: list[Callable[[], Awaitable[object]]] = []

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

    async def stop(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> None:
        await super().stop(exc_type, exc_val, exc_tb)
        for stop in self.after_stop:
            await stop()


def build_consumer_broker(
    stores: Stores,
    metrics: Metrics,
    groups: Sequence[ConsumerGroup] = DEFAULT_GROUPS,
    learner: OnlineLearner | None = None,
) -> KafkaBroker:
    """A broker with one batch subscriber per consumer group; start it to consume.

    ``stores``: the process's stores (``stores.factory.open_stores``); the caller opens and
    closes them (Qdrant Edge opens a shard in one process only, so ``up`` passes the API's).
    ``learner``: the online-RL group's learner, when the caller wants to watch it (the
    simulator); one is built from the settings otherwise. The process's BLAS computes on the
    calling thread from here on (``core.threads``): the groups multiply small matrices from
    worker threads, on cores they share with the API workers.
    """
    single_threaded_blas()
    broker = ConsumerBroker(
        stores.services.kafka_bootstrap,
        client_id="streamrec-consumers",
        logger=broker_log,
        log_level=logging.DEBUG,  # per-message "Received/Processed" lines only at DEBUG
    )
    dead_letters = DeadLetterSink(broker, metrics)
    settings = stores.settings
    unknown = set(groups) - set(DEFAULT_GROUPS)
    if unknown:
        names = ", ".join(sorted(g.value for g in unknown))
        raise ValueError(f"consumer groups not available yet: {names}")
    log_id = stores.services.kafka_log_id
    if log_id is None:
        # Offsets (Redis guard, archive coordinates) must name their log: no id, no consuming.
        raise ServiceUnavailable(
            f"Kafka at {', '.join(stores.services.kafka_bootstrap)} did not answer at "
            "start-up: consumers need it; start them again once it is up"
        )
    if ConsumerGroup.FEATURES in groups:
        features.register(broker, stores.features, dead_letters, metrics, settings)
        broker.before_start.append(
            lambda: features.follow_log(
                stores.features, stores.archive, stores.services.kafka_bootstrap, log_id, settings
            )
        )
    if ConsumerGroup.ARCHIVE in groups:
        archive.register(broker, stores.archive, stores.ids, dead_letters, metrics, settings)
    if ConsumerGroup.VECTORS in groups:
        _group_module(ConsumerGroup.VECTORS).register(
            broker, vectors_updater(stores), dead_letters, metrics, settings
        )
    if ConsumerGroup.RETRAIN in groups:
        _register_retrain(broker, stores, dead_letters, metrics)
    if ConsumerGroup.ONLINE_RL in groups:
        _group_module(ConsumerGroup.ONLINE_RL).register(
            broker, learner or online_learner(stores), dead_letters, metrics, settings
        )
    return broker


def _register_retrain(
    broker: ConsumerBroker, stores: Stores, dead_letters: DeadLetterSink, metrics: Metrics
) -> None:
    retrain = _group_module(ConsumerGroup.RETRAIN)
    config = retrain.RetrainConfig.from_settings(stores.settings)
    loop, rounds = retrain.build_loop(stores, config)
    retrain.register(broker, loop, dead_letters, metrics, stores.settings)
    broker.before_start.append(partial(retrain.start_loop, loop, stores))

    async def stop_loop() -> None:
        await loop.stop()
        rounds.close()

    broker.after_stop.append(stop_loop)


_TORCH_GROUP_MODULES = {
    ConsumerGroup.VECTORS: "streamrec.consumers.vectors",
    ConsumerGroup.ONLINE_RL: "streamrec.consumers.online_rl",
    ConsumerGroup.RETRAIN: "streamrec.consumers.retrain",
}


def _group_module(group: ConsumerGroup) -> ModuleType:
    """The subscriber module of a group that needs PyTorch (imported on first use: cost only)."""
    return import_module(_TORCH_GROUP_MODULES[group])


def online_learner(stores: Stores) -> OnlineLearner:
    online = import_module(
        "streamrec.trainer.online"
    )  # PyTorch: imported only by a process that learns
    learner: OnlineLearner = online.OnlineLearner.from_settings(
        stores.models, stores.ids, stores.settings
    )
    return learner


def vectors_updater(stores: Stores) -> VectorsUpdater:
    vectors = _group_module(ConsumerGroup.VECTORS)
    kept = vectors.parse_kept_versions(stores.settings.vectors_kept_versions)
    cache = vectors.ModelCache(stores.models, stores.vectors, kept=kept)
    updater: VectorsUpdater = vectors.VectorsUpdater(
        stores.features, stores.ids, cache, stores.vectors, candidates=stores.candidates
    )
    return updater
